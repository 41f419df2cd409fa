"""`FlexTrainingArguments`: `TrainingArguments` plus the settings of flexible-model training (docs/algorithms.md)."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

FLEX_STAGES = ("teacher", "width", "width_depth", "final", "ramps", "gates")
# How the ramps stage trains off-ramps (docs/algorithms.md §5); "copy" needs no training (copy_head_to_off_ramps).
RAMP_TRAINING = ("two_stage", "weighted", "self_distill", "shared_exit")
RAMP_WIDTHS = ("full", "all")
# Ramp training modes that keep everything but the off-ramps frozen.
FROZEN_BACKBONE_RAMP_TRAINING = ("two_stage", "self_distill")
# "all" runs a pipeline of stages (teacher -> rewire -> width (+ grafting) -> width_depth -> final -> ramps -> gates),
# one trainer each: `transformers_flex.training_pipeline` (`transformers-flex train`, examples/run_glue_flex.py).
PIPELINE_STAGE = "all"
PIPELINE_STAGES = ("teacher", "rewire", "width", "width_depth", "final", "ramps", "gates")  # in pipeline order
# The files of a pipeline run directory (read back by transformers_flex.hub).
RUN_CONFIG_NAME = "run_config.json"
RESULTS_NAME = "results.json"
STAGE_RESULTS_NAME = "stage_results.json"
SUBNET_SAMPLING = ("all", "sandwich")
# Stages that train several sub-networks, and so can be restricted to some (`train_subnets`).
SUBNET_STAGES = ("width", "width_depth", "final")
TEACHER_WIDTHS = ("full", "same")
GRAFTING_ALPHA_MODES = ("fixed", "entropy")

# Default loss weights (lambda_logits, lambda_hidden) per distillation stage, as in DynaBERT.
STAGE_LAMBDAS = {"width": (1.0, 0.1), "width_depth": (1.0, 1.0)}


@dataclass
class FlexTrainingArguments(TrainingArguments):
    r"""
    Training arguments of `FlexTrainer`: every `TrainingArguments` field, plus:

    Args:
        flex_stage (`str`, defaults to `"width"`):
            `teacher` (plain fine-tuning of the full model), `width` (DynaBERT_W: distil into every width at full
            depth), `width_depth` (distil into every (width, depth) pair), `final` (cross-entropy to gold labels
            for every sub-network), `ramps` (train the off-ramps, see `ramp_training`), `gates` (train the width
            gates with everything else frozen, docs/algorithms.md §6), or `all` (a pipeline of these stages, run by
            `transformers_flex.training_pipeline`: `transformers-flex train` or `examples/run_glue_flex.py`).
        ramp_training (`str`, defaults to `"two_stage"`):
            How the `ramps` stage trains off-ramps: `two_stage` (DeeBERT: only ramps learn, cross-entropy to gold),
            `weighted` (PABEE: everything learns, losses weighted by layer), `self_distill` (FastBERT: only ramps
            learn, KL to the final classifier, no labels needed), `shared_exit` (GEEP: everything learns,
            cross-entropy of the final classifier + KL of every ramp to it).
        ramp_widths (`str`, defaults to `"full"`):
            Widths the `ramps` stage trains the off-ramps at: `full` only, or `all` of `config.width_mults` (losses
            averaged), so ramps also answer well on the narrower hidden states width gates produce.
        subnet_sampling (`str`, defaults to `"all"`):
            `all` runs every sub-network of the stage each step; `sandwich` runs the largest, the smallest and
            `num_random_subnets` others drawn at random.
        num_random_subnets (`int`, defaults to 2):
            Random sub-networks per step under sandwich sampling.
        lambda_logits (`float`, *optional*):
            Weight of the logits loss; defaults to 1.0.
        lambda_hidden (`float`, *optional*):
            Weight of the hidden-state loss; defaults to 0.1 in the width stage and 1.0 in the width_depth stage.
        lambda_attention (`float`, defaults to 0.0):
            Weight of the attention loss of the distillation stages (MiniLM's self-attention transfer: the KL
            divergence from the teacher's attention distribution of each head and token, every layer the student
            runs); 0 leaves it out.
        teacher_width (`str`, defaults to `"full"`):
            Teacher of the width_depth stage: the width-trained model at `full` width (the authors' code) or at the
            `same` width as each student (the paper).
        grafting (`bool`, defaults to `False`):
            Layer-wise neural grafting during the width stage.
        grafting_alpha (`float`, defaults to 0.1):
            Share of the partner's weights a bottom-half unit takes (`grafting_alpha_mode="fixed"`).
        grafting_alpha_mode (`str`, defaults to `"fixed"`):
            `fixed` uses `grafting_alpha`; `entropy` adapts it per pair from the units' weight entropies.
        grafting_entropy_c (`float`, defaults to 500.0):
            Steepness c of the entropy-adaptive coefficient.
        grafting_times_per_epoch (`int`, defaults to 3):
            Grafts per epoch, evenly spaced; never in the last epoch.
        importance_batch_size (`int`, defaults to 32):
            Batch size of the importance passes that precede each graft.
        gate_temperature_start (`float`, defaults to 1.0):
            Gumbel-softmax temperature of the gates stage at its first step; annealed linearly to
            `gate_temperature_end` at its last.
        gate_temperature_end (`float`, defaults to 0.5):
            Gumbel-softmax temperature at the last step of the gates stage.
        gate_regression_tolerance (`float`, defaults to 0.5):
            Regression tasks: a width counts as correct for an example when its output is within this of the label.
        gate_span_f1 (`float`, defaults to 0.5):
            Extractive QA: a width counts as correct for a window when its argmax span has at least this token-overlap
            F1 with the gold span.
        train_subnets (`list[str]`, *optional*):
            Train (and evaluate) only these sub-networks of the stage, each `width,depth` (e.g. `0.5,1.0`): one pair
            makes a fixed-size model (the `final` stage fine-tunes it on gold labels, `width`/`width_depth` distil
            into it), the baselines a flexible model is compared with. Default: every sub-network of the stage.
        eval_all_subnets (`bool`, defaults to `True`):
            Evaluate every sub-network of the stage (`eval_w0.5_d1.0_accuracy`-style keys); otherwise only the full
            model.
    """

    flex_stage: str = field(
        default="width", metadata={"help": "Training stage.", "choices": [*FLEX_STAGES, PIPELINE_STAGE]}
    )
    subnet_sampling: str = field(
        default="all",
        metadata={
            "help": "Sub-networks per step: every one, or largest + smallest + k random.",
            "choices": list(SUBNET_SAMPLING),
        },
    )
    num_random_subnets: int = field(
        default=2, metadata={"help": "Random sub-networks per step when sandwich sampling."}
    )
    lambda_logits: float | None = field(default=None, metadata={"help": "Weight of the logits loss (default 1.0)."})
    lambda_hidden: float | None = field(
        default=None, metadata={"help": "Weight of the hidden-state loss (default 0.1 width stage, 1.0 width_depth)."}
    )
    lambda_attention: float = field(
        default=0.0, metadata={"help": "Weight of the attention-distribution (KL) loss of distillation; 0: off."}
    )
    teacher_width: str = field(
        default="full",
        metadata={
            "help": "width_depth teacher: the width model at full width or the student's width.",
            "choices": list(TEACHER_WIDTHS),
        },
    )
    grafting: bool = field(default=False, metadata={"help": "Layer-wise neural grafting during the width stage."})
    grafting_alpha: float = field(default=0.1, metadata={"help": "Partner share of grafted units (fixed mode)."})
    grafting_alpha_mode: str = field(
        default="fixed",
        metadata={"help": "Fixed alpha or entropy-adaptive alpha.", "choices": list(GRAFTING_ALPHA_MODES)},
    )
    grafting_entropy_c: float = field(default=500.0, metadata={"help": "Steepness of the entropy-adaptive alpha."})
    grafting_times_per_epoch: int = field(default=3, metadata={"help": "Grafts per epoch (never in the last epoch)."})
    importance_batch_size: int = field(default=32, metadata={"help": "Batch size of importance passes."})
    ramp_training: str = field(
        default="two_stage", metadata={"help": "How the ramps stage trains off-ramps.", "choices": list(RAMP_TRAINING)}
    )
    gate_temperature_start: float = field(default=1.0, metadata={"help": "Gumbel-softmax temperature at the start."})
    gate_temperature_end: float = field(default=0.5, metadata={"help": "Gumbel-softmax temperature at the end."})
    gate_span_f1: float = field(
        default=0.5, metadata={"help": "QA: a window's span counts as right at a width with this F1 to the gold span."}
    )
    gate_regression_tolerance: float = field(
        default=0.5, metadata={"help": "Regression: |output - label| counted as correct when labelling gates."}
    )
    ramp_widths: str = field(
        default="full", metadata={"help": "Train ramps at full width or at every width.", "choices": list(RAMP_WIDTHS)}
    )
    train_subnets: list[str] | None = field(
        default=None,
        metadata={"help": "Only these sub-networks, as width,depth pairs (e.g. 0.5,1.0): a fixed-size model."},
    )
    eval_all_subnets: bool = field(default=True, metadata={"help": "Evaluate every sub-network of the stage."})

    def __post_init__(self):
        for name, allowed in (
            ("flex_stage", (*FLEX_STAGES, PIPELINE_STAGE)),
            ("subnet_sampling", SUBNET_SAMPLING),
            ("teacher_width", TEACHER_WIDTHS),
            ("grafting_alpha_mode", GRAFTING_ALPHA_MODES),
            ("ramp_training", RAMP_TRAINING),
            ("ramp_widths", RAMP_WIDTHS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.num_random_subnets < 0:
            raise ValueError(f"`num_random_subnets` must be >= 0, got {self.num_random_subnets}.")
        if not 0 <= self.grafting_alpha <= 1:
            raise ValueError(f"`grafting_alpha` must be in [0, 1], got {self.grafting_alpha}.")
        if self.grafting and self.flex_stage not in ("width", PIPELINE_STAGE):
            raise ValueError("`grafting` applies to the width stage only (`flex_stage='width'` or 'all').")
        if not 0 < self.gate_temperature_end <= self.gate_temperature_start:
            raise ValueError(
                "Gate temperatures must satisfy 0 < gate_temperature_end <= gate_temperature_start, got "
                f"{self.gate_temperature_start} -> {self.gate_temperature_end}."
            )
        if self.grafting_times_per_epoch < 1:
            raise ValueError(f"`grafting_times_per_epoch` must be >= 1, got {self.grafting_times_per_epoch}.")
        self.selected_subnets()  # a malformed pair fails here, before anything is trained
        if self.train_subnets and self.flex_stage not in SUBNET_STAGES:
            raise ValueError(
                f"`train_subnets` makes a fixed-size model in one stage (`flex_stage` one of {SUBNET_STAGES}), not in "
                f"{self.flex_stage!r}."
            )
        # Narrow or shallow sub-networks leave parameters unused in a step; DDP must look for them
        # (docs/architecture.md#ddp-unused-parameters).
        if self.ddp_find_unused_parameters is None and self.flex_stage != "teacher":
            self.ddp_find_unused_parameters = True
        super().__post_init__()

    def selected_subnets(self) -> list[tuple[float, float]] | None:
        """`train_subnets` as (width, depth) pairs, or None for every sub-network of the stage."""
        if not self.train_subnets:
            return None
        pairs = []
        for text in self.train_subnets:
            try:
                width, depth = (float(part) for part in text.split(","))
            except ValueError:
                raise ValueError(f"`train_subnets` takes width,depth pairs such as 0.5,1.0; got {text!r}.") from None
            pairs.append((width, depth))
        return pairs

    def loss_weights(self) -> tuple[float, float]:
        """(lambda_logits, lambda_hidden) of the current stage: the explicit values, else the stage defaults."""
        default_logits, default_hidden = STAGE_LAMBDAS.get(self.flex_stage, (1.0, 0.0))
        return (
            default_logits if self.lambda_logits is None else self.lambda_logits,
            default_hidden if self.lambda_hidden is None else self.lambda_hidden,
        )


__all__ = [
    "FLEX_STAGES",
    "PIPELINE_STAGE",
    "PIPELINE_STAGES",
    "RAMP_TRAINING",
    "RESULTS_NAME",
    "RUN_CONFIG_NAME",
    "STAGE_RESULTS_NAME",
    "FlexTrainingArguments",
]
