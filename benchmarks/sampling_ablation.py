"""Sandwich sampling vs all 12 sub-networks a step in the width_depth stage: what sandwich costs in accuracy.

For every task and seed both arms continue the same finished width stage, the grafting arm of
`benchmarks/grafting_ablation.py` (`runs/grafting/<task>/seed<seed>/graft`: 3 epochs a stage, grafting on; run that
first). Each arm is `examples/run_glue_flex.py --flex_stage all --last_stage width_depth` in its own folder, once
with `--subnet_sampling sandwich` and once with `--subnet_sampling all`; the folder links to that teacher and width
stage, so only the width_depth stage trains, from identical weights. Pass the recipe the width stage was trained
with after `--`; the flags this script sets itself win over it.

Runs are resumable: finished stages are skipped. An arm's `width_depth` may also be linked by hand to an identical
earlier run, which is then reused and recorded as such in the results, e.g. the sandwich width_depth stage that
grafting run already has:

    ln -s $PWD/runs/grafting/mrpc/seed42/graft/width_depth runs/sampling/mrpc/seed42/sandwich/width_depth
    python benchmarks/sampling_ablation.py --tasks mrpc --seeds 42 43 -- --num_train_epochs 3 --learning_rate 5e-5
"""

import argparse
import sys
from pathlib import Path

from grafting_ablation import mean_std, paired_p_value, run_pipeline, save_runs
from summarize_glue import subnet_rows

from transformers_flex.metrics import main_metric

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLINGS = ("sandwich", "all")


def link_finished_stages(width_run: Path, output_dir: Path) -> None:
    """Link `output_dir/teacher` and `output_dir/width` to `width_run`'s finished stages."""
    for stage in ("teacher", "width"):
        target = (width_run / stage).resolve()
        if not (target / "stage_results.json").exists():
            raise SystemExit(f"{target} is not a finished stage; run benchmarks/grafting_ablation.py first.")
        link = output_dir / stage
        if link.is_symlink() or link.exists():  # a broken link is a symlink that does not exist
            if link.resolve() != target:
                raise SystemExit(f"{link} exists and is not {target}; remove it or pass the matching --width-runs.")
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)


def reused_stage(output_dir: Path) -> str | None:
    """The earlier run a hand-made `width_depth` link points to (None when the stage is this folder's own)."""
    stage = output_dir / "width_depth"
    if not stage.is_symlink():
        return None
    if not (stage / "stage_results.json").exists():
        raise SystemExit(f"{stage} links to {stage.resolve()}, which is not a finished width_depth stage.")
    return str(stage.resolve())


def subnet_metric(stage: dict, metric: str) -> dict[str, float]:
    """`{"w1.0_d1.0": value, ...}`: the stage's dev metric for every sub-network (main dev set only)."""
    rows = subnet_rows(stage["metrics"], (metric,))
    return {f"w{row['width']}_d{row['depth']}": row[metric] for row in rows}


def summarize(runs: list[dict]) -> dict:
    """`{"subnets": {subnet: {"sandwich": (mean, std), "all": ..., "difference": ..., "p": ...}}, ...}`.

    "difference" is all − sandwich per seed, then mean ± std over seeds, and "p" its paired t-test p-value;
    "average_difference" averages each seed's differences over the sub-networks first.
    """
    subnets = list(runs[0]["sandwich"])
    per_subnet = {
        subnet: {
            **{sampling: mean_std([run[sampling][subnet] for run in runs]) for sampling in SAMPLINGS},
            "difference": mean_std([run["all"][subnet] - run["sandwich"][subnet] for run in runs]),
            "p": paired_p_value([run["all"][subnet] for run in runs], [run["sandwich"][subnet] for run in runs]),
        }
        for subnet in subnets
    }
    average_differences = [
        sum(run["all"][subnet] - run["sandwich"][subnet] for subnet in subnets) / len(subnets) for run in runs
    ]
    return {"subnets": per_subnet, "average_difference": mean_std(average_differences)}


def format_table(report: dict) -> str:
    """A Markdown table per task: each arm's mean ± std and the difference, per sub-network, in points."""
    lines = []
    for task, entry in report["tasks"].items():
        summary = entry["summary"]
        lines += [
            f"\n{task}, dev {entry['metric']}, seeds {', '.join(str(run['seed']) for run in entry['runs'])}",
            "| sub-network | sandwich | all 12 | all − sandwich | paired t-test p |",
            "|---|---|---|---|---|",
        ]
        for subnet, cells in summary["subnets"].items():
            arms = [f"{100 * cells[sampling][0]:.1f} ± {100 * cells[sampling][1]:.1f}" for sampling in SAMPLINGS]
            mean, std = cells["difference"]
            p_value = "n/a" if cells["p"] is None else f"{cells['p']:.2f}"
            lines.append(f"| {subnet} | {' | '.join(arms)} | {100 * mean:+.1f} ± {100 * std:.1f} | {p_value} |")
        mean, std = summary["average_difference"]
        lines.append(f"| mean over sub-networks | | | {100 * mean:+.1f} ± {100 * std:.1f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mrpc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--width-runs", default=str(ROOT / "runs" / "grafting"), help="grafting_ablation's output")
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "sampling"))
    parser.add_argument("--results", default=str(RESULTS / "sampling_ablation.json"))
    args, extra = parser.parse_known_args()
    extra = [value for value in extra if value != "--"]

    command = "python benchmarks/sampling_ablation.py " + " ".join(sys.argv[1:])
    results_path = Path(args.results)
    for task in args.tasks:
        metric = main_metric(task)
        collected = []
        for seed in args.seeds:
            width_run = Path(args.width_runs) / task / f"seed{seed}" / "graft"
            seed_run = {"seed": seed, "command": command, "reused_width_depth": {}}
            for sampling in SAMPLINGS:
                output_dir = Path(args.output_dir) / task / f"seed{seed}" / sampling
                link_finished_stages(width_run, output_dir)
                if reused := reused_stage(output_dir):
                    seed_run["reused_width_depth"][sampling] = reused
                results = run_pipeline(task, seed, output_dir, "width_depth", extra, "--subnet_sampling", sampling)
                seed_run[sampling] = subnet_metric(results["stages"]["width_depth"], metric)
            collected.append(seed_run)
            report = save_runs(results_path, task, collected, summarize, metric=metric)  # partial results survive
    print(format_table(report))


if __name__ == "__main__":
    main()
