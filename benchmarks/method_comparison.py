"""Every method of one task side by side, from committed result JSONs only (no model runs): one table and one plot.

At each FLOPs budget (1.0, 0.5, 0.25 of the full model) the table shows each method's best point within it:

- the fine-tuned teacher;
- the best fixed-size baseline (`--baselines`, benchmarks/fixed_size_baselines.py: 3-layer cuts, width 0.5 / 0.25
  cuts, fine-tuned or distilled);
- DynaBERT's width stage (`--dynabert`, benchmarks/grafting_ablation.py: the width stage without grafting, at full
  depth; the row of the flexible run's seed, its FLOPs ratios the flexible model's at the same widths);
- the flexible model's static sub-networks (`--flexible`, benchmarks/summarize_glue.py: the best of the 12 (width,
  depth) sub-networks after the width_depth stage);
- each training avenue's static sub-networks (`--avenues`, benchmarks/recipe_avenues.py: the best of its 12);
- the dynamic model (`--dynamic`, benchmarks/dynamic_tradeoffs.py): its widths at full depth (no ramps or gates
  run), and its best dynamic point (early exit, width gates, both, GEEP), naming the method and setting;
- the dynamic model built on the `final` stage (`--dynamic-final`, the same script): its best dynamic point.

Every input must hold the same task, main metric and teacher score (within `--teacher-tolerance`) as the flexible
model, and the fixed-size baselines and avenues the same seed: a model trained from another teacher is not
comparable (the STS-B sweep scored the same teacher checkpoint 5e-9 off in Pearson: hence its tolerance). The plot
draws every point against its FLOPs ratio, the dynamic points' Pareto front as a line.

    python benchmarks/method_comparison.py --flexible benchmarks/results/glue_flex_mrpc_seed42.json \\
        --baselines benchmarks/results/baselines_mrpc_seed42.json \\
        --dynamic benchmarks/results/dynamic_tradeoffs_mrpc.json \\
        --dynabert benchmarks/results/grafting_ablation.json \\
        --avenues benchmarks/results/avenues_mrpc_seed42.json \\
        --output benchmarks/results/method_comparison_mrpc.json
    python benchmarks/method_comparison.py --flexible benchmarks/results/glue_flex_stsb_seed42.json \\
        --dynamic benchmarks/results/dynamic_tradeoffs_stsb.json --teacher-tolerance 1e-8 \\
        --output benchmarks/results/method_comparison_stsb.json
    python benchmarks/method_comparison.py --show benchmarks/results/method_comparison_mrpc.json

Writes the JSON (with the command, machine and versions; for each method its points and its best point per budget)
and the plot (`--plot`, default: beside the JSON as .png); prints the table as Markdown.
"""

import argparse
import json
import math
from pathlib import Path

from common import parse_or_show, run_record, write_report
from dynamic_tradeoffs import describe

BUDGETS = (1.0, 0.5, 0.25)
# A width-0.5 model's FLOPs ratio is 0.5001-0.5003 (embeddings and classifier do not shrink): it fits budget 0.5.
BUDGET_SLACK = 1e-3


def read(path: str) -> dict:
    return json.loads(Path(path).read_text())


def check_input(path: str, reference: dict, found: dict, tolerance: float) -> None:
    """Stop, naming `path`, when any of its `found` task, metric, seed or teacher score differs from `reference`."""
    for key, value in found.items():
        expected = reference[key]
        if key == "teacher" and abs(value - expected) > tolerance:
            raise SystemExit(
                f"{path}: its teacher scores {value!r}, the flexible model's {expected!r}, more than "
                f"--teacher-tolerance {tolerance} apart: trained from another teacher, not comparable."
            )
        if key != "teacher" and value != expected:
            raise SystemExit(f"{path}: its {key} is {value!r}, the flexible model's {expected!r}: not comparable.")


def point(name: str, flops_ratio: float, metric: float) -> dict:
    return {"name": name, "flops_ratio": flops_ratio, "metric": metric}


def method(key: str, label: str, legend: str, source: str, points: list[dict]) -> dict:
    """A method's points; `label` names its row in the table, `legend` its points in the plot."""
    return {"key": key, "label": label, "legend": legend, "source": source, "points": points}


def flexible_summary(path: str, task: str | None) -> dict:
    """The task's entry of a summarize_glue.py JSON (`task` None: its only one)."""
    entries = read(path)["tasks"]
    summaries = [entry for entry in entries if task in (None, entry["task"])]
    if len(summaries) != 1:
        wanted = "name one with --task" if task is None else f"none is {task!r}"
        raise SystemExit(f"{path} holds the tasks {', '.join(entry['task'] for entry in entries)}: {wanted}.")
    if summaries[0]["teacher"] is None:
        raise SystemExit(f"{path}: its run has no teacher stage, the teacher every input is checked against.")
    return summaries[0]


def flexible_method(path: str, summary: dict, metric: str) -> dict:
    points = [point(f"w{row['width']} d{row['depth']}", row["flops_ratio"], row[metric]) for row in summary["rows"]]
    label = f"flexible model, static: best of its {len(points)} sub-networks ({summary['stage']} stage)"
    return method("flexible", label, "flexible model, static sub-networks", path, points)


def baselines_method(path: str, reference: dict, tolerance: float) -> dict:
    report = read(path)
    found = {key: report[key] for key in ("task", "metric", "seed", "teacher")}
    check_input(path, reference, found, tolerance)
    points = [point(row["name"], row["flops_ratio"], row["dev_metric"]) for row in report["rows"]]
    return method("baselines", "best fixed-size baseline", "fixed-size baselines", path, points)


def dynabert_method(path: str, reference: dict, tolerance: float, summary: dict) -> dict:
    """The width stage without grafting at full depth, the row of the reference seed; FLOPs ratios are the flexible
    model's sub-networks of the same width at full depth (same architecture, same dev set)."""
    entry = read(path)["tasks"].get(reference["task"])
    runs = [run for run in (entry or {}).get("runs", []) if run["seed"] == reference["seed"]]
    if not runs:
        raise SystemExit(f"{path} has no {reference['task']} run of seed {reference['seed']}.")
    check_input(path, reference, {"metric": entry["metric"], "teacher": runs[0]["teacher"]}, tolerance)
    ratios = {row["width"]: row["flops_ratio"] for row in summary["rows"] if row["depth"] == 1.0}
    points = [point(f"w{width} d1.0", ratios[float(width)], value) for width, value in runs[0]["no_graft"].items()]
    label = f"DynaBERT width stage (no grafting), seed {reference['seed']}: best width at full depth"
    return method("dynabert", label, "DynaBERT width stage (no grafting)", path, points)


def avenue_methods(path: str, reference: dict, tolerance: float) -> list[dict]:
    """One method per training avenue: its 12 static sub-networks."""
    report = read(path)
    check_input(path, reference, {key: report[key] for key in ("task", "metric", "seed", "teacher")}, tolerance)
    ratios = {subnet["name"]: subnet["flops_ratio"] for subnet in report["subnets"]}
    methods = []
    for avenue in report["avenues"]:
        own_ratios = ratios | avenue.get("flops_ratio", {})  # an avenue whose ramps answer depths costs more there
        points = [point(name.replace("_", " "), own_ratios[name], value) for name, value in avenue["scores"].items()]
        label = f"avenue {avenue['name']}, static: best of its {len(points)} sub-networks"
        methods.append(method(f"avenue:{avenue['name']}", label, f"avenue {avenue['name']}", path, points))
    return methods


def dynamic_methods(path: str, reference: dict, tolerance: float, on_final: bool = False) -> list[dict]:
    """The dynamic model's widths at full depth and its dynamic points (NaN scores left out: a constant prediction
    has no correlation). Its shallower static sub-networks are left out too: the model never trained them (its
    depth comes from its off-ramps), and some score below chance. `on_final`: the model built on the `final`
    stage, whose static sub-networks are that stage's (the avenues' `sandwich_final`): its dynamic points only."""
    report = read(path)
    found = {"task": report["task"], "metric": report["metric"], "teacher": report["teacher"]["metric"]}
    check_input(path, reference, found, tolerance)
    points = [entry for entry in report["points"] if not math.isnan(entry["metric"])]
    static = [p for p in points if p["method"] == "static" and p["depth"] == 1.0]
    static = [point(f"w{p['width']} d1.0", p["relative_flops"], p["metric"]) for p in static]
    dynamic = [point(describe(p), p["relative_flops"], p["metric"]) for p in points if p["method"] != "static"]
    if on_final:
        label = "dynamic model on the final stage: best dynamic point"
        return [method("dynamic_final", label, "dynamic model on the final stage", path, dynamic)]
    static_label = "dynamic model, static: best width at full depth (no ramps or gates run)"
    return [
        method("dynamic_static", static_label, "dynamic model, static widths (full depth)", path, static),
        method("dynamic", "dynamic model: best dynamic point", "dynamic model", path, dynamic),
    ]


def best_within(points: list[dict], budget: float) -> dict | None:
    """The best point with a FLOPs ratio within `budget` (ties: the cheaper); None when none fits."""
    within = [p for p in points if p["flops_ratio"] <= budget + BUDGET_SLACK]
    return max(within, key=lambda p: (p["metric"], -p["flops_ratio"])) if within else None


def pareto_front(points: list[dict]) -> list[dict]:
    """The points no cheaper point matches or beats, cheapest first."""
    front, best = [], -math.inf
    for entry in sorted(points, key=lambda p: (p["flops_ratio"], -p["metric"])):
        if entry["metric"] > best:
            front.append(entry)
            best = entry["metric"]
    return front


def cell(best: dict | None, teacher: float) -> str:
    if best is None:
        return "—"
    change = 100 * (best["metric"] - teacher)
    return f"{100 * best['metric']:.2f} ({change:+.2f}) at {best['flops_ratio']:.3f}, {best['name']}"


def table(report: dict) -> str:
    """One row per method; each budget's cell: its best point's dev metric (vs teacher), FLOPs ratio and name."""
    budgets = [str(budget) for budget in report["budgets"]]
    lines = [
        f"{report['task']} dev {report['metric']}, seed {report['seed']}: teacher {100 * report['teacher']:.2f}. Each "
        f"cell: the method's best point with FLOPs ratio ≤ the budget (+{report['budget_slack']}): dev "
        f"{report['metric']} % (vs teacher, points) at its FLOPs ratio, which point",
        "",
        "| method | " + " | ".join(f"≤ {budget} FLOPs" for budget in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for entry in report["methods"]:
        cells = [cell(entry["best"][budget], report["teacher"]) for budget in budgets]
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# method key -> (marker, colour), the same on every task's plot; avenues take the next of AVENUE_STYLES each.
STYLES = {
    "baselines": ("X", "tab:blue"),
    "dynabert": ("P", "tab:orange"),
    "flexible": ("s", "tab:green"),
    "dynamic_static": ("d", "tab:red"),
    "dynamic": (".", "tab:purple"),
    "dynamic_final": (".", "darkgoldenrod"),
}
DYNAMIC_KEYS = ("dynamic", "dynamic_final")  # drawn as every point, faint, and their Pareto front as a line
AVENUE_STYLES = [
    *(("^", "tab:brown"), ("v", "tab:pink"), ("<", "tab:olive"), (">", "tab:cyan")),
    *(("h", "black"), ("*", "tab:gray"), ("8", "navy"), ("p", "lime")),
    *(("D", "maroon"), ("d", "teal"), ("H", "gold"), ("1", "indigo"), ("+", "darkorange")),
]  # one per avenue of recipe_avenues.py


def plot(report: dict, path: Path) -> None:
    """Dev metric vs FLOPs ratio of every method's points; the teacher as a dashed line, the budgets dotted."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    avenue_styles = iter(AVENUE_STYLES)
    for entry in report["methods"]:
        if entry["key"] == "teacher":
            continue  # drawn as the dashed line
        marker, colour = STYLES.get(entry["key"]) or next(avenue_styles)
        points = sorted(entry["points"], key=lambda p: p["flops_ratio"])
        flops, metric = [p["flops_ratio"] for p in points], [100 * p["metric"] for p in points]
        if entry["key"] in DYNAMIC_KEYS:
            axis.plot(flops, metric, marker, color=colour, alpha=0.35, label=f"{entry['legend']}: every point")
            front = pareto_front(points)
            axis.plot(
                [p["flops_ratio"] for p in front],
                [100 * p["metric"] for p in front],
                "o-",
                color=colour,
                label=f"{entry['legend']}: Pareto front",
            )
        else:
            axis.plot(flops, metric, marker, color=colour, markersize=7, alpha=0.8, label=entry["legend"])
    axis.axhline(100 * report["teacher"], color="gray", linestyle="--", linewidth=1, label="teacher")
    for budget in report["budgets"]:
        if budget < 1.0:
            axis.axvline(budget, color="gray", linestyle=":", linewidth=1)
    axis.set_xlabel("FLOPs relative to the full model")
    axis.set_ylabel(f"dev {report['metric']} (%)")
    axis.set_title(f"{report['task']}, seed {report['seed']}: every method")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def collect_methods(args: argparse.Namespace, reference: dict, summary: dict) -> list[dict]:
    """Every method the inputs hold, in the table's order, each checked against `reference`."""
    flexible = flexible_method(args.flexible, summary, reference["metric"])
    teacher = method("teacher", "teacher", "teacher", args.flexible, [point("teacher", 1.0, reference["teacher"])])
    tolerance = args.teacher_tolerance
    methods = [teacher]
    if args.baselines:
        methods.append(baselines_method(args.baselines, reference, tolerance))
    if args.dynabert:
        methods.append(dynabert_method(args.dynabert, reference, tolerance, summary))
    methods.append(flexible)
    if args.avenues:
        methods += avenue_methods(args.avenues, reference, tolerance)
    if args.dynamic:
        methods += dynamic_methods(args.dynamic, reference, tolerance)
    if args.dynamic_final:
        methods += dynamic_methods(args.dynamic_final, reference, tolerance, on_final=True)
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flexible", help="summarize_glue.py JSON of the flexible model (the reference teacher).")
    parser.add_argument("--task", help="The task, when the --flexible JSON holds several.")
    parser.add_argument("--seed", type=int, default=42, help="The flexible run's seed (its JSON does not say).")
    parser.add_argument("--baselines", help="fixed_size_baselines.py JSON.")
    parser.add_argument("--dynabert", help="grafting_ablation.py JSON: its width stage without grafting.")
    parser.add_argument("--avenues", help="recipe_avenues.py JSON.")
    parser.add_argument("--dynamic", help="dynamic_tradeoffs.py JSON.")
    parser.add_argument(
        "--dynamic-final", help="dynamic_tradeoffs.py JSON of the dynamic model trained on the `final` stage."
    )
    parser.add_argument(
        "--teacher-tolerance",
        type=float,
        default=1e-9,
        help="How far the inputs' teacher scores may differ (the same teacher evaluated by other code may differ "
        "in the last float digits of a correlation).",
    )
    parser.add_argument("--output", help="Result JSON.")
    parser.add_argument("--plot", help="The plot (default: the output with .png).")
    args = parse_or_show(parser, table, required=("flexible", "output"))
    if args is None:
        return
    summary = flexible_summary(args.flexible, args.task)
    metric = summary["metrics"][0]  # the task's main metric
    reference = {"task": summary["task"], "metric": metric, "seed": args.seed, "teacher": summary["teacher"][metric]}
    methods = collect_methods(args, reference, summary)
    for entry in methods:
        entry["best"] = {str(budget): best_within(entry["points"], budget) for budget in BUDGETS}
    report = run_record(**reference, budgets=list(BUDGETS), budget_slack=BUDGET_SLACK)
    report |= {"teacher_tolerance": args.teacher_tolerance, "methods": methods}
    write_report(args.output, report)
    plot(report, Path(args.plot) if args.plot else Path(args.output).with_suffix(".png"))
    print(table(report))


if __name__ == "__main__":
    main()
