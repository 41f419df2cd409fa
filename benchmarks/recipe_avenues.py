"""Training avenues for the flexible model, each measured against the current recipe in one protocol: same teacher,
same rewiring, same width stage, same data and seed; each avenue changes one thing after the width stage.

A pipeline run of `teacher rewire width` (with grafting: the recipe of the GLUE tables in docs/RESULTS.md) is the
shared start; then every avenue is one or two single stages of `transformers-flex train`:

- `sandwich`: the current recipe's width_depth stage: largest + smallest + 2 random of the 12 sub-networks a step,
  every-other depth rule, every sub-network taught by the width model at full width.
- `all12`: every one of the 12 sub-networks a step.
- `same_width_teacher`: every sub-network taught by the width model at the student's own width.
- `prefix`: the prefix depth rule (Flexible BERT: a shallower sub-network is the first layers of the deeper ones).
- `longer`: twice the epochs.
- `augmented`: TinyBERT's data augmentation: the width_depth stage also trains on one copy of every training
  example with words replaced by their embedding neighbours (`--augment_copies 1`), so it takes as many steps as
  `longer` — new sentences instead of a second pass over the same ones.
- `attention_kd`: attention distillation too (MiniLM's self-attention transfer, `--lambda_attention 1`): each
  sub-network's attention distribution of every head and token learns the teacher's in the same layer.
- `sandwich_final`: then the `final` stage (cross-entropy to gold labels, sandwich sampling) after `sandwich`.
- `prefix_ramps`: Flexible BERT's recipe: after `prefix`, off-ramps after the last layer of each shallower depth
  (layers 3 and 5 of 6), trained at every width with the rest frozen (docs/RESULTS.md §5's recipe: attention ramps,
  learning rate 1e-3, one epoch); a depth sub-network is then answered by its own ramp, not the shared classifier.
- `prefix_ramps_joint`: after `prefix`, the same ramps as copies of the final head (Flexible BERT), trained with the
  backbone on the gold labels (PABEE's depth-weighted loss, `--ramp_training weighted`) at every width: the `final`
  stage's gold labels for all 12 sub-networks, each depth through its own ramp.
- `prefix_ramps_then_joint`: the same joint training, from `prefix_ramps` (its attention ramps already trained).
- `prefix_final`: the `final` stage after `prefix` (what `sandwich_final` is to `sandwich`).
- `prefix_final_ramps`: `prefix_ramps`' frozen attention ramps trained on `prefix_final`: the two winners at once
  (the final stage's full-depth gains, a ramp per shallower depth).

Every run is resumable (a finished stage is read back, an interrupted one resumes from its checkpoint). Options this
script does not know (`--max_train_samples 64`, ...) go to every `transformers-flex train` call. With `--baselines`
(a fixed_size_baselines.py JSON of the same teacher) the table shows the best fixed-size model of each size too.

    python benchmarks/recipe_avenues.py --task_name mrpc --output_dir runs/avenues/mrpc_seed42 --seed 42 \\
        --max_seq_length 128 --baselines benchmarks/results/baselines_mrpc_seed42.json \\
        --output benchmarks/results/avenues_mrpc_seed42.json
    python benchmarks/recipe_avenues.py --show benchmarks/results/avenues_mrpc_seed42.json
"""

import argparse
import json
from pathlib import Path

import torch
from common import (
    add_training_arguments,
    parse_or_show,
    run_record,
    run_splits,
    shared_training_options,
    subnet_score,
    train_flex,
    training_recipe,
    write_report,
)

from transformers_flex import FlexBertConfig, FlexBertForSequenceClassification
from transformers_flex.evaluation import predict
from transformers_flex.flexbert_layers import depth_ramp_layers
from transformers_flex.flops import subnet_flops
from transformers_flex.hub import metric_names
from transformers_flex.trainer import stage_subnets
from transformers_flex.utils import load_tokenizer

SANDWICH = ["--subnet_sampling", "sandwich", "--num_random_subnets", "2"]
RAMPS = ["--ramp_type", "attention", "--ramp_training", "two_stage", "--ramp_widths", "all"]
JOINT_RAMPS = ["--ramp_training", "weighted", "--ramp_widths", "all"]  # ramps and backbone on gold labels
# name -> (stage, starts from: "width" (the shared width stage) or an earlier avenue, options of that stage)
AVENUES = {
    "sandwich": ("width_depth", "width", SANDWICH),
    "all12": ("width_depth", "width", ["--subnet_sampling", "all"]),
    "same_width_teacher": ("width_depth", "width", [*SANDWICH, "--teacher_width", "same"]),
    "prefix": ("width_depth", "width", [*SANDWICH, "--depth_rule", "prefix"]),
    "longer": ("width_depth", "width", SANDWICH),  # its epochs are doubled in `avenue_options`
    "augmented": ("width_depth", "width", [*SANDWICH, "--augment_copies", "1"]),
    "attention_kd": ("width_depth", "width", [*SANDWICH, "--lambda_attention", "1.0"]),
    "sandwich_final": ("final", "sandwich", SANDWICH),
    # Section 5's ramp recipe (attention ramps: MiniLM's early [CLS] states carry little); exit layers are added.
    "prefix_ramps": ("ramps", "prefix", [*RAMPS, "--learning_rate", "1e-3", "--num_train_epochs", "1"]),
    "prefix_ramps_joint": ("ramps", "prefix", JOINT_RAMPS),
    "prefix_ramps_then_joint": ("ramps", "prefix_ramps", ["--ramp_type", "attention", *JOINT_RAMPS]),
    "prefix_final": ("final", "prefix", SANDWICH),
    "prefix_final_ramps": ("ramps", "prefix_final", [*RAMPS, "--learning_rate", "1e-3", "--num_train_epochs", "1"]),
}
BATCH_SIZE = 64  # evaluation batches of the ramps avenues' scores
RAMP_SCORES_NAME = "ramp_scores.json"  # a ramps avenue's score of every sub-network, each read from its own head
REFERENCE = "sandwich"  # the current recipe, which every avenue is compared with


def avenue_options(name: str, args: argparse.Namespace, config: FlexBertConfig) -> list[str]:
    """The stage options of avenue `name` (they come last, so they override the shared recipe)."""
    stage, _, options = AVENUES[name]
    if name == "longer":
        options = [*options, "--num_train_epochs", str(2 * float(args.num_train_epochs))]
    if stage == "ramps":
        layers = depth_ramp_layers(config.num_hidden_layers, config.depth_mults)  # one per shallower depth
        options = [*options, "--exit_layers", *map(str, layers)]
    return ["--flex_stage", stage, *options]


def with_earlier_avenues(names: list[str]) -> list[str]:
    """`names` with the avenues they continue (each before the first one continuing it), without repeats."""
    ordered = []
    for name in names:
        start = AVENUES[name][1]
        if start in AVENUES:
            ordered += [earlier for earlier in with_earlier_avenues([start]) if earlier not in ordered]
        if name not in ordered:
            ordered.append(name)
    return ordered


def train_avenue(name: str, run_dir: Path, shared: list[str], args: argparse.Namespace, config) -> None:
    """Train avenue `name` unless it finished earlier (the avenue it continues must have finished); `config`: the
    width model's."""
    stage, start, _ = AVENUES[name]
    folder = run_dir / "avenues" / name
    if (folder / "stage_results.json").exists():
        return
    source = run_dir / "width" if start == "width" else run_dir / "avenues" / start
    # Distillation is taught by the shared width model; `final` learns from gold labels, `ramps` from the model itself.
    teacher = ["--teacher_name_or_path", str(run_dir / "width")] if stage == "width_depth" else []
    train_flex(
        ["--model_name_or_path", str(source), *teacher, "--output_dir", str(folder), *shared]
        + avenue_options(name, args, config)
    )


def ramp_scores(folder: Path, run_dir: Path, metric: str) -> dict[str, float]:
    """Every sub-network of a ramps avenue's model on the run's dev set, each shallower depth answered by the ramp
    after its last layer (`depth_heads="ramps"`) and the full depth by the final head; computed once, then read from
    `ramp_scores.json`."""
    saved = folder / RAMP_SCORES_NAME
    if saved.exists():
        return json.loads(saved.read_text())
    data = run_splits(run_dir)
    model = FlexBertForSequenceClassification.from_pretrained(folder, depth_heads="ramps", dynamic_inference=False)
    batches = data.batches("dev", load_tokenizer(folder), BATCH_SIZE)
    scores = {}
    with torch.no_grad():
        for width, depth in stage_subnets(model.config, "width_depth"):
            with model.eval().subnet(width=width, depth=depth):
                logits, labels, _ = predict(model, batches)
            scores[f"w{width}_d{depth}"] = data.scores(logits, labels)[metric]
    saved.write_text(json.dumps(scores, indent=2))
    return scores


def avenue_row(name: str, run_dir: Path, metric: str, subnets: list[tuple[float, float]], reference_flops) -> dict:
    """Avenue `name`'s scores of every sub-network; and their FLOPs ratios where its heads make them differ from
    `reference_flops` (the width model's, the table's column)."""
    stage, start, _ = AVENUES[name]
    folder = run_dir / "avenues" / name
    summary = json.loads((folder / "stage_results.json").read_text())
    if stage == "ramps":
        scores = ramp_scores(folder, run_dir, metric)
    else:
        scores = {
            f"w{width}_d{depth}": subnet_score(summary["metrics"], metric, width, depth) for width, depth in subnets
        }
    row = {"name": name, "stage": stage, "starts_from": start, "scores": scores}
    own_flops = avenue_flops_ratios(folder, stage, subnets)
    if own_flops != reference_flops:  # its heads cost other than the reference's (attention ramps answer depths)
        row["flops_ratio"] = own_flops
    return row | {"train_runtime": summary["train_runtime"]}


def avenue_flops_ratios(folder: Path, stage: str, subnets: list) -> dict[str, float]:
    """Each sub-network's FLOPs ratio in an avenue's model, through the head that answers it there (a ramps
    avenue's shallower depths: their own ramps, as `ramp_scores` scores them)."""
    config = FlexBertConfig.from_pretrained(folder)
    if stage == "ramps":
        config.depth_heads = "ramps"
    full_flops = subnet_flops(config)
    return {f"w{width}_d{depth}": subnet_flops(config, width, depth) / full_flops for width, depth in subnets}


def reference_flops_ratios(report: dict) -> dict[str, float]:
    """Each sub-network's FLOPs ratio in the width model (the table's column, the final head answering)."""
    return {subnet["name"]: subnet["flops_ratio"] for subnet in report["subnets"]}


def best_baselines(path: str, report: dict) -> dict[str, dict]:
    """The best fixed-size model of each (width, depth) in a fixed_size_baselines.py JSON of the same teacher."""
    baselines = json.loads(Path(path).read_text())
    if baselines["task"] != report["task"] or abs(baselines["teacher"] - report["teacher"]) > 1e-9:
        raise SystemExit(f"{path} holds baselines of another task or teacher: not comparable.")
    best = {}
    for row in baselines["rows"]:
        key = f"w{row['width']}_d{row['depth']}"
        if key not in best or row["dev_metric"] > best[key]["dev_metric"]:
            best[key] = {"name": row["name"], "dev_metric": row["dev_metric"]}
    return best


def table(report: dict) -> str:
    names = [row["name"] for row in report["avenues"]]
    lines = [
        f"{report['task']} dev {report['metric']}, seed {report['seed']}: teacher {100 * report['teacher']:.2f}; "
        f"every avenue continues the same width stage; {REFERENCE} is the current recipe",
        f"| sub-network | FLOPs ratio | width stage (start) | {' | '.join(names)} | best fixed-size model |",
        "|---|---|---|" + "---|" * (len(names) + 1),
    ]
    baselines = report.get("baselines", {})
    for subnet in report["subnets"]:
        key = subnet["name"]
        start = report["width_stage"].get(key)  # the shared start has full-depth sub-networks only
        start = "" if start is None else f"{100 * start:.2f}"
        scores = " | ".join(f"{100 * row['scores'][key]:.2f}" for row in report["avenues"])
        baseline = baselines.get(key)
        best = f"{100 * baseline['dev_metric']:.2f} ({baseline['name']})" if baseline else ""
        lines.append(f"| {key} | {subnet['flops_ratio']:.3f} | {start} | {scores} | {best} |")
    means = {row["name"]: sum(row["scores"].values()) / len(row["scores"]) for row in report["avenues"]}
    lines.append("| mean | | | " + " | ".join(f"{100 * means[name]:.2f}" for name in names) + " | |")
    if REFERENCE in means:
        gains = " | ".join(f"{100 * (means[name] - means[REFERENCE]):+.2f}" for name in names)
        lines.append(f"| mean − {REFERENCE} | | | {gains} | |")
    reference_flops = reference_flops_ratios(report)
    for row in report["avenues"]:  # an avenue whose own heads cost more (its attention ramps) says where
        own = {key: ratio for key, ratio in row.get("flops_ratio", {}).items() if ratio != reference_flops[key]}
        if own:
            ratios = ", ".join(f"{key} {ratio:.3f}" for key, ratio in own.items())
            lines.append(f"\n{row['name']}: FLOPs ratios through the ramps that answer its depths: {ratios}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(parser, output_dir_help="Run folder: the shared width run, with avenues/<name>/ inside.")
    parser.add_argument("--avenues", nargs="+", default=list(AVENUES), choices=list(AVENUES))
    parser.add_argument("--baselines", help="A fixed_size_baselines.py JSON of the same teacher.")
    args = parse_or_show(parser, table, required=("task_name", "output_dir", "output"), pass_through=True)
    if args is None:
        return
    run_dir = Path(args.output_dir)
    shared = shared_training_options(args)
    train_flex(["--stages", "teacher", "rewire", "width", "--grafting", "true", "--output_dir", str(run_dir), *shared])
    avenues = with_earlier_avenues(args.avenues)
    config = FlexBertConfig.from_pretrained(run_dir / "width")
    for name in avenues:
        train_avenue(name, run_dir, shared, args, config)
    stages = json.loads((run_dir / "results.json").read_text())["stages"]
    metric = metric_names(stages["teacher"]["metrics"])[0]  # the task's first metric (GLUE's ranking one)
    subnets = stage_subnets(config, "width_depth")
    full_flops = subnet_flops(config)
    recipe = training_recipe(args)
    report = run_record(task=args.task_name, seed=args.seed, metric=metric, recipe=recipe, passed_on=args.passed_on)
    report["teacher"] = stages["teacher"]["metrics"][f"eval_{metric}"]
    report["width_stage"] = {
        f"w{width}_d1.0": subnet_score(stages["width"]["metrics"], metric, width, 1.0) for width in config.width_mults
    }
    report["subnets"] = [
        {"name": f"w{width}_d{depth}", "width": width, "depth": depth,
         "flops_ratio": subnet_flops(config, width, depth) / full_flops}
        for width, depth in subnets
    ]  # fmt: skip
    reference_flops = reference_flops_ratios(report)
    report["avenues"] = [avenue_row(name, run_dir, metric, subnets, reference_flops) for name in avenues]
    if args.baselines:
        report["baselines"] = best_baselines(args.baselines, report)
    write_report(args.output, report)
    print(table(report))


if __name__ == "__main__":
    main()
