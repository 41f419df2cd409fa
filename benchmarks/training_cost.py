"""Training cost of each FlexTrainer stage relative to plain fine-tuning, measured in one run.

One optimizer step (FlexTrainer.training_step + AdamW step) per stage on the same real SST-2 batch; rounds
interleave the stages so machine noise hits them alike; medians over rounds, as ratios to the teacher stage (plain
fine-tuning of the full model). Writes benchmarks/results/training_cost.json and prints a Markdown table.

    python benchmarks/training_cost.py --rounds 7 --batch-size 32 --max-length 128
"""

import argparse
import copy
import json
import os
import platform
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding  # noqa: E402

from transformers_flex import FlexBertForSequenceClassification  # noqa: E402
from transformers_flex.data import load_glue, tokenize_glue  # noqa: E402
from transformers_flex.evaluation import interleaved_medians  # noqa: E402
from transformers_flex.trainer import FlexTrainer  # noqa: E402
from transformers_flex.training_args import FlexTrainingArguments  # noqa: E402
from transformers_flex.utils import default_backbone_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"
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
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1

    def step() -> None:
        trainer.training_step(trainer.model, dict(batch))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.state.global_step += 1  # new sandwich draws every step, as in training

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default=str(RESULTS / "training_cost.json"))
    args = parser.parse_args()

    backbone = default_backbone_path()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    train = load_glue("sst2")["train"].shuffle(seed=0).select(range(args.batch_size))
    features = tokenize_glue(train, tokenizer, "sst2", args.max_length)
    batch = DataCollatorWithPadding(tokenizer)([features[i] for i in range(len(features))])
    torch.manual_seed(0)
    base = FlexBertForSequenceClassification.from_pretrained(backbone, num_labels=2)
    steppers = {
        label: make_stepper(stage, sampling, copy.deepcopy(base), copy.deepcopy(base), batch)
        for label, stage, sampling in VARIANTS
    }
    medians = interleaved_medians(steppers, rounds=args.rounds, warmup=1, show_progress=True)
    plain = medians[VARIANTS[0][0]]
    rows = [
        {"variant": label, "seconds_per_step": medians[label], "ratio": medians[label] / plain} for label in medians
    ]
    report = {
        "command": f"python benchmarks/training_cost.py --rounds {args.rounds} --batch-size {args.batch_size} "
        f"--max-length {args.max_length}",
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "batch_tokens": int(batch["attention_mask"].sum()),
        "padded_length": int(batch["input_ids"].shape[1]),
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print("| stage | seconds per step | relative to plain fine-tuning |\n|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['seconds_per_step']:.2f} | {row['ratio']:.2f}× |")


if __name__ == "__main__":
    main()
