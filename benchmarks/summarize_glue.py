"""Tables and metric-vs-FLOPs plots of finished `run_glue_flex.py --flex_stage all` runs.

    python benchmarks/summarize_glue.py runs/mrpc runs/rte --output benchmarks/results/glue_flex

For each run directory: the teacher, and every (width, depth) sub-network of the last stage with its dev metrics
and FLOPs (analytic, per example at the dev set's real lengths, relative to the full model); one plot per task;
one JSON with everything. Tables are printed as Markdown. With several tasks, also the issue's bars: the full-size
sub-network against the teacher, width 0.5 (full depth) against the teacher, averaged over tasks, and the smallest
sub-network's loss.
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from transformers_flex import FlexBertConfig
from transformers_flex.data import GLUE_DEV_SPLIT, load_glue, tokenize_glue
from transformers_flex.flops import subnet_flops
from transformers_flex.metrics import GLUE_METRICS

STAGES = ("width_depth", "width", "teacher")


def subnet_rows(metrics: dict, metric_names: tuple[str, ...]) -> list[dict]:
    """`eval_w{w}_d{d}_{metric}` keys -> one row per sub-network."""
    rows = {}
    for key, value in metrics.items():
        if not key.startswith("eval_w"):
            continue
        subnet, _, name = key[len("eval_w") :].partition("_d")
        depth, _, metric = name.partition("_")
        if metric in metric_names:
            rows.setdefault((float(subnet), float(depth)), {})[metric] = value
    return [
        {"width": w, "depth": d, **values}
        for (w, d), values in sorted(rows.items(), key=lambda i: (-i[0][1], -i[0][0]))
    ]


def mean_dev_flops(config: FlexBertConfig, lengths: list[int], width: float, depth: float) -> float:
    return sum(subnet_flops(config, width, depth, length) for length in lengths) / len(lengths)


def summarize(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    task = results["task"]
    names = GLUE_METRICS[task]
    stage = next(stage for stage in STAGES if stage in results["stages"])
    config = FlexBertConfig.from_pretrained(run_dir / stage)
    tokenizer = AutoTokenizer.from_pretrained(results["backbone"])
    dev = load_glue(task)[GLUE_DEV_SPLIT[task]].select(range(results["dev_examples"]))
    lengths = [len(ids) for ids in tokenize_glue(dev, tokenizer, task)["input_ids"]]
    full = mean_dev_flops(config, lengths, 1.0, 1.0)
    rows = subnet_rows(results["stages"][stage]["metrics"], names)
    for row in rows:
        row["flops_ratio"] = mean_dev_flops(config, lengths, row["width"], row["depth"]) / full
    teacher = {name: results["stages"]["teacher"]["metrics"][f"eval_{name}"] for name in names}
    return {"task": task, "stage": stage, "metrics": names, "teacher": teacher, "mean_full_flops": full, "rows": rows}


def markdown(summary: dict) -> str:
    names = summary["metrics"]
    header = "| width | depth | FLOPs ratio | " + " | ".join(names) + " |"
    lines = [f"**{summary['task']}** (stage `{summary['stage']}`)", "", header, "|---|---|---|" + "---|" * len(names)]
    teacher = " | ".join(f"{100 * summary['teacher'][n]:.1f}" for n in names)
    lines.append(f"| teacher | | 1.000 | {teacher} |")
    for row in summary["rows"]:
        values = " | ".join(f"{100 * row[n]:.1f}" for n in names)
        lines.append(f"| {row['width']} | {row['depth']} | {row['flops_ratio']:.3f} | {values} |")
    return "\n".join(lines)


def bar_check(summaries: list[dict]) -> dict:
    """Each task's main metric (points) for the teacher, the full-size, width-0.5 and smallest sub-networks."""
    tasks = []
    for summary in summaries:
        metric = summary["metrics"][0]
        teacher = 100 * summary["teacher"][metric]
        by_subnet = {(row["width"], row["depth"]): row for row in summary["rows"]}
        smallest = min(summary["rows"], key=lambda row: row["flops_ratio"])
        tasks.append(
            {
                "task": summary["task"],
                "metric": metric,
                "teacher": teacher,
                "full_minus_teacher": 100 * by_subnet[(1.0, 1.0)][metric] - teacher,
                "width_0.5_minus_teacher": 100 * by_subnet[(0.5, 1.0)][metric] - teacher,
                "smallest": {key: smallest[key] for key in ("width", "depth", "flops_ratio")},
                "smallest_minus_teacher": 100 * smallest[metric] - teacher,
            }
        )
    average = {
        key: sum(task[key] for task in tasks) / len(tasks)
        for key in ("full_minus_teacher", "width_0.5_minus_teacher", "smallest_minus_teacher")
    }
    return {"tasks": tasks, "average": average}


def bar_markdown(bars: dict) -> str:
    lines = [
        "| task | metric | teacher | full − teacher | width 0.5 − teacher | smallest (FLOPs) − teacher |",
        "|---|---|---|---|---|---|",
    ]
    for task in bars["tasks"]:
        smallest = task["smallest"]
        lines.append(
            f"| {task['task']} | {task['metric']} | {task['teacher']:.1f} | {task['full_minus_teacher']:+.1f} | "
            f"{task['width_0.5_minus_teacher']:+.1f} | w{smallest['width']} d{smallest['depth']} "
            f"({smallest['flops_ratio']:.3f}): {task['smallest_minus_teacher']:+.1f} |"
        )
    average = bars["average"]
    lines.append(
        f"| average | | | {average['full_minus_teacher']:+.1f} | {average['width_0.5_minus_teacher']:+.1f} | "
        f"{average['smallest_minus_teacher']:+.1f} |"
    )
    return "\n".join(lines)


def plot(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(summaries), figsize=(4.5 * len(summaries), 4), squeeze=False)
    for axis, summary in zip(axes[0], summaries):
        metric = summary["metrics"][0]
        for depth in sorted({row["depth"] for row in summary["rows"]}, reverse=True):
            rows = [row for row in summary["rows"] if row["depth"] == depth]
            axis.plot(
                [r["flops_ratio"] for r in rows], [100 * r[metric] for r in rows], marker="o", label=f"depth {depth}"
            )
        axis.axhline(100 * summary["teacher"][metric], color="grey", linestyle="--", label="teacher")
        axis.set_title(summary["task"])
        axis.set_xlabel("FLOPs / full model")
        axis.set_ylabel(f"dev {metric}")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="Output directories of run_glue_flex.py --flex_stage all.")
    parser.add_argument("--output", default="benchmarks/results/glue_flex", help="Path stem for .json and .png.")
    args = parser.parse_args()
    summaries = [summarize(Path(run)) for run in args.runs]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": "python benchmarks/summarize_glue.py " + " ".join(sys.argv[1:]), "tasks": summaries}
    with_subnets = [summary for summary in summaries if summary["rows"]]  # a teacher-only run has no sub-networks
    if len(with_subnets) > 1:
        report["bars"] = bar_check(with_subnets)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2))
    plot(summaries, output.with_suffix(".png"))
    print("\n\n".join(markdown(summary) for summary in summaries))
    if "bars" in report:
        print("\n" + bar_markdown(report["bars"]))


if __name__ == "__main__":
    main()
