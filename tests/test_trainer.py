"""FlexTrainer under the Trainer's machinery, on a tiny random model and a tiny random task."""

import copy
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import pad_collate, random_classification_dataset
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.losses import attention_distillation
from transformers_flex.trainer import FlexTrainer, grafting_steps, sandwich_subnets, stage_subnets
from transformers_flex.training_args import FlexTrainingArguments


def make_args(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        learning_rate=0.1,
        optim="sgd",  # the update is linear in the gradient, so a wrongly scaled loss shows
        max_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=7,
        disable_tqdm=True,
    )
    return FlexTrainingArguments(**(settings | overrides))


def make_models(config, seed=0):
    torch.manual_seed(seed)
    teacher = FlexBertForSequenceClassification(config)
    return copy.deepcopy(teacher), teacher


def test_stage_subnets_are_largest_first():
    from transformers_flex import FlexBertConfig

    config = FlexBertConfig()
    assert stage_subnets(config, "width") == [(1.0, 1.0), (0.75, 1.0), (0.5, 1.0), (0.25, 1.0)]
    pairs = stage_subnets(config, "width_depth")
    assert len(pairs) == 12 and pairs[0] == (1.0, 1.0) and pairs[-1] == (0.25, 0.5)
    assert [d for _, d in pairs] == sorted((d for _, d in pairs), reverse=True)


def test_sandwich_keeps_largest_and_smallest():
    import random

    subnets = stage_subnets(__import__("transformers_flex").FlexBertConfig(), "width_depth")
    for seed in range(20):
        drawn = sandwich_subnets(subnets, 2, random.Random(seed))
        assert drawn[0] == subnets[0] and drawn[-1] == subnets[-1] and len(set(drawn)) == 4
        assert drawn == sorted(drawn, key=subnets.index)


def test_grafting_schedule_skips_the_last_epoch():
    steps = grafting_steps(steps_per_epoch=10, num_epochs=4, times_per_epoch=3)
    assert len(steps) == 9 and max(steps) < 30 and all(step % 10 != 0 for step in steps)
    assert grafting_steps(steps_per_epoch=10, num_epochs=1, times_per_epoch=3) == set()
    # Short epochs: never before the first update, never at an epoch's first step, never in the last epoch.
    assert grafting_steps(steps_per_epoch=2, num_epochs=2, times_per_epoch=3) == {1}
    assert grafting_steps(steps_per_epoch=1, num_epochs=3, times_per_epoch=3) == set()


def test_grafts_follow_the_real_epoch_length(tiny_config, tmp_path, monkeypatch):
    """1.5 epochs of 4 steps (6 steps): grafts before steps 1, 2 and 3 of the first epoch. Epochs taken as
    max_steps / ceil(epochs) = 3 steps long (right for whole epochs only) would graft before steps 1 and 2."""
    student, teacher = make_models(tiny_config)
    args = make_args(
        tmp_path, flex_stage="width", grafting=True, per_device_train_batch_size=4, max_steps=-1, num_train_epochs=1.5
    )
    trainer = FlexTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        importance_dataset=random_classification_dataset(8, seed=1),
        train_dataset=random_classification_dataset(16),
        data_collator=pad_collate,
    )
    grafted_at = []
    monkeypatch.setattr(
        "transformers_flex.trainer.graft", lambda *a, **k: grafted_at.append(trainer.state.global_step)
    )
    trainer.train()
    assert trainer.state.global_step == 6 and grafted_at == [1, 2, 3]
    # A Trainer that no longer calls the hook the schedule comes from is an error, not a run without grafting.
    monkeypatch.setattr(FlexTrainer, "set_initial_training_values", Trainer.set_initial_training_values)
    trainer._grafting_schedule = None
    with pytest.raises(RuntimeError, match="grafting schedule"):
        trainer.train()


@pytest.mark.parametrize("stage", ["teacher", "width", "width_depth", "final", "ramps"])
def test_gradient_accumulation_gives_the_same_update(tiny_config, tmp_path, stage):
    tiny_config.hidden_dropout_prob = tiny_config.attention_probs_dropout_prob = 0.0  # same forward either way
    if stage == "ramps":
        tiny_config.exit_layers = [1, 3]  # its default mode trains these off-ramps only
    data = random_classification_dataset(16)
    results = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        student, teacher = make_models(tiny_config)
        args = make_args(
            tmp_path / f"ga{accumulation}",
            flex_stage=stage,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            max_grad_norm=0.0,  # no clipping: compare raw updates
        )
        trainer = FlexTrainer(
            model=student,
            args=args,
            teacher_model=teacher if stage in ("width", "width_depth") else None,
            train_dataset=data,
            data_collator=pad_collate,
        )
        trainer.train()
        results.append({name: p.detach().clone() for name, p in student.named_parameters()})
    changed = 0
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, atol=1e-6, rtol=1e-5)
        changed += int(not torch.equal(value, dict(make_models(tiny_config)[0].named_parameters())[name]))
    assert changed > 0  # the step did update the model


def test_width_stage_trains_every_width_and_teacher_stays_frozen(tiny_config, tmp_path):
    tiny_config.hidden_dropout_prob = tiny_config.attention_probs_dropout_prob = 0.0  # full width: zero gradient
    student, teacher = make_models(tiny_config)
    teacher_before = copy.deepcopy(teacher.state_dict())
    initial = copy.deepcopy(student.state_dict())
    args = make_args(tmp_path, flex_stage="width", max_steps=2)
    FlexTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        train_dataset=random_classification_dataset(16),
        data_collator=pad_collate,
    ).train()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name])
    # The student started equal to its teacher: only the narrow sub-networks' losses move it (the full width alone
    # moves it by rounding error, about 1e-10).
    moved = max(
        (value.float() - initial[name].float()).abs().max().item() for name, value in student.state_dict().items()
    )
    assert moved > 1e-4


def test_every_subnet_is_evaluated_and_the_teacher_is_not_saved(tiny_config, tmp_path):
    student, teacher = make_models(tiny_config)
    data = random_classification_dataset(16)
    args = make_args(tmp_path, flex_stage="width_depth", max_steps=1, save_strategy="steps", save_steps=1)
    trainer = FlexTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        train_dataset=data,
        eval_dataset=data,
        data_collator=pad_collate,
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )
    trainer.train()
    metrics = trainer.evaluate()
    for width in (1.0, 0.75, 0.5, 0.25):
        for depth in (1.0, 0.75, 0.5):
            assert f"eval_w{width}_d{depth}_accuracy" in metrics
    assert metrics["eval_accuracy"] == metrics["eval_w1.0_d1.0_accuracy"]
    with student.subnet(width=0.25, depth=0.5), torch.no_grad():
        batch = pad_collate([data[i] for i in range(len(data))])
        accuracy = student(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1) == batch["labels"]
    assert metrics["eval_w0.25_d0.5_accuracy"] == pytest.approx(accuracy.float().mean().item())
    saved = load_file(Path(tmp_path) / "checkpoint-1" / "model.safetensors")
    assert set(saved) == set(student.state_dict())


def test_a_step_sums_the_gradients_of_its_subnets(tiny_config, tmp_path):
    """One training step's gradient is the sum of each sub-network's own loss gradient (DynaBERT accumulates)."""
    tiny_config.hidden_dropout_prob = tiny_config.attention_probs_dropout_prob = 0.0  # same forward either way
    student, teacher = make_models(tiny_config)
    data = random_classification_dataset(8)
    trainer = FlexTrainer(
        model=student,
        args=make_args(tmp_path, flex_stage="width_depth", subnet_sampling="all"),
        teacher_model=teacher,
        train_dataset=data,
        data_collator=pad_collate,
    )
    batch = trainer._prepare_inputs(pad_collate([data[i] for i in range(len(data))]))
    expected = {name: torch.zeros_like(p) for name, p in student.named_parameters()}
    for width, depth in stage_subnets(student.config, "width_depth"):
        student.zero_grad(set_to_none=True)
        trainer.subnet_loss(student, batch, width, depth, {})[0].backward()
        for name, p in student.named_parameters():
            if p.grad is not None:
                expected[name] += p.grad
    student.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this call bypasses
    trainer.training_step(student, batch)
    for name, p in student.named_parameters():
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p), expected[name])


def test_component_losses_are_logged(tiny_config, tmp_path):
    """The logged parts make up the logged loss (λ-weighted), also under gradient accumulation."""
    student, teacher = make_models(tiny_config)
    args = make_args(
        tmp_path,
        flex_stage="width",
        max_steps=2,
        logging_steps=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
    )
    trainer = FlexTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        train_dataset=random_classification_dataset(16),
        data_collator=pad_collate,
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(entry["loss_logits"] > 0 and entry["loss_hidden"] > 0 for entry in logged)
    lambda_logits, lambda_hidden = args.loss_weights()
    for entry in logged:  # every value is rounded to 4 decimals
        parts = lambda_logits * entry["loss_logits"] + lambda_hidden * entry["loss_hidden"]
        assert entry["loss"] == pytest.approx(parts, abs=2e-4)


class StopAt(TrainerCallback):
    """Simulates a killed run: raises once training reaches `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def test_killed_run_resumes_to_the_same_model(tiny_config, tmp_path):
    """Sandwich sampling, grafting and dropout: the resumed run ends exactly where the unbroken run does."""
    data = random_classification_dataset(24)
    heldout = random_classification_dataset(8, seed=1)
    settings = dict(
        flex_stage="width",
        subnet_sampling="sandwich",
        num_random_subnets=1,
        grafting=True,
        grafting_times_per_epoch=2,
        max_steps=-1,
        num_train_epochs=2,
        save_strategy="steps",
        save_steps=2,
        learning_rate=0.05,
    )

    def run(output_dir, callbacks=(), resume=None):
        student, teacher = make_models(tiny_config)
        trainer = FlexTrainer(
            model=student,
            args=make_args(output_dir, **settings),
            teacher_model=teacher,
            importance_dataset=heldout,
            train_dataset=data,
            data_collator=pad_collate,
            callbacks=list(callbacks),
        )
        trainer.train(resume_from_checkpoint=resume)
        return student

    unbroken = run(tmp_path / "unbroken")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", callbacks=[StopAt(3)])
    resumed = run(tmp_path / "killed", resume=str(tmp_path / "killed" / "checkpoint-2"))
    for (name, value), other in zip(unbroken.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(other, value, atol=1e-6, rtol=1e-5, msg=name)


def test_grafting_changes_the_model_only_when_scheduled(tiny_config, tmp_path):
    """Same seeds with and without grafting: one epoch (no graft possible) is identical, two epochs differ."""
    data = random_classification_dataset(16)
    heldout = random_classification_dataset(8, seed=1)

    def run(grafting, epochs):
        student, teacher = make_models(tiny_config)
        args = make_args(
            tmp_path / f"g{grafting}{epochs}",
            flex_stage="width",
            grafting=grafting,
            max_steps=-1,
            num_train_epochs=epochs,
        )
        FlexTrainer(
            model=student,
            args=args,
            teacher_model=teacher,
            importance_dataset=heldout,
            train_dataset=data,
            data_collator=pad_collate,
        ).train()
        return student.state_dict()

    for epochs, same in ((1, True), (2, False)):
        plain, grafted = run(False, epochs), run(True, epochs)
        assert all(torch.equal(plain[k], grafted[k]) for k in plain) == same


def test_bf16_mixed_precision_trains(tiny_config, tmp_path):
    student, teacher = make_models(tiny_config)
    initial = copy.deepcopy(student.state_dict())
    args = make_args(tmp_path, flex_stage="width_depth", bf16=True, max_steps=2, logging_steps=1)
    trainer = FlexTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        train_dataset=random_classification_dataset(16),
        data_collator=pad_collate,
    )
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    assert any(not torch.equal(v, initial[k]) for k, v in student.state_dict().items())


def test_bad_trainer_setups_are_clear_errors(tiny_config, tmp_path):
    student, teacher = make_models(tiny_config)
    with pytest.raises(ValueError, match="teacher"):
        FlexTrainer(
            model=student, args=make_args(tmp_path, flex_stage="width"), train_dataset=[], data_collator=pad_collate
        )
    with pytest.raises(ValueError, match="separate copy"):
        FlexTrainer(model=student, args=make_args(tmp_path), teacher_model=student, data_collator=pad_collate)
    with pytest.raises(ValueError, match="importance_dataset"):
        FlexTrainer(
            model=student, args=make_args(tmp_path, grafting=True), teacher_model=teacher, data_collator=pad_collate
        )
    with pytest.raises(ValueError, match="flex_stage"):
        make_args(tmp_path, flex_stage="everything")
    deepspeed = make_args(tmp_path, flex_stage="final")
    deepspeed.deepspeed = "ds_config.json"  # set after validation: DeepSpeed itself is not installed here
    with pytest.raises(ValueError, match="DeepSpeed"):
        FlexTrainer(model=student, args=deepspeed, data_collator=pad_collate)
    with pytest.raises(ValueError, match="width stage"):
        make_args(tmp_path, flex_stage="width_depth", grafting=True)


def test_ddp_ranks_end_with_identical_parameters(tmp_path):
    """`torchrun --nproc_per_node=2` on CPU (gloo), sandwich sampling and grafting with importance that differs per
    rank: both ranks end with the same weights and log the same loss parts (averaged over ranks)."""
    worker = Path(__file__).with_name("ddp_worker.py")
    python_path = os.pathsep.join(filter(None, [str(worker.parent), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHONPATH": python_path, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(worker), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["world_size"] == 2
    for name, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][name], value, atol=0, rtol=0, msg=name)
    assert any(not torch.equal(value, ranks[0]["initial"][name]) for name, value in ranks[0]["state"].items())
    logs = [[entry for entry in rank["log_history"] if "loss_logits" in entry] for rank in ranks]
    assert len(logs[0]) == 8  # every step logged (2 epochs of 4 steps)
    for first, second in zip(*logs):  # each rank's own parts differ (other examples); their means do not
        assert (first["loss_logits"], first["loss_hidden"]) == (second["loss_logits"], second["loss_hidden"])


def test_subnet_metrics_and_loss_components_reach_tensorboard(tiny_config, tmp_path, monkeypatch):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    student, teacher = make_models(tiny_config)
    data = random_classification_dataset(16)
    args = make_args(
        tmp_path,
        flex_stage="width",
        max_steps=2,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        report_to=["tensorboard"],
    )
    FlexTrainer(
        model=student,
        args=args,
        teacher_model=teacher,
        train_dataset=data,
        eval_dataset=data,
        data_collator=pad_collate,
    ).train()
    events = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_logits", "train/loss_hidden", "eval/w0.25_d1.0_loss", "eval/w1.0_d1.0_loss"} <= tags


def random_qa_dataset(num_examples: int, length: int = 12, seed: int = 0):
    """Random token windows with answer spans inside them (`start_positions` <= `end_positions`)."""
    from datasets import Dataset

    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(1, length - 3, (num_examples,), generator=generator)
    rows = {
        "input_ids": torch.randint(1, 99, (num_examples, length), generator=generator).tolist(),
        "start_positions": starts.tolist(),
        "end_positions": (starts + torch.randint(0, 3, (num_examples,), generator=generator)).tolist(),
    }
    return Dataset.from_dict(rows)


@pytest.mark.parametrize("head", ["sequence_classification", "question_answering"])
def test_teacher_stage_is_plain_fine_tuning(tiny_config, tmp_path, head):
    """Stage 0 through FlexTrainer == the plain Trainer on vanilla BERT with the same head, step for step."""
    import transformers
    from transformers import BertConfig, TrainingArguments

    import transformers_flex
    from transformers_flex.export import FLEX_ONLY_FIELDS

    qa = head == "question_answering"
    suffix = "QuestionAnswering" if qa else "SequenceClassification"
    tiny_config.num_labels = 2 if qa else tiny_config.num_labels
    torch.manual_seed(0)
    flex = getattr(transformers_flex, f"FlexBertFor{suffix}")(tiny_config)
    bert = getattr(transformers, f"BertFor{suffix}")(
        BertConfig(**{k: v for k, v in tiny_config.to_dict().items() if k not in FLEX_ONLY_FIELDS})
    )
    bert.load_state_dict(flex.state_dict())
    data = random_qa_dataset(24) if qa else random_classification_dataset(24)
    common = dict(
        per_device_train_batch_size=8, learning_rate=1e-3, max_steps=3, report_to="none", use_cpu=True, seed=7
    )
    FlexTrainer(
        model=flex,
        args=FlexTrainingArguments(output_dir=str(tmp_path / "flex"), flex_stage="teacher", **common),
        train_dataset=data,
        data_collator=pad_collate,
    ).train()
    Trainer(
        model=bert,
        args=TrainingArguments(output_dir=str(tmp_path / "bert"), **common),
        train_dataset=data,
        data_collator=pad_collate,
    ).train()
    bert_state = bert.state_dict()
    for name, value in flex.state_dict().items():
        torch.testing.assert_close(value, bert_state[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    ("mode", "backbone_learns"),
    [("two_stage", False), ("self_distill", False), ("weighted", True), ("shared_exit", True)],
)
def test_ramp_training_modes_train_what_their_papers_train(tiny_config, tmp_path, mode, backbone_learns):
    tiny_config.exit_layers = [1, 2, 3]
    student, _ = make_models(tiny_config)
    initial = copy.deepcopy(student.state_dict())
    args = make_args(tmp_path, flex_stage="ramps", ramp_training=mode, max_steps=2)
    FlexTrainer(
        model=student, args=args, train_dataset=random_classification_dataset(16), data_collator=pad_collate
    ).train()
    changed = {name for name, value in student.state_dict().items() if not torch.equal(value, initial[name])}
    assert {name for name in changed if name.startswith("off_ramps.")}  # the ramps always learn
    backbone_changed = {name for name in changed if not name.startswith("off_ramps.")}
    assert bool(backbone_changed) == backbone_learns
    if mode == "self_distill":
        assert not any(name.startswith("classifier.") for name in changed)


@pytest.mark.parametrize("stage", ["ramps", "gates"])
def test_ramps_and_gates_refuse_ddp_before_touching_the_model(tiny_config, tmp_path, monkeypatch, stage):
    """Their heads run outside the DDP-wrapped forward; the error comes before any parameter is frozen."""
    student, _ = make_models(tiny_config)
    args = make_args(tmp_path, flex_stage=stage)
    monkeypatch.setattr(FlexTrainingArguments, "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match="one process"):
        FlexTrainer(model=student, args=args, data_collator=pad_collate)
    assert all(p.requires_grad for p in student.parameters())


def test_ramps_stage_needs_ramps(tiny_config, tmp_path):
    student, _ = make_models(tiny_config)
    with pytest.raises(ValueError, match="exit_layers"):
        FlexTrainer(model=student, args=make_args(tmp_path, flex_stage="ramps"), data_collator=pad_collate)


def test_ramps_can_learn_at_every_width(tiny_config, tmp_path):
    """`ramp_widths='all'`: the ramps stage's loss is the mean of the ramp losses at each width of the config."""
    from transformers_flex.losses import ramp_training_loss

    tiny_config.exit_layers, tiny_config.hidden_dropout_prob, tiny_config.attention_probs_dropout_prob = [1, 2], 0, 0
    student, _ = make_models(tiny_config)
    batch = pad_collate([random_classification_dataset(8)[i] for i in range(8)])
    args = make_args(tmp_path, flex_stage="ramps", ramp_training="two_stage", ramp_widths="all")
    trainer = FlexTrainer(model=student, args=args, data_collator=pad_collate)
    loss = trainer.compute_loss(student.train(), batch)
    expected = []
    for width in tiny_config.width_mults:
        with torch.no_grad(), student.subnet(width=width):
            output = student(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
            ramps = student.ramp_logits(output.hidden_states)
        expected.append(
            ramp_training_loss("two_stage", ramps, output.logits, batch["labels"], student.classification_loss, 4)
        )
    assert len(set(round(float(value), 6) for value in expected)) == len(expected)  # the widths really differ
    torch.testing.assert_close(loss.detach(), sum(expected) / len(expected))
    # Evaluation reports the full width's ramp loss only, whatever widths training uses.
    torch.testing.assert_close(trainer.compute_loss(student.eval(), batch), expected[0])


def test_ramps_loss_is_the_mean_of_each_widths_ramp_training_loss(tiny_config):
    """The unit's loss called directly, on the model and a wrapper that forwards to it: one loss per width."""
    from transformers_flex.losses import ramp_training_loss
    from transformers_flex.ramp_training import ramps_loss

    tiny_config.exit_layers, tiny_config.hidden_dropout_prob, tiny_config.attention_probs_dropout_prob = [1, 3], 0, 0
    model, _ = make_models(tiny_config)
    batch = pad_collate([random_classification_dataset(8)[i] for i in range(8)])
    wrapper = torch.nn.DataParallel(model)  # on CPU it only forwards: the loss must run through it
    loss, outputs = ramps_loss(wrapper, model, batch, "weighted", [1.0, 0.5])
    expected = []
    for width in (1.0, 0.5):
        with torch.no_grad(), model.subnet(width=width):
            output = model(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
            ramps = model.ramp_logits(output.hidden_states, batch["attention_mask"])
        expected.append(
            ramp_training_loss("weighted", ramps, output.logits, batch["labels"], model.classification_loss, 4)
        )
    torch.testing.assert_close(loss.detach(), (expected[0] + expected[1]) / 2)
    torch.testing.assert_close(outputs.logits.detach(), output.logits)  # the outputs of the last width


def test_stage_units_never_import_the_trainer():
    """Imports go one way: the trainer builds the units and hands them what they need."""
    import ast

    import transformers_flex.gate_training as gate_training
    import transformers_flex.ramp_training as ramp_training

    for unit in (gate_training, ramp_training):
        tree = ast.parse(Path(unit.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {"trainer", "transformers_flex.trainer", "transformers_flex"} & imported, unit.__name__


class ForwardInAnotherThread(torch.nn.Module):
    """Runs the wrapped model's forward in a new thread, as `nn.DataParallel` runs its replicas: a fresh context."""

    def __init__(self, model):
        super().__init__()
        self.module = model

    def forward(self, **kwargs):
        result = {}
        worker = threading.Thread(target=lambda: result.update(output=self.module(**kwargs)))
        worker.start()
        worker.join()
        return result["output"]


def test_distillation_reaches_forwards_run_in_other_threads(tiny_config, tmp_path):
    """The sub-network of each distillation forward travels with the call: a wrapper that runs the forward in a new
    thread (as DataParallel's replicas do) gets the same loss as the model itself, at every sub-network."""
    torch.manual_seed(0)
    teacher = FlexBertForSequenceClassification(tiny_config)
    student = FlexBertForSequenceClassification(tiny_config).eval()  # no dropout: the two forwards must agree
    data = random_classification_dataset(8)
    trainer = FlexTrainer(
        model=student,
        args=make_args(tmp_path, flex_stage="width_depth"),
        teacher_model=teacher,
        train_dataset=data,
        data_collator=pad_collate,
    )
    batch = trainer._prepare_inputs(pad_collate([data[i] for i in range(len(data))]))
    wrapped = ForwardInAnotherThread(student)
    losses = set()
    for width, depth in stage_subnets(student.config, "width_depth"):
        direct = trainer.subnet_loss(student, batch, width, depth, {})[0]
        threaded = trainer.subnet_loss(wrapped, batch, width, depth, {})[0]
        torch.testing.assert_close(threaded, direct, atol=1e-6, rtol=0)
        losses.add(round(float(direct), 5))
    assert len(losses) > 1  # the sub-networks really differ


@pytest.mark.parametrize("width, depth", [(0.5, 1.0), (1.0, 0.5)])
def test_a_fixed_subnetwork_trains_like_the_model_cut_to_it(tiny_config, tmp_path, width, depth):
    """`train_subnets` of one pair is a fixed-size baseline: the final stage on that sub-network gives the weights
    that plain fine-tuning of the physically cut model gives, and leaves every other weight alone."""
    tiny_config.hidden_dropout_prob = tiny_config.attention_probs_dropout_prob = 0.0  # no draws that depend on shape
    torch.manual_seed(0)
    flexible = FlexBertForSequenceClassification(tiny_config)
    initial = copy.deepcopy(flexible.state_dict())
    cut = flexible.export_subnet(width=width, depth=depth)
    data = random_classification_dataset(24)
    common = dict(per_device_train_batch_size=8, learning_rate=1e-3, optim="adamw_torch", max_steps=3)
    for model, stage, subnets in ((flexible, "final", [f"{width},{depth}"]), (cut, "teacher", None)):
        args = make_args(tmp_path / stage, flex_stage=stage, train_subnets=subnets, **common)
        trainer = FlexTrainer(model=model, args=args, train_dataset=data, data_collator=pad_collate)
        assert trainer.eval_subnets() == ([(width, depth)] if stage == "final" else [(1.0, 1.0)])
        trainer.train()
    trained_cut = flexible.export_subnet(width=width, depth=depth).state_dict()
    for name, value in cut.state_dict().items():
        torch.testing.assert_close(trained_cut[name], value, atol=1e-6, rtol=1e-5, msg=name)
    state = flexible.state_dict()
    if width < 1.0:  # the heads and neurons outside the sub-network are untouched
        kept_rows = tiny_config.hidden_size // 2
        for layer in range(tiny_config.num_hidden_layers):
            query = f"bert.encoder.layer.{layer}.attention.self.query.weight"
            assert torch.equal(state[query][kept_rows:], initial[query][kept_rows:])
            assert not torch.equal(state[query][:kept_rows], initial[query][:kept_rows])
    else:  # every_other at depth 0.5 keeps layers 0 and 2: layers 1 and 3 are untouched
        for name in state:
            if ".layer.1." in name or ".layer.3." in name:
                assert torch.equal(state[name], initial[name]), name


def test_train_subnets_must_name_subnetworks_of_the_stage(tiny_config, tmp_path):
    student, teacher = make_models(tiny_config)
    with pytest.raises(ValueError, match="width,depth pairs"):
        make_args(tmp_path, flex_stage="final", train_subnets=["0.5"])
    with pytest.raises(ValueError, match="one stage"):
        make_args(tmp_path, flex_stage="teacher", train_subnets=["1.0,1.0"])
    with pytest.raises(ValueError, match=r"not sub-networks of the width stage.*full depth only"):
        FlexTrainer(
            model=student,
            args=make_args(tmp_path, flex_stage="width", train_subnets=["0.5,0.5"]),
            teacher_model=teacher,
            data_collator=pad_collate,
        )


def test_attention_loss_adds_the_kl_of_the_sub_networks_attention_maps(tiny_config, tmp_path):
    """`lambda_attention` adds λ x the attention KL of the sub-network's own forward against the teacher's, each
    layer the student runs against the teacher's same layer; the other parts are what they are without it."""
    tiny_config.hidden_dropout_prob = tiny_config.attention_probs_dropout_prob = 0.0
    student, teacher = make_models(tiny_config)
    teacher.eval()
    data = random_classification_dataset(8)
    batch = pad_collate([data[i] for i in range(len(data))])

    def loss_of(lambda_attention: float):
        args = make_args(tmp_path, flex_stage="width_depth", lambda_attention=lambda_attention)
        trainer = FlexTrainer(model=student, args=args, teacher_model=teacher, train_dataset=data)
        return trainer.subnet_loss(student, trainer._prepare_inputs(batch), 0.5, 0.5, {})

    plain_loss, plain_parts = loss_of(0.0)
    loss, parts = loss_of(2.0)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        maps = student(**inputs, width=0.5, depth=0.5, output_attentions=True).attentions
        teacher_maps = teacher(**inputs, output_attentions=True).attentions
    layers = student.bert.encoder.kept_layers(student.resolve_subnet(0.5, 0.5))
    expected = attention_distillation(maps, teacher_maps, layers, batch["attention_mask"])
    assert "loss_attention" not in plain_parts and expected > 0
    torch.testing.assert_close(parts["loss_attention"], expected)
    torch.testing.assert_close(loss, plain_loss + 2.0 * expected)
    assert maps[0].shape[1] == 2 and teacher_maps[0].shape[1] == 4  # half the heads, against the teacher's first
