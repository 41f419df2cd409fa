"""The training pipeline of a flexible model, for any task and data: teacher -> rewire -> width -> width_depth ->
final -> ramps -> gates.

- `teacher`: plain fine-tuning of the full model (also the baseline).
- `rewire`: head and neuron importance on held-out *training* examples, then every layer's heads and neurons sorted
  by it (the full model is unchanged; narrower widths keep the most important units).
- `width`: distillation from the rewired teacher into every width (optionally with layer-wise grafting).
- `width_depth`: distillation from the width model into every (width, depth) pair.
- `final`: the task loss on gold labels for every (width, depth) pair (after distillation; on request).
- `ramps`: early-exit off-ramps after `--exit_layers`, trained as `--ramp_training` says; with `--depth_heads
  ramps` (prefix rule) each shallower depth's ramp also answers that depth's sub-networks (Flexible BERT).
- `gates`: width gates (one per `--gate_block_size` layers), trained with everything else frozen.

Any increasing subsequence of the stages runs (`--stages teacher width ramps gates`; `rewire` always precedes
`width`), each stage starting from the previous stage's model. Every stage writes `<output_dir>/<stage>/` (model,
tokenizer, `stage_results.json`); the run writes `<output_dir>/results.json` and `<output_dir>/run_config.json`,
the record of everything that shapes the result. A rerun loads finished stages, resumes unfinished ones from their
last complete checkpoint, and refuses a directory recorded for other settings (`--overwrite_output_dir` starts
over). A single stage (`--flex_stage width`, ...) trains `--model_name_or_path` into `--output_dir`.

Used by `transformers-flex train`, `examples/run_glue_flex.py` (same arguments) and the demo.
"""

import copy
import dataclasses
import itertools
import json
import logging
import os
import re
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from datasets import DatasetDict, load_dataset
from torch.utils.data import DataLoader
from transformers import AutoConfig, DataCollatorWithPadding, HfArgumentParser, TrainerState, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .augmentation import augment_dataset
from .configuration_flexbert import FlexBertConfig
from .data import HUB_GLUE, load_data_files, load_glue, split_train_heldout
from .flexbert_layers import depth_ramp_layers
from .importance import compute_importance, rewire
from .modeling_flexbert import FlexBertForQuestionAnswering, FlexBertForSequenceClassification
from .squad import DOC_STRIDE, HUB_SQUAD, MAX_ANSWER_LENGTH, N_BEST_SIZE, SquadMetrics, load_squad
from .tasks import SQUAD_TASK, FlexDataError, FlexTask, check_splits, resolve_task
from .trainer import FlexTrainer
from .training_args import (
    PIPELINE_STAGE,
    PIPELINE_STAGES,
    RESULTS_NAME,
    RUN_CONFIG_NAME,
    STAGE_RESULTS_NAME,
    FlexTrainingArguments,
)
from .utils import default_backbone_path, load_tokenizer

logger = logging.getLogger(__name__)

# Stages that distil from their input model, which must therefore have a trained head.
DISTILLATION_STAGES = ("width", "width_depth")
PREDICTIONS_NAME = "predictions.json"  # extractive QA: each evaluated model's dev answers
# A checkpoint passed over as incomplete is renamed with this prefix (kept for inspection, never resumed from).
INCOMPLETE_PREFIX = "incomplete-"

# Settings that shape one stage only, recorded under that stage in run_config.json (the rest are shared).
STAGE_TRAINING_FIELDS = {
    "teacher": (),
    "rewire": ("importance_batch_size",),
    "width": ("subnet_sampling", "num_random_subnets", "lambda_logits", "lambda_hidden", "importance_batch_size")
    + ("lambda_attention",)
    + ("train_subnets", "grafting", "grafting_alpha", "grafting_alpha_mode", "grafting_entropy_c")
    + ("grafting_times_per_epoch",),
    "width_depth": ("subnet_sampling", "num_random_subnets", "lambda_logits", "lambda_hidden", "teacher_width")
    + ("train_subnets", "lambda_attention"),
    "final": ("subnet_sampling", "num_random_subnets", "train_subnets"),
    "ramps": ("ramp_training", "ramp_widths"),
    "gates": ("gate_temperature_start", "gate_temperature_end", "gate_regression_tolerance", "gate_span_f1"),
}
STAGE_MODEL_FIELDS = {
    "ramps": ("exit_layers", "ramp_type", "copy_head_to_new_ramps", "depth_heads"),
    "gates": ("gate_block_size",),
}
# Settings of each stage that only exist with another one on: left out of the record when that one is off.
DEPENDENT_FIELDS = {
    "grafting": ("grafting_alpha", "grafting_alpha_mode", "grafting_entropy_c", "grafting_times_per_epoch"),
    "subnet_sampling": ("num_random_subnets",),  # only sandwich sampling draws random sub-networks
}
# Stage settings left out of the record at these values (their defaults: what runs recorded before they existed did).
UNRECORDED_DEFAULTS = {"train_subnets": None, "depth_heads": None, "lambda_attention": 0.0}
# Training arguments that change no trained weight: evaluation, logging, saving, hardware placement, the Hub.
NOT_RECORDED_FIELDS = set(
    """
    output_dir run_name project report_to disable_tqdm use_cpu local_rank resume_from_checkpoint do_train do_eval
    do_predict per_device_eval_batch_size prediction_loss_only include_for_metrics batch_eval_metrics bf16_full_eval
    fp16_full_eval push_to_hub skip_memory_metrics debug include_num_input_tokens_seen torch_empty_cache_steps
    enable_jit_checkpoint dataloader_num_workers dataloader_pin_memory dataloader_persistent_workers
    dataloader_prefetch_factor dataloader_multiprocessing_context flex_stage learning_rate num_train_epochs
    """.split()
)  # learning_rate and num_train_epochs are recorded per stage, the stage list instead of flex_stage
NOT_RECORDED_PREFIXES = ("logging_", "log_", "save_", "hub_", "eval_", "trackio_", "ddp_")


@dataclass
class ModelArguments:
    """Which model to start from, and the architecture of the dynamic stages.

    Args:
        model_name_or_path: BERT or FlexBert checkpoint the first stage starts from (default: the packaged
            all-MiniLM-L6-v2).
        teacher_name_or_path: Teacher of a single width/width_depth stage (default: `model_name_or_path`).
        depth_rule: `every_other` (DynaBERT) or `prefix` (Flexible BERT); the checkpoint's own rule when unset.
        exit_layers: Layers to put off-ramps after (the ramps stage; a single stage adds them to its model).
        ramp_type: `pooler` (BERT's head on [CLS]) or `attention` (FastBERT-style, reads every token).
        copy_head_to_new_ramps: New off-ramps start as copies of the final head (Flexible BERT), else randomly
            initialised (DeeBERT).
        depth_heads: What answers a shallower sub-network (the ramps stage): `final` (the final head) or `ramps`
            (Flexible BERT: the off-ramp after its last layer; needs the prefix depth rule). With `ramps`,
            `--exit_layers` defaults to the last layer of each shallower depth and the stage scores all
            sub-networks, each through its own head.
        gate_block_size: Width gates: one per block of this many layers (the gates stage; 0: none).
        config_overrides: Config fields the first stage changes, in run_clm.py's format (`a=1,b=0.0,c=true`), e.g.
            `attention_probs_dropout_prob=0.0`; later stages keep them.
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "BERT/FlexBert checkpoint the first stage starts from (default: MiniLM)."}
    )
    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher of a single distillation stage."}
    )
    depth_rule: str | None = field(default=None, metadata={"help": "every_other or prefix (default: checkpoint's)."})
    exit_layers: list[int] | None = field(default=None, metadata={"help": "Layers followed by an off-ramp."})
    ramp_type: str | None = field(default=None, metadata={"help": "Off-ramp classifier: pooler or attention."})
    copy_head_to_new_ramps: bool = field(
        default=True, metadata={"help": "New off-ramps start as copies of the final head (else random init)."}
    )
    depth_heads: str | None = field(
        default=None,
        metadata={
            "help": "What answers a shallower sub-network after the ramps stage: final (the final head) or ramps "
            "(the off-ramp after its last layer; prefix rule; sets --exit_layers).",
            "choices": ["final", "ramps"],
        },
    )
    gate_block_size: int | None = field(default=None, metadata={"help": "Layers per width gate (0: no gates)."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Config fields of the first stage, e.g. attention_probs_dropout_prob=0.0."}
    )


@dataclass
class DataArguments:
    """Which data, and how much of it (transformers' run_glue.py and run_qa.py conventions).

    Args:
        task_name: A GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli): its columns, dev sets and
            official metrics; or `squad` (SQuAD v1.1 extractive QA). Without it the task is read off the data:
            SQuAD's columns (`id`, `question`, `context`, `answers`) mean extractive QA.
        dataset_name: A Hub dataset (for a GLUE task or `squad`: where to find it when no local mirror has it,
            default `nyu-mll/glue` / `rajpurkar/squad`).
        dataset_config_name: The configuration of `dataset_name`.
        train_file: Local training data: CSV, JSON lines or parquet (by extension).
        validation_file: Local dev data, evaluated after every stage.
        text_column_names: The text column, or two comma-separated ones for pairs (default: `sentence1,sentence2`
            when present, else the first one or two string columns besides the label).
        label_column_name: The gold-label column: class names, class ids, or float scores (regression).
        is_regression: Treat integer labels as scores (float labels always are).
        data_dir: Local mirror holding `glue/<task>` and `squad` (default: ../shared/data when present).
        max_seq_length: Longest tokenized input; longer ones are truncated (extractive QA: the window length).
            Default: 128, or 384 for extractive QA.
        max_train_samples: Train on this many examples (QA: questions; a fixed shuffled subset); all when unset.
        max_eval_samples: Evaluate on this many dev examples (QA: questions); all when unset.
        importance_samples: Held-out training examples (never trained on) for importance and grafting.
        doc_stride: Extractive QA: context tokens shared by consecutive windows of a long context.
        n_best_size: Extractive QA: start and end candidates per window when decoding answers.
        max_answer_length: Extractive QA: longest answer, in tokens.
        pad_to_max_length: Extractive QA: pad every window to `max_seq_length` (run_qa.py's default) instead of
            each batch to its longest window (the same answers for less compute).
        augment_copies: The distillation stages (width, width_depth) also train on this many augmented copies of
            every training example (TinyBERT's data augmentation: whole words replaced by their nearest
            neighbours in the starting checkpoint's input embeddings); 0: none. Classification and regression.
        augment_probability: Chance that each whole word of a copy is replaced (TinyBERT: 0.4).
        augment_neighbours: Nearest neighbours a replacement is drawn from (TinyBERT: 15).
    """

    task_name: str | None = field(default=None, metadata={"help": "GLUE task shortcut, or squad."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Training data file (csv, json/jsonl, parquet)."})
    validation_file: str | None = field(default=None, metadata={"help": "Dev data file (csv, json/jsonl, parquet)."})
    text_column_names: str | None = field(
        default=None, metadata={"help": "Text column(s), comma-separated (default: guessed as run_glue.py does)."}
    )
    label_column_name: str = field(default="label", metadata={"help": "Gold-label column."})
    is_regression: bool = field(default=False, metadata={"help": "Integer labels are scores (regression)."})
    data_dir: str | None = field(default=None, metadata={"help": "Local GLUE/SQuAD mirror."})
    max_seq_length: int | None = field(
        default=None, metadata={"help": "Truncation (QA: window) length; default 128, QA 384."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Training subset size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Dev subset size."})
    importance_samples: int = field(default=512, metadata={"help": "Held-out training examples for importance."})
    doc_stride: int = field(default=DOC_STRIDE, metadata={"help": "QA: context tokens shared by adjacent windows."})
    n_best_size: int = field(default=N_BEST_SIZE, metadata={"help": "QA: start/end candidates per window."})
    max_answer_length: int = field(default=MAX_ANSWER_LENGTH, metadata={"help": "QA: longest answer in tokens."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "QA: pad every window to max_seq_length (else each batch to its longest)."}
    )
    augment_copies: int = field(
        default=0, metadata={"help": "Augmented copies of each training example for the distillation stages."}
    )
    augment_probability: float = field(default=0.4, metadata={"help": "Chance each word of a copy is replaced."})
    augment_neighbours: int = field(default=15, metadata={"help": "Embedding neighbours a replacement comes from."})

    def text_columns(self) -> tuple[str, ...] | None:
        if self.text_column_names is None:
            return None
        return tuple(name.strip() for name in self.text_column_names.split(",") if name.strip())


@dataclass
class PipelineArguments:
    """Which stages run (with `--flex_stage all`), their own settings, and what to do with an earlier run.

    Args:
        stages: Stages to run, in pipeline order (a subsequence of teacher rewire width width_depth final ramps
            gates; rewire is added before width). Default: teacher rewire width width_depth, plus ramps when
            `--exit_layers` or `--depth_heads ramps` is given and gates when `--gate_block_size` is.
        last_stage: Stop after this stage (a shortcut that cuts the stage list).
        overwrite_output_dir: Delete an earlier run in `--output_dir` and start over (otherwise a rerun continues
            it, and one with other settings is refused).
        ramps_learning_rate: Learning rate of the ramps stage (default: `--learning_rate`).
        ramps_num_train_epochs: Epochs of the ramps stage (default: `--num_train_epochs`).
        gates_learning_rate: Learning rate of the gates stage (default: `--learning_rate`).
        gates_num_train_epochs: Epochs of the gates stage (default: `--num_train_epochs`).
    """

    stages: list[str] | None = field(
        default=None,
        metadata={
            "help": "Stages to run, in pipeline order (default: teacher rewire width width_depth, plus ramps with "
            "--exit_layers or --depth_heads ramps and gates with --gate_block_size).",
            "choices": list(PIPELINE_STAGES),
        },
    )
    last_stage: str | None = field(
        default=None, metadata={"help": "Stop the pipeline after this stage.", "choices": list(PIPELINE_STAGES)}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete an earlier run in --output_dir and start over."}
    )
    ramps_learning_rate: float | None = field(
        default=None, metadata={"help": "Ramps stage learning rate (default: --learning_rate)."}
    )
    ramps_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Ramps stage epochs (default: --num_train_epochs)."}
    )
    gates_learning_rate: float | None = field(
        default=None, metadata={"help": "Gates stage learning rate (default: --learning_rate)."}
    )
    gates_num_train_epochs: float | None = field(
        default=None, metadata={"help": "Gates stage epochs (default: --num_train_epochs)."}
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, PipelineArguments, FlexTrainingArguments)


class RunDirectoryError(ValueError):
    """The output directory holds a run made with other settings, or files the pipeline cannot trust."""


# --- which stages -------------------------------------------------------------------------------------------------


def resolve_stages(pipeline_args: PipelineArguments, model_args: ModelArguments) -> tuple[str, ...]:
    """The stages a pipeline run trains, in order: `--stages` (with rewire before width) or the default list, cut
    at `--last_stage`."""
    if pipeline_args.stages:
        unknown = [stage for stage in pipeline_args.stages if stage not in PIPELINE_STAGES]
        if unknown:
            raise SystemExit(f"Unknown stage(s) {unknown}; choose from {list(PIPELINE_STAGES)}.")
        order = [PIPELINE_STAGES.index(stage) for stage in pipeline_args.stages]
        if order != sorted(set(order)):
            raise SystemExit(f"--stages must follow the pipeline order {list(PIPELINE_STAGES)} without repeats.")
        stages = set(pipeline_args.stages) | ({"rewire"} if "width" in pipeline_args.stages else set())
    else:
        stages = {"teacher", "rewire", "width", "width_depth"}
        stages |= {"ramps"} if model_args.exit_layers or model_args.depth_heads == "ramps" else set()
        stages |= {"gates"} if model_args.gate_block_size else set()
    ordered = [stage for stage in PIPELINE_STAGES if stage in stages]
    if pipeline_args.last_stage is not None:
        if pipeline_args.last_stage not in ordered:
            raise SystemExit(
                f"--last_stage {pipeline_args.last_stage!r} is not among the stages {ordered} (ramps need "
                "--exit_layers or --depth_heads ramps, and gates --gate_block_size)."
            )
        ordered = ordered[: ordered.index(pipeline_args.last_stage) + 1]
    return tuple(ordered)


def check_dynamic_flags(
    stages: tuple[str, ...], model_args: ModelArguments, start_config, stopped_early: bool = False
) -> None:
    """Architecture flags and the stages they shape go together: refuse a flag no stage uses, and a ramps/gates
    stage with nothing to train, before anything is trained. A flag whose stage `--last_stage` cut off
    (`stopped_early`: the same command, stopped earlier) is only a warning."""
    flags_of = {
        "ramps": {"--exit_layers": model_args.exit_layers, "--depth_heads ramps": model_args.depth_heads == "ramps"},
        "gates": {"--gate_block_size": model_args.gate_block_size},
    }
    existing_of = {
        "ramps": getattr(start_config, "exit_layers", None),
        "gates": getattr(start_config, "gate_block_size", 0),
    }
    for stage, flags in flags_of.items():
        for flag in (flag for flag, value in flags.items() if value):
            if stage not in stages and stopped_early:
                logger.warning("%s shapes the %s stage, which --last_stage leaves out of this run.", flag, stage)
            elif stage not in stages:
                raise SystemExit(f"{flag} shapes the {stage} stage, which this run does not include ({list(stages)}).")
        # The first stage may start from a checkpoint that already has the modules; a later one never does.
        if stage in stages and not any(flags.values()) and not (stage == stages[0] and existing_of[stage]):
            raise SystemExit(f"The {stage} stage needs {' or '.join(flags)}.")


def resolve_depth_heads(model_args: ModelArguments, start: str) -> None:
    """`--depth_heads ramps`: refuse it unless the run's depth rule is `prefix` (a ramp after layer n sees what a
    sub-network of n layers computed only then), and give every shallower depth its off-ramp: `--exit_layers`
    defaults to their last layers, and a list given without one of them is refused."""
    if model_args.depth_heads != "ramps":
        return
    config = AutoConfig.from_pretrained(start)
    overrides = config_overrides(model_args, start)
    depth_rule = model_args.depth_rule or getattr(config, "depth_rule", None)
    if depth_rule != "prefix":
        raise SystemExit(
            "--depth_heads ramps answers a shallower sub-network with the off-ramp after its last layer, which is "
            "what the sub-network computed only under the prefix depth rule (this run's is "
            f"{depth_rule or 'every_other, the default'}): add --depth_rule prefix (the first stage sets it)."
        )
    depth_mults = overrides.get("depth_mults") or getattr(config, "depth_mults", None) or FlexBertConfig().depth_mults
    needed = depth_ramp_layers(config.num_hidden_layers, depth_mults)
    if model_args.exit_layers is None:  # the checkpoint's own ramps stay
        model_args.exit_layers = sorted(set(getattr(config, "exit_layers", None) or []) | set(needed))
        logger.info(
            "--depth_heads ramps: off-ramps after layers %s (%s: the last layer of each shallower depth).",
            model_args.exit_layers,
            needed,
        )
    elif missing := sorted(set(needed) - set(model_args.exit_layers)):
        raise SystemExit(
            f"--depth_heads ramps needs an off-ramp after layers {needed} (the last layer of each shallower depth of "
            f"{depth_mults}); --exit_layers {model_args.exit_layers} lacks {missing}."
        )


# --- data ---------------------------------------------------------------------------------------------------------


def load_raw_data(data_args: DataArguments) -> DatasetDict:
    """The raw splits: local files, a GLUE task (mirror or Hub), or any Hub dataset."""
    if data_args.train_file or data_args.validation_file:
        if not (data_args.train_file and data_args.validation_file):
            raise FlexDataError("Pass both --train_file and --validation_file (every stage is evaluated).")
        try:
            return load_data_files({"train": data_args.train_file, "validation": data_args.validation_file})
        except (ValueError, FileNotFoundError) as error:  # a missing, empty or unknown-format file
            raise FlexDataError(str(error)) from error
    if data_args.task_name == SQUAD_TASK:
        return load_squad(data_args.data_dir, hub_dataset=data_args.dataset_name or HUB_SQUAD)
    if data_args.task_name is not None:
        return load_glue(data_args.task_name, data_args.data_dir, hub_dataset=data_args.dataset_name or HUB_GLUE)
    if data_args.dataset_name is not None:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    raise FlexDataError("No data: pass --task_name (GLUE), --dataset_name, or --train_file and --validation_file.")


def load_task(data_args: DataArguments) -> tuple[FlexTask, DatasetDict]:
    """The task and its raw splits, checked for the columns the task reads; an unset `--max_seq_length` becomes the
    task's default (so the run records the length it used)."""
    raw = load_raw_data(data_args)
    try:
        task = resolve_task(
            raw,
            task_name=data_args.task_name,
            text_columns=data_args.text_columns(),
            label_column=data_args.label_column_name,
            is_regression=True if data_args.is_regression else None,  # else inferred from the label column
        )
    except ValueError as error:  # an unknown GLUE task name
        raise FlexDataError(str(error)) from error
    if data_args.task_name is None and data_args.dataset_name is not None:
        task.name = data_args.dataset_name  # what results.json reports as the task
    if data_args.train_file:
        # Files hold one dev split, "validation", whatever the task (MNLI's two dev sets are a GLUE mirror's).
        task.dev_split, task.extra_dev_splits = "validation", {}
    if task.is_qa:
        for name in ("doc_stride", "n_best_size", "max_answer_length", "pad_to_max_length"):
            setattr(task, name, getattr(data_args, name))
    if data_args.max_seq_length is None:
        data_args.max_seq_length = task.default_max_length
    return task, raw


def select_splits(task: FlexTask, raw: DatasetDict, data_args: DataArguments, seed: int) -> dict:
    """Untokenized `train`, `heldout` (importance examples set aside from train), `dev` and `extra_dev` (further dev
    sets by metric-key prefix, e.g. MNLI mismatched as `eval_mm`), checked as usable before any training."""
    if data_args.importance_samples >= len(raw["train"]):
        raise FlexDataError(
            f"The train split has {len(raw['train'])} examples: too few to set {data_args.importance_samples} aside "
            "for importance (--importance_samples) and train on the rest."
        )
    train, heldout = split_train_heldout(raw["train"], data_args.max_train_samples, data_args.importance_samples, seed)

    def dev_subset(split):
        if data_args.max_eval_samples is None:
            return split
        return split.select(range(min(data_args.max_eval_samples, len(split))))

    extra_dev = {prefix: raw[split] for prefix, split in task.extra_dev_splits.items() if split in raw}
    splits = {
        "train": train,
        "heldout": heldout,
        "dev": dev_subset(raw[task.dev_split]),
        "extra_dev": {prefix: dev_subset(split) for prefix, split in extra_dev.items()},
    }
    extra_by_split = {task.extra_dev_splits[prefix]: dev for prefix, dev in splits["extra_dev"].items()}
    check_splits(task, train, {task.dev_split: splits["dev"]} | extra_by_split)
    return splits


def tokenize_splits(splits: dict, task: FlexTask, tokenizer, max_length: int) -> dict:
    """`select_splits`'s output, tokenized by the task (dev sets as evaluation features), plus the raw dev examples
    (`dev_examples`, `extra_dev_examples`) that extractive QA decodes its answers against."""
    tokenized = {name: task.tokenize(splits[name], tokenizer, max_length) for name in ("train", "heldout")}
    tokenized["dev"] = task.tokenize(splits["dev"], tokenizer, max_length, training=False)
    extra_dev = {
        prefix: task.tokenize(split, tokenizer, max_length, training=False)
        for prefix, split in splits["extra_dev"].items()
    }
    raw_dev = {"dev_examples": splits["dev"], "extra_dev_examples": splits["extra_dev"]}
    return tokenized | {"extra_dev": extra_dev} | raw_dev


def check_augmentation(data_args: DataArguments, task: FlexTask, stages: tuple[str, ...]) -> None:
    """Refuse augmentation settings that cannot work, before any training: a QA task (a replaced word would move
    the answer span), a run without a distillation stage (no other stage trains on the copies), bad values."""
    if not data_args.augment_copies:
        return
    if data_args.augment_copies < 0 or not 0 < data_args.augment_probability <= 1 or data_args.augment_neighbours < 1:
        raise SystemExit(
            "--augment_copies must be >= 0, --augment_probability in (0, 1] and --augment_neighbours >= 1; got "
            f"{data_args.augment_copies}, {data_args.augment_probability}, {data_args.augment_neighbours}."
        )
    if task.is_qa:
        raise SystemExit("--augment_copies is for classification and regression: replacing words would move QA spans.")
    if not set(stages) & set(DISTILLATION_STAGES):
        raise SystemExit(
            f"--augment_copies feeds the distillation stages {list(DISTILLATION_STAGES)}, which this run does not "
            f"include ({list(stages)})."
        )


def add_augmented_train(data: dict, data_args: DataArguments, tokenizer, start: str, task: FlexTask, seed: int):
    """`data["augmented_train"]`: the training set and `--augment_copies` augmented copies of it, the words' neighbours
    taken from `start`'s input embeddings (a no-op without augmentation)."""
    if not data_args.augment_copies:
        return
    embeddings = task.model_class.from_pretrained(start, **task.config_overrides()).get_input_embeddings().weight
    logger.info("Augmenting the training set: %d copies of each example.", data_args.augment_copies)
    data["augmented_train"] = augment_dataset(
        data["train"],
        tokenizer,
        embeddings.detach(),
        data_args.augment_copies,
        data_args.augment_probability,
        data_args.augment_neighbours,
        seed,
    )


def stage_data(data: dict, stage: str) -> dict:
    """The data a stage trains on: the distillation stages' training set includes the augmented copies, if any."""
    if stage in DISTILLATION_STAGES and "augmented_train" in data:
        return data | {"train": data["augmented_train"]}
    return data


def prepare_data(data_args: DataArguments, tokenizer, seed: int) -> tuple[FlexTask, dict]:
    """The task and its tokenized splits (`train`, `heldout`, `dev`, `extra_dev`), in one call."""
    task, raw = load_task(data_args)
    splits = select_splits(task, raw, data_args, seed)
    return task, tokenize_splits(splits, task, tokenizer, data_args.max_seq_length)


# --- the run's record ---------------------------------------------------------------------------------------------


def json_ready(value):
    """A JSON-comparable copy of `value` (tuples become lists, so a reloaded record compares equal)."""
    return json.loads(json.dumps(value, default=str))


def shared_training_settings(training_args: FlexTrainingArguments) -> dict:
    """Training arguments that shape every stage: all but evaluation/logging/saving ones and per-stage settings."""
    per_stage = {name for names in STAGE_TRAINING_FIELDS.values() for name in names}
    return {
        name: value
        for name, value in training_args.to_dict().items()
        if name not in NOT_RECORDED_FIELDS and name not in per_stage and not name.startswith(NOT_RECORDED_PREFIXES)
    }


def stage_hyperparameters(stage: str, training_args: FlexTrainingArguments, pipeline_args: PipelineArguments) -> dict:
    """Learning rate and epochs of a stage: the ramps/gates stages' own values where given, else the common ones."""
    own = {
        "ramps": (pipeline_args.ramps_learning_rate, pipeline_args.ramps_num_train_epochs),
        "gates": (pipeline_args.gates_learning_rate, pipeline_args.gates_num_train_epochs),
    }.get(stage, (None, None))
    learning_rate, epochs = own
    return {
        "learning_rate": training_args.learning_rate if learning_rate is None else learning_rate,
        "num_train_epochs": training_args.num_train_epochs if epochs is None else epochs,
    }


def stage_settings(stage: str, starts_from: str, args: tuple) -> dict:
    """What shapes one stage beyond the shared settings: its input, its own arguments and architecture flags."""
    model_args, pipeline_args, training_args = args
    settings = {"starts_from": starts_from}
    if stage != "rewire":  # rewiring trains nothing
        settings |= stage_hyperparameters(stage, training_args, pipeline_args)
    settings |= {name: getattr(training_args, name) for name in STAGE_TRAINING_FIELDS.get(stage, ())}
    settings |= {name: getattr(model_args, name) for name in STAGE_MODEL_FIELDS.get(stage, ())}
    for switch, dependent in DEPENDENT_FIELDS.items():
        if switch in settings and settings[switch] in (False, "all"):
            for name in dependent:
                settings.pop(name, None)
    return without_unrecorded_defaults(settings)


def without_unrecorded_defaults(settings: dict) -> dict:
    """`settings` without the `UNRECORDED_DEFAULTS` at their default, so runs made before they existed still match."""
    unset = {name for name, default in UNRECORDED_DEFAULTS.items() if name in settings and settings[name] == default}
    return {name: value for name, value in settings.items() if name not in unset}


def data_record(data_args: DataArguments) -> dict:
    """Where the data came from (absolute file paths, or the Hub id / mirror) and how much of it is used."""
    if data_args.train_file:
        source = {name: str(Path(getattr(data_args, name)).resolve()) for name in ("train_file", "validation_file")}
    elif data_args.task_name is not None:
        source = {"dataset_name": data_args.dataset_name or HUB_GLUE, "data_dir": data_args.data_dir}
    else:
        source = {"dataset_name": data_args.dataset_name, "dataset_config_name": data_args.dataset_config_name}
    sizes = ("max_seq_length", "max_train_samples", "max_eval_samples", "importance_samples")
    # Augmentation is recorded only when on, so runs made before it existed still match their record.
    augmentation = ("augment_copies", "augment_probability", "augment_neighbours") if data_args.augment_copies else ()
    return source | {name: getattr(data_args, name) for name in (*sizes, *augmentation)}


def recorded_data_arguments(record: dict) -> DataArguments:
    """The `DataArguments` that give a recorded run's data again (its splits, held-out slice included, with the
    run's seed): the inverse of `data_record` together with the recorded task."""
    data, task = record["data"], record["task"]
    sizes = {name: data[name] for name in ("max_seq_length", "max_train_samples", "max_eval_samples")}
    arguments = DataArguments(importance_samples=data["importance_samples"], **sizes)
    qa = task.get("kind") == "extractive_qa"
    if qa:  # the windows the run cut its contexts into
        for name in ("doc_stride", "n_best_size", "max_answer_length", "pad_to_max_length"):
            if name in task:
                setattr(arguments, name, task[name])
    squad = qa and "train_file" not in data  # SQuAD itself: its columns are known, as a GLUE task's are
    if not task.get("glue_task") and not squad:  # columns a GLUE task knows itself
        arguments.text_column_names = ",".join(task["text_columns"])
        arguments.label_column_name = task["label_column"]
        arguments.is_regression = task["kind"] == "regression"
    if "train_file" in data:
        arguments.train_file, arguments.validation_file = data["train_file"], data["validation_file"]
    elif task.get("glue_task") or squad:
        arguments.task_name = task.get("glue_task") or SQUAD_TASK
        arguments.data_dir = data.get("data_dir")
    else:
        arguments.dataset_name, arguments.dataset_config_name = data["dataset_name"], data.get("dataset_config_name")
    return arguments


def build_run_config(task: FlexTask, stages: tuple[str, ...], start: str, args: tuple) -> dict:
    """The record of a run: task, data, model, shared training settings, and each stage's own settings."""
    model_args, data_args, pipeline_args, training_args = args
    model = {"model_name_or_path": start, "depth_rule": model_args.depth_rule}
    model["config_overrides"] = model_args.config_overrides
    if training_args.flex_stage != PIPELINE_STAGE:  # a single stage applies every architecture flag to its model
        model = {f.name: getattr(model_args, f.name) for f in dataclasses.fields(model_args)} | model
        model = without_unrecorded_defaults(model)
    for name in ("model_name_or_path", "teacher_name_or_path"):
        if model.get(name) and Path(model[name]).exists():  # a local checkpoint, wherever the command runs from
            model[name] = str(Path(model[name]).resolve())
    inputs = ("model_name_or_path", *stages)  # each stage starts from the one before it
    per_stage_args = (model_args, pipeline_args, training_args)
    return json_ready(
        {
            "task": task.to_dict(),
            "data": data_record(data_args),
            "model": model,
            "training": shared_training_settings(training_args),
            "stages": {stage: stage_settings(stage, inputs[i], per_stage_args) for i, stage in enumerate(stages)},
        }
    )


def flat_items(record: dict, prefix: str = "") -> dict:
    """`{"training.seed": 42, ...}`: nested dicts flattened to dotted keys (lists stay values)."""
    items = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            items |= flat_items(value, f"{prefix}{key}.")
        else:
            items[f"{prefix}{key}"] = value
    return items


def run_config_differences(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every recorded setting that differs. Stages recorded by only one of the two runs do not
    count (a run may be extended with later stages, or stopped earlier); stages both record must agree."""
    common = set(old.get("stages", {})) & set(new["stages"])

    def comparable(record: dict) -> dict:
        return {**record, "stages": {stage: record["stages"][stage] for stage in common}}

    before, after = flat_items(comparable(old)), flat_items(comparable(new))
    missing = "(not set)"
    return [
        f"{key}: {before.get(key, missing)!r} -> {after.get(key, missing)!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key, missing) != after.get(key, missing)
    ]


def merged_run_config(old: dict | None, new: dict) -> dict:
    """The record after this run: its settings, with every stage either run has recorded, in pipeline order."""
    stages = (old or {}).get("stages", {}) | new["stages"]
    return new | {"stages": dict(sorted(stages.items(), key=lambda item: PIPELINE_STAGES.index(item[0])))}


def write_json(path: Path, content: dict) -> None:
    """Write JSON atomically: a run killed mid-write leaves the old file or the new one, never half of one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, indent=2))
    os.replace(partial, path)


def read_json(path: Path) -> dict | None:
    """The parsed file, or `None` when it is missing or damaged (unparsable)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        logger.warning("%s is damaged (not valid JSON).", path)
        return None


def looks_like_a_run(output_dir: Path) -> bool:
    """Whether `output_dir` holds what a run of this pipeline writes (so deleting it loses nothing else)."""
    stage_results = [f"{stage}/{STAGE_RESULTS_NAME}" for stage in PIPELINE_STAGES]
    markers = [RUN_CONFIG_NAME, RESULTS_NAME, STAGE_RESULTS_NAME, *stage_results]
    return any((output_dir / marker).exists() for marker in markers) or any(checkpoint_dirs(output_dir))


def prepare_output_dir(output_dir: Path, config: dict, overwrite: bool) -> dict:
    """Check `output_dir` against its recorded run and write the merged record; returns it.

    A directory recorded for other settings is refused (listing what differs); `overwrite` deletes an earlier run
    first. A directory with outputs but no record (copied stages, an older version's run) is taken as it is.
    """
    record_path = output_dir / RUN_CONFIG_NAME
    inputs = [config["model"].get(key) for key in ("model_name_or_path", "teacher_name_or_path")]
    inside = [path for path in inputs if path and Path(path).resolve().is_relative_to(output_dir.resolve())]
    if overwrite and inside:
        raise RunDirectoryError(
            f"--overwrite_output_dir would delete {inside[0]}, which this run starts from: use another --output_dir."
        )
    if overwrite and output_dir.exists():
        if not looks_like_a_run(output_dir):
            raise RunDirectoryError(
                f"{output_dir} holds no run of this pipeline; not deleting it for --overwrite_output_dir."
            )
        logger.warning("--overwrite_output_dir: deleting the earlier run in %s.", output_dir)
        shutil.rmtree(output_dir)
    old = read_json(record_path)
    if old is None and record_path.exists():
        raise RunDirectoryError(
            f"{record_path} is damaged, so what this directory holds is unknown: delete it to take the directory "
            "as it is, or pass --overwrite_output_dir to start over."
        )
    if old is None and output_dir.exists() and looks_like_a_run(output_dir):
        logger.warning("%s has outputs but no %s: taking them as they are.", output_dir, RUN_CONFIG_NAME)
    differences = run_config_differences(old, config) if old is not None else []
    if differences:
        raise RunDirectoryError(
            f"{output_dir} holds a run made with other settings:\n  "
            + "\n  ".join(differences)
            + "\nUse another --output_dir, or pass --overwrite_output_dir to delete that run and start over."
        )
    merged = merged_run_config(old, config)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(record_path, merged)
    return merged


# --- checkpoints --------------------------------------------------------------------------------------------------


def checkpoint_dirs(folder: Path) -> list[Path]:
    """`checkpoint-N/` folders, newest (highest N) first."""
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := pattern.match(path.name))]
    return [path for _, path in sorted(found, reverse=True) if path.is_dir()]


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unusable (missing, or shorter than its header says), or `None`."""
    if not path.is_file():
        return f"no {path.name}"
    with path.open("rb") as file:
        size_bytes = file.read(8)
        try:
            header = json.loads(file.read(struct.unpack("<Q", size_bytes)[0])) if len(size_bytes) == 8 else None
        except (json.JSONDecodeError, UnicodeDecodeError, OverflowError, MemoryError):
            header = None
    if header is None:
        return f"{path.name} has no readable header"
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if path.stat().st_size < 8 + struct.unpack("<Q", size_bytes)[0] + data_end:
        return f"{path.name} is cut off"
    return None


def weights_problem(folder: Path) -> str | None:
    """Why a folder's model weights are unusable, or `None` (safetensors checked in full, sharded or not)."""
    index = read_json(folder / SAFE_WEIGHTS_INDEX_NAME)
    if index is not None:
        for shard in sorted(set(index.get("weight_map", {}).values())):
            if problem := safetensors_problem(folder / shard):
                return problem
        return None
    if (folder / SAFE_WEIGHTS_NAME).exists():
        return safetensors_problem(folder / SAFE_WEIGHTS_NAME)
    # A pickled checkpoint, or a layout this check does not know (FSDP shards, DeepSpeed, adapters): with a complete
    # trainer state it is taken as written; the Trainer's own loading reports a broken one.
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or `None`. The Trainer writes `trainer_state.json` last, so a
    checkpoint cut off mid-write lacks it (or has a partial one)."""
    state = read_json(checkpoint / TRAINER_STATE_NAME)
    if state is None or "global_step" not in state:
        return f"no complete {TRAINER_STATE_NAME}"
    return weights_problem(checkpoint)


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint that can be resumed from; incomplete newer ones are set aside (renamed, never resumed
    from or rotated by the Trainer), so a run killed mid-save restarts from the one before."""
    for checkpoint in checkpoint_dirs(folder):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint)
        aside = checkpoint.with_name(INCOMPLETE_PREFIX + checkpoint.name)
        for attempt in itertools.count(1):  # an earlier cut-off checkpoint of the same step keeps its name
            if not aside.exists():
                break
            aside = checkpoint.with_name(f"{INCOMPLETE_PREFIX}{checkpoint.name}.{attempt}")
        checkpoint.rename(aside)
        logger.warning("%s is incomplete (%s): set aside as %s.", checkpoint, problem, aside.name)
    return None


# --- models -------------------------------------------------------------------------------------------------------


def load_model(path: str | Path, task: FlexTask, overrides: dict, copy_head_to_new_ramps: bool = True):
    """The task's model from a checkpoint, with architecture `overrides`; new off-ramps may start as the head."""
    model, loading = task.model_class.from_pretrained(
        path, output_loading_info=True, **task.config_overrides(), **overrides
    )
    new_ramps = {int(key.split(".")[1]) for key in loading["missing_keys"] if key.startswith("off_ramps.")}
    if new_ramps and copy_head_to_new_ramps and model.config.ramp_type == "pooler":
        model.copy_head_to_off_ramps(sorted(new_ramps))  # new ramps start as the final head (Flexible BERT)
    return model


def architecture_overrides(model_args: ModelArguments, names: tuple[str, ...]) -> dict:
    """The given architecture flags among `names` (unset ones keep the checkpoint's values)."""
    return {name: value for name in names if (value := getattr(model_args, name)) is not None}


def config_overrides(model_args: ModelArguments, path: str) -> dict:
    """`--config_overrides` as typed config fields (each parsed by the type of the checkpoint's own value)."""
    if not model_args.config_overrides:
        return {}
    config = AutoConfig.from_pretrained(path)
    try:
        config.update_from_string(model_args.config_overrides)
    except ValueError as error:  # an unknown field or a value of the wrong type
        raise SystemExit(f"--config_overrides {model_args.config_overrides!r}: {error}") from error
    names = [pair.split("=")[0] for pair in model_args.config_overrides.split(",")]
    return {name: getattr(config, name) for name in names}


def teacher_class(path: str, data_args: DataArguments) -> type:
    """The head class a teacher is loaded with before the data is read: extractive QA for `--task_name squad` or a
    question-answering checkpoint, else sequence classification."""
    if data_args.task_name == SQUAD_TASK:
        return FlexBertForQuestionAnswering
    architectures = AutoConfig.from_pretrained(path).architectures or []
    qa = any("QuestionAnswering" in name for name in architectures)
    return FlexBertForQuestionAnswering if qa else FlexBertForSequenceClassification


def load_teacher(path: str, model_class: type = FlexBertForSequenceClassification, num_labels: int | None = None):
    """A distillation teacher: a fine-tuned checkpoint with a trained head of `model_class` (a fresh head would teach
    noise)."""
    head = "qa_outputs." if model_class is FlexBertForQuestionAnswering else "classifier."
    labels = {} if num_labels is None else {"num_labels": num_labels}
    teacher, loading = model_class.from_pretrained(path, output_loading_info=True, **labels)
    if any(key.startswith(head) for key in loading["missing_keys"]):
        raise SystemExit(
            f"The teacher {path!r} has no trained {head[:-1]} head: pass a fine-tuned one with --teacher_name_or_path "
            "(e.g. the output of --flex_stage teacher), or run the whole pipeline with --flex_stage all."
        )
    return teacher


def check_teacher_labels(teacher, task: FlexTask, path: str) -> None:
    if not isinstance(teacher, task.model_class):
        raise SystemExit(
            f"The teacher {path!r} is a {type(teacher).__name__} but the task {task.name!r} needs a "
            f"{task.model_class.__name__}."
        )
    if teacher.config.num_labels != task.num_labels:
        raise SystemExit(
            f"The teacher {path!r} has {teacher.config.num_labels} outputs but the task {task.name!r} needs "
            f"{task.num_labels}."
        )


# --- training -----------------------------------------------------------------------------------------------------


def make_trainer(stage_args: FlexTrainingArguments, model, teacher, data: dict, tokenizer, task: FlexTask):
    """The `FlexTrainer` of one stage over the pipeline's data (importance examples only when grafting)."""
    return FlexTrainer(
        model=model,
        args=stage_args,
        teacher_model=teacher,
        importance_dataset=data["heldout"] if stage_args.grafting else None,
        train_dataset=data["train"],
        eval_dataset=data["dev"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=task.compute_metrics(data.get("dev_examples"), data["dev"]),
    )


def evaluate(trainer: FlexTrainer, data: dict) -> dict:
    """The stage's metrics on the dev set and on any further dev sets (MNLI mismatched). Extractive QA also writes
    each evaluated model's answers (see `write_predictions`)."""
    answers = trainer.compute_metrics if isinstance(trainer.compute_metrics, SquadMetrics) else None
    if answers is not None:
        answers.predictions.clear()  # those of evaluations during training
    metrics = trainer.evaluate()
    if answers is not None:
        write_predictions(Path(trainer.args.output_dir), trainer.eval_subnets(), answers.predictions)
    for prefix, dev in data["extra_dev"].items():
        metrics |= trainer.evaluate(dev, metric_key_prefix=prefix)
    return metrics


def write_predictions(folder: Path, subnets: list[tuple[float, float]], predictions: list[dict[str, str]]) -> None:
    """`predictions.json` (`{question id: answer text}`, what the official SQuAD script scores) of the full model
    and, when a stage evaluates several sub-networks, `predictions/w<width>_d<depth>.json` of each, in `folder`."""
    if len(subnets) != len(predictions):
        raise RuntimeError(f"{len(predictions)} sets of answers for {len(subnets)} evaluated sub-networks.")
    folder.mkdir(parents=True, exist_ok=True)
    for (width, depth), answers in zip(subnets, predictions):
        if (width, depth) == (1.0, 1.0):
            write_json(folder / PREDICTIONS_NAME, answers)
        if len(subnets) > 1:
            (folder / "predictions").mkdir(exist_ok=True)
            write_json(folder / "predictions" / f"w{width}_d{depth}.json", answers)


def train_stage(stage_args: FlexTrainingArguments, model, teacher, data: dict, tokenizer, task: FlexTask) -> dict:
    """Train one stage (resuming from its last complete checkpoint, if any), save model and tokenizer into
    `stage_args.output_dir`, and return (and write) its summary."""
    trainer = make_trainer(stage_args, model, teacher, data, tokenizer, task)
    last = last_complete_checkpoint(Path(stage_args.output_dir))
    # Steps the checkpoint had done: a resumed run's train_runtime covers only the steps after them.
    first_step = TrainerState.load_from_json(os.path.join(last, TRAINER_STATE_NAME)).global_step if last else 0
    train_output = trainer.train(resume_from_checkpoint=last)
    trainer.save_model()
    tokenizer.save_pretrained(stage_args.output_dir)
    steps_trained = trainer.state.global_step - first_step  # by this run (0 if resumed from the last step)
    summary = {
        "stage": stage_args.flex_stage,
        "train_runtime": train_output.metrics["train_runtime"],
        "steps": trainer.state.global_step,
        "steps_trained": steps_trained,
        "seconds_per_step": train_output.metrics["train_runtime"] / steps_trained if steps_trained else None,
        "resumed_from": last,
        "metrics": evaluate(trainer, data),
    }
    write_json(Path(stage_args.output_dir) / STAGE_RESULTS_NAME, summary)
    return summary


@dataclass
class FlexPipeline:
    """One pipeline run over prepared data: trains, loads or rebuilds each stage in `<output_dir>/<stage>/`.

    Args:
        task: The task (labels, head, metric).
        data: Tokenized `train`, `heldout`, `dev` and `extra_dev` splits (see `prepare_data`).
        tokenizer: Saved beside every stage's model.
        start: The checkpoint the first stage starts from.
        model_args: Architecture flags (`depth_rule` for the first stage, ramps and gates flags for theirs).
        pipeline_args: Per-stage learning rates and epochs.
        training_args: The common training arguments; `output_dir` is the run's folder.
    """

    task: FlexTask
    data: dict
    tokenizer: object
    start: str
    model_args: ModelArguments
    pipeline_args: PipelineArguments
    training_args: FlexTrainingArguments

    @property
    def output_dir(self) -> Path:
        return Path(self.training_args.output_dir)

    def stage_arguments(self, stage: str) -> FlexTrainingArguments:
        """A copy of the arguments for one stage: its folder, its learning rate and epochs; grafting in width only.
        The rewire stage trains nothing and is evaluated as the `final` stage is (every sub-network)."""
        stage_args = copy.deepcopy(self.training_args)
        stage_args.flex_stage = "final" if stage == "rewire" else stage
        stage_args.output_dir = str(self.output_dir / stage)
        stage_args.grafting = self.training_args.grafting and stage == "width"
        stage_args.push_to_hub = False  # the run publishes its final checkpoint once, at its end (`publish`)
        for name, value in stage_hyperparameters(stage, self.training_args, self.pipeline_args).items():
            setattr(stage_args, name, value)
        return stage_args

    def stage_model(self, stage: str, source: str):
        """The model a stage trains, loaded from its input with the flags this stage owns (seeded first, so new
        modules start the same whether the stage runs alone or after others)."""
        set_seed(self.training_args.seed)
        names = {"ramps": ("exit_layers", "ramp_type", "depth_heads"), "gates": ("gate_block_size",)}.get(stage, ())
        if source == self.start:
            names += ("depth_rule",)  # the first stage sets the depth rule every later one keeps
        overrides = architecture_overrides(self.model_args, names)
        if source == self.start:
            overrides |= config_overrides(self.model_args, source)
        return load_model(source, self.task, overrides, self.model_args.copy_head_to_new_ramps)

    def heldout_loader(self) -> DataLoader:
        batch_size = self.training_args.importance_batch_size
        return DataLoader(self.data["heldout"], batch_size, collate_fn=DataCollatorWithPadding(self.tokenizer))

    def run_rewire(self, source: str) -> dict:
        """Importance on the held-out training examples, rewiring, then every sub-network evaluated."""
        stage_args = self.stage_arguments("rewire")
        model = self.stage_model("rewire", source).to(stage_args.device)
        rewire(model, compute_importance(model, self.heldout_loader()))
        model.save_pretrained(stage_args.output_dir)
        self.tokenizer.save_pretrained(stage_args.output_dir)
        return self.write_evaluation("rewire", model, {"importance_examples": len(self.data["heldout"])})

    def write_evaluation(self, stage: str, model, fields: dict, teacher=None) -> dict:
        """Evaluate a stage's model, write its summary with `fields`, and return it (a distillation stage's trainer
        is built with its `teacher`, though evaluating does not use it)."""
        stage_args = self.stage_arguments(stage)
        trainer = make_trainer(stage_args, model, teacher, self.data, self.tokenizer, self.task)
        metrics = evaluate(trainer, self.data)
        summary = {"stage": stage, **fields, "metrics": metrics}
        write_json(Path(stage_args.output_dir) / STAGE_RESULTS_NAME, summary)
        return summary

    def run_stage(self, stage: str, source: str) -> dict:
        """Train `stage` from the model in `source` (the distillation stages are taught by that model)."""
        if stage == "rewire":
            return self.run_rewire(source)
        teacher = self.stage_model(stage, source) if stage in DISTILLATION_STAGES else None
        model = self.stage_model(stage, source)
        data = stage_data(self.data, stage)
        return train_stage(self.stage_arguments(stage), model, teacher, data, self.tokenizer, self.task)

    def finished_stage(self, stage: str, source: str) -> dict | None:
        """A finished stage's summary; a damaged one is rebuilt by evaluating the saved model (`source`: the
        stage's input). `None` when the stage has no complete model (it is then trained, from its last complete
        checkpoint)."""
        stage_dir = self.output_dir / stage
        if weights_problem(stage_dir) is not None:
            return None
        summary = read_json(stage_dir / STAGE_RESULTS_NAME)
        if summary is not None or not (stage_dir / STAGE_RESULTS_NAME).exists():
            return summary
        logger.warning("Rebuilding %s from the saved %s model.", stage_dir / STAGE_RESULTS_NAME, stage)
        model = load_model(stage_dir, self.task, {})
        teacher = load_model(source, self.task, {}) if stage in DISTILLATION_STAGES else None
        last = last_complete_checkpoint(stage_dir)
        steps = TrainerState.load_from_json(os.path.join(last, TRAINER_STATE_NAME)).global_step if last else None
        return self.write_evaluation(stage, model, {"steps": steps, "rebuilt": True}, teacher)

    def run(self, stages: tuple[str, ...]) -> dict:
        """Every stage in order, each from the previous stage's folder. Finished stages are loaded, not retrained;
        an unfinished one whose later stages are all finished is skipped (nothing needs its model), e.g. the
        rewire stage of a run made before that stage was saved, or beside stages linked in from another run."""
        sources = dict(zip(stages, (self.start, *(str(self.output_dir / stage) for stage in stages[:-1]))))
        finished = {stage: self.finished_stage(stage, sources[stage]) for stage in stages}
        needed, to_train = True, set()  # the last stage's model is the run's result
        for stage in reversed(stages):
            if finished[stage] is None and needed:
                to_train.add(stage)  # and its input is needed in turn
            else:
                needed = False  # a finished stage needs nothing before it
        summaries = {}
        for number, stage in enumerate(stages, start=1):
            state = "training" if stage in to_train else "finished" if finished[stage] else "skipped"
            logger.info("Stage %d/%d: %s (%s)", number, len(stages), stage, state)
            if stage in to_train:
                summaries[stage] = self.run_stage(stage, sources[stage])
            elif finished[stage] is not None:
                summaries[stage] = finished[stage]
        return summaries

    def stage_input(self, starts_from: str) -> str:
        """The folder a recorded `starts_from` names: the run's starting checkpoint or an earlier stage's folder."""
        return self.start if starts_from == "model_name_or_path" else str(self.output_dir / starts_from)

    def write_results(self, summaries: dict, recorded_stages: dict) -> dict:
        """`results.json`: the stages run now, and any other stage the run's record lists that is finished on disk
        (a run stopped by --last_stage must not hide a stage trained before)."""
        stages = {}
        for stage, settings in recorded_stages.items():
            summary = summaries.get(stage) or self.finished_stage(stage, self.stage_input(settings["starts_from"]))
            if summary is not None:
                stages[stage] = summary
        results = {
            "task": self.task.name,
            "task_kind": self.task.kind,
            "backbone": self.start,
            "train_examples": len(self.data["train"]),  # QA: windows
            "dev_examples": len(self.data["dev_examples"]),
            "stages": stages,
        }
        write_json(self.output_dir / RESULTS_NAME, results)
        logger.info("Wrote %s", self.output_dir / RESULTS_NAME)
        return results


# --- entry points -------------------------------------------------------------------------------------------------


def run(model_args, data_args, pipeline_args, training_args: FlexTrainingArguments) -> dict:
    """The whole command: check the arguments and data, then the output directory, then train.

    Returns the run's results (`--flex_stage all`) or the single stage's summary.
    """
    set_seed(training_args.seed)
    pipeline = training_args.flex_stage == PIPELINE_STAGE
    if not pipeline and (pipeline_args.stages or pipeline_args.last_stage):
        raise SystemExit("--stages and --last_stage choose the stages of --flex_stage all.")
    start = model_args.model_name_or_path or default_backbone_path()
    stages = resolve_stages(pipeline_args, model_args) if pipeline else (training_args.flex_stage,)
    # A distillation stage's teacher is checked before any data work: a missing head is the commonest mistake.
    # The pipeline's first stage is taught by (or rewires) its input; a single stage has its own teacher.
    teacher_path = start if pipeline else model_args.teacher_name_or_path or start
    needs_teacher = stages[0] in (*DISTILLATION_STAGES, "rewire")
    teacher = load_teacher(teacher_path, teacher_class(teacher_path, data_args)) if needs_teacher else None
    task, raw = load_task(data_args)
    check_augmentation(data_args, task, stages)
    if teacher is not None:
        check_teacher_labels(teacher, task, teacher_path)
    if pipeline:
        stopped_early = pipeline_args.last_stage is not None
        check_dynamic_flags(stages, model_args, AutoConfig.from_pretrained(start), stopped_early)
        teacher = None  # the pipeline loads its stages' teachers itself
    resolve_depth_heads(model_args, start)  # before the run is recorded: it may set the exit layers
    splits = select_splits(task, raw, data_args, training_args.seed)
    output_dir = Path(training_args.output_dir)
    args = (model_args, data_args, pipeline_args, training_args)
    config = build_run_config(task, stages, start, args)
    record = prepare_output_dir(output_dir, config, pipeline_args.overwrite_output_dir)
    tokenizer = load_tokenizer(start)  # its input names travel with every stage's checkpoint
    data = tokenize_splits(splits, task, tokenizer, data_args.max_seq_length)
    add_augmented_train(data, data_args, tokenizer, start, task, training_args.seed)
    if not pipeline:
        return run_single_stage(task, data, tokenizer, start, teacher, model_args, training_args)
    flex_pipeline = FlexPipeline(task, data, tokenizer, start, model_args, pipeline_args, training_args)
    summaries = flex_pipeline.run(stages)
    results = flex_pipeline.write_results(summaries, record["stages"])
    if training_args.push_to_hub:
        publish(output_dir, training_args)
    return results


def publish(output_dir: Path, training_args: FlexTrainingArguments) -> None:
    """`--push_to_hub`: the run's final checkpoint with its model card, to `--hub_model_id` (default: the output
    directory's name), in one commit; a failed push leaves the run as it is, and rerunning the command retries it."""
    from .hub import push_run

    repo_id = training_args.hub_model_id or output_dir.resolve().name
    private = bool(training_args.hub_private_repo)
    url = push_run(output_dir, repo_id, private=private, token=training_args.hub_token)
    logger.info("Pushed the final checkpoint and its model card to %s (%s)", repo_id, url)


def run_single_stage(task, data, tokenizer, start, teacher, model_args, training_args) -> dict:
    """`--flex_stage <stage>`: the checkpoint, with every architecture flag given, trained into `--output_dir`."""
    names = ("depth_rule", "exit_layers", "ramp_type", "depth_heads", "gate_block_size")
    set_seed(training_args.seed)
    overrides = architecture_overrides(model_args, names) | config_overrides(model_args, start)
    model = load_model(start, task, overrides, model_args.copy_head_to_new_ramps)
    if training_args.flex_stage in DISTILLATION_STAGES and teacher is None:
        teacher = load_teacher(model_args.teacher_name_or_path or start, task.model_class, task.num_labels)
    summary = train_stage(training_args, model, teacher, stage_data(data, training_args.flex_stage), tokenizer, task)
    print(json.dumps(summary["metrics"], indent=2))
    return summary


def parse_arguments(argv: list[str] | None = None, flex_stage: str | None = None, **parser_kwargs) -> tuple:
    """The four argument dataclasses from `argv` (or one JSON file); `flex_stage` overrides its default and
    `parser_kwargs` (`prog`, `description`) go to the parser."""
    parser = HfArgumentParser(ARGUMENT_CLASSES, **parser_kwargs)
    argv = sys.argv[1:] if argv is None else argv
    defaults = {} if flex_stage is None else {"flex_stage": flex_stage}
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_dict(defaults | json.loads(Path(argv[0]).read_text()))
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None, flex_stage: str | None = None, **parser_kwargs) -> dict:
    """Parse the command line and run; data and run-directory problems end the command with their message."""
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logging.getLogger("transformers_flex").addHandler(handler)
        logging.getLogger("transformers_flex").setLevel(logging.INFO)
    try:
        return run(*parse_arguments(argv, flex_stage, **parser_kwargs))
    except (FlexDataError, RunDirectoryError) as error:
        raise SystemExit(f"error: {error}") from error


__all__ = [
    "PIPELINE_STAGES",
    "DataArguments",
    "FlexPipeline",
    "ModelArguments",
    "PipelineArguments",
    "RunDirectoryError",
    "last_complete_checkpoint",
    "load_teacher",
    "main",
    "prepare_data",
    "resolve_stages",
    "run",
    "train_stage",
]
