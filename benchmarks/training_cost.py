"""Training cost of each FlexTrainer stage relative to plain fine-tuning, measured in one run.

One optimizer step (FlexTrainer.training_step + AdamW step) per stage on the same real SST-2 batch (the first
`--batch-size` sentences of the shuffled training split, dynamically padded, cut at `--max-length`); rounds
interleave the stages so machine noise hits them alike; medians over rounds, as ratios to the teacher stage (plain
fine-tuning of the full model). Writes JSON (with the command, machine and versions; by default
benchmarks/results/training_cost.json) and prints a Markdown table.

    python benchmarks/training_cost.py --rounds 7 --batch-size 32 --max-length 128
"""

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from common import parse_or_show, run_record, write_report
from transformers import AutoTokenizer, DataCollatorWithPadding

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.data import load_glue, tokenize_glue
from transformers_flex.evaluation import interleaved_medians
from transformers_flex.trainer import FlexTrainer
from transformers_flex.training_args import FlexTrainingArguments
from transformers_flex.utils import default_backbone_path

RESULTS = Path(__file__).parent / "results"
TASK = "sst2"
SCHEDULE_STEPS = 1000  # the learning-rate schedule's length: any, the steps timed are few
# (label, stage, subnet sampling): every stage, and sandwich sampling where it differs from "all".
VARIANTS = [
    ("teacher (plain fine-tuning)", "teacher", "all"),
    ("width, 4 sub-networks", "width", "all"),
    ("width_depth, all 12 sub-networks", "width_depth", "all"),
    ("width_depth, sandwich (4 of 12)", "width_depth", "sandwich"),
    ("final (CE, 12 sub-networks)", "final", "all"),
]


def make_stepper(stage: str, sampling: str, model, teacher, batch: dict):
    """A function that runs one full optimizer step of `stage` on `batch`."""
    args = FlexTrainingArguments(
        output_dir=tempfile.mkdtemp(), flex_stage=stage, subnet_sampling=sampling, report_to="none", use_cpu=True
    )
    trainer = FlexTrainer(model=model, args=args, teacher_model=teacher if stage in ("width", "width_depth") else None)
    trainer.create_optimizer_and_scheduler(num_training_steps=SCHEDULE_STEPS)
    trainer.current_gradient_accumulation_steps = 1

    def step() -> None:
        trainer.training_step(trainer.model, dict(batch))
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.state.global_step += 1  # new sandwich draws every step, as in training

    return step


def training_batch(tokenizer, batch_size: int, max_length: int) -> dict:
    """The first `batch_size` sentences of the shuffled SST-2 training split, tokenized and padded together."""
    train = load_glue(TASK)["train"].shuffle(seed=0).select(range(batch_size))
    features = tokenize_glue(train, tokenizer, TASK, max_length)
    return DataCollatorWithPadding(tokenizer)([features[i] for i in range(len(features))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default=str(RESULTS / "training_cost.json"), help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=())
    if args is None:
        return

    backbone = default_backbone_path()
    batch = training_batch(AutoTokenizer.from_pretrained(backbone), args.batch_size, args.max_length)
    torch.manual_seed(0)
    base = FlexBertForSequenceClassification.from_pretrained(backbone, num_labels=2)
    steppers = {
        label: make_stepper(stage, sampling, copy.deepcopy(base), copy.deepcopy(base), batch)
        for label, stage, sampling in VARIANTS
    }
    medians = interleaved_medians(steppers, rounds=args.rounds, warmup=1, show_progress=True)
    plain = medians[VARIANTS[0][0]]
    report = run_record(
        task=TASK,
        batch_size=args.batch_size,
        rounds=args.rounds,
        batch_tokens=int(batch["attention_mask"].sum()),
        padded_length=int(batch["input_ids"].shape[1]),
        rows=[
            {"variant": label, "seconds_per_step": median, "ratio": median / plain}
            for label, median in medians.items()
        ],
    )
    write_report(args.output, report)
    print(table(report))


def table(report: dict) -> str:
    lines = ["| stage | seconds per step | relative to plain fine-tuning |", "|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['variant']} | {row['seconds_per_step']:.2f} | {row['ratio']:.2f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
