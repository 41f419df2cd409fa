"""SQuAD v1.1 dev exact match and F1 of a QA teacher and of every static sub-network of a flexible QA model, with
FLOPs per question at real lengths, on the whole dev set (10,570 questions) by default; a metric-vs-FLOPs plot.

    python benchmarks/squad_subnets.py --teacher runs/squad/teacher --model runs/squad/width_depth

Windows are cut as in training (`--max_seq_length`, `--doc_stride`; run_qa.py's 384/128 by default). FLOPs per
question add up its windows (a long context costs several). Writes benchmarks/results/squad/subnets.json and
subnets.png, and each model's answers as `predictions.json` files under `--predictions_dir`.
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding  # noqa: E402

from transformers_flex import FlexBertForQuestionAnswering  # noqa: E402
from transformers_flex.evaluation import evaluate_qa_subnets, subnet_grid  # noqa: E402
from transformers_flex.squad import load_squad  # noqa: E402
from transformers_flex.tasks import squad_task  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "squad"


def plot(summary: dict, path: Path) -> None:
    """F1 against GFLOPs per question: every sub-network (labelled width/depth) and the teacher."""
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    rows = summary["subnets"]
    axis.scatter([row["mean_flops"] / 1e9 for row in rows], [row["f1"] for row in rows], label="flexible sub-networks")
    for row in rows:
        axis.annotate(f"{row['width']}/{row['depth']}", (row["mean_flops"] / 1e9, row["f1"]), fontsize=7)
    teacher = summary["teacher"]
    axis.scatter([teacher["mean_flops"] / 1e9], [teacher["f1"]], marker="*", s=160, color="red", label="teacher")
    axis.set_xlabel("GFLOPs per question (real lengths)")
    axis.set_ylabel("SQuAD v1.1 dev F1")
    axis.set_title(f"SQuAD v1.1 dev ({summary['dev_questions']} questions), width/depth labels")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="The fine-tuned full model (the pipeline's teacher stage).")
    parser.add_argument("--model", required=True, help="The flexible model (the pipeline's width_depth stage).")
    parser.add_argument("--full_depth_only", action="store_true", help="Widths at full depth (a width-stage model).")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Dev questions (default: all).")
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--predictions_dir", default="runs/squad_predictions")
    parser.add_argument("--output", default=str(RESULTS / "subnets.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    examples = load_squad()["validation"]
    if args.max_eval_samples is not None:
        examples = examples.select(range(args.max_eval_samples))
    task = squad_task()
    task.doc_stride = args.doc_stride
    features = task.tokenize(examples, tokenizer, args.max_seq_length, training=False)
    collate = DataCollatorWithPadding(tokenizer)
    started = time.time()
    teacher_model = FlexBertForQuestionAnswering.from_pretrained(args.teacher)
    teacher = evaluate_qa_subnets(teacher_model, examples, features, collate, [(1.0, 1.0)], args.batch_size)[0]
    model = FlexBertForQuestionAnswering.from_pretrained(args.model)
    grid = subnet_grid(model.config, full_depth_only=args.full_depth_only)
    subnets = evaluate_qa_subnets(model, examples, features, collate, grid, args.batch_size)
    predictions_dir = Path(args.predictions_dir)
    predictions_dir.mkdir(parents=True, exist_ok=True)
    (predictions_dir / "teacher.json").write_text(json.dumps(teacher.pop("answers")))
    for row in subnets:
        (predictions_dir / f"w{row['width']}_d{row['depth']}.json").write_text(json.dumps(row.pop("answers")))
    summary = {
        "command": "python benchmarks/squad_subnets.py "
        + " ".join(
            f"--{key}" if value is True else f"--{key} {value}"
            for key, value in vars(args).items()
            if value not in (None, False)
        ),
        "dev_questions": len(examples),
        "dev_windows": len(features),
        "seconds": round(time.time() - started, 1),
        "teacher": teacher,
        "subnets": subnets,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2))
    plot(summary, output.with_suffix(".png"))
    for row in [teacher, *subnets]:
        print(
            f"w{row.get('width')} d{row.get('depth')}: EM {row['exact_match']:.2f} F1 {row['f1']:.2f} "
            f"GFLOPs/question {row['mean_flops'] / 1e9:.2f}"
        )


if __name__ == "__main__":
    main()
