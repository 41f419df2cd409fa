"""Data loading: GLUE from the Hub's `nyu-mll/glue` or a local mirror with the same layout, any Hub dataset, or
local CSV / JSON lines / parquet files; and GLUE preprocessing."""

from __future__ import annotations  # the annotations name `datasets` classes, imported only where data is loaded

from pathlib import Path
from typing import TYPE_CHECKING

from transformers import PreTrainedTokenizerBase

from .utils import default_data_dir

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

HUB_GLUE = "nyu-mll/glue"

# Text columns of every GLUE task (second is None for single-sentence tasks).
GLUE_TEXT_COLUMNS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
# The dev split name of each task (MNLI has two).
GLUE_DEV_SPLIT = {task: "validation" for task in GLUE_TEXT_COLUMNS} | {"mnli": "validation_matched"}
# Dev sets GLUE also reports, by metric-key prefix: MNLI's mismatched genres (keys like `eval_mm_accuracy`).
GLUE_EXTRA_DEV_SPLITS = {"mnli": {"eval_mm": "validation_mismatched"}}


def check_glue_task(task: str) -> str:
    """Return the task name, or raise a `ValueError` listing the GLUE tasks."""
    if task not in GLUE_TEXT_COLUMNS:
        raise ValueError(f"Unknown GLUE task {task!r}; choose one of {sorted(GLUE_TEXT_COLUMNS)}.")
    return task


def glue_num_labels(task: str) -> int:
    """Outputs of the task's head: 1 for STS-B regression, 3 for MNLI, 2 otherwise."""
    return {"stsb": 1, "mnli": 3}.get(check_glue_task(task), 2)


def load_glue(task: str, data_dir: str | Path | None = None, hub_dataset: str = HUB_GLUE) -> DatasetDict:
    """Load a GLUE task from `data_dir` (a mirror laid out like `nyu-mll/glue`), the default mirror, or the Hub."""
    from datasets import load_dataset  # here, so that inference needs no `datasets` (a GPU image may lack it)

    check_glue_task(task)
    local = Path(data_dir) if data_dir is not None else default_data_dir()
    if data_dir is not None and not (local / "glue" / task).is_dir():
        raise FileNotFoundError(f"No GLUE task {task!r} under {local / 'glue'}.")
    if local is not None and (local / "glue" / task).is_dir():
        return load_dataset(str(local / "glue"), task)
    return load_dataset(hub_dataset, task)


# `datasets` builder of each data file extension, as transformers' run_glue.py reads `--train_file`.
DATA_FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_data_files(files: dict[str, str | Path]) -> DatasetDict:
    """Load local data files by split name (e.g. `{"train": "train.csv", "validation": "dev.jsonl"}`); the format
    of each comes from its extension, so the splits may differ in format."""
    from datasets import DatasetDict, load_dataset

    splits = {}
    for split, path in files.items():
        path = Path(path)
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: unknown data file type; use one of {sorted(DATA_FILE_BUILDERS)}.")
        if not path.is_file():
            raise FileNotFoundError(f"The {split} file {path} does not exist.")
        try:
            splits[split] = load_dataset(builder, data_files={split: str(path)}, split=split)
        except ValueError as error:  # `datasets` says "Instruction ... corresponds to no data" for empty files
            raise ValueError(f"The {split} split is empty or unreadable ({path}): {error}") from error
    return DatasetDict(splits)


def tokenize_glue(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, task: str, max_length: int = 128) -> Dataset:
    """Tokenize a GLUE split (truncated, unpadded) and rename `label` to `labels`; text columns are dropped."""
    first, second = GLUE_TEXT_COLUMNS[check_glue_task(task)]

    def encode(examples: dict) -> dict:
        texts = (examples[first],) if second is None else (examples[first], examples[second])
        return tokenizer(*texts, truncation=True, max_length=max_length)

    kept = {"label"}
    encoded = dataset.map(
        encode, batched=True, remove_columns=[c for c in dataset.column_names if c not in kept], desc="tokenize"
    )
    return encoded.rename_column("label", "labels")


def split_train_heldout(
    train: Dataset, num_train: int | None, num_heldout: int, seed: int = 42
) -> tuple[Dataset, Dataset]:
    """Shuffle the training split once and cut it into a training subset and a disjoint held-out slice.

    The held-out slice (for importance, never the dev set) comes first; `num_train=None` keeps all the rest.
    """
    if num_heldout >= len(train):
        raise ValueError(f"`num_heldout` ({num_heldout}) must be smaller than the training split ({len(train)}).")
    shuffled = train.shuffle(seed=seed)
    heldout = shuffled.select(range(num_heldout))
    end = len(train) if num_train is None else min(len(train), num_heldout + num_train)
    return shuffled.select(range(num_heldout, end)), heldout


__all__ = [
    "DATA_FILE_BUILDERS",
    "GLUE_DEV_SPLIT",
    "GLUE_EXTRA_DEV_SPLITS",
    "GLUE_TEXT_COLUMNS",
    "glue_num_labels",
    "load_data_files",
    "load_glue",
    "split_train_heldout",
    "tokenize_glue",
]
