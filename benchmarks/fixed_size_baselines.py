"""Fixed-size models of the flexible model's costs, trained with the same code, data and teacher: what a user would do
instead of training a flexible model.

A pipeline run of `teacher rewire` gives the teacher (plain fine-tuning of the backbone) and its rewired copy; each
baseline is then one single stage of `transformers-flex train` restricted to one sub-network (`--train_subnets`):

- `first3_ft` / `every_other3_ft`: the backbone cut to its first 3 layers / to every other layer, fine-tuned on gold
  labels (the `final` stage from the backbone).
- `first3_kd` / `every_other3_kd`: the same cuts of the teacher, distilled from it (`width_depth`: logits and
  hidden states of the kept layers).
- `width0.5_ft` / `width0.25_ft`: the rewired teacher cut to its most important half / quarter of heads and FFN
  neurons, fine-tuned on gold labels (`final`).
- `width0.5_kd` / `width0.25_kd`: the same cuts distilled from the teacher (`width`: logits and hidden states).

Every run is resumable (a finished one is read back, an interrupted one resumes from its checkpoint). Options this
script does not know (`--max_train_samples 64`, ...) go to every `transformers-flex train` call.

    python benchmarks/fixed_size_baselines.py --task_name mrpc --output_dir runs/baselines/mrpc --seed 42 \
        --output benchmarks/results/baselines_mrpc_seed42.json
    python benchmarks/fixed_size_baselines.py --show benchmarks/results/baselines_mrpc_seed42.json
"""

import argparse
import json
from pathlib import Path

from common import (
    add_training_arguments,
    parse_or_show,
    run_record,
    shared_training_options,
    subnet_score,
    train_flex,
    training_recipe,
    write_report,
)

from transformers_flex import FlexBertConfig
from transformers_flex.flops import subnet_flops
from transformers_flex.hub import metric_names
from transformers_flex.utils import default_backbone_path

# name -> (stage, starts from, depth rule, (width, depth)); "backbone" is the packaged MiniLM, the others are stages
# of the teacher run. Distillation stages are taught by the model they start from.
BASELINES = {
    "first3_ft": ("final", "backbone", "prefix", (1.0, 0.5)),
    "every_other3_ft": ("final", "backbone", "every_other", (1.0, 0.5)),
    "first3_kd": ("width_depth", "teacher", "prefix", (1.0, 0.5)),
    "every_other3_kd": ("width_depth", "teacher", "every_other", (1.0, 0.5)),
    "width0.5_ft": ("final", "rewire", "every_other", (0.5, 1.0)),
    "width0.25_ft": ("final", "rewire", "every_other", (0.25, 1.0)),
    "width0.5_kd": ("width", "rewire", "every_other", (0.5, 1.0)),
    "width0.25_kd": ("width", "rewire", "every_other", (0.25, 1.0)),
}


def baseline_row(name: str, folder: Path, metric: str, config: FlexBertConfig, full_flops: int) -> dict:
    stage, start, depth_rule, (width, depth) = BASELINES[name]
    summary = json.loads((folder / "stage_results.json").read_text())
    return {
        "name": name,
        "stage": stage,
        "starts_from": start,
        "depth_rule": depth_rule,
        "width": width,
        "depth": depth,
        "flops_ratio": subnet_flops(config, width, depth) / full_flops,
        "dev_metric": subnet_score(summary["metrics"], metric, width, depth),
        "train_runtime": summary["train_runtime"],
    }


def add_flexible_scores(report: dict, path: str) -> None:
    """The flexible model's score of each baseline's (width, depth) sub-network, from its summarize_glue.py JSON."""
    (summary,) = [entry for entry in json.loads(Path(path).read_text())["tasks"] if entry["task"] == report["task"]]
    if abs(summary["teacher"][report["metric"]] - report["teacher"]) > 1e-9:
        raise SystemExit(f"{path} was distilled from another teacher ({summary['teacher']}): not comparable.")
    scores = {(row["width"], row["depth"]): row[report["metric"]] for row in summary["rows"]}
    report["flexible"] = {"source": path, "stage": summary["stage"]}
    for row in report["rows"]:
        row["flexible_dev_metric"] = scores[row["width"], row["depth"]]


def table(report: dict) -> str:
    lines = [
        f"{report['task']} dev {report['metric']}, seed {report['seed']}: teacher {100 * report['teacher']:.2f}",
        "| baseline | stage | from | width | depth | FLOPs ratio | dev metric | vs teacher | flexible model "
        "| flexible vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        flexible = row.get("flexible_dev_metric")
        compared = (
            "| | |" if flexible is None else f"| {100 * flexible:.2f} | {100 * (flexible - row['dev_metric']):+.2f} |"
        )
        lines.append(
            f"| {row['name']} | {row['stage']} | {row['starts_from']} | {row['width']} | {row['depth']} "
            f"| {row['flops_ratio']:.3f} | {100 * row['dev_metric']:.2f} "
            f"| {100 * (row['dev_metric'] - report['teacher']):+.2f} {compared}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, output_dir_help="Run folder: the teacher run, with baselines/<name>/ inside.")
    parser.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument(
        "--flexible",
        help="A summarize_glue.py JSON of the flexible model (same teacher): its sub-networks side by side.",
    )
    args = parse_or_show(parser, table, required=("task_name", "output_dir", "output"), pass_through=True)
    if args is None:
        return
    run_dir = Path(args.output_dir)
    shared = shared_training_options(args)
    train_flex(["--stages", "teacher", "rewire", "--output_dir", str(run_dir), *shared])
    starts = {"backbone": default_backbone_path(), "teacher": run_dir / "teacher", "rewire": run_dir / "rewire"}
    for name in args.baselines:
        stage, start, depth_rule, (width, depth) = BASELINES[name]
        folder = run_dir / "baselines" / name
        if (folder / "stage_results.json").exists():
            continue  # finished earlier
        teacher = ["--teacher_name_or_path", str(starts[start])] if stage != "final" else []
        train_flex(
            ["--flex_stage", stage, "--model_name_or_path", str(starts[start]), *teacher, "--depth_rule", depth_rule]
            + ["--train_subnets", f"{width},{depth}", "--output_dir", str(folder), *shared]
        )
    teacher_metrics = json.loads((run_dir / "results.json").read_text())["stages"]["teacher"]["metrics"]
    metric = metric_names(teacher_metrics)[0]  # the task's first metric (GLUE's ranking one)
    config = FlexBertConfig.from_pretrained(run_dir / "teacher")
    full_flops = subnet_flops(config)
    rows = [baseline_row(name, run_dir / "baselines" / name, metric, config, full_flops) for name in args.baselines]
    recipe = training_recipe(args)
    report = run_record(task=args.task_name, seed=args.seed, metric=metric, recipe=recipe)
    report |= {"passed_on": args.passed_on, "teacher": teacher_metrics[f"eval_{metric}"], "rows": rows}
    if args.flexible:
        add_flexible_scores(report, args.flexible)
    write_report(args.output, report)
    print(table(report))


if __name__ == "__main__":
    main()
