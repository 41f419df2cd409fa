"""What the seeded ablations share: one results file that several commands (one seed each, side by side) update under
a lock, and the statistics over seeds (mean ± std, the paired t-test of two arms) with their table cells."""

import fcntl
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

# Two arms whose per-seed differences agree to this (metrics are fractions; one dev example is ~1e-3 or more) differ
# by the same amount in every seed: float rounding alone would otherwise hand the t-test a near-zero spread.
SAME_DIFFERENCE = 1e-9


def save_runs(
    results_path: Path, header: dict, task: str, collected: list[dict], summarize: Callable, **fields
) -> dict:
    """Merge this command's runs (by seed) into the task's entry of the results file, re-summarize it, and put this
    command's `header` (its `run_record`) at the top; returns the merged report.

    Other tasks, and seeds another command wrote meanwhile (e.g. one running side by side), stay, each run with the
    command that collected it; the seeds collected here replace earlier values. The read-merge-write holds a lock on
    the results folder, and the file is replaced atomically, so side-by-side commands neither lose each other's
    seeds nor read a half-written file.
    """
    results_path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(results_path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # released when the descriptor closes
        earlier = json.loads(results_path.read_text()) if results_path.exists() else {"tasks": {}}
        ours = {run["seed"] for run in collected}
        kept = [run for run in earlier["tasks"].get(task, {}).get("runs", []) if run["seed"] not in ours]
        runs = sorted(kept + collected, key=lambda run: run["seed"])
        tasks = earlier["tasks"] | {task: {**fields, "runs": runs, "summary": summarize(runs)}}
        report = {**header, "tasks": tasks}
        partial = results_path.with_suffix(".partial")
        partial.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(partial, results_path)
    finally:
        os.close(folder)
    return report


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation over seeds; the deviation is None for a single seed (it has none)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_p_value(first: list[float], second: list[float]) -> float | None:
    """Two-sided paired t-test p-value of first vs second (the same seeds, in the same order). None when the test
    is undefined: fewer than two pairs, or differences without spread (all equal, e.g. both arms identical)."""
    from scipy.stats import ttest_rel

    differences = [a - b for a, b in zip(first, second, strict=True)]
    if len(differences) < 2 or max(differences) - min(differences) <= SAME_DIFFERENCE:
        return None
    return float(ttest_rel(first, second).pvalue)


def points(mean_and_std: tuple[float, float | None], seeds: int, signed: bool = False) -> str:
    """`77.2 ± 0.6` in points (× 100); the mean alone for a single seed (older results store its std as 0)."""
    mean, std = mean_and_std
    shown = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return shown if seeds < 2 else f"{shown} ± {100 * std:.1f}"


def p_value_cell(p_value: float | None, seeds: int) -> str:
    """The table cell of a paired p-value, saying why it is missing when it is."""
    if p_value is not None:
        return f"{p_value:.2f}"
    return "n/a (1 seed)" if seeds < 2 else "n/a (no spread)"
