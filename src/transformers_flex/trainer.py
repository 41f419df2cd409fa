"""`FlexTrainer`: DynaBERT distillation over sub-networks, with layer-wise neural grafting.

Each optimizer step takes one batch, runs the teacher once (no gradients), then for every sub-network of the step
(largest first) a forward and a backward whose gradients accumulate, so memory does not grow with the number of
sub-networks; the `Trainer` then clips and steps once. Everything else — gradient accumulation, mixed precision,
checkpoints and resuming, DDP, logging — is the `Trainer`'s own machinery. The stages that train heads on the model
run as units of their own, which the trainer hands what they need: `ramps` trains the early-exit off-ramps
(`ramp_training.RampStage`), `gates` the width gates of a frozen model (`gate_training.GateStage`).
"""

import os
import random
import time
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import has_length
from transformers.utils import logging

from .evaluation import subnet_grid
from .gate_training import GateStage
from .hub import CARD_NAME, card_for_run, save_code_files, trainer_run
from .importance import compute_importance, graft
from .losses import attention_distillation, hidden_states_distillation, logits_distillation
from .ramp_training import RampStage
from .training_args import PIPELINE_STAGE, FlexTrainingArguments

logger = logging.get_logger(__name__)

Subnet = tuple[float, float]


def stage_subnets(config, stage: str, only: list[Subnet] | None = None) -> list[Subnet]:
    """The (width, depth) pairs a stage trains (and evaluates), largest first: depth descending, then width
    descending; `only` keeps those pairs (each must be one of the stage's). A ramps stage whose ramps answer the
    shallower depths (`config.depth_heads="ramps"`) has every pair, each answered by its own head."""
    if stage == "ramps" and getattr(config, "depth_heads", "final") == "ramps":
        stage = "width_depth"
    if stage in ("teacher", "ramps", "gates"):
        return [(1.0, 1.0)]
    subnets = subnet_grid(config, full_depth_only=stage == "width")
    if only is None:
        return subnets
    unknown = [pair for pair in only if pair not in subnets]
    if unknown:
        raise ValueError(
            f"train_subnets {unknown} are not sub-networks of the {stage} stage: it trains {subnets} (width_mults x "
            f"depth_mults of the config{', full depth only' if stage == 'width' else ''})."
        )
    return [pair for pair in subnets if pair in only]


def sandwich_subnets(subnets: list[Subnet], num_random: int, rng: random.Random) -> list[Subnet]:
    """Largest + smallest + `num_random` others drawn without replacement, in the stage's order."""
    if len(subnets) <= 2 + num_random:
        return list(subnets)
    drawn = set(rng.sample(range(1, len(subnets) - 1), num_random))
    return [subnets[0]] + [subnets[i] for i in sorted(drawn)] + [subnets[-1]]


def grafting_steps(*, steps_per_epoch: int, num_epochs: int, times_per_epoch: int) -> set[int]:
    """Global steps before which grafting happens: evenly inside every epoch but the last, never at an epoch's first
    step (so never before any update, nor in the last epoch); none when an epoch has a single step."""
    if steps_per_epoch < 2:
        return set()
    steps = set()
    for epoch in range(num_epochs - 1):
        first, last = epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1
        for k in range(1, times_per_epoch + 1):
            step = round(first + k * steps_per_epoch / (times_per_epoch + 1))
            steps.add(min(max(step, first + 1), last))  # short epochs: keep every graft strictly inside its epoch
    return steps


class FlexTrainer(Trainer):
    """A `Trainer` for FlexBert models that trains every sub-network of a stage at once.

    Args:
        model: The FlexBert student.
        args (`FlexTrainingArguments`): Training arguments; `args.flex_stage` picks the stage.
        teacher_model: The teacher of the `width` and `width_depth` stages (a fine-tuned FlexBert). It is kept on the
            trainer, never inside the student, so checkpoints hold the student only.
        importance_dataset: Held-out *training* examples (tokenized, with labels) for the importance passes that
            precede each graft. Required when `args.grafting`.
        **kwargs: Everything `Trainer` takes (datasets, collator, `compute_metrics`, callbacks, ...).

    The `ramps` and `gates` stages run as units (`stage_unit`: `RampStage`, `GateStage`): the trainer asks the unit
    for every batch's loss and for what evaluation runs on a batch, and hands it the model and its progress.
    """

    # Every loss here is a batch mean: the Trainer (stages teacher, ramps, gates) or `training_step` (the
    # distillation stages, per sub-network) divides it by the accumulation steps. A model whose forward takes
    # `**kwargs` would make the Trainer skip that division, so the flag is explicit.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: FlexTrainingArguments | None = None,
        teacher_model: nn.Module | None = None,
        importance_dataset=None,
        **kwargs,
    ):
        if not isinstance(args, FlexTrainingArguments):
            raise TypeError(f"FlexTrainer needs FlexTrainingArguments, got {type(args).__name__}.")
        if args.flex_stage == PIPELINE_STAGE:
            raise ValueError(
                "`flex_stage='all'` is a pipeline of trainers: run examples/run_glue_flex.py, or pick a stage."
            )
        if args.flex_stage in ("width", "width_depth") and teacher_model is None:
            raise ValueError(f"The {args.flex_stage!r} stage distils from a teacher: pass `teacher_model`.")
        if teacher_model is not None and teacher_model is model:
            raise ValueError("`teacher_model` must be a separate copy of the model (it is frozen).")
        if args.grafting and importance_dataset is None:
            raise ValueError("Grafting needs `importance_dataset` (held-out training examples with labels).")
        # Each unit is built from what it needs from this trainer; building it checks and freezes the model.
        units = {
            "ramps": lambda: RampStage(model, args),
            "gates": lambda: GateStage(model, args, training_batches=self.training_set_batches),
        }
        if args.flex_stage in units and args.world_size > 1:
            # Off-ramps and gates run outside the DDP-wrapped forward, so DDP would not all-reduce their gradients.
            raise ValueError(
                f"The {args.flex_stage} stage trains in one process (it is small): run it without torchrun."
            )
        self.stage_unit: RampStage | GateStage | None = units[args.flex_stage]() if args.flex_stage in units else None
        super().__init__(model=model, args=args, **kwargs)
        # DeepSpeed (from `args.deepspeed` or an accelerate config) counts every backward as a micro-batch.
        if (args.deepspeed or self.is_deepspeed_enabled) and args.flex_stage in ("width", "width_depth", "final"):
            raise ValueError(
                f"The {args.flex_stage} stage runs one backward per sub-network, which DeepSpeed's engine cannot "
                "accumulate into one step: train with DDP (torchrun) instead."
            )
        self.eval_subnets()  # `train_subnets` outside the config's grid fails now, not at the first step
        self.teacher_model = None
        if teacher_model is not None:
            self.teacher_model = teacher_model.to(self.args.device).eval().requires_grad_(False)
        self.importance_dataset = importance_dataset
        self._component_sums: dict[str, torch.Tensor] = {}
        self._component_steps = 0
        self._eval_subnet: dict | None = None  # the sub-network `evaluate` is running, passed to every eval call
        self._last_graft_step: int | None = None
        self._grafting_schedule: set[int] | None = None  # set when training starts, from the real epoch length

    # --- which sub-networks ------------------------------------------------------------------------------------

    @property
    def flex_model(self) -> nn.Module:
        """The FlexBert student, unwrapped from DDP/compile wrappers and from a peft model (adapters stay in it)."""
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def step_subnets(self) -> list[Subnet]:
        """The sub-networks trained this step; sandwich draws depend on (seed, step) only, so resumes and DDP ranks
        draw the same ones."""
        subnets = stage_subnets(self.flex_model.config, self.args.flex_stage, self.args.selected_subnets())
        if self.args.subnet_sampling == "all":
            return subnets
        rng = random.Random(self.args.seed * 1_000_003 + self.state.global_step)
        return sandwich_subnets(subnets, self.args.num_random_subnets, rng)

    def eval_subnets(self) -> list[Subnet]:
        """The sub-networks `evaluate` reports: every one the stage trains, or the full model only."""
        if not self.args.eval_all_subnets:
            return [(1.0, 1.0)]
        return stage_subnets(self.flex_model.config, self.args.flex_stage, self.args.selected_subnets())

    # --- training ----------------------------------------------------------------------------------------------

    def training_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if self.args.flex_stage == "teacher" or self.stage_unit is not None:  # one model a step: Trainer's own step
            return super().training_step(model, inputs, num_items_in_batch)
        self._maybe_graft()
        model.train()
        if callable(getattr(self.optimizer, "train", None)):  # schedule-free optimizers switch modes, as in Trainer
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        teacher_cache: dict[float, Mapping] = {}
        total = torch.zeros((), device=self.args.device)
        components: dict[str, torch.Tensor] = {}
        for width, depth in self.step_subnets():
            with self.compute_loss_context_manager():
                loss, parts = self.subnet_loss(model, inputs, width, depth, teacher_cache)
            # One backward per sub-network: its graph is freed before the next forward.
            loss = loss / self.current_gradient_accumulation_steps
            self.accelerator.backward(loss)
            total += loss.detach()
            for key, value in parts.items():
                components[key] = components.get(key, 0) + value.detach()
        self._record_components(components)
        return total

    def subnet_loss(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], width: float, depth: float, teacher_cache: dict
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of the (width, depth) sub-network and its named parts. The sub-network travels with each call, so
        it reaches DataParallel's replicas (which run in threads of their own) and leaves the model's default alone."""
        subnet = {"width": width, "depth": depth}
        if self.args.flex_stage == "final":
            # mean: DataParallel (several GPUs, one process) returns one loss per GPU
            loss = model(**inputs, **subnet).loss.mean()
            return loss, {"loss_ce": loss}
        model_inputs = {
            key: value for key, value in inputs.items() if key not in ("labels", "start_positions", "end_positions")
        }
        teacher_width = width if self.args.flex_stage == "width_depth" and self.args.teacher_width == "same" else 1.0
        if teacher_width not in teacher_cache:
            teacher_cache[teacher_width] = self.teacher_outputs(model_inputs, teacher_width)
        teacher = teacher_cache[teacher_width]
        lambda_logits, lambda_hidden = self.args.loss_weights()
        use_hidden, use_attention = lambda_hidden > 0, self.args.lambda_attention > 0
        student = model(**model_inputs, output_hidden_states=use_hidden, output_attentions=use_attention, **subnet)
        config = self.flex_model.config
        regression = config.problem_type == "regression" or config.num_labels == 1
        if hasattr(student, "start_logits"):  # extractive QA: distil both span distributions
            loss_logits = (
                logits_distillation(student.start_logits, teacher.start_logits, regression=False)
                + logits_distillation(student.end_logits, teacher.end_logits, regression=False)
            ) / 2
        else:
            loss_logits = logits_distillation(student.logits, teacher.logits, regression)
        parts = {"loss_logits": loss_logits}
        loss = lambda_logits * loss_logits
        if not (use_hidden or use_attention):
            return loss, parts
        mask = model_inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(model_inputs["input_ids"].shape, device=model_inputs["input_ids"].device)
        active_layers = self.flex_model.base_model.encoder.kept_layers(self.flex_model.resolve_subnet(**subnet))
        if use_hidden:
            parts["loss_hidden"] = hidden_states_distillation(
                student.hidden_states, teacher.hidden_states, active_layers, mask
            )
            loss = loss + lambda_hidden * parts["loss_hidden"]
        if use_attention:
            parts["loss_attention"] = attention_distillation(
                student.attentions, teacher.attentions, active_layers, mask
            )
            loss = loss + self.args.lambda_attention * parts["loss_attention"]
        return loss, parts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The stage unit's loss (ramps, gates); the other stages use the model's own loss."""
        if self.stage_unit is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = self.stage_unit.compute_loss(model, self.flex_model, inputs, self.state)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Trainer's evaluation step, on what the stage unit evaluates (the gates stage: the gated model)."""
        if self.stage_unit is not None:
            model = self.stage_unit.evaluation_forward(model, self.flex_model)
        if self._eval_subnet is not None:  # per call, so that DataParallel's replicas run it too
            inputs = {**inputs, **self._eval_subnet}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    @torch.no_grad()
    def teacher_outputs(self, model_inputs: dict[str, torch.Tensor], width: float) -> Mapping:
        """The teacher's outputs at `width`, full depth: logits, and the hidden states and attention maps the
        losses need."""
        use_hidden, use_attention = self.args.loss_weights()[1] > 0, self.args.lambda_attention > 0
        # The static model (a teacher saved for dynamic inference would run the engine in eval mode).
        return self.teacher_model(
            **model_inputs,
            output_hidden_states=use_hidden,
            output_attentions=use_attention,
            width=width,
            dynamic=False,
        )

    # --- grafting ----------------------------------------------------------------------------------------------

    def set_initial_training_values(self, args: TrainingArguments, dataloader: DataLoader) -> tuple:
        """Trainer's epoch and step counts; the grafting schedule is derived from them here (also on resume)."""
        values = super().set_initial_training_values(args, dataloader)
        num_train_epochs, num_update_steps_per_epoch = values[:2]
        if args.grafting and args.flex_stage == "width":
            if not has_length(dataloader):
                raise ValueError("Grafting is scheduled per epoch: it needs a training set with a length.")
            self._grafting_schedule = grafting_steps(
                steps_per_epoch=num_update_steps_per_epoch,
                num_epochs=num_train_epochs,
                times_per_epoch=args.grafting_times_per_epoch,
            )
        return values

    def _maybe_graft(self) -> None:
        """Graft before the first micro-batch of each scheduled step (once per step, also after a resume)."""
        if (
            not self.args.grafting
            or self.args.flex_stage != "width"
            or self.state.global_step == self._last_graft_step
        ):
            return
        if self._grafting_schedule is None:  # Trainer did not call the hook above: grafting would silently stop
            raise RuntimeError("No grafting schedule: Trainer no longer calls `set_initial_training_values`.")
        if self.state.global_step not in self._grafting_schedule:
            return
        self._last_graft_step = self.state.global_step
        importance = compute_importance(self.flex_model, self.importance_dataloader(), show_progress=False)
        if self.args.world_size > 1:
            # Ranks score the same held-out data, but GPU kernels are not bit-deterministic: near-ties could pair units
            # differently and DDP never re-syncs parameters, so every rank grafts with rank 0's scores.
            for scores in (*importance.heads, *importance.neurons):
                torch.distributed.broadcast(scores, src=0)
        alpha = None if self.args.grafting_alpha_mode == "entropy" else self.args.grafting_alpha
        graft(self.flex_model, importance, alpha=alpha, entropy_c=self.args.grafting_entropy_c)
        logger.info(f"Grafted at step {self.state.global_step}.")

    def unsharded_dataloader(self, dataset, batch_size: int, description: str) -> DataLoader:
        """The whole `dataset`, in order, on every rank (not sharded): every rank sees the same examples."""
        dataset = self._remove_unused_columns(dataset, description=description)
        return DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator)

    def importance_dataloader(self) -> DataLoader:
        """The held-out set the importance passes score."""
        return self.unsharded_dataloader(self.importance_dataset, self.args.importance_batch_size, "importance")

    def training_set_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every training example once, on every rank, prepared for the model (the gates stage counts labels)."""
        loader = self.unsharded_dataloader(self.train_dataset, self.args.per_device_train_batch_size, "training set")
        return (self._prepare_inputs(batch) for batch in loader)

    # --- logging and evaluation --------------------------------------------------------------------------------

    def _record_components(self, components: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch's loss parts (summed over its sub-networks) to the current logging window's sums."""
        for key, value in components.items():
            self._component_sums[key] = self._component_sums.get(key, 0) + value
        self._component_steps += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean per-component losses (summed over a step's sub-networks) to training logs."""
        if "loss" in logs and self._component_steps:
            keys = sorted(self._component_sums)  # the loss parts' names: fixed by the stage, the same on every rank
            sums = torch.stack([torch.as_tensor(self._component_sums[key]) for key in keys])
            if self.args.world_size > 1:  # like `loss`, the mean over ranks (every rank logs)
                sums = self.accelerator.reduce(sums, reduction="mean")
            for key, total in zip(keys, sums.tolist()):
                logs[key] = round(total / self._component_steps, 4)
            self._component_sums, self._component_steps = {}, 0
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"):
        """Evaluate every sub-network of the stage: keys like `eval_w0.5_d1.0_accuracy`.

        The full model's metrics also appear under the plain keys (`eval_accuracy`), so `metric_for_best_model`
        works unchanged.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        subnets = self.eval_subnets()
        if isinstance(dataset, dict) or subnets == [(1.0, 1.0)]:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        dataloader = self.get_eval_dataloader(eval_dataset)
        start = time.time()
        metrics = {}
        for width, depth in subnets:
            prefix = f"{metric_key_prefix}_w{width}_d{depth}"
            self._eval_subnet = {"width": width, "depth": depth}
            try:
                output = self.evaluation_loop(
                    dataloader,
                    description=f"Evaluation (width {width}, depth {depth})",
                    prediction_loss_only=True if self.compute_metrics is None else None,
                    ignore_keys=ignore_keys,
                    metric_key_prefix=prefix,
                )
            finally:
                self._eval_subnet = None
            metrics.update(output.metrics)
            if (width, depth) == (1.0, 1.0):
                metrics.update(
                    {key.replace(prefix, metric_key_prefix, 1): value for key, value in output.metrics.items()}
                )
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # --- the Hub ------------------------------------------------------------------------------------------------

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Trainer's repo set-up, plus the model's code files in `output_dir`: Trainer's checkpoint pushes copy only
        config and weights there, so without this the first pushes of `hub_strategy="every_save"` could not load."""
        super().init_hf_repo(token, private)
        if self.is_world_process_zero():
            save_code_files(self.flex_model, self.args.output_dir)

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """The transformers-flex card (every evaluated sub-network's latest dev metrics, FLOPs, the recipe) as
        `output_dir/README.md`, in place of Trainer's generic one; Trainer's arguments fill its metadata."""
        if not self.is_world_process_zero():
            return
        run = trainer_run(self)
        if dataset is not None:
            run.results["task"] = dataset if isinstance(dataset, str) else dataset[0]
        tags = [tags] if isinstance(tags, str) else tags
        metadata = {"language": language, "license": license, "base_model": finetuned_from}
        card = card_for_run(run, model_name or self.hub_model_id, **metadata)
        card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *(tags or [])]))
        card.save(os.path.join(self.args.output_dir, CARD_NAME))


__all__ = ["FlexTrainer", "grafting_steps", "sandwich_subnets", "stage_subnets"]
