"""The shared dynamic engine: its modes agree with each other, and the QA head runs on the same loop."""

import pytest
import torch

from transformers_flex import FlexBertForQuestionAnswering, FlexBertForSequenceClassification


def padded_batch(seed: int, rows: int = 8, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 99, (rows, length), generator=generator)
    lengths = torch.randint(3, length + 1, (rows,), generator=generator)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids * mask, "attention_mask": mask}


@pytest.fixture
def ramp_model(tiny_config):
    tiny_config.exit_layers = [1, 2, 3]
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(tiny_config).eval()
    with torch.no_grad():  # confident ramps: examples leave at different layers
        for ramp in model.off_ramps.values():
            ramp.classifier.weight.mul_(100)
    return model


@pytest.mark.parametrize("criterion", ["entropy", "patience"])
def test_waiting_for_the_whole_batch_gives_the_same_answers_at_more_cost(ramp_model, criterion):
    batch = padded_batch(0)
    threshold = 1 if criterion == "patience" else 0.5
    compacted = ramp_model.dynamic_forward(**batch, criterion=criterion, threshold=threshold)
    together = ramp_model.dynamic_forward(**batch, criterion=criterion, threshold=threshold, exit_together=True)
    assert len(set(compacted.exit_layers.tolist())) > 1  # rows really leave at different layers
    torch.testing.assert_close(together.logits, compacted.logits, atol=1e-5, rtol=0)
    assert torch.equal(together.exit_layers, compacted.exit_layers)
    assert bool((together.flops >= compacted.flops).all()) and together.flops.sum() > compacted.flops.sum()


def test_planned_exits_answer_exactly_there(ramp_model):
    batch = padded_batch(1)
    planned = torch.tensor([1, 4, 2, 3, 1, 4, 2, 3])
    output = ramp_model.dynamic_forward(**batch, exit_at=planned)
    assert torch.equal(output.exit_layers, planned)
    with torch.no_grad():
        full = ramp_model(**batch, output_hidden_states=True)
        ramps = ramp_model.ramp_logits(full.hidden_states, batch["attention_mask"])
    for row, layer in enumerate(planned.tolist()):
        expected = full.logits[row] if layer == 4 else ramps[layer][row]
        torch.testing.assert_close(output.logits[row], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="have no classifier"):
        ramp_model.dynamic_forward(**batch, exit_at=torch.full((8,), 7))


@pytest.mark.parametrize(("width", "depth"), [(1.0, 1.0), (0.5, 0.75), ([1.0, 0.25, 0.75, 0.5], 1.0)])
def test_question_answering_windows_run_on_the_engine(tiny_config, width, depth):
    """The QA head's batched engine gives each window the static model's span logits on its real tokens, and what the
    window gets alone."""
    tiny_config.num_labels = 2
    torch.manual_seed(0)
    model = FlexBertForQuestionAnswering(tiny_config).eval()
    batch = padded_batch(2)
    dynamic = model.dynamic_forward(**batch, width=width, depth=depth)
    with torch.no_grad():
        static = model(**batch, width=width, depth=depth)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(dynamic.start_logits[real], static.start_logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(dynamic.end_logits[real], static.end_logits[real], atol=1e-5, rtol=0)
    last_layer = model.bert.encoder.kept_layers(model.resolve_subnet(width, depth))[-1] + 1
    assert dynamic.exit_layers.eq(last_layer).all()
    for row in range(len(real)):
        alone = model.dynamic_forward(
            **{key: value[row : row + 1] for key, value in batch.items()}, width=width, depth=depth
        )
        length = int(real[row].sum())
        torch.testing.assert_close(
            alone.start_logits[0, :length], dynamic.start_logits[row, :length], atol=1e-5, rtol=0
        )
        assert alone.flops[0] == pytest.approx(float(dynamic.flops[row]))


@pytest.fixture
def qa_ramp_model(tiny_config):
    """A QA model with span off-ramps after layers 1-3, sharpened so that windows exit at different layers."""
    tiny_config.num_labels, tiny_config.exit_layers = 2, [1, 2, 3]
    torch.manual_seed(0)
    model = FlexBertForQuestionAnswering(tiny_config).eval()
    with torch.no_grad():
        for layer, ramp in model.off_ramps.items():
            ramp.qa_outputs.weight.mul_(10 * int(layer))
    return model


def span_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the start and end softmaxes over the real tokens, written out for one window at a time."""
    values = []
    for row in range(len(logits)):
        real = logits[row][mask[row].bool()]  # (length, 2)
        probs = real.float().softmax(dim=0)
        values.append(float(-(probs * probs.log()).sum(dim=0).mean()))
    return torch.tensor(values)


def test_qa_windows_exit_on_span_confidence_with_the_ramps_answer(qa_ramp_model):
    """A window leaves at the first ramp whose span entropy is below the threshold, with that ramp's logits; each
    window gets what it gets alone."""
    batch = padded_batch(3, rows=10)
    threshold = 1.0
    output = qa_ramp_model.dynamic_forward(**batch, criterion="entropy", threshold=threshold)
    with torch.no_grad():
        full = qa_ramp_model(**batch, output_hidden_states=True, dynamic=False)
        ramps = qa_ramp_model.ramp_logits(full.hidden_states, batch["attention_mask"])
    mask = batch["attention_mask"]
    entropies = {layer: span_entropy(logits.transpose(1, 2), mask) for layer, logits in ramps.items()}
    expected_layers = [
        next((layer for layer in (1, 2, 3) if entropies[layer][row] < threshold), 4) for row in range(10)
    ]
    assert output.exit_layers.tolist() == expected_layers and len(set(expected_layers)) > 2
    for row, layer in enumerate(expected_layers):
        real = mask[row].bool()
        start = full.start_logits[row] if layer == 4 else ramps[layer][row, 0]
        torch.testing.assert_close(output.start_logits[row][real], start[real], atol=1e-4, rtol=0)
        alone = qa_ramp_model.dynamic_forward(
            **{key: value[row : row + 1] for key, value in batch.items()}, criterion="entropy", threshold=threshold
        )
        assert int(alone.exit_layers[0]) == layer
        torch.testing.assert_close(
            alone.end_logits[0][: int(real.sum())], output.end_logits[row][real], atol=1e-4, rtol=0
        )


@pytest.mark.parametrize(("criterion", "threshold"), [("entropy", 1.0), ("normalized_entropy", 0.5), ("patience", 1)])
def test_a_questions_windows_exit_together_as_when_alone(qa_ramp_model, criterion, threshold):
    """With `exit_groups`, the windows of one question leave at one layer — the first where all of them may, never
    before any of them would alone — and a batch of questions gives each question what it gets alone."""
    batch = padded_batch(4, rows=12)
    groups = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 4, 5])
    settings = {"criterion": criterion, "threshold": threshold}
    independent = qa_ramp_model.dynamic_forward(**batch, **settings)
    grouped = qa_ramp_model.dynamic_forward(**batch, **settings, exit_groups=groups * 7)  # any integer ids
    for group in groups.unique().tolist():
        rows = (groups == group).nonzero().squeeze(1)
        assert grouped.exit_layers[rows].unique().numel() == 1
        # No window leaves before it would alone (a later ramp may be less sure than an earlier one, so later).
        assert int(grouped.exit_layers[rows[0]]) >= int(independent.exit_layers[rows].max())
        alone = qa_ramp_model.dynamic_forward(
            **{key: value[rows] for key, value in batch.items()}, **settings, exit_groups=torch.zeros(len(rows))
        )
        assert torch.equal(alone.exit_layers, grouped.exit_layers[rows])
        real = batch["attention_mask"][rows].bool()
        torch.testing.assert_close(
            alone.start_logits[:, : real.shape[1]][real], grouped.start_logits[rows][real], atol=1e-4, rtol=0
        )
    assert len(set(grouped.exit_layers.tolist())) > 1 or criterion == "patience"
    with pytest.raises(ValueError, match="exit_groups"):
        qa_ramp_model.dynamic_forward(**batch, exit_groups=groups, exit_at=torch.full((12,), 4))


def test_qa_engine_loss_scores_its_masked_logits(qa_ramp_model):
    batch = padded_batch(5)
    positions = {"start_positions": torch.tensor([1, 2, 0, 1, 2, 0, 1, 2]), "end_positions": torch.full((8,), 2)}
    static = qa_ramp_model(**batch, **positions, dynamic=False)
    engine = qa_ramp_model(**batch, **positions, dynamic=True)  # the config's threshold: no window is that sure
    assert engine.exit_layers.eq(4).all()
    # The engine never lets padding be an answer; BERT's loss (the static model's) lets padding take probability.
    padding = batch["attention_mask"][:, None, :] == 0
    logits = torch.stack([static.start_logits, static.end_logits], dim=1).masked_fill(padding, torch.finfo().min)
    targets = torch.stack([positions["start_positions"], positions["end_positions"]], dim=1)
    torch.testing.assert_close(engine.loss, qa_ramp_model.span_loss(logits, targets), atol=1e-5, rtol=0)
    unmasked = torch.stack([static.start_logits, static.end_logits], dim=1)
    torch.testing.assert_close(static.loss, qa_ramp_model.span_loss(unmasked, targets))


def test_qa_ramps_start_as_copies_and_train_on_span_positions(qa_ramp_model):
    """Copied ramps give the final head's logits on their layer's states; the ramps stage's loss for a QA model is
    the span cross-entropy of every ramp (two_stage)."""
    from transformers_flex.ramp_training import ramps_loss

    qa_ramp_model.copy_head_to_off_ramps()
    batch = padded_batch(6)
    positions = {"start_positions": torch.tensor([1, 2, 0, 1, 2, 0, 1, 2]), "end_positions": torch.full((8,), 2)}
    with torch.no_grad():
        full = qa_ramp_model(**batch, output_hidden_states=True, dynamic=False)
        ramps = qa_ramp_model.ramp_logits(full.hidden_states, batch["attention_mask"])
        copied = qa_ramp_model.qa_outputs(full.hidden_states[2]).transpose(1, 2)
        torch.testing.assert_close(ramps[2], copied)
        loss, _ = ramps_loss(qa_ramp_model, qa_ramp_model, {**batch, **positions}, "two_stage", [1.0])
    targets = torch.stack([positions["start_positions"], positions["end_positions"]], dim=1)
    expected = sum(
        (
            torch.nn.functional.cross_entropy(logits[:, 0], targets[:, 0])
            + torch.nn.functional.cross_entropy(logits[:, 1], targets[:, 1])
        )
        / 2
        for logits in ramps.values()
    )
    torch.testing.assert_close(loss, expected)
