"""Grafting vs no grafting: same teacher, same rewiring, same seeds; only the width stage differs.

For every task and seed this runs `examples/run_glue_flex.py --flex_stage all --last_stage width` twice — with and
without `--grafting` — the second run reusing the first run's teacher (so both start from identical weights), and
collects the dev metric of every width. Runs are resumable: finished stages are skipped. The results file is updated
under a lock after every seed, so commands for different seeds can run side by side on one file; its head records
the command that wrote it last, and each run the command that collected it. Extra arguments after `--` go to
run_glue_flex.py (epochs, learning rate, ...); the flags this script sets itself win over them.

    python benchmarks/grafting_ablation.py --tasks mrpc --seeds 42 43 44 -- --num_train_epochs 3 --learning_rate 5e-5
    python benchmarks/grafting_ablation.py --show benchmarks/results/grafting_ablation.json

Prints Markdown tables (each seed's metrics; mean ± std over seeds, the paired t-test p-value of the difference)
and draws the per-seed differences next to the results file (`.png`).
"""

import argparse
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from common import parse_or_show, run_record, run_splits
from results_merge import mean_std, p_value_cell, paired_p_value, points, save_runs

from transformers_flex.hub import metric_names

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_pipeline(task: str, seed: int, output_dir: Path, last_stage: str, extra: list[str], *arm: str) -> dict:
    """`run_glue_flex.py --flex_stage all` up to `last_stage` in `output_dir` (finished stages are loaded, not
    retrained) with the recipe `extra` and the arm's own flags `arm`; returns its `results.json`."""
    # The recipe first: when a flag repeats, the parser keeps the last value, so the arm's own flags win.
    command = [sys.executable, str(ROOT / "examples" / "run_glue_flex.py"), *extra, "--task_name", task]
    command += ["--seed", str(seed), "--output_dir", str(output_dir), "--flex_stage", "all"]
    command += ["--last_stage", last_stage, "--report_to", "none", *arm]
    subprocess.run(command, check=True)
    return json.loads((output_dir / "results.json").read_text())


def width_metrics(stage: dict, metric: str) -> dict[str, float]:
    """`{"1.0": value, "0.75": ...}` of the width stage's dev metric at full depth."""
    metrics = stage["metrics"]
    prefix = "eval_w"
    return {
        key[len(prefix) :].split("_d1.0_")[0]: value
        for key, value in metrics.items()
        if key.startswith(prefix) and key.endswith(f"_d1.0_{metric}")
    }


def task_fields(run_dir: Path) -> dict:
    """A task's entry in the results, from a finished run of it: its main dev metric (the first the task reports)
    and, for classification, the chance floor of always answering the dev set's most frequent label."""
    data = run_splits(run_dir)
    metric = metric_names(data.run.results["stages"]["teacher"]["metrics"])[0]
    if data.task.kind != "classification":
        return {"metric": metric, "majority_class": None}
    labels = data.splits["dev"][data.task.label_column]
    return {"metric": metric, "majority_class": max(Counter(labels).values()) / len(labels)}


def train_seed(task: str, seed: int, base: Path, recipe: list[str]) -> tuple[dict, dict]:
    """Both arms of one seed in `base`: the grafting arm, then the arm without, from the grafting arm's teacher
    (copied, so both start from identical weights); their `results.json`."""
    grafted = run_pipeline(task, seed, base / "graft", "width", recipe, "--grafting", "true")
    plain_dir = base / "no_graft"
    if not (plain_dir / "teacher").exists():
        shutil.copytree(base / "graft" / "teacher", plain_dir / "teacher")
    return grafted, run_pipeline(task, seed, plain_dir, "width", recipe, "--grafting", "false")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )  # no abbreviations: `--seed` after the recipe is run_glue_flex.py's, not `--seeds`
    parser.add_argument("--tasks", nargs="+", default=["mrpc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "grafting"))
    parser.add_argument("--results", default=str(RESULTS / "grafting_ablation.json"))
    args = parse_or_show(parser, table, required=(), pass_through=True)
    if args is None:
        return
    recipe = [value for value in args.passed_on if value != "--"]
    header = run_record(ablation="grafting", recipe=recipe, output_dir=args.output_dir)
    results_path = Path(args.results)
    for task in args.tasks:
        collected, fields = [], None
        for seed in args.seeds:
            base = Path(args.output_dir) / task / f"seed{seed}"
            grafted, plain = train_seed(task, seed, base, recipe)
            fields = fields or task_fields(base / "graft")
            collected.append(
                {
                    "seed": seed,
                    "command": header["command"],
                    "teacher": grafted["stages"]["teacher"]["metrics"][f"eval_{fields['metric']}"],
                    "graft": width_metrics(grafted["stages"]["width"], fields["metric"]),
                    "no_graft": width_metrics(plain["stages"]["width"], fields["metric"]),
                }
            )
            # After every seed, so partial results survive.
            report = save_runs(results_path, header, task, collected, summarize, **fields)
    print(table(report))
    plot_differences(report, results_path.with_suffix(".png"))


def summarize(runs: list[dict]) -> dict:
    """Each arm's mean ± std over seeds per width, and the paired p-value of grafting vs no grafting."""
    widths = runs[0]["graft"].keys()
    return {
        "teacher": mean_std([run["teacher"] for run in runs]),
        **{f"graft_w{w}": mean_std([run["graft"][w] for run in runs]) for w in widths},
        **{f"no_graft_w{w}": mean_std([run["no_graft"][w] for run in runs]) for w in widths},
        **{
            f"p_w{w}": paired_p_value([run["graft"][w] for run in runs], [run["no_graft"][w] for run in runs])
            for w in widths
        },
    }


def seed_table(task: str, entry: dict) -> str:
    """One row per seed: the teacher's dev metric and each arm's at every width (points)."""
    widths = " / ".join(entry["runs"][0]["graft"])
    lines = [
        f"{task}, dev {entry['metric']} per seed:",
        "",
        f"| seed | teacher | no grafting (w {widths}) | grafting (w {widths}) |",
        "|---|---|---|---|",
    ]
    for run in entry["runs"]:
        arms = [" / ".join(f"{100 * value:.1f}" for value in run[arm].values()) for arm in ("no_graft", "graft")]
        lines.append(f"| {run['seed']} | {100 * run['teacher']:.1f} | {arms[0]} | {arms[1]} |")
    return "\n".join(lines)


def summary_table(tasks: dict) -> str:
    """One row per task and width: each arm's mean ± std, grafting − no grafting per seed then mean ± std, and its
    paired p-value."""
    lines = [
        "| task (metric) | seeds | teacher | width | no grafting | grafting | difference | paired t-test p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, entry in tasks.items():
        summary, runs = entry["summary"], entry["runs"]
        for width in runs[0]["graft"]:
            differences = [run["graft"][width] - run["no_graft"][width] for run in runs]
            cells = [
                f"{task} ({entry['metric']})",
                str(len(runs)),
                points(summary["teacher"], len(runs)),
                width,
                points(summary[f"no_graft_w{width}"], len(runs)),
                points(summary[f"graft_w{width}"], len(runs)),
                points(mean_std(differences), len(runs), signed=True),
                p_value_cell(summary[f"p_w{width}"], len(runs)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(report: dict, task: str | None = None) -> str:
    """Each task's per-seed table, then the summary over seeds of every task, then each classification task's
    majority-class floor; `task` keeps that task only."""
    tasks = {name: entry for name, entry in report["tasks"].items() if task in (None, name)}
    if not tasks:
        raise SystemExit(f"No task {task!r} in the results (it has {', '.join(report['tasks'])}).")
    parts = [seed_table(name, entry) for name, entry in tasks.items()] + [summary_table(tasks)]
    parts += [
        f"{name}: always answering the majority class scores {100 * entry['majority_class']:.1f}"
        for name, entry in tasks.items()
        if entry.get("majority_class") is not None  # regression tasks have no majority class
    ]
    return "\n\n".join(parts)


def plot_differences(report: dict, path: Path) -> None:
    """One panel per task: grafting − no grafting at each width, a dot per seed and the mean ± std bar."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    tasks = list(report["tasks"].items())
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), squeeze=False, sharey=True)
    for axis, (task, entry) in zip(axes[0], tasks):
        runs = entry["runs"]
        widths = list(runs[0]["graft"])
        for position, width in enumerate(widths):
            differences = [100 * (run["graft"][width] - run["no_graft"][width]) for run in runs]
            axis.scatter([position] * len(differences), differences, color="tab:blue", alpha=0.5, s=18)
            mean, std = mean_std(differences)
            axis.errorbar(position + 0.15, mean, yerr=std, fmt="o", color="black", capsize=4)
        axis.axhline(0, color="grey", linestyle="--", linewidth=1)
        axis.set_xticks(range(len(widths)), [f"w {width}" for width in widths])
        axis.set_title(f"{task}, dev {entry['metric']} ({len(runs)} seeds)")
    axes[0][0].set_ylabel("grafting − no grafting (points)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
