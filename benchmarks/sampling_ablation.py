"""Sandwich sampling vs all 12 sub-networks a step in the width_depth stage: what sandwich costs in accuracy.

For every task and seed both arms continue the same finished width stage — the grafting arm of
`benchmarks/grafting_ablation.py` (`runs/grafting/<task>/seed<seed>/graft`), run that first — with
`examples/run_glue_flex.py --flex_stage all --last_stage width_depth`, once with `--subnet_sampling sandwich` and once
with `--subnet_sampling all`. Each arm's directory links to that teacher and width stage, so only the width_depth
stage is trained, from identical weights. Runs are resumable: finished stages are skipped, and an arm's
`width_depth` directory that already exists (for instance linked to an earlier, identical run) is reused. Extra
arguments after `--` go to run_glue_flex.py; pass the recipe the width stage was trained with.

    python benchmarks/sampling_ablation.py --tasks mrpc --seeds 42 43 -- --num_train_epochs 3 --learning_rate 5e-5
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from grafting_ablation import mean_std
from summarize_glue import subnet_rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLINGS = ("sandwich", "all")


def run_width_depth_stage(task: str, seed: int, sampling: str, width_run: Path, output_dir: Path, extra: list[str]):
    """Train the width_depth stage on top of `width_run`'s teacher and width stage; return the stage's summary."""
    for stage in ("teacher", "width"):
        if not (width_run / stage / "stage_results.json").exists():
            raise SystemExit(f"{width_run / stage} is not a finished stage; run benchmarks/grafting_ablation.py.")
        link = output_dir / stage
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((width_run / stage).resolve(), target_is_directory=True)
    command = [sys.executable, str(ROOT / "examples" / "run_glue_flex.py"), "--task_name", task, "--seed", str(seed)]
    command += ["--output_dir", str(output_dir), "--flex_stage", "all", "--last_stage", "width_depth"]
    command += ["--subnet_sampling", sampling, "--report_to", "none", *extra]
    subprocess.run(command, check=True)
    return json.loads((output_dir / "results.json").read_text())["stages"]["width_depth"]


def subnet_metric(stage: dict, metric: str) -> dict[str, float]:
    """`{"w1.0_d1.0": value, ...}`: the stage's dev metric for every sub-network."""
    rows = subnet_rows(stage["metrics"], (metric,))
    return {f"w{row['width']}_d{row['depth']}": row[metric] for row in rows}


def summarize(runs: list[dict]) -> dict:
    """Mean ± std per sub-network for each arm and for the per-seed difference all − sandwich, and the mean ± std
    over seeds of each seed's difference averaged over the sub-networks."""
    subnets = runs[0]["sandwich"].keys()
    per_subnet = {
        subnet: {
            **{sampling: mean_std([run[sampling][subnet] for run in runs]) for sampling in SAMPLINGS},
            "difference": mean_std([run["all"][subnet] - run["sandwich"][subnet] for run in runs]),
        }
        for subnet in subnets
    }
    average_gain = [sum(run["all"][s] - run["sandwich"][s] for s in subnets) / len(subnets) for run in runs]
    return {"subnets": per_subnet, "average_difference": mean_std(average_gain)}


def format_table(report: dict) -> str:
    lines = []
    for task, entry in report["tasks"].items():
        summary = entry["summary"]
        lines += [
            f"\n{task}, dev {entry['metric']}, {len(entry['runs'])} seeds",
            "| sub-network | sandwich | all 12 | all − sandwich |",
            "|---|---|---|---|",
        ]
        for subnet, cells in summary["subnets"].items():
            values = [f"{100 * cells[s][0]:.1f} ± {100 * cells[s][1]:.1f}" for s in SAMPLINGS]
            mean, std = cells["difference"]
            lines.append(f"| {subnet} | {' | '.join(values)} | {100 * mean:+.1f} ± {100 * std:.1f} |")
        mean, std = summary["average_difference"]
        lines.append(f"| mean over sub-networks | | | {100 * mean:+.1f} ± {100 * std:.1f} |")
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

    from transformers_flex.metrics import main_metric

    command = "python benchmarks/sampling_ablation.py " + " ".join(sys.argv[1:])
    results_path = Path(args.results)
    for task in args.tasks:
        metric = main_metric(task)
        collected = []
        for seed in args.seeds:
            width_run = Path(args.width_runs) / task / f"seed{seed}" / "graft"
            stages = {
                sampling: run_width_depth_stage(
                    task, seed, sampling, width_run, Path(args.output_dir) / task / f"seed{seed}" / sampling, extra
                )
                for sampling in SAMPLINGS
            }
            run = {"seed": seed, "command": command}
            run.update({sampling: subnet_metric(stage, metric) for sampling, stage in stages.items()})
            run["seconds_per_step"] = {sampling: stage["seconds_per_step"] for sampling, stage in stages.items()}
            collected.append(run)
            # Re-read just before writing, so results of other tasks and of seeds run by other commands stay.
            report = json.loads(results_path.read_text()) if results_path.exists() else {"tasks": {}}
            ours = {run["seed"] for run in collected}
            earlier = [run for run in report["tasks"].get(task, {}).get("runs", []) if run["seed"] not in ours]
            runs = sorted(earlier + collected, key=lambda run: run["seed"])
            report["tasks"][task] = {"metric": metric, "runs": runs, "summary": summarize(runs)}
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(report, indent=2))  # after every seed: partial results survive
    print(format_table(json.loads(results_path.read_text())))


if __name__ == "__main__":
    main()
