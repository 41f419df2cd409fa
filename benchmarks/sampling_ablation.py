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
    python benchmarks/sampling_ablation.py --show benchmarks/results/sampling_ablation.json

The results file is merged under a lock after every seed, as grafting_ablation.py's is (`results_merge.py`); its
head records the command that wrote it last, each run the command that collected it. Prints a Markdown table per
task (mean ± std over seeds, all − sandwich and its paired t-test p-value, per sub-network).
"""

import argparse
from pathlib import Path

from common import parse_or_show, run_record
from grafting_ablation import run_pipeline
from results_merge import mean_std, p_value_cell, paired_p_value, points, save_runs

from transformers_flex.hub import SUBNET_KEY, metric_names

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
    """`{"w1.0_d1.0": value, ...}`: the stage's dev metric for every sub-network (main dev set only), deepest then
    widest first."""
    found = {}
    for key, value in stage["metrics"].items():
        match = SUBNET_KEY.match(key)
        if match and match["metric"] == metric:
            found[float(match["width"]), float(match["depth"])] = value
    ordered = sorted(found.items(), key=lambda item: (-item[0][1], -item[0][0]))
    return {f"w{width}_d{depth}": value for (width, depth), value in ordered}


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


def table(report: dict) -> str:
    """A Markdown table per task: each arm's mean ± std and the difference, per sub-network, in points."""
    tables = []
    for task, entry in report["tasks"].items():
        summary, seeds = entry["summary"], len(entry["runs"])
        lines = [
            f"{task}, dev {entry['metric']}, seeds {', '.join(str(run['seed']) for run in entry['runs'])}",
            "| sub-network | sandwich | all 12 | all − sandwich | paired t-test p |",
            "|---|---|---|---|---|",
        ]
        for subnet, cells in summary["subnets"].items():
            arms = " | ".join(points(cells[sampling], seeds) for sampling in SAMPLINGS)
            difference = points(cells["difference"], seeds, signed=True)
            lines.append(f"| {subnet} | {arms} | {difference} | {p_value_cell(cells['p'], seeds)} |")
        lines.append(f"| mean over sub-networks | | | {points(summary['average_difference'], seeds, signed=True)} | |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def train_seed(task: str, seed: int, width_run: Path, output_dir: Path, recipe: list[str]) -> tuple[str, dict]:
    """Both arms of one seed, each in its own folder of `output_dir` beside `width_run`'s finished teacher and width
    stages: the task's main metric (the first it reports), and each arm's dev value of it per sub-network with the
    arms that reused a hand-linked width_depth stage."""
    arms = {"reused_width_depth": {}}
    for sampling in SAMPLINGS:
        arm_dir = output_dir / sampling
        link_finished_stages(width_run, arm_dir)
        if reused := reused_stage(arm_dir):
            arms["reused_width_depth"][sampling] = reused
        results = run_pipeline(task, seed, arm_dir, "width_depth", recipe, "--subnet_sampling", sampling)
        metric = metric_names(results["stages"]["teacher"]["metrics"])[0]
        arms[sampling] = subnet_metric(results["stages"]["width_depth"], metric)
    return metric, arms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )  # no abbreviations: `--seed` after the recipe is run_glue_flex.py's, not `--seeds`
    parser.add_argument("--tasks", nargs="+", default=["mrpc"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--width-runs", default=str(ROOT / "runs" / "grafting"), help="grafting_ablation's output")
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "sampling"))
    parser.add_argument("--results", default=str(RESULTS / "sampling_ablation.json"))
    args = parse_or_show(parser, table, required=(), pass_through=True)
    if args is None:
        return
    recipe = [value for value in args.passed_on if value != "--"]
    header = run_record(ablation="sampling", recipe=recipe, width_runs=args.width_runs, output_dir=args.output_dir)
    results_path = Path(args.results)
    for task in args.tasks:
        collected = []
        for seed in args.seeds:
            width_run = Path(args.width_runs) / task / f"seed{seed}" / "graft"
            metric, arms = train_seed(task, seed, width_run, Path(args.output_dir) / task / f"seed{seed}", recipe)
            collected.append({"seed": seed, "command": header["command"], **arms})
            # After every seed, so partial results survive.
            report = save_runs(results_path, header, task, collected, summarize, metric=metric)
    print(table(report))


if __name__ == "__main__":
    main()
