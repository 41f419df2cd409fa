"""Grafting vs no grafting: same teacher, same rewiring, same seeds; only the width stage differs.

For every task and seed this runs `examples/run_glue_flex.py --flex_stage all --last_stage width` twice — with and
without `--grafting` — the second run reusing the first run's teacher (so both start from identical weights), and
collects the dev metric of every width. Runs are resumable: finished stages are skipped. The results file is updated
under a lock after every seed, so commands for different seeds can run side by side on one file. Extra arguments
after `--` go to run_glue_flex.py (epochs, learning rate, ...); the flags this script sets itself win over them.

    python benchmarks/grafting_ablation.py --tasks mrpc --seeds 42 43 44 -- --num_train_epochs 3 --learning_rate 5e-5
"""

import argparse
import fcntl
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mrpc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "grafting"))
    parser.add_argument("--results", default=str(RESULTS / "grafting_ablation.json"))
    args, extra = parser.parse_known_args()
    extra = [value for value in extra if value != "--"]

    from transformers_flex.data import GLUE_DEV_SPLIT, glue_num_labels, load_glue
    from transformers_flex.metrics import main_metric

    command = "python benchmarks/grafting_ablation.py " + " ".join(sys.argv[1:])
    results_path = Path(args.results)
    for task in args.tasks:
        metric = main_metric(task)
        majority_class = None  # a classification task's chance floor: always answer the most frequent dev label
        if glue_num_labels(task) > 1:
            labels = list(load_glue(task)[GLUE_DEV_SPLIT[task]]["label"])
            majority_class = max(Counter(labels).values()) / len(labels)
        collected = []
        for seed in args.seeds:
            base = Path(args.output_dir) / task / f"seed{seed}"
            grafted = run_pipeline(task, seed, base / "graft", "width", extra, "--grafting", "true")
            plain_dir = base / "no_graft"
            if not (plain_dir / "teacher").exists():
                shutil.copytree(base / "graft" / "teacher", plain_dir / "teacher")
            plain = run_pipeline(task, seed, plain_dir, "width", extra, "--grafting", "false")
            collected.append(
                {
                    "seed": seed,
                    "command": command,
                    "teacher": grafted["stages"]["teacher"]["metrics"][f"eval_{metric}"],
                    "graft": width_metrics(grafted["stages"]["width"], metric),
                    "no_graft": width_metrics(plain["stages"]["width"], metric),
                }
            )
            # After every seed, so partial results survive.
            report = save_runs(results_path, task, collected, summarize, metric=metric, majority_class=majority_class)
    print(format_table(report))
    plot_differences(report, results_path.with_suffix(".png"))


def save_runs(results_path: Path, task: str, collected: list[dict], summarize, **fields) -> dict:
    """Merge this command's runs (by seed) into the task's entry of the results file and re-summarize it.

    Other tasks, and seeds another command wrote meanwhile (e.g. one running side by side), stay; the seeds collected
    here replace earlier values. The read-merge-write holds a lock on the results folder, and the file is replaced
    atomically, so side-by-side commands neither lose each other's seeds nor read a half-written file.
    """
    results_path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(results_path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when the descriptor closes
        report = json.loads(results_path.read_text()) if results_path.exists() else {"tasks": {}}
        ours = {run["seed"] for run in collected}
        earlier = [run for run in report["tasks"].get(task, {}).get("runs", []) if run["seed"] not in ours]
        runs = sorted(earlier + collected, key=lambda run: run["seed"])
        report["tasks"][task] = {**fields, "runs": runs, "summary": summarize(runs)}
        partial = results_path.with_suffix(".partial")
        partial.write_text(json.dumps(report, indent=2))
        os.replace(partial, results_path)
    finally:
        os.close(folder)
    return report


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired_p_value(first: list[float], second: list[float]) -> float | None:
    """Two-sided paired t-test p-value of first vs second (same seeds); None below two pairs or with no spread."""
    from scipy.stats import ttest_rel

    if len(first) < 2:
        return None
    p_value = float(ttest_rel(first, second).pvalue)
    return None if math.isnan(p_value) else p_value  # NaN when every difference is equal


def summarize(runs: list[dict]) -> dict:
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


def format_table(report: dict) -> str:
    lines = [
        "| task (metric) | seeds | teacher | width | no grafting | grafting | difference | paired t-test p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, entry in report["tasks"].items():
        summary, runs = entry["summary"], entry["runs"]
        teacher = summary["teacher"]
        for width in runs[0]["graft"]:
            plain, grafted = summary[f"no_graft_w{width}"], summary[f"graft_w{width}"]
            differences = [run["graft"][width] - run["no_graft"][width] for run in runs]
            diff = mean_std(differences)
            cells = [
                f"{task} ({entry['metric']})",
                str(len(runs)),
                f"{100 * teacher[0]:.1f} ± {100 * teacher[1]:.1f}",
                width,
                f"{100 * plain[0]:.1f} ± {100 * plain[1]:.1f}",
                f"{100 * grafted[0]:.1f} ± {100 * grafted[1]:.1f}",
                f"{100 * diff[0]:+.1f} ± {100 * diff[1]:.1f}",
                "n/a" if summary[f"p_w{width}"] is None else f"{summary[f'p_w{width}']:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for task, entry in report["tasks"].items():
        if entry.get("majority_class") is not None:
            lines.append(f"\n{task}: always answering the majority class scores {100 * entry['majority_class']:.1f}")
    return "\n".join(lines)


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
