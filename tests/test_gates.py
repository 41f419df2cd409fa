"""Width gates and the combined framework: per-example widths and exits, batched == one example at a time."""

import pytest
import torch

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.modeling_flexbert import cls_head_macs, layer_macs, prediction_entropy, width_shape


@pytest.fixture
def gated_model(tiny_config):
    """Gates before layers 1 and 3 (block size 2), off-ramps after layers 1-3; weights scaled so that gate choices
    and ramp entropies spread out over a batch of random inputs."""
    tiny_config.exit_layers, tiny_config.gate_block_size = [1, 2, 3], 2
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(tiny_config).eval()
    with torch.no_grad():
        for module in [*model.off_ramps.values(), *model.width_gates.values()]:
            module.classifier.weight.mul_(100)
    return model


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(3)
    lengths = torch.tensor([3, 12, 7, 12, 5, 9, 2, 11, 6, 10, 4, 8])
    input_ids = torch.randint(1, 99, (12, 12), generator=generator)
    attention_mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask}


def example(batch, row):
    """One row alone, without its padding."""
    length = int(batch["attention_mask"][row].sum())
    return {key: value[row : row + 1, :length] for key, value in batch.items()}


def gated_widths(model, inputs) -> list[float]:
    """Reference: each gate reads the [CLS] state after the layers before it, run at the widths already chosen."""
    config = model.config
    widths = [1.0] * config.num_hidden_layers
    with torch.no_grad():
        for gate_layer in config.gate_layers:
            with model.subnet(width=widths):
                hidden = model(**inputs, output_hidden_states=True).hidden_states[gate_layer]
            choice = int(model.width_gates[str(gate_layer)](hidden).argmax(dim=-1))
            block = range(gate_layer, min(gate_layer + config.gate_block_size, config.num_hidden_layers))
            for layer in block:
                widths[layer] = config.gate_widths[choice]
    return widths


def test_gates_pick_the_widths_a_step_by_step_reference_picks(gated_model, batch):
    out = gated_model.dynamic_forward(**batch, threshold=0.0)  # no early exit: every row runs all 4 layers
    patterns = set()
    for row in range(len(batch["input_ids"])):
        inputs = example(batch, row)
        widths = gated_widths(gated_model, inputs)
        patterns.add(tuple(widths))
        assert out.layer_widths[row].tolist() == pytest.approx(widths)
        with torch.no_grad(), gated_model.subnet(width=widths):
            expected = gated_model(**inputs).logits[0]
        torch.testing.assert_close(out.logits[row], expected, atol=1e-5, rtol=0)
    assert len(patterns) >= 3  # rows really run at different widths in one batch


def median_first_ramp_entropy(model, batch) -> float:
    """A threshold midway between two entropies of the first ramp, so about half the rows leave there."""
    entropies = []
    for row in range(len(batch["input_ids"])):
        inputs = example(batch, row)
        with torch.no_grad(), model.subnet(width=gated_widths(model, inputs)):
            hidden = model(**inputs, output_hidden_states=True).hidden_states
            entropies.append(prediction_entropy(model.ramp_logits(hidden)[1]).item())
    entropies.sort()
    middle = len(entropies) // 2
    return (entropies[middle - 1] + entropies[middle]) / 2


def test_gates_and_exits_batched_equal_one_example_at_a_time(gated_model, batch):
    threshold = median_first_ramp_entropy(gated_model, batch)
    batched = gated_model.dynamic_forward(**batch, threshold=threshold)
    singles = [gated_model.dynamic_forward(**example(batch, row), threshold=threshold) for row in range(12)]
    assert len(set(batched.exit_layers.tolist())) >= 2
    assert torch.equal(torch.cat([s.exit_layers for s in singles]), batched.exit_layers)
    assert torch.equal(torch.cat([s.layer_widths for s in singles]), batched.layer_widths)
    torch.testing.assert_close(torch.cat([s.logits for s in singles]), batched.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([s.flops for s in singles]), batched.flops)


def test_flops_add_up_the_layers_gates_ramps_and_head_each_row_ran(gated_model, batch, tiny_config):
    threshold = median_first_ramp_entropy(gated_model, batch)
    out = gated_model.dynamic_forward(**batch, threshold=threshold)
    head = 2 * cls_head_macs(64, tiny_config.num_labels)
    gate = 2 * cls_head_macs(64, len(tiny_config.gate_widths))
    for row in range(12):
        length, exit_layer = int(batch["attention_mask"][row].sum()), int(out.exit_layers[row])
        expected = 0
        for layer in range(exit_layer):
            heads, neurons = width_shape(4, 128, float(out.layer_widths[row, layer]))
            expected += 2 * layer_macs(64, 16, heads, neurons, length)
        expected += gate * sum(1 for gate_layer in tiny_config.gate_layers if gate_layer < exit_layer)
        expected += head * exit_layer  # a ramp after each layer run (1-3), or the final head after layer 4
        assert out.flops[row].item() == expected
    assert out.layer_widths[out.exit_layers == 1][:, 1:].eq(0).all()  # layers a row never ran report width 0


def test_remapping_gate_widths_moves_widths_without_retraining(gated_model, batch):
    before = gated_model.dynamic_forward(**batch, threshold=0.0)
    gated_model.config.gate_widths = [1.0, 1.0, 0.5, 0.5]  # the classes now stand for other widths
    after = gated_model.dynamic_forward(**batch, threshold=0.0)
    remap = {1.0: 1.0, 0.75: 1.0, 0.5: 0.5, 0.25: 0.5}
    assert after.layer_widths.tolist() == [[remap[round(w, 2)] for w in row] for row in before.layer_widths.tolist()]
    gated_model.config.gate_widths = [1.0, 0.5]
    with pytest.raises(ValueError, match="4 classes"):
        gated_model.dynamic_forward(**batch)


def test_model_call_runs_the_dynamic_engine_in_eval_mode_only(gated_model, batch):
    gated_model.config.dynamic_inference = True
    gated_model.config.exit_threshold = 0.5
    direct = gated_model.dynamic_forward(**batch)
    through_call = gated_model(**batch, labels=torch.zeros(12, dtype=torch.long))
    assert torch.equal(through_call.exit_layers, direct.exit_layers)
    torch.testing.assert_close(through_call.logits, direct.logits)
    assert through_call.loss is not None and through_call.flops.shape == (12,)
    with pytest.raises(ValueError, match="no hidden states"):
        gated_model(**batch, output_hidden_states=True)
    gated_model.train()
    static = gated_model(**batch)
    assert not hasattr(static, "exit_layers") or static.get("exit_layers") is None  # training runs the full model


def test_without_gates_the_engine_uses_the_active_subnet(tiny_config, batch):
    tiny_config.exit_layers = [2]
    model = FlexBertForSequenceClassification(tiny_config).eval()
    with model.subnet(width=[1.0, 0.5, 0.25, 0.75]):
        out = model.dynamic_forward(**batch, threshold=0.0)
        with torch.no_grad():
            expected = model(**batch).logits
    assert out.layer_widths.tolist() == [[1.0, 0.5, 0.25, 0.75]] * 12
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)


def test_gates_are_not_exported_and_bad_block_sizes_are_clear_errors(gated_model, tiny_config):
    compact = gated_model.export_subnet(width=0.5)
    assert compact.config.gate_block_size == 0 and len(compact.width_gates) == 0
    tiny_config.gate_block_size = 5
    with pytest.raises(ValueError, match="gate_block_size"):
        tiny_config.check_flex_fields()
