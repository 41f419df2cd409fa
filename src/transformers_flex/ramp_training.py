"""The `ramps` stage: early-exit off-ramps of the full model, trained with one of the published objectives
(docs/algorithms.md §5).

`FlexTrainingArguments.ramp_training` picks the objective (see `losses.ramp_training_loss`): `two_stage` (DeeBERT),
`weighted` (PABEE), `self_distill` (FastBERT) or `shared_exit` (GEEP). `FlexTrainer` runs this unit when
`flex_stage="ramps"` and passes in what it needs from the trainer; the unit never imports the trainer.
"""

import torch
from torch import nn
from transformers.utils import ModelOutput

from .losses import ramp_training_loss
from .training_args import FROZEN_BACKBONE_RAMP_TRAINING, FlexTrainingArguments


def prepare_ramp_training(model: nn.Module, mode: str) -> None:
    """Check the model has off-ramps; freeze everything else for the modes that train ramps only."""
    if len(getattr(model, "off_ramps", {})) == 0:
        raise ValueError("The ramps stage needs off-ramps: set `config.exit_layers` (layers below the last one).")
    if mode in FROZEN_BACKBONE_RAMP_TRAINING:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("off_ramps."))


def ramps_loss(
    model: nn.Module, flex_model: nn.Module, inputs: dict[str, torch.Tensor], mode: str, widths: list[float]
) -> tuple[torch.Tensor, ModelOutput]:
    """The mean over `widths` of `mode`'s ramp-training loss, and the model's outputs at the last width.

    `model` is what the forward runs through (possibly a DDP/DataParallel wrapper), `flex_model` the FlexBert
    model itself, whose sub-network, off-ramps and task loss the loss needs. The head supplies its targets, its
    final logits in the off-ramps' layout and its loss (`training_targets`, `head_logits`, `task_loss`), so a
    classifier's ramps learn from class labels and a QA model's from start and end positions (each a distribution
    over the window's tokens).
    """
    model_inputs, labels = flex_model.training_targets(inputs)
    losses = []
    for width in widths:
        # The static model at `width` (per call, so DataParallel's replicas run it too); the ramps read its states.
        outputs = model(**model_inputs, output_hidden_states=True, width=width, dynamic=False)
        ramps = flex_model.ramp_logits(
            outputs.hidden_states, model_inputs.get("attention_mask"), flex_model.resolve_subnet(width)
        )
        losses.append(
            ramp_training_loss(
                mode,
                ramps,
                flex_model.head_logits(outputs),
                labels,
                flex_model.task_loss,
                flex_model.config.num_hidden_layers,
            )
        )
    return sum(losses) / len(losses), outputs


class RampStage:
    """The ramps stage as `FlexTrainer` runs it: the loss of every training and evaluation batch.

    Args:
        model: The FlexBert model; its off-ramps are checked, and for `two_stage`/`self_distill` everything else
            is frozen, on construction.
        args: The stage's arguments (`ramp_training`, `ramp_widths`).
    """

    def __init__(self, model: nn.Module, args: FlexTrainingArguments):
        prepare_ramp_training(model, args.ramp_training)
        self.mode, self.ramp_widths = args.ramp_training, args.ramp_widths

    def compute_loss(
        self, model: nn.Module, flex_model: nn.Module, inputs: dict[str, torch.Tensor], state
    ) -> tuple[torch.Tensor, ModelOutput]:
        """The batch's ramp loss (`state`, the trainer's progress, does not change it). Training runs every width
        of `ramp_widths`; evaluation reports the full width's, or, when `FlexTrainer.evaluate` scores one
        sub-network (its `width`/`depth` in `inputs`: `config.depth_heads="ramps"`), that sub-network's task loss
        and answer — then the plain `eval_loss` is the full model's task loss, not the ramps' training loss."""
        if "width" in inputs or "depth" in inputs:
            # With `config.depth_heads="ramps"` a shallower sub-network's answer is its ramp's: the static forward.
            outputs = model(**inputs, dynamic=False)
            return outputs.loss, outputs
        all_widths = self.ramp_widths == "all" and flex_model.training
        widths = flex_model.config.width_mults if all_widths else [1.0]
        return ramps_loss(model, flex_model, inputs, self.mode, widths)

    def evaluation_forward(self, model: nn.Module, flex_model: nn.Module) -> nn.Module:
        """What evaluation runs on a batch: the model itself."""
        return model


__all__ = ["RampStage", "prepare_ramp_training", "ramps_loss"]
