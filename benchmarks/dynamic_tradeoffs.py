"""Metric vs FLOPs of every way to run a dynamic model on a run's dev set (docs/algorithms.md §5-8, issue #4).

Curves, each point measured on the whole dev set with the batched engine (per-example FLOPs at real lengths,
relative to the full static model):
  static        every (width, depth) sub-network, a plain forward (no ramps or gates run)
  entropy       off-ramps only, entropy thresholds (DeeBERT's criterion; FastBERT's normalised entropy gives the
                same exits at thresholds scaled by 1/ln C, so it is the same curve)
  patience      off-ramps only, PABEE's patience 1..4 (regression: at several agreement tolerances)
  gates         width gates only, with the gate classes remapped to other width lists (no retraining)
  gates+entropy gates and ramps together (the Flexible BERT framework); regression: gates+patience
  geep          exit layers predicted from tokens (table fit on training examples), one full batch per layer
Regression (STS-B) has no entropy: patience is its only exit criterion, so it gets no entropy or GEEP curve; a
model without width gates (ramps only) gets no gate curves. Plus the fine-tuned teacher (Stage 0). Writes JSON
(with versions and machine) and a plot; prints the Pareto frontier as a Markdown table.

    python benchmarks/dynamic_tradeoffs.py --run runs/dynamic/sst2 \
        --output benchmarks/results/dynamic_tradeoffs_sst2.json

The run's own data and metrics (any `transformers-flex train` run: GLUE, a Hub dataset or files), dev set as the
run split it. The model is the run's final stage (`gates` for benchmarks/train_dynamic.sh; `--stage` picks
another), the teacher its `teacher` stage. GEEP's table is fit on the first `--geep-train-examples` of the run's
training split, shuffled with seed 0.
"""

import argparse
import math
from dataclasses import replace
from pathlib import Path

import torch
from common import RunSplits, add_run_arguments, main_metric, parse_or_show, run_record, run_splits, write_report
from tqdm.auto import tqdm

from transformers_flex import FlexBertConfig, FlexBertForSequenceClassification, subnet_flops
from transformers_flex.evaluation import dynamic_predict, predict, subnet_grid
from transformers_flex.inference import bucketed_forward, fit_exit_predictor
from transformers_flex.utils import load_tokenizer

# Gate classes are trained as these widths; remapping them moves the trade-off (docs/algorithms.md §6).
TRAINED_GATE_WIDTHS = [1.0, 0.75, 0.5, 0.25]
GATE_REMAPS = {
    "cautious": [1.0, 1.0, 0.75, 0.5],
    "mild": [1.0, 0.75, 0.75, 0.5],
    "trained": None,
    "eager": [0.75, 0.5, 0.5, 0.25],
}
ENTROPY_FRACTIONS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # of ln C (the largest possible entropy)
GATED_FRACTIONS = [0.1, 0.3, 0.5, 0.7]
# Regression (STS-B, scores 0-5): two ramps agree when their scores differ by less than the tolerance.
REGRESSION_TOLERANCES = [0.05, 0.1, 0.2, 0.4]
GATED_TOLERANCE = 0.2
GEEP_FRACTIONS = [0.1, 0.3, 0.5, 0.7]


class Sweep:
    """Collects (method, setting, metric, relative FLOPs) points for one model and a run's dev set."""

    def __init__(self, data: RunSplits, model, batches: list[dict]):
        self.data, self.model, self.batches = data, model, batches
        self.metric: str | None = None  # the task's first metric, named by the first point's scores
        lengths = torch.cat([batch["attention_mask"].sum(dim=1) for batch in batches]).tolist()
        self.full_flops = sum(subnet_flops(model.config, 1.0, 1.0, length) for length in lengths)
        self.points: list[dict] = []

    def add(self, method: str, setting: dict, logits, labels, flops, exit_layers=None) -> None:
        metrics = self.data.scores(logits, labels)
        self.metric = self.metric or main_metric(metrics)
        point = {"method": method, **setting, **metrics, "metric": metrics[self.metric]}
        point["relative_flops"] = float(flops.sum()) / self.full_flops
        if exit_layers is not None:
            point["mean_exit_layer"] = float(exit_layers.float().mean())
        self.points.append(point)

    def run(self, method: str, setting: dict, **engine) -> None:
        out = dynamic_predict(self.model, self.batches, **engine)
        self.add(method, setting, out["logits"], out["labels"], out["flops"], out["exit_layers"])


def sweep_model(data: RunSplits, model, batches: list[dict], train_batches: list[dict]) -> Sweep:
    sweep = Sweep(data, model, batches)
    regression = model.config.num_labels == 1
    ln_classes = math.log(max(2, model.config.num_labels))
    progress = tqdm(total=7, desc="curves")
    for width, depth in subnet_grid(model.config):
        with model.subnet(width=width, depth=depth):
            logits, labels, lengths = predict(model, batches)
        flops = torch.tensor(
            [subnet_flops(model.config, width, depth, length) for length in lengths], dtype=torch.float64
        )
        sweep.add("static", {"width": width, "depth": depth}, logits, labels, flops)
    progress.update()
    if not regression:
        for fraction in ENTROPY_FRACTIONS:
            sweep.run(
                "entropy",
                {"threshold": fraction * ln_classes},
                criterion="entropy",
                threshold=fraction * ln_classes,
                use_gates=False,
            )
    progress.update()
    for tolerance in REGRESSION_TOLERANCES if regression else [None]:
        for patience in (1, 2, 3, 4):
            setting = {"threshold": patience} if tolerance is None else {"threshold": patience, "tolerance": tolerance}
            sweep.run(
                "patience",
                setting,
                criterion="patience",
                threshold=patience,
                use_gates=False,
                regression_tolerance=tolerance,  # None: the config's
            )
    progress.update()
    if len(model.width_gates):
        trained_widths = list(model.config.gate_widths)
        if trained_widths != TRAINED_GATE_WIDTHS:
            raise SystemExit(f"The remaps assume gates trained on widths {TRAINED_GATE_WIDTHS}, got {trained_widths}.")
        for name, widths in GATE_REMAPS.items():
            gate_widths = trained_widths if widths is None else widths  # the remap travels with each call
            sweep.run(
                "gates", {"gate_map": name, "gate_widths": gate_widths}, use_ramps=False, gate_widths=gate_widths
            )
            if regression:
                for patience in (1, 2):
                    setting = {"gate_map": name, "gate_widths": gate_widths, "threshold": patience}
                    sweep.run(
                        "gates+patience",
                        {**setting, "tolerance": GATED_TOLERANCE},
                        criterion="patience",
                        threshold=patience,
                        gate_widths=gate_widths,
                        regression_tolerance=GATED_TOLERANCE,
                    )
            else:
                for fraction in GATED_FRACTIONS:
                    setting = {"gate_map": name, "gate_widths": gate_widths, "threshold": fraction * ln_classes}
                    sweep.run(
                        "gates+entropy",
                        setting,
                        criterion="entropy",
                        threshold=fraction * ln_classes,
                        gate_widths=gate_widths,
                    )
    progress.update(2)
    if not regression:
        for fraction in GEEP_FRACTIONS:
            geep_point(sweep, model, train_batches, fraction * ln_classes)
    progress.update(2)
    progress.close()
    return sweep


def geep_point(sweep: Sweep, model, train_batches: list[dict], threshold: float) -> None:
    """GEEP: exit layers of training examples under the entropy criterion -> token table -> predicted layer per dev
    example -> one dense batch per predicted layer, only that layer's classifier run."""
    predictor = fit_exit_predictor(model, train_batches, threshold=threshold)
    logits, labels, flops, exits = [], [], [], []
    for batch in sweep.batches:
        predicted = predictor.predict(batch["input_ids"], batch["attention_mask"])
        out = bucketed_forward(
            model, batch["input_ids"], predicted, batch["attention_mask"], batch.get("token_type_ids")
        )
        logits.append(out.logits)
        labels.append(batch["labels"])
        flops.append(out.flops)
        exits.append(out.exit_layers)
    sweep.add(
        "geep", {"threshold": threshold}, torch.cat(logits), torch.cat(labels), torch.cat(flops), torch.cat(exits)
    )


def load_model(path: Path, exit_layers: list[int] | None) -> FlexBertForSequenceClassification:
    """The dynamic model, keeping only the trained off-ramps after `exit_layers` (None: all of them)."""
    if exit_layers is None:
        return FlexBertForSequenceClassification.from_pretrained(path).eval()
    trained = FlexBertConfig.from_pretrained(path).exit_layers
    if not set(exit_layers) <= set(trained):
        raise SystemExit(f"--exit-layers {exit_layers}: the model has trained off-ramps only after layers {trained}.")
    return FlexBertForSequenceClassification.from_pretrained(path, exit_layers=exit_layers).eval()


def teacher_point(sweep: Sweep, teacher_path: Path) -> dict:
    teacher = FlexBertForSequenceClassification.from_pretrained(teacher_path).eval()
    out = dynamic_predict(teacher, sweep.batches, use_gates=False, use_ramps=False)
    metrics = sweep.data.scores(out["logits"], out["labels"])
    return {
        "method": "teacher",
        **metrics,
        "metric": metrics[sweep.metric],
        "relative_flops": float(out["flops"].sum()) / sweep.full_flops,
    }


def best_points(points: list[dict], teacher: dict, flops_budget: float) -> dict:
    """The best dynamic point within the FLOPs budget, and the cheapest point at least as good as the teacher."""
    # NaN metrics (a constant prediction has no correlation) are never best; ties go to the cheaper point.
    dynamic = [p for p in points if p["method"] not in ("static", "teacher") and not math.isnan(p["metric"])]
    within = [point for point in dynamic if point["relative_flops"] <= flops_budget]
    matching = [point for point in dynamic if point["metric"] >= teacher["metric"]]
    return {
        f"best_within_{flops_budget}_flops": (
            max(within, key=lambda p: (p["metric"], -p["relative_flops"])) if within else None
        ),
        "cheapest_matching_teacher": min(matching, key=lambda p: p["relative_flops"]) if matching else None,
    }


def describe(point: dict) -> str:
    """A point's settings in a few words."""
    keys = [key for key in ("width", "depth", "gate_map", "threshold", "tolerance") if key in point]
    settings = ", ".join(
        f"{key} {point[key]:.3g}" if isinstance(point[key], float) else f"{key} {point[key]}" for key in keys
    )
    return f"{point['method']} ({settings})" if settings else point["method"]


def table(report: dict) -> str:
    """The Pareto frontier (no other point has higher metric at lower FLOPs) and the headline points, as a table."""
    points = sorted(report["points"], key=lambda p: (p["relative_flops"], -p["metric"]))
    frontier, best = [], -1.0
    for point in points:
        if point["metric"] > best:
            frontier.append(point)
            best = point["metric"]
    teacher = report["teacher"]
    lines = [
        f"| {report['task']} point | dev {report['metric']} | vs teacher | FLOPs vs full | mean exit layer |",
        "|---|---|---|---|---|",
    ]
    for point in [teacher, *frontier]:
        exit_layer = point.get("mean_exit_layer")
        cells = [
            describe(point),
            f"{100 * point['metric']:.1f}",
            f"{100 * (point['metric'] - teacher['metric']):+.1f}",
            f"{point['relative_flops']:.2f}",
            "" if exit_layer is None else f"{exit_layer:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    styles = {
        "static": "s",
        "entropy": "o-",
        "patience": "^-",
        "gates": "D",
        "gates+entropy": ".",
        "gates+patience": ".",
        "geep": "v-",
    }
    for method, style in styles.items():
        points = sorted((p for p in report["points"] if p["method"] == method), key=lambda p: p["relative_flops"])
        if points:
            axis.plot(
                [p["relative_flops"] for p in points],
                [100 * p["metric"] for p in points],
                style,
                label=method,
                alpha=0.8,
            )
    teacher = report["teacher"]
    axis.axhline(100 * teacher["metric"], color="gray", linestyle="--", linewidth=1)
    axis.plot([teacher["relative_flops"]], [100 * teacher["metric"]], "k*", markersize=12, label="teacher")
    axis.set_xlabel("FLOPs relative to the full model (real lengths)")
    axis.set_ylabel(f"dev {report['metric']} (%)")
    axis.set_title(f"{report['task']}: dynamic inference trade-offs")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def geep_train_batches(data: RunSplits, tokenizer, batch_size: int, examples: int) -> list[dict]:
    """The first `examples` of the run's training split, shuffled with seed 0, as length-bucketed batches."""
    shuffled = replace(data, splits=data.splits | {"train": data.splits["train"].shuffle(seed=0)})
    return shuffled.batches("train", tokenizer, batch_size, examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, stage_help="the run's final one; it needs off-ramps, optionally gates")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--geep-train-examples", type=int, default=2000, help="Training examples for GEEP's table.")
    parser.add_argument("--flops-budget", type=float, default=0.6)
    parser.add_argument(
        "--exit-layers",
        type=int,
        nargs="+",
        default=None,
        help="Run only the model's off-ramps after these layers (the others are dropped, nothing is retrained).",
    )
    parser.add_argument("--output", help="Where to write the JSON (the plot goes beside it, as .png).")
    args = parse_or_show(parser, table, required=("run", "output"))
    if args is None:
        return

    data = run_splits(args.run, args.max_eval_samples)
    checkpoint, teacher_checkpoint = data.checkpoint(args.stage), data.checkpoint("teacher")
    tokenizer = load_tokenizer(checkpoint)
    batches = data.batches("dev", tokenizer, args.batch_size)
    train_batches = geep_train_batches(data, tokenizer, args.batch_size, args.geep_train_examples)
    model = load_model(checkpoint, args.exit_layers)
    torch.manual_seed(0)
    sweep = sweep_model(data, model, batches, train_batches)
    teacher = teacher_point(sweep, teacher_checkpoint)
    report = run_record(
        task=data.task.name,
        checkpoint=str(checkpoint),
        teacher_checkpoint=str(teacher_checkpoint),
        metric=sweep.metric,
        dev_examples=len(data.splits["dev"]),
        teacher=teacher,
        **best_points(sweep.points, teacher, args.flops_budget),
        points=sweep.points,
    )
    write_report(args.output, report)
    plot(report, Path(args.output).with_suffix(".png"))
    print(table(report))


if __name__ == "__main__":
    main()
