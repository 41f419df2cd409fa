"""Pipeline runs that several test modules share (session-scoped fixtures, registered by conftest.py): a
three-class CSV and a regression JSON-lines set built from the local GLUE mirror, and one tiny run of every stage,
teacher to gates, on the CSV."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_dataset

LABEL_NAMES = ["negative", "positive", "short"]
WIDTHS, DEPTHS = (1.0, 0.75, 0.5, 0.25), (1.0, 0.75, 0.5)
# The smallest budget that trains every stage: two steps of eight examples, 32 tokens, checkpoints every step.
TINY_BUDGET = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--max_seq_length", "32"]
TINY_BUDGET += ["--importance_samples", "8", "--save_strategy", "steps", "--save_steps", "1", "--use_cpu"]
TINY_BUDGET += ["--report_to", "none", "--disable_tqdm", "true", "--subnet_sampling", "sandwich"]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def sentiment_label(example: dict) -> str:
    """Three classes from SST-2: short sentences (under six words) are `short`, the rest keep their sentiment."""
    return "short" if len(example["sentence"].split()) < 6 else LABEL_NAMES[example["label"]]


@pytest.fixture(scope="session")
def data_files(data_dir, tmp_path_factory) -> dict[str, Path]:
    """A three-class CSV (string labels, columns `id`/`review`/`sentiment`) from SST-2 and a JSON-lines regression
    set (columns `first`/`second`/`score`) from STS-B, both built deterministically from the mirror."""
    root = tmp_path_factory.mktemp("data")
    sst2, stsb = load_dataset(str(data_dir / "glue"), "sst2"), load_dataset(str(data_dir / "glue"), "stsb")
    for name, split, size in (("train", "train", 48), ("dev", "validation", 16)):
        with open(root / f"{name}.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=["id", "review", "sentiment"])
            writer.writeheader()
            for index, example in enumerate(sst2[split].select(range(size))):
                writer.writerow({"id": index, "review": example["sentence"], "sentiment": sentiment_label(example)})
        with open(root / f"{name}.jsonl", "w") as file:
            for example in stsb[split].select(range(size)):
                row = {"first": example["sentence1"], "second": example["sentence2"], "score": example["label"]}
                file.write(json.dumps(row) + "\n")
    return {name: root / name for name in ("train.csv", "dev.csv", "train.jsonl", "dev.jsonl")}


def train_command(*args) -> list[str]:
    """The installed console script (else the module) with `args`."""
    script = Path(sys.executable).with_name("transformers-flex")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "transformers_flex.cli"]
    return [*prefix, "train", *map(str, args)]


def run_train(*args) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(*args), capture_output=True, text=True, timeout=900, env=ENV)


def train_here(*args) -> None:
    """`transformers-flex train args` in this process (no interpreter start-up and imports, ~7 s a command). A
    refusal raises SystemExit with its message."""
    from transformers_flex.cli import main

    main(["train", *map(str, args)])


def trained_anything(capfd, caplog) -> bool:
    """Whether the commands run in this process since the last call logged a Trainer's `train_runtime` (a stage was
    trained); `capfd` and `caplog` are the test's fixtures."""
    captured = capfd.readouterr()
    logged = caplog.text
    caplog.clear()
    return "train_runtime" in captured.out + captured.err + logged


def csv_arguments(files: dict, output_dir: Path) -> list:
    """The three-class CSV run into `output_dir`; the text column is guessed (`review`, the only string column
    besides the label)."""
    return ["--train_file", files["train.csv"], "--validation_file", files["dev.csv"], "--output_dir", output_dir]


@pytest.fixture(scope="session")
def classification_run(data_files, tmp_path_factory):
    """Every stage, teacher to gates, on the three-class CSV: (output_dir, arguments of the command)."""
    output_dir = tmp_path_factory.mktemp("classification")
    args = [*csv_arguments(data_files, output_dir), "--label_column_name", "sentiment", *TINY_BUDGET]
    args += ["--exit_layers", "2", "4", "--gate_block_size", "3", "--ramps_learning_rate", "1e-3"]
    result = run_train(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, args
