"""One training avenue of the flexible model against the teacher, the current recipe and every fixed-size model of
the same cost, over seeds: mean ± std of each side and the two-sided paired t-test (each seed's pair shares its
teacher, data order and dev set).

    python benchmarks/seed_comparison.py --avenue sandwich_final \\
        --avenues benchmarks/results/avenues_mrpc_seed{42,43,44}.json \\
        --baselines benchmarks/results/baselines_mrpc_seed{42,43,44}.json \\
        --output benchmarks/results/seed_comparison_mrpc.json
    python benchmarks/seed_comparison.py --show benchmarks/results/seed_comparison_mrpc.json

Inputs come in pairs, one per seed: a recipe_avenues.py JSON and a fixed_size_baselines.py JSON of the same task, seed
and teacher (the script stops otherwise). Rows: the avenue's full-size sub-network against the teacher; the avenue
against the current recipe (the mean over the 12 sub-networks); each fixed-size model against the avenue's
sub-network of the same width and depth.
"""

import argparse
import json
from pathlib import Path

from common import parse_or_show, run_record, write_report
from results_merge import mean_std, p_value_cell, paired_p_value, points

REFERENCE = "sandwich"  # the current recipe (recipe_avenues.py's reference)


def read_pair(avenues_path: str, baselines_path: str) -> dict:
    """One seed's values: teacher, the avenues' sub-network scores and the baselines, checked to be one run."""
    avenues = json.loads(Path(avenues_path).read_text())
    baselines = json.loads(Path(baselines_path).read_text())
    same_run = (avenues["task"], avenues["seed"]) == (baselines["task"], baselines["seed"])
    if not same_run or abs(avenues["teacher"] - baselines["teacher"]) > 1e-9:
        raise SystemExit(f"{avenues_path} and {baselines_path} are not one task, seed and teacher.")
    return {
        "seed": avenues["seed"],
        "task": avenues["task"],
        "metric": avenues["metric"],
        "teacher": avenues["teacher"],
        "flops_ratio": {subnet["name"]: subnet["flops_ratio"] for subnet in avenues["subnets"]},
        "avenues": {row["name"]: row["scores"] for row in avenues["avenues"]},
        "baselines": {row["name"]: row for row in baselines["rows"]},
    }


def comparison(name: str, subnet: str | None, flops_ratio: float | None, other: list, flexible: list) -> dict:
    """One row: `other` and the avenue's `flexible` values (one per seed, in the same order) and their statistics."""
    return {
        "compared_with": name,
        "subnet": subnet,
        "flops_ratio": flops_ratio,
        "other": other,
        "flexible": flexible,
        "other_mean_std": mean_std(other),
        "flexible_mean_std": mean_std(flexible),
        "difference_mean_std": mean_std([mine - theirs for mine, theirs in zip(flexible, other, strict=True)]),
        "p_value": paired_p_value(flexible, other),
    }


def comparisons(runs: list[dict], avenue: str) -> list[dict]:
    def mean_score(run: dict, name: str) -> float:
        scores = run["avenues"][name]
        return sum(scores.values()) / len(scores)

    missing = [run["seed"] for run in runs if avenue not in run["avenues"] or REFERENCE not in run["avenues"]]
    if missing:
        raise SystemExit(f"The avenues JSON of seed(s) {missing} lacks {avenue!r} or {REFERENCE!r}.")
    full = [run["avenues"][avenue]["w1.0_d1.0"] for run in runs]
    rows = [
        comparison("teacher", "w1.0_d1.0", 1.0, [run["teacher"] for run in runs], full),
        comparison(
            f"{REFERENCE} (mean of 12)",
            None,
            None,
            [mean_score(run, REFERENCE) for run in runs],
            [mean_score(run, avenue) for run in runs],
        ),
    ]
    for name, first in runs[0]["baselines"].items():
        subnet = f"w{first['width']}_d{first['depth']}"
        other = [run["baselines"][name]["dev_metric"] for run in runs]
        flexible = [run["avenues"][avenue][subnet] for run in runs]
        rows.append(comparison(name, subnet, runs[0]["flops_ratio"][subnet], other, flexible))
    return rows


def table(report: dict) -> str:
    seeds = len(report["seeds"])
    avenue = report["avenue"]
    lines = [
        f"{report['task']} dev {report['metric']}, seeds {', '.join(map(str, report['seeds']))}: avenue {avenue} "
        f"against each model (points, mean ± std over seeds; p: two-sided paired t-test)",
        f"| compared with | sub-network | FLOPs ratio | it | {avenue} | {avenue} − it | paired p |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["comparisons"]:
        ratio = "" if row["flops_ratio"] is None else f"{row['flops_ratio']:.3f}"
        cells = [
            row["compared_with"],
            row["subnet"] or "all 12",
            ratio,
            points(row["other_mean_std"], seeds),
            points(row["flexible_mean_std"], seeds),
            points(row["difference_mean_std"], seeds, signed=True),
            p_value_cell(row["p_value"], seeds),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--avenue", default="sandwich_final", help="The avenue of recipe_avenues.py to compare.")
    parser.add_argument("--avenues", nargs="+", help="recipe_avenues.py JSONs, one per seed.")
    parser.add_argument("--baselines", nargs="+", help="fixed_size_baselines.py JSONs, the same seeds in order.")
    parser.add_argument("--output", help="Where to write the JSON.")
    args = parse_or_show(parser, table, required=("avenues", "baselines", "output"))
    if args is None:
        return
    if len(args.avenues) != len(args.baselines):
        raise SystemExit("--avenues and --baselines need one file each per seed, in the same order.")
    runs = [read_pair(avenues, baselines) for avenues, baselines in zip(args.avenues, args.baselines)]
    if len({run["task"] for run in runs}) > 1 or len({run["seed"] for run in runs}) < len(runs):
        raise SystemExit("Every pair must be one task, each of another seed.")
    report = run_record(
        task=runs[0]["task"],
        metric=runs[0]["metric"],
        avenue=args.avenue,
        seeds=[run["seed"] for run in runs],
        comparisons=comparisons(runs, args.avenue),
    )
    write_report(args.output, report)
    print(table(report))


if __name__ == "__main__":
    main()
