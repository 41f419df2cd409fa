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
