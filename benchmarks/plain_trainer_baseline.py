"""The plain `Trainer` + vanilla `BertForSequenceClassification` on exactly the data and recipe of a pipeline run's
teacher stage, to check that FlexBert's teacher is ordinary fine-tuning (the issue's bar: within 0.5 points).

    python benchmarks/plain_trainer_baseline.py --run runs/grafting/mrpc/seed42/graft \
        --seed 42 --num_train_epochs 3 --learning_rate 5e-5 --per_device_train_batch_size 32 \
        --output benchmarks/results/plain_trainer_mrpc_seed42.json
    python benchmarks/plain_trainer_baseline.py --show benchmarks/results/plain_trainer_mrpc_seed42.json

The recipe is the run's own (any `transformers-flex train` classification or regression run: GLUE, a Hub dataset or
files): its starting checkpoint and config overrides, its training split cut as the run cut it (same seed, same
held-out importance slice, same subset), its dev set, the training arguments of every stage and the teacher stage's
learning rate and epochs; so both runs see the same examples in the same order. The recipe options (`--seed`,
`--num_train_epochs`, ..., which the earlier `--teacher <stage dir> --task_name <task>` form trained with) only
check: a value that differs from the run's is refused, and so is a run the plain Trainer cannot train as its teacher
stage was trained. Writes JSON (the command, machine, versions, both models' dev metrics and their difference in
points) and prints a Markdown table.
"""

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from common import parse_or_show, run_record, run_splits, write_report
from transformers import (
    AutoConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from transformers_flex.hub import metric_names, read_run
from transformers_flex.training_args import STAGE_RESULTS_NAME
from transformers_flex.training_pipeline import ModelArguments, config_overrides
from transformers_flex.utils import load_tokenizer

# The recipe options: where the run's record holds each, and its type.
RECIPE = {
    "task_name": (("task", "name"), str),
    "seed": (("training", "seed"), int),
    "max_train_samples": (("data", "max_train_samples"), int),
    "importance_samples": (("data", "importance_samples"), int),
    "max_seq_length": (("data", "max_seq_length"), int),
    "per_device_train_batch_size": (("training", "per_device_train_batch_size"), int),
    "num_train_epochs": (("stages", "teacher", "num_train_epochs"), float),
    "learning_rate": (("stages", "teacher", "learning_rate"), float),
}


def recorded(record: dict, where: tuple[str, ...]):
    """The value at the path `where` of a run's record."""
    for key in where:
        record = record[key]
    return record


def check_recipe(args: argparse.Namespace, run_dir: str, record: dict) -> None:
    """Refuse a run without a teacher stage or record, and recipe options that differ from what the run recorded."""
    if "teacher" not in record.get("stages", {}):
        raise SystemExit(f"{run_dir} records no teacher stage (its run_config.json): nothing to compare against.")
    differences = [
        f"--{name} {getattr(args, name)} (the run: {recorded(record, where)})"
        for name, (where, _) in RECIPE.items()
        if getattr(args, name) is not None and getattr(args, name) != recorded(record, where)
    ]
    if differences:
        raise SystemExit(
            f"The teacher stage of {run_dir} was trained with other settings than these: " + "; ".join(differences)
        )


def plain_model(record: dict, task):
    """Vanilla BERT from the run's starting checkpoint with the task's head and the run's config overrides, seeded as
    the pipeline seeds its first stage (so the new head starts from the same weights)."""
    start = record["model"]["model_name_or_path"]
    model_type = AutoConfig.from_pretrained(start).model_type
    if model_type != "bert":
        raise SystemExit(f"The run starts from a {model_type!r} checkpoint ({start}); the baseline is vanilla BERT.")
    overrides = config_overrides(ModelArguments(config_overrides=record["model"]["config_overrides"]), start)
    set_seed(record["training"]["seed"])
    return BertForSequenceClassification.from_pretrained(start, **task.config_overrides(), **overrides)


def plain_training_arguments(record: dict, output_dir: str) -> TrainingArguments:
    """The teacher stage's training arguments as plain `TrainingArguments`: the run's shared ones, the stage's
    learning rate and epochs; nothing saved or reported."""
    known = {field.name for field in dataclasses.fields(TrainingArguments) if field.init}
    unknown = sorted(set(record["training"]) - known)
    if unknown:
        raise SystemExit(f"The run records training settings the plain Trainer lacks ({unknown}): it cannot match.")
    teacher = record["stages"]["teacher"]
    return TrainingArguments(
        output_dir=output_dir,
        **record["training"],
        learning_rate=teacher["learning_rate"],
        num_train_epochs=teacher["num_train_epochs"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
    )


def train_plain(data) -> dict:
    """Fine-tune the plain model on the run's training split; its dev metrics."""
    record = data.run.record
    tokenizer = load_tokenizer(record["model"]["model_name_or_path"])
    train = data.task.tokenize(data.splits["train"], tokenizer, data.max_seq_length)
    dev = data.task.tokenize(data.splits["dev"], tokenizer, data.max_seq_length, training=False)
    model = plain_model(record, data.task)
    with tempfile.TemporaryDirectory() as output_dir:  # nothing is saved; Trainer wants a folder
        trainer = Trainer(
            model=model,
            args=plain_training_arguments(record, output_dir),
            train_dataset=train,
            eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=data.task.compute_metrics(),
        )
        trainer.train()
        return trainer.evaluate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="A finished `transformers-flex train` run with a teacher stage.")
    for name, (_, kind) in RECIPE.items():
        parser.add_argument(f"--{name}", type=kind, help="Check: must be the run's (default: the run's).")
    parser.add_argument("--output", help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=("run", "output"))
    if args is None:
        return

    check_recipe(args, args.run, read_run(args.run).record)
    data = run_splits(args.run)
    if data.task.is_qa:
        raise SystemExit("An extractive QA run: use benchmarks/plain_trainer_squad_baseline.py.")
    teacher = json.loads((data.checkpoint("teacher") / STAGE_RESULTS_NAME).read_text())["metrics"]
    plain = train_plain(data)
    names = ["eval_loss", *(f"eval_{name}" for name in metric_names(teacher))]
    report = run_record(
        run=str(Path(args.run).resolve()),
        task=data.task.name,
        seed=data.run.record["training"]["seed"],
        train_examples=len(data.splits["train"]),
        dev_examples=len(data.splits["dev"]),
        plain_trainer={key: plain[key] for key in names},
        flexbert_teacher={key: teacher[key] for key in names},
        difference_points={key: 100 * (teacher[key] - plain[key]) for key in names if key != "eval_loss"},
    )
    write_report(args.output, report)
    print(table(report))


def table(report: dict) -> str:
    """Each dev metric of the FlexBert teacher and the plain Trainer (× 100; the loss as it is) and teacher − plain."""
    lines = ["| metric | FlexBert teacher | plain Trainer | teacher − plain |", "|---|---|---|---|"]
    teacher, plain = report["flexbert_teacher"], report["plain_trainer"]
    for key in teacher:
        if key in report["difference_points"]:
            cells = f"{100 * teacher[key]:.2f} | {100 * plain[key]:.2f} | {report['difference_points'][key]:+.2f}"
        else:  # the loss
            cells = f"{teacher[key]:.5f} | {plain[key]:.5f} | {teacher[key] - plain[key]:+.5f}"
        lines.append(f"| {key.removeprefix('eval_')} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
