"""The `gates` stage: width gates trained on a frozen flexible model (docs/algorithms.md §6).

Each training example's label is the smallest gate width at which the frozen model (uniform width, full depth)
predicts it correctly, else the largest. For extractive QA an example is a window, and "correctly" means that its
argmax span has a token-overlap F1 of at least `gate_span_f1` with the gold span (`losses.span_is_correct`).
Every gate reads its pooled input at that width; its logits go through a Gumbel-softmax sample whose temperature is
annealed linearly over the stage; the loss is the NLL of the sample against the label, with classes weighted
inversely to their frequency over the training set (most examples are right at the smallest width). The stage is
evaluated as gates are used: the engine with the gates picking every example's widths, no off-ramp, every example
to the last layer.

`FlexTrainer` runs this unit when `flex_stage="gates"` and passes in what it needs from the trainer; the unit
never imports the trainer.
"""

from collections.abc import Callable, Iterable

import torch
from torch import nn
from transformers.trainer_callback import TrainerState
from transformers.utils import ModelOutput, logging

from .losses import gate_class_weights, gate_labels, gate_loss, prediction_is_correct, span_is_correct
from .training_args import FlexTrainingArguments

logger = logging.get_logger(__name__)

Batch = dict[str, torch.Tensor]


def prepare_gate_training(model: nn.Module) -> None:
    """Check the model has width gates; freeze everything else (the gates learn on a fixed model)."""
    if len(getattr(model, "width_gates", {})) == 0:
        raise ValueError("The gates stage needs width gates: set `config.gate_block_size` (e.g. 1 or 2).")
    if model.config.problem_type == "multi_label_classification":
        raise ValueError("Gate labels need one right answer per example: multi-label tasks are not supported.")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("width_gates."))


def gate_temperature(step: int, max_steps: int, start: float, end: float) -> float:
    """Gumbel-softmax temperature at `step`: linear from `start` at the first step to `end` at the last."""
    progress = step / max(1, max_steps - 1)
    return start + (end - start) * min(1.0, progress)


def answers_are_correct(
    flex_model: nn.Module, output: ModelOutput, labels: torch.Tensor, regression_tolerance: float, span_f1: float
) -> torch.Tensor:
    """(batch,) whether each answer is right: a QA window's span (F1 with the gold span >= `span_f1`), else the
    class (or a regression output within `regression_tolerance`)."""
    if hasattr(output, "start_logits"):  # extractive QA
        return span_is_correct(flex_model.head_logits(output), labels, span_f1)
    return prediction_is_correct(output.logits, labels, regression_tolerance)


@torch.no_grad()
def gate_targets(
    model: nn.Module, flex_model: nn.Module, inputs: Batch, regression_tolerance: float, span_f1: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen model at every gate width: each example's gate class (smallest correct width) and, for every
    gate, its pooled input at that width — (batch,) and (batch, gates, hidden).

    `model` is what the forward runs through (possibly a wrapper), `flex_model` the FlexBert model itself.
    """
    widths, gate_layers = flex_model.config.gate_widths, flex_model.config.gate_layers
    model_inputs, targets = flex_model.training_targets(inputs)
    mask = model_inputs.get("attention_mask")
    correct, states = [], []
    for width in widths:
        # The static model at `width` (per call, so DataParallel's replicas run it too).
        output = model(**model_inputs, output_hidden_states=True, width=width, dynamic=False)
        correct.append(answers_are_correct(flex_model, output, targets, regression_tolerance, span_f1))
        pooled = [flex_model.width_gates[str(layer)].pool(output.hidden_states[layer], mask) for layer in gate_layers]
        states.append(torch.stack(pooled, dim=1))
    labels = gate_labels(torch.stack(correct), widths)
    rows = torch.arange(len(labels), device=labels.device)
    return labels, torch.stack(states)[labels, rows]  # every example's states at its own label's width


def gate_label_weights(
    model: nn.Module,
    flex_model: nn.Module,
    batches: Iterable[Batch],
    regression_tolerance: float,
    span_f1: float = 0.5,
) -> torch.Tensor:
    """Class weights from the gate labels of every batch (in the stage: the whole training set)."""
    counts = torch.zeros(len(flex_model.config.gate_widths))
    for batch in batches:
        labels, _ = gate_targets(model, flex_model, batch, regression_tolerance, span_f1)
        counts += torch.bincount(labels.cpu(), minlength=len(counts))
    logger.info(f"Gate labels per width {flex_model.config.gate_widths}: {counts.tolist()}")
    return gate_class_weights(counts)


def gated_forward(flex_model: nn.Module) -> Callable[..., ModelOutput]:
    """The gated model as inference uses it: `flex_model.dynamic_forward` with the gates choosing every example's
    widths and no off-ramp, so every example runs to the last layer (whatever the config's exit settings); a batch's
    gold targets (labels, or QA start and end positions) give the output its loss."""

    def forward(**inputs) -> ModelOutput:
        model_inputs, targets = flex_model.training_targets(inputs)
        return flex_model.dynamic_forward(**model_inputs, labels=targets, use_gates=True, use_ramps=False)

    return forward


class GateStage:
    """The gates stage as `FlexTrainer` runs it: the loss of every training and evaluation batch.

    Args:
        model: The FlexBert model; its gates are checked, and everything else frozen, on construction.
        args: The stage's arguments (`gate_temperature_start`/`_end`, `gate_regression_tolerance`, `gate_span_f1`).
        training_batches: Returns every training example once, prepared for the model: the class weights are
            counted over them before the first training step.
    """

    def __init__(self, model: nn.Module, args: FlexTrainingArguments, training_batches: Callable[[], Iterable[Batch]]):
        prepare_gate_training(model)
        self.args = args
        self.training_batches = training_batches
        self.class_weights: torch.Tensor | None = None  # counted lazily: the trainer has placed the model by then

    def compute_loss(
        self, model: nn.Module, flex_model: nn.Module, inputs: Batch, state: TrainerState
    ) -> tuple[torch.Tensor, ModelOutput | None]:
        """Training: the class-weighted NLL of every gate's Gumbel-softmax sample against the example's label.
        Evaluation: the gated model's own loss and outputs."""
        if not flex_model.training:  # the Trainer sets train mode before every training step, eval mode to evaluate
            outputs = gated_forward(flex_model)(**inputs)
            return outputs.loss, outputs
        flex_model.eval()  # the model is frozen: no dropout, so the labels are what inference will see
        correctness = (self.args.gate_regression_tolerance, self.args.gate_span_f1)
        if self.class_weights is None:
            self.class_weights = gate_label_weights(model, flex_model, self.training_batches(), *correctness)
        labels, states = gate_targets(model, flex_model, inputs, *correctness)
        gates = [flex_model.width_gates[str(layer)] for layer in flex_model.config.gate_layers]
        gate_logits = torch.stack([gate(states[:, i]) for i, gate in enumerate(gates)], dim=1)
        temperature = gate_temperature(
            state.global_step, state.max_steps, self.args.gate_temperature_start, self.args.gate_temperature_end
        )
        return gate_loss(gate_logits, labels, self.class_weights.to(labels.device), temperature), None

    def evaluation_forward(self, model: nn.Module, flex_model: nn.Module) -> Callable[..., ModelOutput]:
        """What evaluation runs on a batch (also one without labels): the gated model."""
        return gated_forward(flex_model)


__all__ = [
    "GateStage",
    "answers_are_correct",
    "gate_label_weights",
    "gate_targets",
    "gate_temperature",
    "gated_forward",
    "prepare_gate_training",
]
