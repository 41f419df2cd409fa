"""Trade-off points of the dynamic framework on SQuAD v1.1 dev: exact match, F1, FLOPs per question and mean exit
layer of every way to run a QA model with off-ramps and width gates, against the teacher (whole dev set by
default). A question's windows exit together (`exit_groups`). Curves:
  entropy        off-ramps only, mean start/end entropy below each `--thresholds` value (nats)
  patience       off-ramps only, PABEE's patience (consecutive ramps agreeing on the argmax start and end)
  gates          width gates only, their classes remapped to other width lists (no retraining)
  gates+entropy  gates and ramps together (the Flexible BERT framework), at `--gated_thresholds`
A model without gates gets the first two curves. Writes benchmarks/results/squad/dynamic.json and dynamic.png.

    python benchmarks/squad_dynamic.py --model runs/squad/dynamic/gates --teacher runs/squad/teacher
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from squad_setup import add_dev_arguments, command_line, load_dev, teacher_point  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from transformers_flex import FlexBertForQuestionAnswering  # noqa: E402
from transformers_flex.evaluation import evaluate_qa_dynamic  # noqa: E402

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


def plot(summary: dict, path: Path) -> None:
    """F1 against GFLOPs per question, one line per curve, and the teacher."""
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for curve in dict.fromkeys(point["curve"] for point in summary["points"]):
        points = sorted((p for p in summary["points"] if p["curve"] == curve), key=lambda p: p["mean_flops"])
        axis.plot([p["mean_flops"] / 1e9 for p in points], [p["f1"] for p in points], "o-", label=curve)
    teacher = summary["teacher"]
    axis.scatter([teacher["mean_flops"] / 1e9], [teacher["f1"]], marker="*", s=160, color="red", label="teacher")
    axis.set_xlabel("GFLOPs per question (real lengths)")
    axis.set_ylabel("SQuAD v1.1 dev F1")
    axis.set_title(f"Dynamic inference on SQuAD v1.1 dev ({summary['dev_questions']} questions)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A QA model with off-ramps (and gates: the gates stage).")
    parser.add_argument("--teacher", required=True, help="The fine-tuned full model (the pipeline's teacher stage).")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--patience", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--gated_thresholds", type=float, nargs="*", default=[1.0, 2.0])
    add_dev_arguments(parser)
    parser.add_argument("--output", default=str(RESULTS / "dynamic.json"))
    args = parser.parse_args()

    dev = load_dev(args, args.model)
    started = time.time()
    teacher = teacher_point(args.teacher, dev, args.batch_size)
    teacher.pop("answers")
    model = FlexBertForQuestionAnswering.from_pretrained(args.model)
    points = []
    for curve, setting in tqdm(settings(args, model), desc="trade-off points"):
        engine = {key: value for key, value in setting.items() if key != "gate_map"}
        point = evaluate_qa_dynamic(model, dev.examples, dev.features, dev.collate, args.batch_size, **engine)
        point.pop("answers")
        points.append({"curve": curve, **setting, **point})
        print(
            f"{curve} {setting}: EM {point['exact_match']:.2f} F1 {point['f1']:.2f} "
            f"GFLOPs/question {point['mean_flops'] / 1e9:.2f} exit layer {point['mean_exit_layer']:.2f}"
        )
    summary = {
        "command": command_line("squad_dynamic.py", args),
        "exit_layers": model.config.exit_layers,
        "gate_block_size": model.config.gate_block_size,
        "dev_questions": len(dev.examples),
        "seconds": round(time.time() - started, 1),
        "teacher": teacher,
        "points": points,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2))
    plot(summary, output.with_suffix(".png"))


if __name__ == "__main__":
    main()
