"""Tables and metric-vs-FLOPs plots of finished pipeline runs (`transformers-flex train`, or
`examples/run_glue_flex.py --flex_stage all`).

    python benchmarks/summarize_glue.py runs/mrpc runs/rte --output benchmarks/results/glue_flex

For each run directory: the teacher, and every (width, depth) sub-network of the last static stage (width_depth,
else width) with its dev metrics and FLOPs (analytic, per example at the real lengths of the run's dev set, tokenized
as the run tokenized it, relative to the full model); one plot per task; one JSON with everything (with the command,
machine and versions). Any run's data (GLUE, a Hub dataset or files), split as the run split it; the metrics are the
ones the run reported. Tables are printed as Markdown. With several tasks, also the issue's bars: the full-size
sub-network against the teacher, width 0.5 (full depth) against the teacher, averaged over tasks, and the smallest
sub-network's loss.
"""

import argparse
from pathlib import Path

from common import parse_or_show, run_record, run_splits, write_report

from transformers_flex import FlexBertConfig
from transformers_flex.flops import subnet_flops
from transformers_flex.hub import metric_names
from transformers_flex.utils import load_tokenizer

STAGES = ("width_depth", "width", "teacher")
BAR_SUBNETS = ((1.0, 1.0), (0.5, 1.0))  # the full-size and the width-0.5 sub-networks the bars compare


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


def dev_metric_names(metrics: dict, task) -> tuple[str, ...]:
    """The metrics a stage reports on the main dev set, in its order (not those of further dev sets: MNLI's
    mismatched one is reported as `eval_mm_...`)."""
    further = tuple(f"{prefix.removeprefix('eval_')}_" for prefix in task.extra_dev_splits)
    return tuple(name for name in metric_names(metrics) if not name.startswith(further))


def mean_dev_flops(config: FlexBertConfig, lengths: list[int], width: float, depth: float) -> float:
    return sum(subnet_flops(config, width, depth, length) for length in lengths) / len(lengths)


def summarize(run_dir: Path) -> dict:
    """The run's teacher (None when the run has no teacher stage) and the sub-networks of its last static stage."""
    data = run_splits(run_dir)
    stages = data.run.results["stages"]
    stage = next(stage for stage in STAGES if stage in stages)
    names = dev_metric_names(stages[stage]["metrics"], data.task)
    config = FlexBertConfig.from_pretrained(data.checkpoint(stage))
    tokenizer = load_tokenizer(data.checkpoint(stage))
    dev = data.task.tokenize(data.splits["dev"], tokenizer, data.max_seq_length)
    lengths = [len(ids) for ids in dev["input_ids"]]
    full = mean_dev_flops(config, lengths, 1.0, 1.0)
    rows = subnet_rows(stages[stage]["metrics"], names)
    for row in rows:
        row["flops_ratio"] = mean_dev_flops(config, lengths, row["width"], row["depth"]) / full
    teacher = {name: stages["teacher"]["metrics"][f"eval_{name}"] for name in names} if "teacher" in stages else None
    return {
        "task": data.task.name,
        "stage": stage,
        "metrics": names,
        "teacher": teacher,
        "mean_full_flops": full,
        "rows": rows,
    }


def markdown(summary: dict) -> str:
    names = summary["metrics"]
    header = "| width | depth | FLOPs ratio | " + " | ".join(names) + " |"
    lines = [f"**{summary['task']}** (stage `{summary['stage']}`)", "", header, "|---|---|---|" + "---|" * len(names)]
    if summary["teacher"] is not None:
        teacher = " | ".join(f"{100 * summary['teacher'][n]:.1f}" for n in names)
        lines.append(f"| teacher | | 1.000 | {teacher} |")
    for row in summary["rows"]:
        values = " | ".join(f"{100 * row[n]:.1f}" for n in names)
        lines.append(f"| {row['width']} | {row['depth']} | {row['flops_ratio']:.3f} | {values} |")
    return "\n".join(lines)


def has_bars(summary: dict) -> bool:
    """Whether a summary has what the bars compare: a teacher and the full-size and width-0.5 sub-networks."""
    subnets = {(row["width"], row["depth"]) for row in summary["rows"]}
    return summary["teacher"] is not None and subnets.issuperset(BAR_SUBNETS)


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


def table(report: dict) -> str:
    """Every task's table, then the bars when the report has them."""
    tables = [markdown(summary) for summary in report["tasks"]]
    if "bars" in report:
        tables.append(bar_markdown(report["bars"]))
    return "\n\n".join(tables)


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
        if summary["teacher"] is not None:
            axis.axhline(100 * summary["teacher"][metric], color="grey", linestyle="--", label="teacher")
        axis.set_title(summary["task"])
        axis.set_xlabel("FLOPs / full model")
        axis.set_ylabel(f"dev {metric}")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="Finished pipeline run directories.")
    parser.add_argument("--output", default="benchmarks/results/glue_flex", help="Path stem for .json and .png.")
    args = parse_or_show(parser, table, required=())
    if args is None:
        return
    if not args.runs:  # a positional list is never None, so parse_or_show cannot ask for it
        parser.error("one or more run directories required (or --show RESULT.json).")

    summaries = [summarize(Path(run)) for run in args.runs]
    report = run_record(tasks=summaries)
    with_bars = [summary for summary in summaries if has_bars(summary)]  # a teacher-only run has no sub-networks
    if len(with_bars) > 1:
        report["bars"] = bar_check(with_bars)
    output = Path(args.output)
    write_report(output.with_suffix(".json"), report)
    plot(summaries, output.with_suffix(".png"))
    print(table(report))


if __name__ == "__main__":
    main()
