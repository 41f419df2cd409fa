"""Extractive QA through the training pipeline (`transformers-flex train` on SQuAD-format JSON lines built from the
mirror): every stage is scored by the official metric, each evaluated model's `predictions.json` scores exactly
what the stage reports, the batched sub-network evaluation reproduces the Trainer's numbers, and the final checkpoint
answers questions through the `flex-question-answering` pipeline in a process without this package."""

import json
import textwrap
from pathlib import Path

import pytest
from clean_process import run_without_package
from datasets import Dataset
from interpreters import INTERPRETERS
from pipeline_runs import TINY_BUDGET, run_train
from test_pipeline import metric_keys
from transformers import AutoTokenizer, DataCollatorWithPadding, pipeline

from transformers_flex import FlexBertForQuestionAnswering
from transformers_flex.evaluation import evaluate_qa_subnets, subnet_grid
from transformers_flex.squad import load_squad, squad_metrics, squad_references
from transformers_flex.tasks import FlexDataError, check_splits, squad_task

pytestmark = pytest.mark.integration

WINDOW = ["--max_seq_length", "96", "--doc_stride", "32"]  # small windows: many contexts span several
TRAIN_QUESTIONS, DEV_QUESTIONS = 40, 12


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def squad_files(data_dir, tmp_path_factory) -> dict[str, Path]:
    """SQuAD-format JSON lines: the first training and dev questions of the mirror."""
    if not (data_dir / "squad").is_dir():
        pytest.skip("No local SQuAD mirror")
    root = tmp_path_factory.mktemp("squad_data")
    raw = load_squad(data_dir)
    return {
        "train": write_jsonl(root / "train.jsonl", raw["train"].select(range(TRAIN_QUESTIONS))),
        "dev": write_jsonl(root / "dev.jsonl", raw["validation"].select(range(DEV_QUESTIONS))),
    }


@pytest.fixture(scope="module")
def qa_run(squad_files, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("qa_run")
    args = ["--train_file", squad_files["train"], "--validation_file", squad_files["dev"]]
    args += ["--output_dir", output_dir, *TINY_BUDGET, *WINDOW, "--depth_rule", "prefix"]
    result = run_train(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def dev_examples(squad_files) -> Dataset:
    return Dataset.from_json(str(squad_files["dev"]))


def test_every_stage_is_scored_and_writes_its_answers(qa_run, squad_files):
    results = json.loads((qa_run / "results.json").read_text())
    assert results["task_kind"] == "extractive_qa" and results["dev_examples"] == DEV_QUESTIONS
    assert list(results["stages"]) == ["teacher", "rewire", "width", "width_depth"]
    record = json.loads((qa_run / "run_config.json").read_text())
    assert record["data"]["max_seq_length"] == 96 and record["task"]["doc_stride"] == 32
    references = squad_references(dev_examples(squad_files))
    for stage, summary in results["stages"].items():
        metrics = summary["metrics"]
        answers = json.loads((qa_run / stage / "predictions.json").read_text())
        assert set(answers) == set(references)
        scored = squad_metrics(answers, references)
        assert scored["exact_match"] == pytest.approx(metrics["eval_exact_match"])
        assert scored["f1"] == pytest.approx(metrics["eval_f1"])
    width_depth = results["stages"]["width_depth"]["metrics"]
    assert metric_keys(width_depth, "f1") == set(subnet_grid(FlexBertForQuestionAnswering.config_class()))
    for path in (qa_run / "width_depth" / "predictions").iterdir():  # w<width>_d<depth>.json
        width, depth = path.stem[1:].split("_d")
        scored = squad_metrics(json.loads(path.read_text()), references)
        assert scored["f1"] == pytest.approx(width_depth[f"eval_w{width}_d{depth}_f1"])


def test_batched_subnet_evaluation_reproduces_the_trainer(qa_run, squad_files):
    """`evaluate_qa_subnets` (length-sorted batches, windows trimmed) == the stage's Trainer evaluation."""
    model = FlexBertForQuestionAnswering.from_pretrained(qa_run / "width_depth")
    tokenizer = AutoTokenizer.from_pretrained(qa_run / "width_depth")
    task = squad_task()
    task.doc_stride = 32
    examples = dev_examples(squad_files)
    features = task.tokenize(examples, tokenizer, 96, training=False)
    subnets = [(1.0, 1.0), (0.5, 0.75), (0.25, 0.5)]
    rows = evaluate_qa_subnets(model, examples, features, DataCollatorWithPadding(tokenizer), subnets, batch_size=5)
    reported = json.loads((qa_run / "results.json").read_text())["stages"]["width_depth"]["metrics"]
    for row in rows:
        prefix = f"eval_w{row['width']}_d{row['depth']}"
        assert row["f1"] == pytest.approx(reported[f"{prefix}_f1"], abs=1e-6)
        assert row["exact_match"] == pytest.approx(reported[f"{prefix}_exact_match"], abs=1e-6)
    assert rows[0]["mean_flops"] > rows[1]["mean_flops"] > rows[2]["mean_flops"]


CLEAN_PIPELINE = textwrap.dedent(
    """
    from transformers import pipeline

    checkpoint, question, context = sys.argv[1:4]
    answerer = pipeline("flex-question-answering", model=checkpoint, trust_remote_code=True)
    print(json.dumps([type(answerer).__module__, answerer(question=question, context=context, width=0.5)]))
    """
)


@pytest.mark.parametrize("python", INTERPRETERS)
def test_final_checkpoint_answers_through_the_pipeline_without_the_package(qa_run, squad_files, tmp_path, python):
    checkpoint = qa_run / "width_depth"
    assert "flexbert_qa.py" in {path.name for path in checkpoint.iterdir()}
    example = dev_examples(squad_files)[0]
    arguments = str(checkpoint), example["question"], example["context"]
    module, remote = json.loads(run_without_package(CLEAN_PIPELINE, *arguments, workdir=tmp_path, python=python)[-1])
    assert module.startswith("transformers_modules.")  # the checkpoint's own copy of the pipeline ran
    # With the package: the registered task on a loaded model (a path needs trust_remote_code, as the config names
    # the checkpoint's own copy of the pipeline).
    model = FlexBertForQuestionAnswering.from_pretrained(checkpoint)
    answerer = pipeline("flex-question-answering", model=model, tokenizer=AutoTokenizer.from_pretrained(checkpoint))
    assert type(answerer).__module__ == "transformers_flex.flexbert_qa"
    local = answerer(question=example["question"], context=example["context"], width=0.5)
    assert remote["answer"] == local["answer"] and remote["score"] == pytest.approx(local["score"], abs=1e-5)
    assert example["context"][remote["start"] : remote["end"]] == remote["answer"]


def test_bad_qa_data_is_refused_before_any_training(squad_files, tmp_path):
    rows = [json.loads(line) for line in squad_files["dev"].read_text().splitlines()]
    rows[3]["answers"] = {"text": [], "answer_start": []}
    unanswered = write_jsonl(tmp_path / "dev.jsonl", rows)
    output_dir = tmp_path / "run"
    files = ["--train_file", squad_files["train"], "--importance_samples", "8", "--output_dir", output_dir]
    result = run_train(*files, "--validation_file", unanswered)
    assert result.returncode != 0 and "no reference answer" in result.stderr
    assert not (output_dir / "teacher").exists()


def test_misplaced_training_answers_are_counted(squad_files, caplog):
    train = Dataset.from_json(str(squad_files["train"]))
    moved = train.map(
        lambda row, i: {"answers": {**row["answers"], "answer_start": [0]}} if i < 3 else {}, with_indices=True
    )
    with caplog.at_level("WARNING"):
        check_splits(squad_task(), moved, {"validation": dev_examples(squad_files)})
    assert "3 of 40 training questions" in caplog.text
    empty = dev_examples(squad_files).select([])
    with pytest.raises(FlexDataError, match="empty"):
        check_splits(squad_task(), train, {"validation": empty})


def test_dynamic_qa_evaluation_matches_the_static_sub_networks_at_its_extremes(qa_run, squad_files):
    """With prefix depth and off-ramps copied from the final head, the engine at threshold 0 is the full model, and
    with every window exiting at the first ramp (layer 3 of 6) it is the (width 1.0, depth 0.5) sub-network."""
    from transformers_flex.evaluation import evaluate_qa_dynamic

    model = FlexBertForQuestionAnswering.from_pretrained(qa_run / "width_depth", exit_layers=[3, 5])
    model.copy_head_to_off_ramps()
    tokenizer = AutoTokenizer.from_pretrained(qa_run / "width_depth")
    task = squad_task()
    task.doc_stride = 32
    examples = dev_examples(squad_files)
    features = task.tokenize(examples, tokenizer, 96, training=False)
    collate = DataCollatorWithPadding(tokenizer)
    static = evaluate_qa_subnets(model, examples, features, collate, [(1.0, 1.0), (1.0, 0.5)], batch_size=7)
    never = evaluate_qa_dynamic(model, examples, features, collate, batch_size=7, criterion="entropy", threshold=0.0)
    always = evaluate_qa_dynamic(model, examples, features, collate, batch_size=7, criterion="entropy", threshold=1e9)
    assert never["mean_exit_layer"] == 6 and always["mean_exit_layer"] == 3
    for dynamic, subnet in ((never, static[0]), (always, static[1])):
        assert dynamic["answers"] == subnet["answers"]
        assert dynamic["f1"] == pytest.approx(subnet["f1"])
    assert always["mean_flops"] < never["mean_flops"]
