"""SQuAD v1.1 dev exact match and F1 of a QA teacher and of every static sub-network of a flexible QA model, with
FLOPs per question at real lengths, on the whole dev set (10,570 questions) by default; a metric-vs-FLOPs plot.

    python benchmarks/squad_subnets.py --teacher runs/squad/teacher --model runs/squad/width_depth

Windows are cut as in training (`--max_seq_length`, `--doc_stride`; run_qa.py's 384/128 by default). FLOPs per
question add up its windows (a long context costs several). Writes benchmarks/results/squad/subnets.json and
subnets.png, and each model's answers as `predictions.json` files under `--predictions_dir`.
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from squad_setup import add_dev_arguments, command_line, load_dev, teacher_point  # noqa: E402

from transformers_flex import FlexBertForQuestionAnswering  # noqa: E402
from transformers_flex.evaluation import evaluate_qa_subnets, subnet_grid  # noqa: E402

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
    add_dev_arguments(parser)
    parser.add_argument("--predictions_dir", default="runs/squad_predictions")
    parser.add_argument("--output", default=str(RESULTS / "subnets.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    dev = load_dev(args, args.model)
    started = time.time()
    teacher = teacher_point(args.teacher, dev, args.batch_size)
    model = FlexBertForQuestionAnswering.from_pretrained(args.model)
    grid = subnet_grid(model.config, full_depth_only=args.full_depth_only)
    subnets = evaluate_qa_subnets(model, dev.examples, dev.features, dev.collate, grid, args.batch_size)
    predictions_dir = Path(args.predictions_dir)
    predictions_dir.mkdir(parents=True, exist_ok=True)
    (predictions_dir / "teacher.json").write_text(json.dumps(teacher.pop("answers")))
    for row in subnets:
        (predictions_dir / f"w{row['width']}_d{row['depth']}.json").write_text(json.dumps(row.pop("answers")))
    summary = {
        "command": command_line("squad_subnets.py", args),
        "dev_questions": len(dev.examples),
        "dev_windows": len(dev.features),
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
