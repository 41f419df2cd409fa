"""The plain `Trainer` + vanilla `BertForQuestionAnswering` on exactly the data and recipe of a QA run's teacher
stage, to check that FlexBert's QA teacher is ordinary fine-tuning.

    python benchmarks/plain_trainer_squad_baseline.py --run runs/squad

Everything comes from the run's record: the training questions as the run split them (its seed, training size and
held-out size), windowed by the task's functions at the run's length and stride, so both see the same windows in the
same order; the dev questions are the run's dev subset (the teacher stage's own); the recipe is the teacher stage's
learning rate and epochs, the run's shared training settings (batch size, seed, schedule...), its config overrides
and its starting checkpoint. (runs/squad, trained by benchmarks/train_squad.sh, recorded what the committed result's
command passed as flags: 3,000 training questions, 500 dev questions, windows of 384 with stride 128, 2 epochs at lr
1e-4, batch 32, `attention_probs_dropout_prob=0.0`.) For smoke runs, `--max-train-samples`, `--max-eval-samples`
and `--max-steps` cut the run's data and recipe (the comparison then shows a difference). Writes
benchmarks/results/squad/plain_trainer_seed<seed>.json (or `--output`) and prints a Markdown table.
"""

import argparse
import dataclasses
import tempfile
from pathlib import Path

from common import parse_or_show, run_record, run_splits, write_report
from transformers import (
    AutoConfig,
    BertForQuestionAnswering,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from transformers_flex.utils import load_tokenizer

RESULTS = Path(__file__).parent / "results" / "squad"
COMPARED = ("eval_loss", "eval_exact_match", "eval_f1")
# The report's entries the table shows, with their row labels.
TABLE_ROWS = {
    "flexbert_teacher": "FlexBert teacher stage",
    "plain_trainer": "plain Trainer + BertForQuestionAnswering",
    "difference": "difference",
}


def first(dataset, count: int | None):
    """The first `count` rows of `dataset` (all of them for None)."""
    return dataset if count is None else dataset.select(range(min(count, len(dataset))))


def teacher_recipe(record: dict, max_steps: int | None) -> dict:
    """The `TrainingArguments` values of the run's teacher stage: the run's shared training settings, then the
    stage's own (learning rate, epochs); `max_steps` overrides the run's."""
    known = {field.name for field in dataclasses.fields(TrainingArguments)}
    recipe = {**record["training"], **record["stages"]["teacher"]}
    if max_steps is not None:
        recipe["max_steps"] = max_steps
    return {name: value for name, value in recipe.items() if name in known}  # not FlexTrainer's own settings


def plain_model(record: dict, seed: int) -> BertForQuestionAnswering:
    """Vanilla BERT QA from the run's starting checkpoint with its config overrides, the head drawn from `seed`."""
    start = record["model"]["model_name_or_path"]
    config = AutoConfig.from_pretrained(start)
    if record["model"]["config_overrides"]:
        config.update_from_string(record["model"]["config_overrides"])
    set_seed(seed)  # the new span head's initial weights, as the pipeline's teacher stage drew them
    return BertForQuestionAnswering.from_pretrained(start, config=config)


def table(report: dict) -> str:
    """The Markdown table of docs/RESULTS.md §7: the teacher stage, the plain Trainer, and their difference."""
    rows = ["| | eval loss | EM | F1 |", "|---|---|---|---|"]
    for name, label in TABLE_ROWS.items():
        values = report[name]
        rows.append(
            f"| {label} | {values['eval_loss']:.6f} | {values['eval_exact_match']:.2f} | {values['eval_f1']:.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="A finished extractive-QA run directory with a teacher stage.")
    parser.add_argument("--max-train-samples", type=int, help="Train on the run's first training questions (smoke).")
    parser.add_argument("--max-eval-samples", type=int, help="Score the run's first dev questions (smoke).")
    parser.add_argument("--max-steps", type=int, help="Stop training after these steps (smoke).")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="As the run's (train_squad.sh: 64).")
    parser.add_argument("--output", help="Where to write the JSON (default: results/squad/plain_trainer_seed<seed>).")
    args = parse_or_show(parser, table, required=("run",))
    if args is None:
        return

    data = run_splits(args.run, args.max_eval_samples)  # the run's own dev subset, as its teacher was evaluated on
    record = data.run.record
    train = first(data.splits["train"], args.max_train_samples)
    dev = data.splits["dev"]
    tokenizer = load_tokenizer(record["model"]["model_name_or_path"])
    train_features = data.task.tokenize(train, tokenizer, data.max_seq_length)
    dev_features = data.task.tokenize(dev, tokenizer, data.max_seq_length, training=False)
    recipe = teacher_recipe(record, args.max_steps)
    with tempfile.TemporaryDirectory() as scratch:  # nothing is saved
        where = {"output_dir": scratch, "per_device_eval_batch_size": args.eval_batch_size, "use_cpu": True}
        quiet = {"save_strategy": "no", "report_to": "none", "logging_steps": 20, "disable_tqdm": True}
        training_args = TrainingArguments(**recipe | where | quiet)
        trainer = Trainer(
            model=plain_model(record, training_args.seed),
            args=training_args,
            train_dataset=train_features,
            eval_dataset=dev_features,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=data.task.compute_metrics(dev, dev_features),
        )
        trainer.train()
        plain = trainer.evaluate()
    teacher = data.run.results["stages"]["teacher"]["metrics"]
    report = run_record(
        task=data.task.name,
        teacher_checkpoint=str(data.checkpoint("teacher")),
        recipe=recipe,
        train_windows=len(train_features),
        dev_questions=len(dev),
        plain_trainer={key: plain[key] for key in COMPARED},
        flexbert_teacher={key: teacher[key] for key in COMPARED},
        difference={key: teacher[key] - plain[key] for key in COMPARED},
    )
    write_report(args.output or RESULTS / f"plain_trainer_seed{training_args.seed}.json", report)
    print(table(report))


if __name__ == "__main__":
    main()
