"""The headline of the dynamic-inference sweeps (issue #4): per task and on average, the best dynamic point within a
FLOPs budget against the fine-tuned teacher, from the JSON files `benchmarks/dynamic_tradeoffs.py` writes.

    python benchmarks/dynamic_summary.py benchmarks/results/dynamic_tradeoffs_{sst2,mrpc,rte,stsb}.json

Prints a Markdown table; with `--output`, also writes it as JSON (with the command, machine and versions).
"""

import argparse
import json
import statistics
from pathlib import Path

from common import parse_or_show, run_record, write_report
from dynamic_tradeoffs import best_points, describe


def headline(report: dict, flops_budget: float) -> dict:
    """Teacher, full-width model, best dynamic point within the budget, cheapest dynamic point matching the teacher
    (picked as `dynamic_tradeoffs.py` picks them)."""
    teacher = report["teacher"]
    full = next(p for p in report["points"] if p["method"] == "static" and p["width"] == 1.0 and p["depth"] == 1.0)
    best = best_points(report["points"], teacher, flops_budget)
    return {
        "task": report["task"],
        "metric": report["metric"],
        "teacher": teacher["metric"],
        "full_width": full["metric"],
        "best_within_budget": best[f"best_within_{flops_budget}_flops"],
        "cheapest_matching_teacher": best["cheapest_matching_teacher"],
    }


def format_point(point: dict | None, teacher: float) -> str:
    if point is None:
        return "none"
    change = 100 * (point["metric"] - teacher)
    return f"{100 * point['metric']:.1f} ({change:+.1f}) at {point['relative_flops']:.2f} — {describe(point)}"


def table(summary: dict) -> str:
    """One row per task, then the average of the best points within the budget."""
    budget = summary["flops_budget"]
    lines = [
        f"| task (metric) | teacher | full-width model | best point ≤ {budget} FLOPs | cheapest point ≥ teacher |",
        "|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        cells = [
            f"{row['task']} ({row['metric']})",
            f"{100 * row['teacher']:.1f}",
            f"{100 * row['full_width']:.1f}",
            format_point(row["best_within_budget"], row["teacher"]),
            format_point(row["cheapest_matching_teacher"], row["teacher"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    best = [row for row in summary["rows"] if row["best_within_budget"] is not None]
    if best:
        change = statistics.fmean(100 * (row["best_within_budget"]["metric"] - row["teacher"]) for row in best)
        flops = statistics.fmean(row["best_within_budget"]["relative_flops"] for row in best)
        lines.append(
            f"\nAverage over {len(best)} tasks of the best point ≤ {budget} FLOPs: "
            f"{change:+.2f} points vs the teacher at {flops:.2f} of its FLOPs on average."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="*", help="JSON files written by benchmarks/dynamic_tradeoffs.py")
    parser.add_argument("--flops-budget", type=float, default=0.6)
    parser.add_argument("--output", help="Where to write the summary as JSON (optional).")
    args = parse_or_show(parser, table, required=())
    if args is None:
        return
    if not args.reports:
        parser.error("the dynamic_tradeoffs.py JSON files to summarise are required (or --show SUMMARY.json).")

    rows = [headline(json.loads(Path(path).read_text()), args.flops_budget) for path in args.reports]
    summary = run_record(flops_budget=args.flops_budget, reports=args.reports, rows=rows)
    if args.output:
        write_report(args.output, summary)
    print(table(summary))


if __name__ == "__main__":
    main()
