"""Batched early exit: the same answers and exit layers as a sequential reference and as batch size 1."""

import pytest
import torch

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.modeling_flexbert import layer_macs, prediction_entropy


@pytest.fixture
def ramp_model(tiny_config):
    tiny_config.exit_layers = [1, 2, 3, 4]
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(tiny_config).eval()
    with torch.no_grad():  # confident ramps, so entropies spread out and examples leave at different layers
        for ramp in model.off_ramps.values():
            ramp.classifier.weight.mul_(100)
    return model


def median_ramp_entropy(model, batch, normalized):
    """A threshold that lets half the batch leave at the first ramp, midway between two entropies (no float ties)."""
    with torch.no_grad():
        ramps = model.ramp_logits(model(**batch, output_hidden_states=True).hidden_states)
    entropies = prediction_entropy(ramps[min(ramps)], normalized).sort().values
    middle = len(entropies) // 2
    return (entropies[middle - 1] + entropies[middle]).item() / 2


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    lengths = torch.tensor([3, 12, 7, 12, 5, 9, 2, 11])
    input_ids = torch.randint(1, 99, (8, 12), generator=generator)
    attention_mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask}


def sequential_reference(model, batch, criterion, threshold):
    """Full forward per example, then the criterion applied ramp by ramp: what a batch-size-1 loop would do."""
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
        ramps = model.ramp_logits(output.hidden_states)
    ran = model.bert.encoder.active_layers
    logits, exits = output.logits.clone(), torch.full((len(output.logits),), ran[-1] + 1)
    for row in range(len(output.logits)):
        previous, streak = None, 0
        for layer in [index + 1 for index in ran[:-1] if index + 1 in ramps]:
            ramp = ramps[layer][row : row + 1]
            if criterion == "patience":  # PABEE: count consecutive ramps whose argmax agrees with the previous one
                prediction = int(ramp.argmax())
                streak = streak + 1 if prediction == previous else 0
                previous = prediction
                done = streak >= threshold
            else:
                done = bool(prediction_entropy(ramp, normalized=criterion == "normalized_entropy") < threshold)
            if done:
                logits[row], exits[row] = ramp[0], layer
                break
    return logits, exits


@pytest.mark.parametrize(
    ("criterion", "threshold"), [("entropy", None), ("normalized_entropy", None), ("patience", 1), ("patience", 2)]
)
@pytest.mark.parametrize(("width", "depth"), [(1.0, 1.0), (0.5, 1.0), ([1.0, 0.25, 0.75, 0.5], 0.75)])
def test_batched_exits_equal_sequential_reference_and_batch_size_one(
    ramp_model, batch, criterion, threshold, width, depth
):
    if criterion == "patience":
        ramp_model.copy_head_to_off_ramps()
    with ramp_model.subnet(width=width, depth=depth):
        if threshold is None:
            threshold = median_ramp_entropy(ramp_model, batch, normalized=criterion == "normalized_entropy")
        batched = ramp_model.dynamic_forward(**batch, criterion=criterion, threshold=threshold)
        expected_logits, expected_exits = sequential_reference(ramp_model, batch, criterion, threshold)
        singles = [
            ramp_model.dynamic_forward(
                **{k: v[i : i + 1] for k, v in batch.items()}, criterion=criterion, threshold=threshold
            )
            for i in range(len(batch["input_ids"]))
        ]
    assert torch.equal(batched.exit_layers, expected_exits)
    if criterion != "patience":
        assert len(set(batched.exit_layers.tolist())) >= 2  # rows really leave at different layers
    torch.testing.assert_close(batched.logits, expected_logits, atol=1e-5, rtol=0)
    assert torch.equal(torch.cat([s.exit_layers for s in singles]), batched.exit_layers)
    torch.testing.assert_close(torch.cat([s.logits for s in singles]), batched.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([s.flops for s in singles]), batched.flops)


def test_thresholds_move_exits_between_first_ramp_and_full_model(ramp_model, batch):
    never = ramp_model.dynamic_forward(**batch, criterion="entropy", threshold=0.0)
    with torch.no_grad():
        full = ramp_model(**batch).logits
    assert never.exit_layers.tolist() == [4] * 8
    torch.testing.assert_close(never.logits, full, atol=1e-5, rtol=0)
    always = ramp_model.dynamic_forward(**batch, criterion="entropy", threshold=10.0)
    assert always.exit_layers.tolist() == [1] * 8
    assert torch.all(always.flops < never.flops)


def test_flops_count_the_layers_ramps_and_head_each_example_ran(ramp_model, batch, tiny_config):
    threshold = median_ramp_entropy(ramp_model, batch, normalized=False)
    out = ramp_model.dynamic_forward(**batch, criterion="entropy", threshold=threshold)
    assert len(set(out.exit_layers.tolist())) >= 2
    head = 2 * (64 * 64 + 64 * tiny_config.num_labels)
    for row, (length, exit_layer) in enumerate(zip(batch["attention_mask"].sum(1).tolist(), out.exit_layers.tolist())):
        layers = 2 * exit_layer * layer_macs(64, 16, 4, 128, length, linear_only=False)
        ramps_run = min(exit_layer, 3)  # ramps after layers 1..3; the final head answers at layer 4
        expected = layers + head * (ramps_run + (1 if exit_layer == 4 else 0))
        assert out.flops[row].item() == expected


def test_export_keeps_the_off_ramps_of_kept_layers(ramp_model, batch):
    compact = ramp_model.export_subnet(width=0.5, depth=0.5)  # every_other: layers 0 and 2 -> ramps 1 and 3
    assert list(compact.off_ramps) == ["1"] and compact.config.exit_layers == [1, 2]
    with torch.no_grad(), ramp_model.subnet(width=0.5, depth=0.5):
        expected = ramp_model.ramp_logits(ramp_model(**batch, output_hidden_states=True).hidden_states)
    with torch.no_grad():
        got = compact.ramp_logits(compact(**batch, output_hidden_states=True).hidden_states)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=0)


def test_regression_needs_patience(tiny_config, batch):
    tiny_config.num_labels, tiny_config.exit_layers = 1, [2]
    model = FlexBertForSequenceClassification(tiny_config).eval()
    with pytest.raises(ValueError, match="patience"):
        model.dynamic_forward(**batch, criterion="entropy", threshold=0.1)
    out = model.dynamic_forward(**batch, criterion="patience", threshold=1)
    assert out.logits.shape == (8, 1) and set(out.exit_layers.tolist()) == {4}  # one ramp cannot agree with another


def test_exit_layer_predictor_learns_which_tokens_leave_early():
    from transformers_flex.inference import ExitLayerPredictor

    easy, hard = torch.arange(1, 11), torch.arange(11, 21)
    input_ids = torch.stack([easy[:6], hard[:6], easy[4:], hard[4:]])
    mask = torch.ones_like(input_ids)
    predictor = ExitLayerPredictor(vocab_size=99, exit_layers=[1, 2, 4]).fit(
        input_ids, mask, torch.tensor([1, 4, 1, 4])
    )
    new = torch.tensor([[1, 2, 3, 0], [12, 13, 14, 15], [1, 2, 12, 13], [50, 51, 52, 53]])
    new_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    # easy -> 1, hard -> 4, half of each -> mean 2.5 -> nearest answering layer 2, unseen tokens -> the last layer
    assert predictor.predict(new, new_mask).tolist() == [1, 4, 2, 4]


def test_bucketed_forward_runs_each_row_to_its_predicted_layer(ramp_model, batch, tiny_config):
    from transformers_flex.inference import bucketed_forward

    predicted = torch.tensor([1, 4, 2, 3, 1, 4, 2, 3])
    out = bucketed_forward(ramp_model, batch["input_ids"], predicted, batch["attention_mask"])
    with torch.no_grad():
        full = ramp_model(**batch, output_hidden_states=True)
        ramps = ramp_model.ramp_logits(full.hidden_states)
    for row, layer in enumerate(predicted.tolist()):
        expected = full.logits[row] if layer == 4 else ramps[layer][row]
        torch.testing.assert_close(out.logits[row], expected, atol=1e-5, rtol=0)
        length = int(batch["attention_mask"][row].sum())
        head = 2 * (64 * 64 + 64 * tiny_config.num_labels)
        assert out.flops[row].item() == 2 * layer * layer_macs(64, 16, 4, 128, length, linear_only=False) + head
    with pytest.raises(ValueError, match="no classifier"), ramp_model.subnet(depth=0.5):
        bucketed_forward(ramp_model, batch["input_ids"], predicted, batch["attention_mask"])


def test_left_padding_is_never_cut(ramp_model, batch):
    """Trimming drops trailing padding only; left-padded batches run whole and give the same answers."""
    lengths = batch["attention_mask"].sum(1)
    left = {
        key: torch.stack([row.roll(int(12 - n)) for row, n in zip(value, lengths)]) for key, value in batch.items()
    }
    assert left["attention_mask"][:, -1].all() and not left["attention_mask"][:, 0].all()
    threshold = median_ramp_entropy(ramp_model, batch, normalized=False)
    expected_logits, expected_exits = sequential_reference(ramp_model, left, "entropy", threshold)
    out = ramp_model.dynamic_forward(**left, criterion="entropy", threshold=threshold)
    assert torch.equal(out.exit_layers, expected_exits)
    torch.testing.assert_close(out.logits, expected_logits, atol=1e-5, rtol=0)


def test_only_trailing_padding_counts_as_cuttable():
    from transformers_flex.modeling_flexbert import last_real_column

    assert last_real_column(torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])) == 2
    assert last_real_column(torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]])) == 4
    assert last_real_column(torch.tensor([[0, 0, 0]])) == 3  # nothing real: nothing is cut


@pytest.fixture
def attention_ramp_model(tiny_config):
    tiny_config.exit_layers, tiny_config.ramp_type = [1, 2, 3], "attention"
    tiny_config.ramp_attention_size, tiny_config.ramp_attention_heads = 32, 2
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(tiny_config).eval()
    with torch.no_grad():
        for ramp in model.off_ramps.values():
            ramp.classifier.weight.mul_(30)
    return model


def test_attention_ramp_reads_cls_of_a_full_self_attention_layer(attention_ramp_model, batch):
    """Computing only the [CLS] query gives what a full self-attention layer gives at [CLS]."""
    ramp = attention_ramp_model.off_ramps["1"]
    hidden = torch.randn(8, 12, 64, generator=torch.Generator().manual_seed(4))
    mask = batch["attention_mask"]
    with torch.no_grad():
        tokens = ramp.down(hidden)
        heads = [slice(0, 16), slice(16, 32)]
        query, key, value = ramp.query(tokens), ramp.key(tokens), ramp.value(tokens)
        contexts = []
        for head in heads:  # every position attends; padding keys are excluded
            scores = query[..., head] @ key[..., head].transpose(1, 2) / 4.0
            scores = scores.masked_fill(mask[:, None, :] == 0, float("-inf"))
            contexts.append(scores.softmax(-1) @ value[..., head])
        full_layer = ramp.output(torch.cat(contexts, dim=-1)) + tokens
        expected = ramp.classifier(torch.tanh(ramp.pooler(full_layer[:, 0])))
        torch.testing.assert_close(ramp(hidden, mask), expected, atol=1e-5, rtol=0)


def test_attention_ramps_exit_batched_as_one_example_at_a_time(attention_ramp_model, batch, tiny_config):
    with torch.no_grad():
        hidden_states = attention_ramp_model(**batch, output_hidden_states=True).hidden_states
        first = attention_ramp_model.ramp_logits(hidden_states, batch["attention_mask"])[1]
    entropies = prediction_entropy(first).sort().values
    threshold = float(entropies[3] + entropies[4]) / 2
    batched = attention_ramp_model.dynamic_forward(**batch, threshold=threshold)
    singles = [
        attention_ramp_model.dynamic_forward(
            **{key: value[i : i + 1, : int(batch["attention_mask"][i].sum())] for key, value in batch.items()},
            threshold=threshold,
        )
        for i in range(8)
    ]
    assert len(set(batched.exit_layers.tolist())) >= 2
    assert torch.equal(torch.cat([s.exit_layers for s in singles]), batched.exit_layers)
    torch.testing.assert_close(torch.cat([s.logits for s in singles]), batched.logits, atol=1e-5, rtol=0)
    ramp_macs = attention_ramp_model.off_ramps["1"].macs
    head = 2 * (64 * 64 + 64 * tiny_config.num_labels)
    for row in range(8):
        length, exit_layer = int(batch["attention_mask"][row].sum()), int(batched.exit_layers[row])
        expected = 2 * exit_layer * layer_macs(64, 16, 4, 128, length)
        expected += 2 * min(exit_layer, 3) * int(ramp_macs(torch.tensor(length)))
        expected += head if exit_layer == 4 else 0
        assert batched.flops[row].item() == expected
    with pytest.raises(ValueError, match="copy the final head"):
        attention_ramp_model.copy_head_to_off_ramps()


def test_head_is_copied_only_into_the_chosen_ramps(ramp_model):
    before = ramp_model.off_ramps["2"].classifier.weight.clone()
    ramp_model.copy_head_to_off_ramps([1, 3])
    assert torch.equal(ramp_model.off_ramps["1"].classifier.weight, ramp_model.classifier.weight)
    assert torch.equal(ramp_model.off_ramps["3"].pooler.dense.weight, ramp_model.bert.pooler.dense.weight)
    assert torch.equal(ramp_model.off_ramps["2"].classifier.weight, before)


def test_importance_runs_on_a_model_saved_for_dynamic_inference(ramp_model, batch, monkeypatch):
    """Gradients through the static model, dropout off, and the config never written (no reader sees it change)."""
    from test_gates import ConfigWrites

    from transformers_flex import compute_importance

    ramp_model.config.dynamic_inference = True
    ramp_model.config.problem_type = "single_label_classification"  # else the first loss records the task type
    labelled = dict(batch, labels=torch.zeros(8, dtype=torch.long))
    ramp_model.train()
    writes = ConfigWrites(monkeypatch)
    importance = compute_importance(ramp_model, [labelled], show_progress=False)
    again = compute_importance(ramp_model, [labelled], show_progress=False)
    assert importance.heads[0].abs().sum() > 0 and writes.names == []
    torch.testing.assert_close(again.heads, importance.heads)  # dropout was off: the same scores twice
    assert all(module.training for module in ramp_model.modules())  # every module's mode restored
