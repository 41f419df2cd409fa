"""Loss functions and GLUE metrics, against direct definitions and reference implementations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transformers_flex.losses import (
    attention_distillation,
    hidden_states_distillation,
    kl_to_teacher,
    logits_distillation,
    masked_attention_kl,
    masked_hidden_mse,
    ramp_training_loss,
    soft_cross_entropy,
    teacher_layer_for_student,
)
from transformers_flex.metrics import average_ranks, classification_metrics, glue_metrics, regression_metrics


def test_soft_cross_entropy_is_cross_entropy_with_soft_targets():
    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    expected = F.cross_entropy(student, teacher.softmax(-1))  # torch's CE accepts class probabilities
    torch.testing.assert_close(soft_cross_entropy(student, teacher), expected)
    # With one-hot (very confident) teachers it is ordinary cross-entropy to the argmax.
    torch.testing.assert_close(
        soft_cross_entropy(student, 1e4 * F.one_hot(teacher.argmax(-1), 3).float()),
        F.cross_entropy(student, teacher.argmax(-1)),
    )


def test_regression_distillation_is_mse():
    student, teacher = torch.randn(6, 1), torch.randn(6, 1)
    torch.testing.assert_close(logits_distillation(student, teacher, regression=True), F.mse_loss(student, teacher))


def test_masked_hidden_mse_ignores_padding_and_is_split_invariant():
    student, teacher = torch.randn(4, 7, 8), torch.randn(4, 7, 8)
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[1, 3:] = 0
    mask[3, 5:] = 0
    garbage = student.clone()
    garbage[mask == 0] = 1e6  # whatever sits in padded positions must not matter
    loss = masked_hidden_mse(student, teacher, mask)
    torch.testing.assert_close(masked_hidden_mse(garbage, teacher, mask), loss)
    per_example = [F.mse_loss(student[i, mask[i] == 1], teacher[i, mask[i] == 1]) for i in range(4)]
    torch.testing.assert_close(loss, torch.stack(per_example).mean())
    halves = (
        masked_hidden_mse(student[:2], teacher[:2], mask[:2]) + masked_hidden_mse(student[2:], teacher[2:], mask[2:])
    ) / 2
    torch.testing.assert_close(halves, loss)


def test_depth_mapping_sends_the_last_student_layer_to_the_last_teacher_layer():
    # every_other, 12 layers, depth 0.5: student layers 0,2,...,10 imitate teacher outputs 1,3,...,9 and 12.
    assert teacher_layer_for_student([0, 2, 4, 6, 8, 10], 12) == [0, 1, 3, 5, 7, 9, 12]
    assert teacher_layer_for_student([0, 1, 2], 6) == [0, 1, 2, 6]  # prefix rule
    assert teacher_layer_for_student(list(range(6)), 6) == list(range(7))  # full depth: identity


def attention_maps(batch: int, heads: int, length: int, mask: torch.Tensor, seed: int) -> torch.Tensor:
    """Random attention distributions whose padded keys have probability 0, as the model's masked softmax gives."""
    scores = torch.randn(batch, heads, length, length, generator=torch.Generator().manual_seed(seed))
    return scores.masked_fill(mask[:, None, None, :] == 0, float("-inf")).softmax(dim=-1)


def test_masked_attention_kl_is_the_mean_kl_of_each_head_and_real_token():
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    teacher, student = attention_maps(3, 4, 6, mask, seed=0), attention_maps(3, 2, 6, mask, seed=1)
    loss = masked_attention_kl(student, teacher, mask)
    expected = []
    for example in range(3):
        real = int(mask[example].sum())
        kl = [
            F.kl_div(student[example, head, query, :real].log(), teacher[example, head, query, :real], reduction="sum")
            for head in range(2)  # the student's 2 heads against the teacher's first 2
            for query in range(real)
        ]
        expected.append(torch.stack(kl).mean())
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    assert masked_attention_kl(teacher, teacher, mask).abs() < 1e-6  # the same distributions: nothing to learn
    garbage = student.clone()
    garbage[1, :, 4:] = 0.5  # padded query rows must not matter
    torch.testing.assert_close(masked_attention_kl(garbage, teacher, mask), loss)


def test_attention_distillation_pairs_each_student_layer_with_the_teachers_same_layer():
    mask = torch.ones(2, 5)
    teacher = tuple(attention_maps(2, 4, 5, mask, seed=layer) for layer in range(4))
    student = tuple(attention_maps(2, 2, 5, mask, seed=10 + layer) for layer in range(2))  # layers 0 and 2 ran
    expected = masked_attention_kl(student[0], teacher[0], mask) + masked_attention_kl(student[1], teacher[2], mask)
    torch.testing.assert_close(attention_distillation(student, teacher, [0, 2], mask), expected)


def test_hidden_states_distillation_sums_mapped_pairs():
    teacher = tuple(torch.randn(2, 5, 4) for _ in range(5))  # embeddings + 4 layers
    student = tuple(torch.randn(2, 5, 4) for _ in range(3))  # embeddings + layers 0 and 2
    mask = torch.ones(2, 5)
    expected = sum(F.mse_loss(s, teacher[t]) for s, t in zip(student, [0, 1, 4]))
    torch.testing.assert_close(hidden_states_distillation(student, teacher, [0, 2], mask), expected)


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = rng.normal(size=(200, 2)) + np.eye(2)[labels] * 0.8
    return logits, labels


def test_classification_metrics_match_scikit_learn(predictions):
    metrics_module = pytest.importorskip("sklearn.metrics")
    logits, labels = predictions
    predicted = logits.argmax(-1)
    mrpc = glue_metrics("mrpc", logits, labels)
    assert mrpc["accuracy"] == pytest.approx(metrics_module.accuracy_score(labels, predicted))
    assert mrpc["f1"] == pytest.approx(metrics_module.f1_score(labels, predicted))
    cola = glue_metrics("cola", logits, labels)
    assert cola["matthews_correlation"] == pytest.approx(metrics_module.matthews_corrcoef(labels, predicted))


def test_macro_f1_matches_scikit_learn_with_a_class_never_predicted():
    metrics_module = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 300)
    predicted = np.where(labels == 3, 0, np.where(rng.random(300) < 0.7, labels, rng.integers(0, 3, 300)))
    result = classification_metrics(predicted, labels)
    assert result["accuracy"] == pytest.approx(metrics_module.accuracy_score(labels, predicted))
    assert result["macro_f1"] == pytest.approx(metrics_module.f1_score(labels, predicted, average="macro"))


def test_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    labels = np.round(rng.uniform(0, 5, 300), 1)  # rounded: many ties, as in STS-B
    scores = labels + rng.normal(scale=1.0, size=300)
    result = glue_metrics("stsb", scores[:, None], labels)
    assert result["pearson"] == pytest.approx(stats.pearsonr(scores, labels)[0])
    assert result["spearmanr"] == pytest.approx(stats.spearmanr(scores, labels)[0])
    np.testing.assert_allclose(average_ranks(labels), stats.rankdata(labels))
    assert regression_metrics(scores, labels) == result  # tasks that are not GLUE report the same correlations


def test_every_glue_task_has_metrics_even_without_local_data(predictions):
    logits, labels = predictions
    accuracy = glue_metrics("sst2", logits, labels)["accuracy"]
    for task in ("mnli", "qnli", "rte", "wnli"):
        assert glue_metrics(task, logits, labels) == {"accuracy": accuracy}
    assert glue_metrics("qqp", logits, labels) == glue_metrics("mrpc", logits, labels)  # both accuracy + F1
    assert set(glue_metrics("cola", logits, labels)) == {"matthews_correlation"}
    with pytest.raises(ValueError, match="Unknown GLUE task"):
        glue_metrics("squad", logits, labels)


def test_glue_falls_back_to_the_hub_dataset_where_no_mirror_has_the_task(tmp_path, monkeypatch):
    """No local copy -> `load_dataset(<hub id>, task)`; the Hub is unreachable here, so the call is recorded."""
    from transformers_flex import data

    calls = []
    monkeypatch.setattr(data, "default_data_dir", lambda: None)
    monkeypatch.setattr("datasets.load_dataset", lambda *args: calls.append(args) or "hub")
    assert data.load_glue("cola") == "hub" and calls == [("nyu-mll/glue", "cola")]
    assert data.load_glue("qqp", hub_dataset="my/glue") == "hub" and calls[-1] == ("my/glue", "qqp")
    with pytest.raises(FileNotFoundError, match="cola"):
        data.load_glue("cola", data_dir=tmp_path)


def test_kl_to_teacher_matches_torch_kl_div():
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    expected = F.kl_div(student.log_softmax(-1), teacher.softmax(-1), reduction="batchmean")
    torch.testing.assert_close(kl_to_teacher(student, teacher), expected)
    assert kl_to_teacher(teacher, teacher).abs() < 1e-6


def test_ramp_training_losses():
    torch.manual_seed(0)
    ramps = {2: torch.randn(4, 3, requires_grad=True), 4: torch.randn(4, 3, requires_grad=True)}
    final = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 2, 1, 1])
    ce = F.cross_entropy
    torch.testing.assert_close(
        ramp_training_loss("two_stage", ramps, final, labels, ce, 6), ce(ramps[2], labels) + ce(ramps[4], labels)
    )
    weighted = (2 * ce(ramps[2], labels) + 4 * ce(ramps[4], labels) + 6 * ce(final, labels)) / 12  # PABEE
    torch.testing.assert_close(ramp_training_loss("weighted", ramps, final, labels, ce, 6), weighted)
    distill = ramp_training_loss("self_distill", ramps, final, labels, ce, 6)
    torch.testing.assert_close(distill, kl_to_teacher(ramps[2], final) + kl_to_teacher(ramps[4], final))
    distill.backward()
    assert final.grad is None  # the final classifier is the teacher: it receives no gradient from imitation
    shared = ramp_training_loss("shared_exit", ramps, final, labels, ce, 6)
    torch.testing.assert_close(shared, ce(final, labels) + distill.detach())
