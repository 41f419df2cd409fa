"""Compare a benchmark's fresh JSON with the committed one: did a refactor move anything measured?

    python benchmarks/compare_results.py tradeoffs benchmarks/results/dynamic_tradeoffs_sst2.json \
        benchmarks/results/repro/dynamic_tradeoffs_sst2.json
    python benchmarks/compare_results.py throughput benchmarks/results/dynamic_throughput_sst2_cpu.json \
        benchmarks/results/repro/dynamic_throughput_sst2_cpu.json

`tradeoffs` matches the points of two `dynamic_tradeoffs.py` sweeps by method and setting and reports each point's
metric difference in dev examples (metric × dev examples, for accuracy-type metrics) and its FLOPs difference;
`throughput` matches the rows of two `dynamic_throughput.py` runs by variant and threshold and reports the change of
measured / FLOPs-ideal speed-up. Prints a Markdown table and, with `--output`, writes it as JSON (with the command,
machine and versions).
"""

import argparse
import json
from pathlib import Path

from common import parse_or_show, run_record, write_report

# What identifies a point besides its method (the rest of a point is what was measured).
SETTING_KEYS = ("width", "depth", "threshold", "tolerance", "gate_map")


def point_key(point: dict) -> tuple:
    """(method, setting) of a trade-off point, with float settings rounded so that equal sweeps match."""
    setting = tuple(
        (key, round(point[key], 6) if isinstance(point[key], float) else point[key])
        for key in SETTING_KEYS
        if key in point
    )
    return point["method"], setting


def compare_tradeoffs(old: dict, new: dict) -> list[dict]:
    """One row per point present in both sweeps: metric change in dev examples, FLOPs change."""
    examples = old["dev_examples"]
    new_points = {point_key(point): point for point in new["points"]}
    rows = []
    for point in old["points"]:
        match = new_points.get(point_key(point))
        if match is None:
            rows.append({"point": str(point_key(point)), "missing": True})
            continue
        rows.append(
            {
                "point": str(point_key(point)),
                "metric_old": point["metric"],
                "metric_new": match["metric"],
                "dev_examples_moved": round(abs(match["metric"] - point["metric"]) * examples, 3),
                "relative_flops_change": abs(match["relative_flops"] - point["relative_flops"]),
            }
        )
    return rows


def compare_throughput(old: dict, new: dict) -> list[dict]:
    """One row per variant and threshold present in both runs: change of measured / FLOPs-ideal."""
    new_rows = {(row["variant"], row.get("threshold")): row for row in new["rows"]}
    rows = []
    for row in old["rows"]:
        match = new_rows.get((row["variant"], row.get("threshold")))
        if match is None:
            rows.append({"variant": row["variant"], "threshold": row.get("threshold"), "missing": True})
            continue
        rows.append(
            {
                "variant": row["variant"],
                "threshold": row.get("threshold"),
                "fraction_of_ideal_old": row["fraction_of_ideal"],
                "fraction_of_ideal_new": match["fraction_of_ideal"],
                "change": match["fraction_of_ideal"] - row["fraction_of_ideal"],
            }
        )
    return rows


def summarize(kind: str, rows: list[dict]) -> dict:
    """The largest changes over the rows present in both results, and how many were compared or missing."""
    present = [row for row in rows if not row.get("missing")]
    if kind == "tradeoffs":
        summary = {"max_dev_examples_moved": max(row["dev_examples_moved"] for row in present)}
        summary["max_relative_flops_change"] = max(row["relative_flops_change"] for row in present)
    else:
        summary = {"max_abs_change_of_fraction_of_ideal": max(abs(row["change"]) for row in present)}
    return summary | {"compared": len(present), "missing": len(rows) - len(present)}


def cell(value) -> str:
    """A table cell: floats to four decimals, absent values blank."""
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def table(report: dict) -> str:
    """One line per compared row (its columns are the row's keys), then the summary."""
    columns = list(dict.fromkeys(key for row in report["rows"] for key in row))  # every key, first-seen order
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key in columns) + " |" for row in report["rows"]]
    summary = ", ".join(f"{key} {cell(value)}" for key, value in report["summary"].items())
    return "\n".join([*lines, "", f"Summary: {summary}."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", nargs="?", choices=["tradeoffs", "throughput"])
    parser.add_argument("committed", nargs="?", type=Path, help="The JSON committed with the results.")
    parser.add_argument("fresh", nargs="?", type=Path, help="The JSON of the new run.")
    parser.add_argument("--output", type=Path, default=None)
    args = parse_or_show(parser, table, required=())
    if args is None:
        return
    if args.fresh is None:
        parser.error("kind, committed and fresh are required (or --show COMPARISON.json).")

    old, new = json.loads(args.committed.read_text()), json.loads(args.fresh.read_text())
    rows = (compare_tradeoffs if args.kind == "tradeoffs" else compare_throughput)(old, new)
    report = run_record(kind=args.kind, summary=summarize(args.kind, rows), rows=rows)
    if args.output is not None:
        write_report(args.output, report)
    print(table(report))


if __name__ == "__main__":
    main()
