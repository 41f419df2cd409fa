"""The headline of the dynamic-inference sweeps (issue #4): per task and on average, the best dynamic point within a
FLOPs budget against the fine-tuned teacher, from the JSON files `benchmarks/dynamic_tradeoffs.py` writes.

    python benchmarks/dynamic_summary.py benchmarks/results/dynamic_tradeoffs_{sst2,mrpc,rte,stsb}.json
"""

import argparse
import json
import math
import statistics
from pathlib import Path


def describe(point: dict) -> str:
    """A point's method and settings in a few words."""
    settings = []
    if "gate_map" in point:
        settings.append(f"{point['gate_map']} gate map")
    if "threshold" in point:
        name = "patience" if point["method"].endswith("patience") else "entropy <"
        settings.append(f"{name} {point['threshold']:.3g}")
    if "tolerance" in point:
        settings.append(f"tolerance {point['tolerance']:g}")
    return f"{point['method']} ({', '.join(settings)})" if settings else point["method"]


def headline(report: dict, flops_budget: float) -> dict:
    """Teacher, full-width model, best dynamic point within the budget, cheapest dynamic point matching the teacher."""
    teacher = report["teacher"]
    points = report["points"]
    full = next(p for p in points if p["method"] == "static" and p["width"] == 1.0 and p["depth"] == 1.0)
    # NaN metrics (a constant prediction has no correlation) are never best; ties go to the cheaper point.
    dynamic = [p for p in points if p["method"] != "static" and not math.isnan(p["metric"])]
    within = [p for p in dynamic if p["relative_flops"] <= flops_budget]
    matching = [p for p in dynamic if p["metric"] >= teacher["metric"]]
    return {
        "task": report["task"],
        "metric": report["metric"],
        "teacher": teacher["metric"],
        "full_width": full["metric"],
        "best_within_budget": max(within, key=lambda p: (p["metric"], -p["relative_flops"])) if within else None,
        "cheapest_matching_teacher": min(matching, key=lambda p: p["relative_flops"]) if matching else None,
    }


def format_point(point: dict | None, teacher: float) -> str:
    if point is None:
        return "none"
    change = 100 * (point["metric"] - teacher)
    return f"{100 * point['metric']:.1f} ({change:+.1f}) at {point['relative_flops']:.2f} — {describe(point)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="JSON files written by benchmarks/dynamic_tradeoffs.py")
    parser.add_argument("--flops-budget", type=float, default=0.6)
    args = parser.parse_args()

    rows = [headline(json.loads(Path(path).read_text()), args.flops_budget) for path in args.reports]
    print(
        f"| task (metric) | teacher | full-width model | best point ≤ {args.flops_budget} FLOPs | "
        "cheapest point ≥ teacher |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        cells = [
            f"{row['task']} ({row['metric']})",
            f"{100 * row['teacher']:.1f}",
            f"{100 * row['full_width']:.1f}",
            format_point(row["best_within_budget"], row["teacher"]),
            format_point(row["cheapest_matching_teacher"], row["teacher"]),
        ]
        print("| " + " | ".join(cells) + " |")
    best = [row for row in rows if row["best_within_budget"] is not None]
    if best:
        change = statistics.fmean(100 * (row["best_within_budget"]["metric"] - row["teacher"]) for row in best)
        flops = statistics.fmean(row["best_within_budget"]["relative_flops"] for row in best)
        print(
            f"\nAverage over {len(best)} tasks of the best point ≤ {args.flops_budget} FLOPs: "
            f"{change:+.2f} points vs the teacher at {flops:.2f} of its FLOPs on average."
        )


if __name__ == "__main__":
    main()
