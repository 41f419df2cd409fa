"""Train a flexible BERT on a GLUE task, one stage or the whole pipeline (like transformers' run_glue.py).

    python examples/run_glue_flex.py --task_name mrpc --output_dir runs/mrpc --flex_stage all \
        --num_train_epochs 3 --learning_rate 2e-5 --per_device_train_batch_size 32 --grafting

Single stages train the model given by `--model_name_or_path`; the dynamic-inference stages add their modules to a
trained checkpoint, e.g. off-ramps copied from the final head, then width gates:

    python examples/run_glue_flex.py --task_name sst2 --flex_stage ramps --model_name_or_path runs/sst2/width \
        --exit_layers 1 2 3 4 5 --ramp_training two_stage --output_dir runs/sst2/ramps
    python examples/run_glue_flex.py --task_name sst2 --flex_stage gates --model_name_or_path runs/sst2/ramps \
        --gate_block_size 2 --learning_rate 2e-4 --output_dir runs/sst2/gates

`--flex_stage all` runs teacher (plain fine-tuning) -> importance on held-out training examples + rewiring ->
width (distillation into every width, optional grafting) -> width_depth (every width and depth), writing
`<output_dir>/<stage>/` (model, tokenizer, metrics) per stage and `<output_dir>/results.json`. A stage whose model
exists is skipped and a stage with checkpoints resumes from the last one, so an interrupted run can be restarted
with the same command. `--dataset_name` defaults to the Hub's `nyu-mll/glue`; `--data_dir` (or the mirror found
in `../shared/data`) is used where present.
"""

import copy
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import DataLoader
from transformers import AutoTokenizer, DataCollatorWithPadding, HfArgumentParser, TrainerState, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from transformers_flex import FlexBertForSequenceClassification, compute_importance, rewire
from transformers_flex.data import (
    GLUE_DEV_SPLIT,
    GLUE_EXTRA_DEV_SPLITS,
    glue_num_labels,
    load_glue,
    split_train_heldout,
    tokenize_glue,
)
from transformers_flex.metrics import glue_compute_metrics
from transformers_flex.trainer import FlexTrainer
from transformers_flex.training_args import PIPELINE_STAGE, FlexTrainingArguments
from transformers_flex.utils import default_backbone_path


@dataclass
class ModelArguments:
    """Which model to start from.

    Args:
        model_name_or_path: BERT or FlexBert checkpoint (default: the packaged all-MiniLM-L6-v2).
        teacher_name_or_path: Teacher of a single width/width_depth stage (default: `model_name_or_path`).
        depth_rule: `every_other` (DynaBERT) or `prefix` (Flexible BERT); the checkpoint's own rule when unset.
        exit_layers: Layers to put off-ramps after.
        ramp_type: `pooler` (BERT's head on [CLS]) or `attention` (FastBERT-style, reads every token).
        copy_head_to_new_ramps: New off-ramps start as copies of the final head (Flexible BERT), else randomly
            initialised (DeeBERT).
        gate_block_size: Width gates: one per block of this many layers (0: none).
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "BERT/FlexBert checkpoint (default: MiniLM)."}
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
    gate_block_size: int | None = field(default=None, metadata={"help": "Layers per width gate (0: no gates)."})


@dataclass
class DataArguments:
    """Which data, and how much of it.

    Args:
        task_name: A GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli).
        dataset_name: Hub dataset used when no local mirror has the task.
        data_dir: Local mirror laid out like `nyu-mll/glue` (default: ../shared/data when present).
        max_seq_length: Longest tokenized input; longer ones are truncated.
        max_train_samples: Train on this many examples (a fixed shuffled subset); all when unset.
        max_eval_samples: Evaluate on this many dev examples; all when unset.
        importance_samples: Held-out training examples (never trained on) for importance and grafting.
    """

    task_name: str = field(default="sst2", metadata={"help": "GLUE task."})
    dataset_name: str = field(default="nyu-mll/glue", metadata={"help": "Hub dataset when no mirror has the task."})
    data_dir: str | None = field(default=None, metadata={"help": "Local GLUE mirror."})
    max_seq_length: int = field(default=128, metadata={"help": "Truncation length."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Training subset size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Dev subset size."})
    importance_samples: int = field(default=512, metadata={"help": "Held-out training examples for importance."})


@dataclass
class PipelineArguments:
    """How far `--flex_stage all` goes.

    Args:
        last_stage: Stop after this stage (`teacher`, `width` or `width_depth`).
    """

    last_stage: str = field(default="width_depth", metadata={"help": "Stop the pipeline after this stage."})


PIPELINE = ("teacher", "width", "width_depth")


def stage_arguments(args: FlexTrainingArguments, stage: str, output_dir: Path) -> FlexTrainingArguments:
    """A copy of the arguments for one stage of the pipeline."""
    stage_args = copy.deepcopy(args)
    stage_args.flex_stage = stage
    stage_args.output_dir = str(output_dir / stage)
    stage_args.grafting = args.grafting and stage == "width"
    return stage_args


def train_stage(stage_args, model, teacher, data, collator, compute_metrics) -> dict:
    """Train one stage (resuming from its last checkpoint if any), save it, and return its metrics."""
    trainer = FlexTrainer(
        model=model,
        args=stage_args,
        teacher_model=teacher,
        importance_dataset=data["heldout"] if stage_args.grafting else None,
        train_dataset=data["train"],
        eval_dataset=data["dev"],
        data_collator=collator,
        compute_metrics=compute_metrics,
    )
    last = get_last_checkpoint(stage_args.output_dir) if os.path.isdir(stage_args.output_dir) else None
    # Steps the checkpoint had done: a resumed run's train_runtime covers only the steps after them.
    first_step = TrainerState.load_from_json(os.path.join(last, TRAINER_STATE_NAME)).global_step if last else 0
    train_output = trainer.train(resume_from_checkpoint=last)
    trainer.save_model()
    metrics = trainer.evaluate()
    for prefix, dev in data["extra_dev"].items():  # further dev sets (MNLI mismatched)
        metrics |= trainer.evaluate(dev, metric_key_prefix=prefix)
    steps_trained = trainer.state.global_step - first_step  # by this run (0 if resumed from the last step)
    summary = {
        "stage": stage_args.flex_stage,
        "train_runtime": train_output.metrics["train_runtime"],
        "steps": trainer.state.global_step,
        "steps_trained": steps_trained,
        "seconds_per_step": train_output.metrics["train_runtime"] / steps_trained if steps_trained else None,
        "resumed_from": last,
        "metrics": metrics,
    }
    Path(stage_args.output_dir, "stage_results.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_teacher(path: str, num_labels: int) -> FlexBertForSequenceClassification:
    """The teacher of a single distillation stage: a fine-tuned checkpoint (a fresh classifier would teach noise)."""
    teacher, loading = FlexBertForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, output_loading_info=True
    )
    if any(key.startswith("classifier.") for key in loading["missing_keys"]):
        raise SystemExit(
            f"The teacher {path!r} has no trained classifier: pass a fine-tuned one with --teacher_name_or_path "
            "(e.g. the output of --flex_stage teacher), or run the whole pipeline with --flex_stage all."
        )
    return teacher


def load_stage(stage_dir: Path):
    """A finished stage's model and results, or (None, None)."""
    results = stage_dir / "stage_results.json"
    if not results.exists():
        return None, None
    return FlexBertForSequenceClassification.from_pretrained(stage_dir), json.loads(results.read_text())


def prepare_data(task: str, data_args: DataArguments, tokenizer, seed: int) -> dict:
    """Tokenized `train`, `heldout` (importance examples set aside from train) and `dev` splits, and `extra_dev`:
    the further dev sets GLUE reports (MNLI mismatched) by metric-key prefix, e.g. `{"eval_mm": ...}`."""
    raw = load_glue(task, data_args.data_dir, hub_dataset=data_args.dataset_name)
    if GLUE_DEV_SPLIT[task] not in raw or "train" not in raw:
        raise SystemExit(f"{task}: the dataset has no train/{GLUE_DEV_SPLIT[task]} split to train and evaluate on.")
    train, heldout = split_train_heldout(raw["train"], data_args.max_train_samples, data_args.importance_samples, seed)
    extra_dev = {prefix: raw[split] for prefix, split in GLUE_EXTRA_DEV_SPLITS.get(task, {}).items() if split in raw}

    def prepare(split, is_dev: bool = False):
        if is_dev and data_args.max_eval_samples is not None:
            split = split.select(range(min(data_args.max_eval_samples, len(split))))
        return tokenize_glue(split, tokenizer, task, data_args.max_seq_length)

    return {
        "train": prepare(train),
        "heldout": prepare(heldout),
        "dev": prepare(raw[GLUE_DEV_SPLIT[task]], is_dev=True),
        "extra_dev": {prefix: prepare(split, is_dev=True) for prefix, split in extra_dev.items()},
    }


def fresh_model(path: str, num_labels: int, model_args: ModelArguments) -> FlexBertForSequenceClassification:
    """The checkpoint with the command line's architecture overrides; new off-ramps may start as the final head."""
    overrides = {
        name: value
        for name in ("depth_rule", "exit_layers", "ramp_type", "gate_block_size")
        if (value := getattr(model_args, name)) is not None
    }
    model, loading = FlexBertForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, output_loading_info=True, **overrides
    )
    new_ramps = {int(key.split(".")[1]) for key in loading["missing_keys"] if key.startswith("off_ramps.")}
    if new_ramps and model_args.copy_head_to_new_ramps and model.config.ramp_type == "pooler":
        model.copy_head_to_off_ramps(sorted(new_ramps))  # new ramps start as the final head (Flexible BERT)
    return model


def run_pipeline(args: FlexTrainingArguments, stages: tuple[str, ...], make_model, train, heldout_loader) -> dict:
    """teacher -> rewiring -> width -> width_depth up to the last of `stages`; finished stages are loaded, not
    retrained. `train(stage, model, teacher)` trains one stage and returns its summary."""
    output_dir = Path(args.output_dir)
    summaries = {}
    # Stage 0: the teacher (plain fine-tuning), which is also the baseline.
    teacher, summaries["teacher"] = load_stage(output_dir / "teacher")
    if teacher is None:
        teacher = make_model()
        summaries["teacher"] = train("teacher", teacher, None)
    if "width" not in stages:
        return summaries

    # Rewiring: heads and neurons sorted by importance on held-out training data; the function is unchanged.
    width_model, summaries["width"] = load_stage(output_dir / "width")
    if width_model is None:
        rewire(teacher, compute_importance(teacher, heldout_loader))
        width_model = copy.deepcopy(teacher)
        summaries["width"] = train("width", width_model, teacher)
    if "width_depth" not in stages:
        return summaries

    # Stage 2: every width and depth, taught by the width model.
    depth_model, summaries["width_depth"] = load_stage(output_dir / "width_depth")
    if depth_model is None:
        depth_model = copy.deepcopy(width_model)
        summaries["width_depth"] = train("width_depth", depth_model, width_model)
    return summaries


def main() -> None:
    parser = HfArgumentParser((ModelArguments, DataArguments, PipelineArguments, FlexTrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, pipeline_args, training_args = parser.parse_json_file(os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, pipeline_args, training_args = parser.parse_args_into_dataclasses()
    if pipeline_args.last_stage not in PIPELINE:
        raise SystemExit(f"--last_stage must be one of {PIPELINE}, got {pipeline_args.last_stage!r}.")
    set_seed(training_args.seed)
    task = data_args.task_name
    num_labels = glue_num_labels(task)
    backbone = model_args.model_name_or_path or default_backbone_path()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = teacher = None  # a single stage's, loaded (and the teacher checked) before any data work
    if training_args.flex_stage != PIPELINE_STAGE:
        model = fresh_model(backbone, num_labels, model_args)
    if training_args.flex_stage in ("width", "width_depth"):
        teacher = load_teacher(model_args.teacher_name_or_path or backbone, num_labels)
    data = prepare_data(task, data_args, tokenizer, training_args.seed)
    collator = DataCollatorWithPadding(tokenizer)
    compute_metrics = glue_compute_metrics(task)

    if training_args.flex_stage != PIPELINE_STAGE:
        summary = train_stage(training_args, model, teacher, data, collator, compute_metrics)
        tokenizer.save_pretrained(training_args.output_dir)
        print(json.dumps(summary["metrics"], indent=2))
        return

    output_dir = Path(training_args.output_dir)

    def train(stage, model, stage_teacher):
        stage_args = stage_arguments(training_args, stage, output_dir)
        return train_stage(stage_args, model, stage_teacher, data, collator, compute_metrics)

    stages = PIPELINE[: PIPELINE.index(pipeline_args.last_stage) + 1]
    heldout_loader = DataLoader(data["heldout"], batch_size=training_args.importance_batch_size, collate_fn=collator)
    summaries = run_pipeline(
        training_args, stages, lambda: fresh_model(backbone, num_labels, model_args), train, heldout_loader
    )
    if "width_depth" in summaries:
        tokenizer.save_pretrained(output_dir / "width_depth")
    sizes = {"train_examples": len(data["train"]), "dev_examples": len(data["dev"])}
    write_results(output_dir, {"task": task, "backbone": backbone, **sizes, "stages": summaries})


def write_results(output_dir: Path, results: dict) -> None:
    """Write `results.json` with the stages run now and any later stage an earlier run finished on disk."""
    for stage in PIPELINE:
        finished = output_dir / stage / "stage_results.json"
        # A run stopped by --last_stage must not hide a stage that exists (e.g. width_depth trained before).
        if stage not in results["stages"] and finished.exists():
            results["stages"][stage] = json.loads(finished.read_text())
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"Wrote {output_dir / 'results.json'}")


if __name__ == "__main__":
    main()
