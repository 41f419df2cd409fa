"""Trade-off points of the dynamic framework on a QA run's dev set: exact match, F1, FLOPs per question and mean exit
layer of every way to run a QA model with off-ramps and width gates, against the run's teacher stage (the task's
whole dev set by default: SQuAD v1.1's 10,570 questions). A question's windows exit together (`exit_groups`).
Curves:
  entropy        off-ramps only, mean start/end entropy below each `--thresholds` value (nats)
  patience       off-ramps only, PABEE's patience (consecutive ramps agreeing on the argmax start and end)
  gates          width gates only, their classes remapped to other width lists (no retraining)
  gates+entropy  gates and ramps together (the Flexible BERT framework), at `--gated-thresholds`
A model without gates gets the first two curves. Writes benchmarks/results/squad/dynamic.json and dynamic.png (or
`--output`).

    python benchmarks/squad_dynamic.py --run runs/squad --stage dynamic/gates \
        --thresholds 1.0 2.0 3.0 --patience 1 --gated-thresholds 2.0

`--stage` is the model with off-ramps (and gates): a stage of the run, or a checkpoint folder in it (train_squad.sh
trains ramps and gates into dynamic/); windows are cut as the run cut them.
"""

import argparse
import time
from pathlib import Path

from common import parse_or_show, run_record, run_splits, write_report
from squad_setup import add_qa_run_arguments, load_dev, save_f1_plot, teacher_point
from tqdm.auto import tqdm

from transformers_flex import FlexBertForQuestionAnswering
from transformers_flex.evaluation import evaluate_qa_dynamic

RESULTS = Path(__file__).parent / "results" / "squad"
# Gate classes stand for the trained widths [1.0, 0.75, 0.5, 0.25]; remapping them moves the trade-off.
GATE_REMAPS = {"cautious": [1.0, 1.0, 0.75, 0.5], "trained": None, "eager": [0.75, 0.5, 0.5, 0.25]}


def settings(args: argparse.Namespace, model: FlexBertForQuestionAnswering) -> list[tuple[str, dict]]:
    """(curve, engine settings) of every point to measure."""
    points = [("entropy", {"criterion": "entropy", "threshold": t, "use_gates": False}) for t in args.thresholds]
    points += [("patience", {"criterion": "patience", "threshold": p, "use_gates": False}) for p in args.patience]
    if len(model.width_gates):
        for name, widths in GATE_REMAPS.items():
            gate_widths = list(model.config.gate_widths) if widths is None else widths
            gated = {"gate_map": name, "gate_widths": gate_widths}
            points.append(("gates", {**gated, "use_ramps": False}))
            for threshold in args.gated_thresholds:
                points.append(("gates+entropy", {**gated, "criterion": "entropy", "threshold": threshold}))
    return points


def plot(report: dict, path: Path) -> None:
    """F1 against GFLOPs per question, one line per curve, and the teacher."""

    def draw(axis) -> None:
        for curve in dict.fromkeys(point["curve"] for point in report["points"]):
            points = sorted((p for p in report["points"] if p["curve"] == curve), key=lambda p: p["mean_flops"])
            axis.plot([p["mean_flops"] / 1e9 for p in points], [p["f1"] for p in points], "o-", label=curve)

    title = f"Dynamic inference on {report['task']} dev ({report['dev_questions']} questions)"
    save_f1_plot(report, path, title, draw)


def table(report: dict) -> str:
    """The Markdown table of docs/RESULTS.md §7: the teacher, then every trade-off point."""
    teacher = report["teacher"]
    rows = [
        "| curve | setting | EM | F1 | GFLOPs / question | vs teacher FLOPs | mean exit layer |",
        "|---|---|---|---|---|---|---|",
        f"| teacher | | {teacher['exact_match']:.2f} | {teacher['f1']:.2f} | "
        f"{teacher['mean_flops'] / 1e9:.2f} | 1.00 | |",
    ]
    for point in report["points"]:
        setting = ", ".join(f"{key} {point[key]}" for key in ("gate_map", "threshold") if key in point)
        rows.append(
            f"| {point['curve']} | {setting} | {point['exact_match']:.2f} | {point['f1']:.2f} | "
            f"{point['mean_flops'] / 1e9:.2f} | {point['mean_flops'] / teacher['mean_flops']:.2f} | "
            f"{point['mean_exit_layer']:.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_qa_run_arguments(parser)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--patience", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--gated-thresholds", type=float, nargs="*", default=[1.0, 2.0])
    parser.add_argument("--output", default=str(RESULTS / "dynamic.json"))
    args = parse_or_show(parser, table, required=("run",))
    if args is None:
        return

    data = run_splits(args.run, args.max_eval_samples, whole_dev=True)
    checkpoint = data.checkpoint(args.stage)
    dev = load_dev(data, checkpoint)
    started = time.time()
    teacher = teacher_point(data, dev, args.batch_size)
    teacher.pop("answers")
    model = FlexBertForQuestionAnswering.from_pretrained(checkpoint)
    points = []
    for curve, setting in tqdm(settings(args, model), desc="trade-off points"):
        engine = {key: value for key, value in setting.items() if key != "gate_map"}
        point = evaluate_qa_dynamic(model, dev.examples, dev.features, dev.collate, args.batch_size, **engine)
        point.pop("answers")
        points.append({"curve": curve, **setting, **point})
    report = run_record(
        task=data.task.name,
        checkpoint=str(checkpoint),
        teacher_checkpoint=str(data.checkpoint("teacher")),
        exit_layers=model.config.exit_layers,
        gate_block_size=model.config.gate_block_size,
        dev_questions=len(dev.examples),
        dev_windows=len(dev.features),
        seconds=round(time.time() - started, 1),
        teacher=teacher,
        points=points,
    )
    write_report(args.output, report)
    plot(report, Path(args.output).with_suffix(".png"))
    print(table(report))


if __name__ == "__main__":
    main()
