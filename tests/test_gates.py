"""Width gates and the combined framework: per-example widths and exits, batched == one example at a time."""

import pytest
import torch

from transformers_flex import FlexBertDynamicOutput, FlexBertForSequenceClassification
from transformers_flex.modeling_flexbert import cls_head_macs, layer_macs, prediction_entropy, width_shape


@pytest.fixture
def gated_model(tiny_config):
    """Gates before layers 1 and 3 (block size 2), off-ramps after layers 1-3."""
    tiny_config.exit_layers, tiny_config.gate_block_size = [1, 2, 3], 2
    return spread_out(tiny_config)


def spread_out(config):
    """A model whose ramps and gates have scaled weights, and gates centred on random inputs, so that gate choices
    and ramp entropies spread out over a batch."""
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(config).eval()
    sample = torch.randint(1, 99, (32, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hidden_states = model(sample, output_hidden_states=True).hidden_states
        for module in [*model.off_ramps.values(), *model.width_gates.values()]:
            module.classifier.weight.mul_(100)
        for layer, gate in model.width_gates.items():
            gate.classifier.bias.sub_(gate(gate.pool(hidden_states[int(layer)], None)).mean(dim=0))
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
    """Reference: each gate reads the states after the layers before it, run at the widths already chosen."""
    config = model.config
    widths = [1.0] * config.num_hidden_layers
    with torch.no_grad():
        for gate_layer in config.gate_layers:
            with model.subnet(width=widths):
                hidden = model(**inputs, output_hidden_states=True).hidden_states[gate_layer]
            gate = model.width_gates[str(gate_layer)]
            choice = int(gate(gate.pool(hidden, None)).argmax(dim=-1))
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


@pytest.mark.parametrize(
    ("block_size", "criterion", "entropy_fraction"),
    [(1, "entropy", 0.5), (1, "patience", None), (2, "entropy", 0.2), (2, "patience", None)],
)
def test_rows_regrouped_by_width_keep_their_streaks_and_mixed_states(
    tiny_config, batch, block_size, criterion, entropy_fraction
):
    """Gates re-sort the rows by width and width blocks write their layer output in place: patience streaks and
    the knowledgeable classifier's [CLS] states must follow their rows and survive the later layers."""
    tiny_config.exit_layers, tiny_config.knowledgeable_layers = [1, 2, 3], [1, 2, 4]
    tiny_config.gate_block_size = block_size
    model = spread_out(tiny_config)
    # Thresholds at which some rows leave early and some reach the (mixing) final classifier.
    threshold = 1 if criterion == "patience" else median_first_ramp_entropy(model, batch) * entropy_fraction
    batched = model.dynamic_forward(**batch, criterion=criterion, threshold=threshold)
    singles = [
        model.dynamic_forward(**example(batch, row), criterion=criterion, threshold=threshold) for row in range(12)
    ]
    assert len(set(batched.exit_layers.tolist())) >= 2 and 4 in batched.exit_layers.tolist()
    assert len({tuple(widths) for widths in batched.layer_widths.tolist()}) >= 3
    assert len(set(batched.layer_widths[:, 0].tolist())) >= 2  # the first block already runs several widths
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
    assert not isinstance(static, FlexBertDynamicOutput)  # training runs the plain full model


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
    with pytest.raises(ValueError, match="gate_block_size"):
        tiny_config.gate_block_size = 5
    assert tiny_config.gate_block_size == 2  # the refused value is not kept


# --- gate labels, loss and the gates stage ------------------------------------------------------------------------


def test_gate_label_is_the_smallest_correct_width_else_the_largest():
    from transformers_flex.losses import gate_labels

    widths = [1.0, 0.75, 0.5, 0.25]  # class k stands for widths[k]
    correct = torch.tensor(
        [
            [True, True, False, False],  # width 1.0
            [True, False, True, False],  # width 0.75
            [True, False, True, False],  # width 0.5
            [True, False, False, False],  # width 0.25
        ]
    )
    assert gate_labels(correct, widths).tolist() == [3, 0, 2, 0]
    shuffled = [0.5, 1.0, 0.25, 0.75]  # the rule follows width values, not class order
    assert gate_labels(correct[[2, 0, 3, 1]], shuffled).tolist() == [2, 1, 0, 1]


def test_gate_class_weights_are_inverse_frequencies():
    from transformers_flex.losses import gate_class_weights

    weights = gate_class_weights(torch.tensor([30.0, 10.0, 0.0, 60.0]))
    assert torch.allclose(weights * torch.tensor([30.0, 10.0, 1.0, 60.0]), torch.full((4,), 25.0))


def test_gate_loss_prefers_the_labelled_class_and_weights_rare_ones():
    from transformers_flex.losses import gate_loss

    labels = torch.tensor([0, 1])
    right = torch.tensor([[[8.0, 0.0]], [[0.0, 8.0]]])  # (batch, gates, classes)
    torch.manual_seed(0)
    low = gate_loss(right, labels, torch.ones(2), temperature=0.5)
    torch.manual_seed(0)
    high = gate_loss(-right, labels, torch.ones(2), temperature=0.5)
    assert low < high
    torch.manual_seed(0)
    only_second = gate_loss(-right, labels, torch.tensor([0.0, 1.0]), temperature=0.5)
    torch.manual_seed(0)
    both = gate_loss(-right, labels, torch.ones(2), temperature=0.5)
    assert 0 < only_second < both


def test_gate_temperature_anneals_linearly_from_start_to_end():
    from transformers_flex.gate_training import gate_temperature

    assert [gate_temperature(step, 5, 1.0, 0.5) for step in range(5)] == [1.0, 0.875, 0.75, 0.625, 0.5]
    assert gate_temperature(9, 5, 1.0, 0.5) == 0.5  # past the last step it stays at the end
    assert gate_temperature(0, 1, 1.0, 0.5) == 1.0  # a one-step stage samples at the start temperature


def gate_cross_entropy(trainer, model, dataset) -> float:
    """Mean cross-entropy of every gate's logits against the gate labels (no sampling), over the dataset."""
    from conftest import pad_collate

    from transformers_flex.gate_training import gate_targets

    batch = pad_collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        labels, states = gate_targets(model, model, batch, trainer.args.gate_regression_tolerance)
        losses = [
            torch.nn.functional.cross_entropy(model.width_gates[str(layer)](states[:, i]), labels)
            for i, layer in enumerate(model.config.gate_layers)
        ]
    return float(sum(losses) / len(losses))


def test_gates_stage_trains_only_the_gates_and_fits_their_labels(tiny_config, tmp_path):
    from conftest import pad_collate, random_classification_dataset
    from test_trainer import make_args

    from transformers_flex import FlexTrainer

    tiny_config.gate_block_size = 2
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(tiny_config)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    dataset = random_classification_dataset(32)
    args = make_args(tmp_path, flex_stage="gates", optim="adamw_torch", learning_rate=1e-2, max_steps=40)
    trainer = FlexTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, data_collator=pad_collate
    )
    before = gate_cross_entropy(trainer, model, dataset)
    trainer.train()
    after = gate_cross_entropy(trainer, model, dataset)
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, initial[name])}
    assert changed and all(name.startswith("width_gates.") for name in changed)
    assert after < before
    # Evaluation of the gates stage runs the gated (dynamic) model, as inference will.
    metrics = trainer.evaluate()
    batch = pad_collate([dataset[i] for i in range(len(dataset))])
    model.eval()
    dynamic = model.dynamic_forward(batch["input_ids"], batch["attention_mask"])
    assert not model.config.dynamic_inference  # restored after evaluation
    assert metrics["eval_loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(dynamic.logits, batch["labels"])), rel=1e-4
    )


def test_gate_stage_loss_is_the_weighted_gumbel_nll_of_the_frozen_models_labels(tiny_config, tmp_path):
    """The unit's training loss, called directly: class weights from the training batches it is handed, the
    temperature from the trainer's progress, and the model left frozen (eval mode, no parameter touched)."""
    from conftest import pad_collate, random_classification_dataset
    from test_trainer import make_args
    from transformers.trainer_callback import TrainerState

    from transformers_flex.gate_training import GateStage, gate_targets
    from transformers_flex.losses import gate_class_weights, gate_loss

    tiny_config.gate_block_size = 2
    model = spread_out(tiny_config)
    dataset = random_classification_dataset(24)
    first, second = (pad_collate([dataset[i] for i in rows]) for rows in (range(16), range(16, 24)))
    args = make_args(tmp_path, flex_stage="gates", gate_temperature_start=1.0, gate_temperature_end=0.5)
    unit = GateStage(model, args, training_batches=lambda: [first, second])
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        name for name, _ in model.named_parameters() if name.startswith("width_gates.")
    }
    model.train()
    torch.manual_seed(0)
    loss, outputs = unit.compute_loss(model, model, first, TrainerState(global_step=9, max_steps=10))
    assert outputs is None and not model.training  # frozen model: labels are computed without dropout
    counts = sum(torch.bincount(gate_targets(model, model, b, 0.5)[0], minlength=4) for b in (first, second))
    labels, states = gate_targets(model, model, first, 0.5)
    gates = [model.width_gates[str(layer)] for layer in model.config.gate_layers]
    gate_logits = torch.stack([gate(states[:, i]) for i, gate in enumerate(gates)], dim=1)
    torch.manual_seed(0)
    expected = gate_loss(gate_logits, labels, gate_class_weights(counts.float()), temperature=0.5)  # the last step
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert {name for name, p in model.named_parameters() if p.grad is not None} <= {
        name for name, _ in model.named_parameters() if name.startswith("width_gates.")
    }


class ConfigWrites:
    """Records every attribute written on any FlexBertConfig while installed (the config's own `__setattr__`)."""

    def __init__(self, monkeypatch):
        from transformers_flex import FlexBertConfig

        self.names: list[str] = []
        original = FlexBertConfig.__setattr__

        def recording(config, name, value):
            self.names.append(name)
            original(config, name, value)

        monkeypatch.setattr(FlexBertConfig, "__setattr__", recording)


def test_gates_stage_evaluates_the_gated_model_without_ramps_and_never_writes_the_config(
    tiny_config, tmp_path, monkeypatch
):
    """Evaluation (with labels) and prediction (without) run the gates to the last layer, though the config says
    every row should exit at the first ramp; the config is never written, so a concurrent reader (a server, a
    save) never sees it change."""
    from conftest import pad_collate, random_classification_dataset
    from test_trainer import make_args

    from transformers_flex import FlexTrainer

    tiny_config.exit_layers, tiny_config.gate_block_size = [1, 2, 3], 2
    tiny_config.exit_threshold, tiny_config.problem_type = 1e9, "single_label_classification"  # config: exit at once
    model = spread_out(tiny_config)
    dataset = random_classification_dataset(16)
    args = make_args(tmp_path, flex_stage="gates", per_device_eval_batch_size=16)
    trainer = FlexTrainer(model=model, args=args, eval_dataset=dataset, data_collator=pad_collate)
    batch = pad_collate([dataset[i] for i in range(len(dataset))])
    gated = model.dynamic_forward(batch["input_ids"], batch["attention_mask"], use_ramps=False)
    configured = model.dynamic_forward(batch["input_ids"], batch["attention_mask"])  # what the config alone gives
    assert gated.exit_layers.eq(4).all() and configured.exit_layers.eq(1).all()
    before = model.config.to_dict()
    writes = ConfigWrites(monkeypatch)
    metrics = trainer.evaluate()
    trainer.data_collator = lambda rows: {key: value for key, value in pad_collate(rows).items() if key != "labels"}
    predictions = trainer.predict(dataset).predictions
    assert writes.names == [] and model.config.to_dict() == before
    loss = float(torch.nn.functional.cross_entropy(gated.logits, batch["labels"]))
    assert metrics["eval_loss"] == pytest.approx(loss, rel=1e-5)
    assert loss != pytest.approx(float(torch.nn.functional.cross_entropy(configured.logits, batch["labels"])))
    torch.testing.assert_close(torch.as_tensor(predictions), gated.logits, atol=1e-5, rtol=0)


def test_gates_stage_needs_gates(tiny_config, tmp_path):
    from conftest import pad_collate
    from test_trainer import make_args

    from transformers_flex import FlexTrainer

    model = FlexBertForSequenceClassification(tiny_config)
    with pytest.raises(ValueError, match="gate_block_size"):
        FlexTrainer(model=model, args=make_args(tmp_path, flex_stage="gates"), data_collator=pad_collate)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_gates_after_a_layer_read_the_mean_or_cls_and_the_in_gate_the_mean(tiny_config, pooling):
    tiny_config.gate_block_size, tiny_config.gate_pooling = 2, pooling
    model = FlexBertForSequenceClassification(tiny_config)
    hidden = torch.randn(1, 5, 64)
    changed = hidden.clone()
    changed[:, 3] += 1.0  # a token other than [CLS]
    for layer, reads_tokens in (("0", True), ("2", pooling == "mean")):
        gate = model.width_gates[layer]
        assert torch.equal(gate.pool(hidden, None), gate.pool(changed, None)) != reads_tokens
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    torch.testing.assert_close(model.width_gates["0"].pool(changed, mask), hidden[:, :3].mean(dim=1))


def test_gates_need_full_depth_and_use_ramps_false_runs_no_ramp(gated_model, batch, tiny_config):
    with gated_model.subnet(depth=0.5), pytest.raises(ValueError, match="full depth"):
        gated_model.dynamic_forward(**batch)
    no_ramps = gated_model.dynamic_forward(**batch, threshold=10.0, use_ramps=False)  # would exit everyone
    assert no_ramps.exit_layers.tolist() == [4] * 12
    with_ramps = gated_model.dynamic_forward(**batch, threshold=0.0)  # ramps run, nobody exits
    ramp_cost = 2 * cls_head_macs(64, tiny_config.num_labels) * 3
    torch.testing.assert_close(
        with_ramps.flops - no_ramps.flops, torch.full((12,), float(ramp_cost), dtype=torch.float64)
    )


def test_gates_stage_on_a_regression_task_trains_and_evaluates(tiny_config, tmp_path):
    from conftest import pad_collate, random_classification_dataset
    from test_trainer import make_args

    from transformers_flex import FlexTrainer

    tiny_config.num_labels, tiny_config.exit_layers, tiny_config.gate_block_size = 1, [2], 2
    model = FlexBertForSequenceClassification(tiny_config)
    dataset = random_classification_dataset(16).map(lambda row: {"labels": float(row["labels"])})
    args = make_args(tmp_path, flex_stage="gates", max_steps=2, gate_regression_tolerance=0.5)
    trainer = FlexTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, data_collator=pad_collate
    )
    trainer.train()
    assert "eval_loss" in trainer.evaluate()  # the gated model, ramps never exiting, whatever the criterion


def test_span_is_correct_by_token_overlap_f1():
    from transformers_flex.losses import span_is_correct

    def logits_for(start: int, end: int, length: int = 10) -> torch.Tensor:
        logits = torch.zeros(2, length)
        logits[0, start], logits[1, end] = 5.0, 5.0
        return logits

    predicted = [(2, 4), (3, 6), (5, 9), (4, 2), (0, 0), (0, 3)]
    gold = torch.tensor([[2, 4], [2, 4], [2, 4], [2, 4], [0, 0], [0, 0]])
    # (3, 6) vs (2, 4): overlap 2, precision 2/4, recall 2/3 -> F1 0.571; (0, 3) vs CLS (0, 0): F1 0.4.
    expected = [True, True, False, False, True, False]
    logits = torch.stack([logits_for(start, end) for start, end in predicted])
    assert span_is_correct(logits, gold, min_f1=0.5).tolist() == expected
    assert span_is_correct(logits, gold, min_f1=0.6).tolist() == [True, False, False, False, True, False]


def test_qa_gates_stage_trains_only_the_gates_on_span_labels(tiny_config, tmp_path):
    """A QA model's gates learn from the smallest width whose span is right; evaluation runs the gated engine, whose
    windows get what they get alone."""
    from conftest import pad_collate
    from test_trainer import make_args, random_qa_dataset

    from transformers_flex import FlexBertForQuestionAnswering, FlexTrainer
    from transformers_flex.gate_training import gate_targets
    from transformers_flex.losses import span_is_correct

    tiny_config.num_labels, tiny_config.gate_block_size = 2, 2
    torch.manual_seed(0)
    model = FlexBertForQuestionAnswering(tiny_config)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    dataset = random_qa_dataset(24)
    args = make_args(tmp_path, flex_stage="gates", max_steps=3, gate_span_f1=0.5)
    trainer = FlexTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, data_collator=pad_collate
    )
    batch = pad_collate([dataset[i] for i in range(8)])
    model.eval()
    labels, _ = gate_targets(model, model, batch, 0.5, span_f1=0.5)
    positions = torch.stack([batch["start_positions"], batch["end_positions"]], dim=1)
    with torch.no_grad():  # the reference: each width's spans, smallest right width first
        right = {
            width: span_is_correct(
                model.head_logits(model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, width=width)),
                positions,
                0.5,
            )
            for width in model.config.gate_widths
        }
    for row, label in enumerate(labels.tolist()):
        smallest = [w for w in sorted(right) if right[w][row]]
        assert model.config.gate_widths[label] == (smallest[0] if smallest else max(right))
    trainer.train()
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, initial[name])}
    assert changed and all(name.startswith("width_gates.") for name in changed)
    metrics = trainer.evaluate()
    model.eval()
    gated = model.dynamic_forward(batch["input_ids"], batch["attention_mask"], labels=positions, use_ramps=False)
    assert "eval_loss" in metrics
    for row in range(3):
        alone = model.dynamic_forward(batch["input_ids"][row : row + 1], batch["attention_mask"][row : row + 1])
        assert torch.equal(alone.layer_widths[0], gated.layer_widths[row])
