"""`transformers-flex train` on data that is no GLUE task name, and the run directory's guarantees: reruns that
continue, refuse or start over, cut-off checkpoints, damaged results, and bad data refused before any training."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from pipeline_runs import (
    DEPTHS,
    LABEL_NAMES,
    TINY_BUDGET,
    WIDTHS,
    csv_arguments,
    run_train,
    train_here,
    trained_anything,
)
from safetensors.torch import save_file
from test_integration import load_in_clean_process
from transformers import AutoTokenizer

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.tasks import FlexTask
from transformers_flex.training_args import FlexTrainingArguments
from transformers_flex.training_pipeline import (
    DataArguments,
    ModelArguments,
    PipelineArguments,
    build_run_config,
    last_complete_checkpoint,
    main,
    merged_run_config,
    run_config_differences,
)

pytestmark = pytest.mark.integration


def metric_keys(metrics: dict, metric: str) -> set[tuple[float, float]]:
    """The (width, depth) sub-networks whose `metric` a stage's metrics report (`eval_w0.5_d1.0_accuracy`)."""
    found = set()
    for key in metrics:
        if key.startswith("eval_w") and key.endswith(f"_{metric}"):
            width, depth = key[len("eval_w") : -len(metric) - 1].split("_d")
            found.add((float(width), float(depth)))
    return found


def test_train_runs_every_stage_on_a_three_class_csv(classification_run, data_files):
    output_dir, _ = classification_run
    results = json.loads((output_dir / "results.json").read_text())
    assert list(results["stages"]) == ["teacher", "rewire", "width", "width_depth", "ramps", "gates"]
    stages = {stage: summary["metrics"] for stage, summary in results["stages"].items()}
    every = {(width, depth) for width in WIDTHS for depth in DEPTHS}
    # Each stage reports the sub-networks it trains: all of them after rewiring and width_depth, every width after
    # the width stage, the full model (plain keys) after the others; non-GLUE classification: accuracy + macro F1.
    assert metric_keys(stages["rewire"], "accuracy") == every == metric_keys(stages["width_depth"], "macro_f1")
    assert metric_keys(stages["width"], "accuracy") == {(width, 1.0) for width in WIDTHS}
    for stage in ("teacher", "ramps", "gates"):
        assert {"eval_accuracy", "eval_macro_f1"} <= set(stages[stage])
    config = json.loads((output_dir / "gates" / "config.json").read_text())
    assert config["id2label"] == {str(index): name for index, name in enumerate(LABEL_NAMES)}
    assert config["exit_layers"] == [2, 4] and config["gate_block_size"] == 3
    record = json.loads((output_dir / "run_config.json").read_text())
    assert record["task"]["text_columns"] == ["review"] and record["task"]["label_column"] == "sentiment"
    assert record["data"]["train_file"] == str(data_files["train.csv"].resolve())
    assert record["stages"]["ramps"]["learning_rate"] == 1e-3 and record["stages"]["gates"]["learning_rate"] == 5e-5


def test_final_checkpoint_loads_with_remote_code_without_the_package(classification_run, tmp_path):
    output_dir, _ = classification_run
    checkpoint = output_dir / "gates"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    batch = tokenizer(["a gripping , beautifully acted film .", "dull"], padding=True, return_tensors="pt")
    loaded = load_in_clean_process(checkpoint, "AutoModelForSequenceClassification", batch, tmp_path)
    assert loaded["module"].startswith("transformers_modules")
    model = FlexBertForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        expected = model(**batch).logits
    assert (torch.tensor(loaded["output"]) - expected).abs().max() <= 1e-5


def test_train_infers_regression_from_a_jsonl_float_label(data_files, tmp_path):
    """STS-B pairs renamed `first`/`second`/`score`: both text columns guessed, regression inferred from floats."""
    args = ["--train_file", data_files["train.jsonl"], "--validation_file", data_files["dev.jsonl"]]
    result = run_train(*args, "--label_column_name", "score", "--output_dir", tmp_path, *TINY_BUDGET)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task_kind"] == "regression"
    assert list(results["stages"]) == ["teacher", "rewire", "width", "width_depth"]  # no ramps/gates flags
    every = {(width, depth) for width in WIDTHS for depth in DEPTHS}
    assert metric_keys(results["stages"]["width_depth"]["metrics"], "spearmanr") == every
    assert {"eval_pearson", "eval_spearmanr"} <= set(results["stages"]["teacher"]["metrics"])
    config = json.loads((tmp_path / "width_depth" / "config.json").read_text())
    assert len(config["id2label"]) == 1 and config["problem_type"] == "regression"
    assert json.loads((tmp_path / "run_config.json").read_text())["task"]["text_columns"] == ["first", "second"]
    # The run extends with the `final` stage (gold labels, every sub-network), which starts from width_depth.
    extended = ["--stages", *results["stages"], "final"]
    train_here(*args, "--label_column_name", "score", "--output_dir", tmp_path, *TINY_BUDGET, *extended)
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["stages"]) == ["teacher", "rewire", "width", "width_depth", "final"]
    assert metric_keys(results["stages"]["final"]["metrics"], "spearmanr") == every
    assert json.loads((tmp_path / "run_config.json").read_text())["stages"]["final"]["starts_from"] == "width_depth"
    final = FlexBertForSequenceClassification.from_pretrained(tmp_path / "final").state_dict()
    before = FlexBertForSequenceClassification.from_pretrained(tmp_path / "width_depth").state_dict()
    assert any(not torch.equal(final[name], before[name]) for name in before)  # trained, not a copy


def test_rerun_continues_the_same_run_and_refuses_another(classification_run, data_files, capfd, caplog):
    """The same command trains nothing; another seed or other data is refused, naming what differs, before any
    training and without touching the run. (The reruns run in this process; the run itself came from the command.)"""
    output_dir, args = classification_run
    before = (output_dir / "results.json").read_text()
    train_here(*args)
    assert not trained_anything(capfd, caplog)  # every stage was found finished
    assert (output_dir / "results.json").read_text() == before
    with pytest.raises(SystemExit) as other_seed:
        train_here(*args, "--seed", "43")
    assert "training.seed: 42 -> 43" in str(other_seed.value)
    jsonl = {data_files["train.csv"]: data_files["train.jsonl"], data_files["dev.csv"]: data_files["dev.jsonl"]}
    swapped = [jsonl.get(value, value) for value in args]  # the regression files instead
    with pytest.raises(SystemExit) as other_data:
        train_here(*swapped, "--label_column_name", "score")
    assert "data.train_file" in str(other_data.value)
    assert "task.label_column: 'sentiment' -> 'score'" in str(other_data.value)
    assert (output_dir / "results.json").read_text() == before


def test_damaged_results_are_rebuilt_from_the_saved_stage(classification_run):
    output_dir, args = classification_run
    width_results = output_dir / "width" / "stage_results.json"
    original = json.loads(width_results.read_text())["metrics"]
    width_results.write_text('{"stage": "width", "metr')  # cut off mid-write
    (output_dir / "results.json").write_text("not json")
    train_here(*args)
    rebuilt = json.loads(width_results.read_text())
    assert rebuilt["rebuilt"] is True and rebuilt["steps"] == 2
    quality = [key for key in original if key.endswith(("_accuracy", "_macro_f1", "_loss"))]
    assert {key: rebuilt["metrics"][key] for key in quality} == {key: original[key] for key in quality}
    assert json.loads((output_dir / "results.json").read_text())["stages"]["width"] == rebuilt


def test_cut_off_checkpoint_is_passed_over_and_a_run_can_be_extended(data_files, tmp_path, capfd, caplog):
    """A teacher stage killed while writing checkpoint-2 (no trainer_state.json, no final model) resumes from
    checkpoint-1; the run then extends with the rewire stage; another seed is refused until --overwrite_output_dir
    deletes the run and trains from scratch. (Every command runs in this process; the kill is the files removed.)"""
    args = [*csv_arguments(data_files, tmp_path), "--label_column_name", "sentiment", *TINY_BUDGET]
    train_here(*args, "--stages", "teacher")
    assert trained_anything(capfd, caplog)  # what the `skipped` check below must not see
    teacher = tmp_path / "teacher"
    for name in ("stage_results.json", "model.safetensors", "checkpoint-2/trainer_state.json"):
        (teacher / name).unlink()
    train_here(*args, "--stages", "teacher")
    summary = json.loads((teacher / "stage_results.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-1") and summary["steps_trained"] == 1
    assert (teacher / "incomplete-checkpoint-2").is_dir()  # kept for inspection, never resumed from
    train_here(*args, "--stages", "teacher", "rewire")
    assert list(json.loads((tmp_path / "run_config.json").read_text())["stages"]) == ["teacher", "rewire"]
    shutil.rmtree(teacher)  # a stage no unfinished stage needs is skipped, not retrained
    trained_anything(capfd, caplog)  # forget the runs above
    train_here(*args, "--stages", "teacher", "rewire")
    assert not trained_anything(capfd, caplog)
    assert list(json.loads((tmp_path / "results.json").read_text())["stages"]) == ["rewire"]
    with pytest.raises(SystemExit) as refused:
        train_here(*args, "--stages", "teacher", "--seed", "43")
    assert "--overwrite_output_dir" in str(refused.value)
    train_here(*args, "--stages", "teacher", "--seed", "43", "--overwrite_output_dir")
    record = json.loads((tmp_path / "run_config.json").read_text())
    assert record["training"]["seed"] == 43 and list(record["stages"]) == ["teacher"]
    assert not (tmp_path / "rewire").exists() and not (teacher / "incomplete-checkpoint-2").exists()
    assert json.loads((teacher / "stage_results.json").read_text())["steps_trained"] == 2  # from scratch


# --- fast checks: no model is trained ------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


TRAIN_ROWS = [(f"sentence number {i}", ("red", "green", "blue")[i % 3]) for i in range(12)]


@pytest.mark.parametrize(
    ("train_rows", "dev_rows", "extra", "message"),
    [
        (TRAIN_ROWS, TRAIN_ROWS[:3], ["--label_column_name", "colour"], "The train split has no column 'colour'"),
        (TRAIN_ROWS, TRAIN_ROWS[:3], ["--text_column_names", "text,title"], "has no column 'title'"),
        (TRAIN_ROWS, [("a new one", "purple")], [], "validation split has label(s) 'purple'"),
        (TRAIN_ROWS, [], [], "The validation split is empty"),
        ([(text, "red") for text, _ in TRAIN_ROWS], TRAIN_ROWS[:1], [], "all have one class ('red')"),
        (TRAIN_ROWS[:4], TRAIN_ROWS[:3], ["--importance_samples", "8"], "too few to set 8 aside"),
    ],
    ids=["missing-label-column", "missing-text-column", "unseen-dev-label", "empty-split", "one-class", "tiny-train"],
)
def test_bad_data_is_refused_before_any_training(tmp_path, train_rows, dev_rows, extra, message):
    train, dev = write_csv(tmp_path / "train.csv", train_rows), write_csv(tmp_path / "dev.csv", dev_rows)
    output_dir = tmp_path / "run"
    command = ["--flex_stage", "all", "--train_file", str(train), "--validation_file", str(dev)]
    command += ["--output_dir", str(output_dir), "--importance_samples", "2", "--use_cpu", *extra]
    with pytest.raises(SystemExit) as refused:
        main(command)
    assert message in str(refused.value)
    assert not output_dir.exists()  # refused before anything was written


def record_of(**overrides) -> dict:
    """The run record of a two-stage run with the given training arguments changed."""
    task = FlexTask(name="custom", kind="classification", text_columns=("text",), label_names=("a", "b"))
    training_args = FlexTrainingArguments(output_dir="unused", flex_stage="all", use_cpu=True, **overrides)
    args = (ModelArguments(), DataArguments(train_file="t.csv", validation_file="d.csv"), PipelineArguments())
    return build_run_config(task, ("teacher", "rewire"), "backbone", (*args[:3], training_args))


def test_run_record_holds_what_shapes_training_only():
    base = record_of()
    # Evaluation, logging and saving do not change the trained weights: the same run.
    assert run_config_differences(base, record_of(logging_steps=7, per_device_eval_batch_size=3, save_steps=9)) == []
    assert run_config_differences(base, record_of(seed=1)) == ["training.seed: 42 -> 1"]
    assert run_config_differences(base, record_of(learning_rate=1e-3)) == [
        "stages.teacher.learning_rate: 5e-05 -> 0.001"
    ]
    # Grafting shapes the width stage only, which this run does not have; a longer run extends the record.
    longer = {**base, "stages": {**base["stages"], "width": {"starts_from": "rewire", "grafting": True}}}
    assert run_config_differences(longer, record_of(grafting=True)) == []
    assert list(merged_run_config(longer, base)["stages"]) == ["teacher", "rewire", "width"]


def test_last_complete_checkpoint_passes_over_cut_off_ones(tmp_path):
    def checkpoint(step: int, state: bool = True, weights_cut: bool = False) -> None:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({"weight": torch.ones(64)}, folder / "model.safetensors")
        if weights_cut:
            with open(folder / "model.safetensors", "r+b") as file:
                file.truncate(folder.joinpath("model.safetensors").stat().st_size - 10)
        if state:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))

    checkpoint(1)
    checkpoint(2, weights_cut=True)
    checkpoint(10, state=False)  # numbered above 2: sorted by step, not by name
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-1")
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "checkpoint-1",
        "incomplete-checkpoint-10",
        "incomplete-checkpoint-2",
    ]
    (tmp_path / "checkpoint-1" / "trainer_state.json").unlink()
    assert last_complete_checkpoint(tmp_path) is None  # nothing complete: the stage starts from scratch


def test_overwrite_never_deletes_the_checkpoint_a_run_starts_from(tmp_path):
    from transformers_flex.training_pipeline import RunDirectoryError, prepare_output_dir

    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)
    (run / "teacher" / "config.json").write_text("{}")
    record = {"model": {"model_name_or_path": str(run / "teacher")}, "stages": {}}
    with pytest.raises(RunDirectoryError, match="starts from"):
        prepare_output_dir(run, record, overwrite=True)
    assert (run / "teacher" / "config.json").exists()


def test_a_complete_checkpoint_in_a_layout_without_model_safetensors_is_resumed(tmp_path):
    """FSDP, DeepSpeed or adapter checkpoints hold other weight files: a complete trainer state is enough."""
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    save_file({"weight": torch.ones(4)}, folder / "adapter_model.safetensors")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    assert last_complete_checkpoint(tmp_path) == str(folder)
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint-3"]  # nothing set aside


def test_a_recorded_squad_run_gives_its_data_and_windows_back():
    """The benchmarks reread a run's data from its record: a SQuAD run is the SQuAD task again, cut into the same
    windows (not a Hub dataset with default windows)."""
    from transformers_flex.training_pipeline import recorded_data_arguments

    sizes = {"max_seq_length": 128, "max_train_samples": 32, "max_eval_samples": 16, "importance_samples": 8}
    task = {"name": "squad", "kind": "extractive_qa", "glue_task": None, "doc_stride": 32, "max_answer_length": 20}
    task |= {"text_columns": ["question", "context"], "label_column": "answers"}
    arguments = recorded_data_arguments({"data": {**sizes, "dataset_name": "rajpurkar/squad"}, "task": task})
    assert arguments.task_name == "squad" and arguments.dataset_name is None
    assert (arguments.doc_stride, arguments.max_answer_length, arguments.max_eval_samples) == (32, 20, 16)


def test_flags_added_later_are_recorded_only_when_set():
    """Runs recorded before `--depth_heads` and augmentation existed still match their record: unset, neither is
    recorded (a single stage records every architecture flag; the pipeline, the ramps stage's)."""
    task = FlexTask(name="custom", kind="classification", text_columns=("text",), label_names=("a", "b"))
    files = {"train_file": "t.csv", "validation_file": "d.csv"}

    def record(flex_stage: str, model_args: ModelArguments, data_args: DataArguments) -> dict:
        training_args = FlexTrainingArguments(output_dir="unused", flex_stage=flex_stage, use_cpu=True)
        stages = ("ramps",) if flex_stage == "all" else (flex_stage,)
        return build_run_config(task, stages, "backbone", (model_args, data_args, PipelineArguments(), training_args))

    for flex_stage, where in (("ramps", {"model", "stages.ramps"}), ("all", {"stages.ramps"})):
        plain = record(flex_stage, ModelArguments(), DataArguments(**files))
        flagged = record(flex_stage, ModelArguments(depth_heads="ramps"), DataArguments(**files, augment_copies=2))
        changed = {difference.split(":")[0] for difference in run_config_differences(plain, flagged)}
        augmentation = {f"data.augment_{name}" for name in ("copies", "probability", "neighbours")}
        assert changed == {f"{place}.depth_heads" for place in where} | augmentation
    for lambda_attention in (0.0, 0.5):  # a distillation stage's attention loss: recorded only when on
        training_args = FlexTrainingArguments(output_dir="unused", use_cpu=True, lambda_attention=lambda_attention)
        args = (ModelArguments(), DataArguments(**files), PipelineArguments(), training_args)
        recorded = build_run_config(task, ("width",), "backbone", args)["stages"]["width"].get("lambda_attention")
        assert recorded == (lambda_attention or None)
