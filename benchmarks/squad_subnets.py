"""Dev exact match and F1 of a QA run's teacher and of every static sub-network of one of its flexible checkpoints,
with FLOPs per question at real lengths, on the task's whole dev set (SQuAD v1.1: 10,570 questions) by default; a
metric-vs-FLOPs plot.

    python benchmarks/squad_subnets.py --run runs/squad --stage width_depth_1ep

Any finished extractive-QA run (`transformers-flex train`, `examples/run_squad_flex.py`, benchmarks/train_squad.sh);
the teacher is the run's teacher stage, `--stage` the flexible model (a stage, or a checkpoint folder in the run such
as train_squad.sh's width_depth_1ep). Windows are cut as the run cut them (its `max_seq_length`, `doc_stride`).
FLOPs per question add up its windows (a long context costs several). `--full-depth-only` measures the widths at full
depth (a width-stage model: `--stage width`). Writes benchmarks/results/squad/subnets.json and subnets.png (or
`--output`), and each model's answers as files under `--predictions-dir`.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from common import parse_or_show, run_record, run_splits, write_report
from squad_setup import add_qa_run_arguments, load_dev, save_f1_plot, teacher_point

from transformers_flex import FlexBertForQuestionAnswering
from transformers_flex.evaluation import evaluate_qa_subnets, subnet_grid

RESULTS = Path(__file__).parent / "results" / "squad"


def plot(report: dict, path: Path) -> None:
    """F1 against GFLOPs per question: every sub-network (labelled width/depth) and the teacher."""

    def draw(axis) -> None:
        rows = report["subnets"]
        flops = [row["mean_flops"] / 1e9 for row in rows]
        axis.scatter(flops, [row["f1"] for row in rows], label="flexible sub-networks")
        for row, row_flops in zip(rows, flops):
            axis.annotate(f"{row['width']}/{row['depth']}", (row_flops, row["f1"]), fontsize=7)

    title = f"{report['task']} dev ({report['dev_questions']} questions), width/depth labels"
    save_f1_plot(report, path, title, draw)


def table(report: dict) -> str:
    """The Markdown table of docs/RESULTS.md §7: the teacher, then every sub-network."""
    teacher = report["teacher"]
    rows = [
        "| model | width | depth | EM | F1 | GFLOPs / question | vs teacher FLOPs | papers' GFLOPs / window |",
        "|---|---|---|---|---|---|---|---|",
        f"| teacher | 1.0 | 1.0 | {teacher['exact_match']:.2f} | {teacher['f1']:.2f} | "
        f"{teacher['mean_flops'] / 1e9:.2f} | 1.00 | {teacher['paper_flops'] / 1e9:.2f} |",
    ]
    for row in report["subnets"]:
        rows.append(
            f"| flexible | {row['width']} | {row['depth']} | {row['exact_match']:.2f} | {row['f1']:.2f} | "
            f"{row['mean_flops'] / 1e9:.2f} | {row['mean_flops'] / teacher['mean_flops']:.2f} | "
            f"{row['paper_flops'] / 1e9:.2f} |"
        )
    return "\n".join(rows)


def write_answers(predictions_dir: Path, teacher: dict, subnets: list[dict]) -> None:
    """Each model's answers (taken out of its row) as `{question id: answer}` files."""
    predictions_dir.mkdir(parents=True, exist_ok=True)
    (predictions_dir / "teacher.json").write_text(json.dumps(teacher.pop("answers")))
    for row in subnets:
        (predictions_dir / f"w{row['width']}_d{row['depth']}.json").write_text(json.dumps(row.pop("answers")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_qa_run_arguments(parser)
    parser.add_argument("--full-depth-only", action="store_true", help="Widths at full depth (a width-stage model).")
    parser.add_argument("--predictions-dir", default="runs/squad_predictions")
    parser.add_argument("--output", default=str(RESULTS / "subnets.json"))
    args = parse_or_show(parser, table, required=("run",))
    if args is None:
        return

    torch.manual_seed(0)
    data = run_splits(args.run, args.max_eval_samples, whole_dev=True)
    checkpoint = data.checkpoint(args.stage)
    dev = load_dev(data, checkpoint)
    started = time.time()
    teacher = teacher_point(data, dev, args.batch_size)
    model = FlexBertForQuestionAnswering.from_pretrained(checkpoint)
    grid = subnet_grid(model.config, full_depth_only=args.full_depth_only)
    subnets = evaluate_qa_subnets(model, dev.examples, dev.features, dev.collate, grid, args.batch_size)
    write_answers(Path(args.predictions_dir), teacher, subnets)
    report = run_record(
        task=data.task.name,
        checkpoint=str(checkpoint),
        teacher_checkpoint=str(data.checkpoint("teacher")),
        dev_questions=len(dev.examples),
        dev_windows=len(dev.features),
        seconds=round(time.time() - started, 1),
        teacher=teacher,
        subnets=subnets,
    )
    write_report(args.output, report)
    plot(report, Path(args.output).with_suffix(".png"))
    print(table(report))


if __name__ == "__main__":
    main()
