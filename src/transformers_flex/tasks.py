"""What a training pipeline learns: `FlexTask` (columns, labels, head, metric) and the checks on raw data.

A task is resolved from the data itself, as transformers' `run_glue.py` does: the text columns are `sentence1` and
`sentence2` when present, else the first one or two string columns other than the label; a float label column
means regression; label names come from a `ClassLabel` feature, else from the sorted distinct training labels. A
GLUE task name fills all of this in. Data with SQuAD's columns (`id`, `question`, `context`, `answers`), or the task
name `squad`, is extractive question answering: windows of the context, span decoding, and the official SQuAD v1.1
metrics (`squad.py`). Every problem with the data is a `FlexDataError` that names the split and the
column, raised before any model is trained.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from datasets import ClassLabel, Dataset, DatasetDict, Value
from transformers import EvalPrediction, PreTrainedTokenizerBase

from .data import GLUE_DEV_SPLIT, GLUE_EXTRA_DEV_SPLITS, GLUE_TEXT_COLUMNS, check_glue_task
from .metrics import classification_metrics, glue_metrics, regression_metrics
from .modeling_flexbert import FlexBertForQuestionAnswering, FlexBertForSequenceClassification
from .squad import (
    DOC_STRIDE,
    MAX_ANSWER_LENGTH,
    MAX_SEQ_LENGTH,
    N_BEST_SIZE,
    SquadMetrics,
    misplaced_answers,
    prepare_eval_features,
    prepare_train_features,
)

logger = logging.getLogger(__name__)

# Kinds of task and the model class of each; a new kind adds its class, tokenization and metric.
TASK_MODEL_CLASSES = {
    "classification": FlexBertForSequenceClassification,
    "regression": FlexBertForSequenceClassification,
    "extractive_qa": FlexBertForQuestionAnswering,
}
TASK_KINDS = tuple(TASK_MODEL_CLASSES)
# `config.problem_type` of each kind, so the model's own loss is the right one from the first step.
PROBLEM_TYPES = {"classification": "single_label_classification", "regression": "regression"}
# The task name of SQuAD v1.1, and the columns that make data extractive QA (the Hub's `rajpurkar/squad` layout).
SQUAD_TASK = "squad"
SQUAD_COLUMNS = ("id", "question", "context", "answers")
# Default truncation length of each kind (run_glue.py's 128, run_qa.py's 384).
DEFAULT_MAX_LENGTHS = {"classification": 128, "regression": 128, "extractive_qa": MAX_SEQ_LENGTH}
FLOAT_DTYPES = ("float16", "float32", "float64")
STRING_DTYPES = ("string", "large_string")  # CSV and JSON files load as large_string


class FlexDataError(ValueError):
    """The data cannot train the task: a missing column or split, an empty split, unusable labels."""


@dataclass
class FlexTask:
    """A task the pipeline trains: which columns to read, what to predict, and how to score it.

    Args:
        name: A label for records and logs (the GLUE task name, `squad`, the dataset id or `custom`).
        kind: `classification`, `regression` or `extractive_qa`.
        text_columns: One column (single sentence) or two (a pair), tokenized together; extractive QA reads
            `question` and `context`.
        label_column: The column holding the gold label (extractive QA: `answers`).
        label_names: Class names in id order (classification); they become `config.id2label`.
        label_to_id: Raw label value -> class id, for labels stored as strings or unencoded numbers; `None` when
            the column already holds the ids (a `ClassLabel`).
        glue_task: The GLUE task whose official metrics are reported, if any.
        dev_split: The split every stage is evaluated on.
        extra_dev_splits: Further dev splits reported by metric-key prefix (MNLI mismatched: `{"eval_mm": ...}`).
        doc_stride: Extractive QA: context tokens shared by consecutive windows of one context.
        n_best_size: Extractive QA: start and end candidates per window when decoding spans.
        max_answer_length: Extractive QA: longest answer span, in tokens.
        pad_to_max_length: Extractive QA: pad every window to the maximum length (run_qa.py's default); else each
            batch is padded to its longest window, which gives the same answers for less compute.
    """

    name: str
    kind: str
    text_columns: tuple[str, ...]
    label_column: str = "label"
    label_names: tuple[str, ...] | None = None
    label_to_id: dict | None = None
    glue_task: str | None = None
    dev_split: str = "validation"
    extra_dev_splits: dict[str, str] = field(default_factory=dict)
    doc_stride: int = DOC_STRIDE
    n_best_size: int = N_BEST_SIZE
    max_answer_length: int = MAX_ANSWER_LENGTH
    pad_to_max_length: bool = False

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"`kind` must be one of {TASK_KINDS}, got {self.kind!r}.")
        if not 1 <= len(self.text_columns) <= 2:
            raise ValueError(f"A task reads one or two text columns, got {list(self.text_columns)}.")

    @property
    def is_qa(self) -> bool:
        return self.kind == "extractive_qa"

    @property
    def default_max_length(self) -> int:
        return DEFAULT_MAX_LENGTHS[self.kind]

    @property
    def num_labels(self) -> int:
        if self.is_qa:
            return 2  # start and end logits
        if self.kind == "classification" and not self.label_names:
            raise ValueError(f"The classification task {self.name!r} has no `label_names` yet.")
        return 1 if self.kind == "regression" else len(self.label_names)

    @property
    def model_class(self) -> type:
        return TASK_MODEL_CLASSES[self.kind]

    def config_overrides(self) -> dict:
        """Config fields of the task's head: label count, names (`id2label`/`label2id`) and the loss it implies."""
        if self.is_qa:
            return {"num_labels": self.num_labels}
        overrides = {"num_labels": self.num_labels, "problem_type": PROBLEM_TYPES[self.kind]}
        if self.kind == "classification":
            overrides["id2label"] = dict(enumerate(self.label_names))
            overrides["label2id"] = {name: index for index, name in enumerate(self.label_names)}
        return overrides

    def compute_metrics(
        self, dev_examples: Dataset | None = None, dev_features: Dataset | None = None
    ) -> Callable[[EvalPrediction], dict[str, float]]:
        """A `compute_metrics` for `Trainer`: GLUE's official metrics for GLUE tasks, else accuracy and macro F1
        (classification) or Pearson and Spearman correlations (regression). Extractive QA decodes spans over the
        windows (`dev_features`) of the raw `dev_examples` and reports the official SQuAD v1.1 exact match and F1;
        the returned `SquadMetrics` keeps each evaluation's answers."""
        if self.is_qa:
            if dev_examples is None or dev_features is None:
                raise ValueError("Extractive QA metrics need the raw dev examples and their windows.")
            return SquadMetrics(dev_examples, dev_features, self.n_best_size, self.max_answer_length)

        def compute(prediction: EvalPrediction) -> dict[str, float]:
            outputs = prediction.predictions
            logits = outputs[0] if isinstance(outputs, tuple) else outputs  # extra outputs (exit layers) follow
            if self.glue_task is not None:
                return glue_metrics(self.glue_task, logits, prediction.label_ids)
            if self.kind == "regression":
                return regression_metrics(logits.reshape(-1), prediction.label_ids)
            return classification_metrics(logits.argmax(axis=-1), prediction.label_ids)

        return compute

    def tokenize(
        self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, training: bool = True
    ) -> Dataset:
        """Tokenized examples (truncated, unpadded) with their `labels` (class ids, or float32 scores); the raw
        columns are dropped. Extractive QA gives windows of each context: for `training`, with the token positions
        of the first answer (`start_positions`, `end_positions`); for evaluation, with the question id and the
        context offsets that span decoding needs."""
        if self.is_qa:
            prepare = prepare_train_features if training else prepare_eval_features
            window_settings = {"max_length": max_length, "doc_stride": self.doc_stride}
            window_settings["pad_to_max_length"] = self.pad_to_max_length
            if not training:  # dev windows also carry answer positions: a dev loss, and Trainer calls the metric
                window_settings["with_answer_positions"] = True
            return dataset.map(
                prepare,
                batched=True,
                remove_columns=dataset.column_names,
                fn_kwargs={"tokenizer": tokenizer, **window_settings},
                desc="windows" if training else "eval windows",
            )

        def encode(examples: dict) -> dict:
            encoded = tokenizer(
                *(examples[column] for column in self.text_columns), truncation=True, max_length=max_length
            )
            labels = examples[self.label_column]
            encoded["labels"] = labels if self.label_to_id is None else [self.label_to_id[label] for label in labels]
            return encoded

        encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenize")
        if self.kind == "regression":
            encoded = encoded.cast_column("labels", Value("float32"))  # the head's MSE needs float32 targets
        return encoded

    def to_dict(self) -> dict:
        """What the run records about the task (JSON-ready)."""
        qa_settings = ("doc_stride", "n_best_size", "max_answer_length", "pad_to_max_length")
        return {name: getattr(self, name) for name in qa_settings if self.is_qa} | {
            "name": self.name,
            "kind": self.kind,
            "text_columns": list(self.text_columns),
            "label_column": self.label_column,
            "label_names": None if self.label_names is None else list(self.label_names),
            "glue_task": self.glue_task,
            "dev_split": self.dev_split,
        }


def glue_task(task: str) -> FlexTask:
    """The `FlexTask` of a GLUE task: its columns, dev split(s) and official metrics (label names come from the
    data, see `resolve_task`)."""
    first, second = GLUE_TEXT_COLUMNS[check_glue_task(task)]
    return FlexTask(
        name=task,
        kind="regression" if task == "stsb" else "classification",
        text_columns=(first,) if second is None else (first, second),
        glue_task=task,
        dev_split=GLUE_DEV_SPLIT[task],
        extra_dev_splits=dict(GLUE_EXTRA_DEV_SPLITS.get(task, {})),
    )


def squad_task(name: str = SQUAD_TASK) -> FlexTask:
    """The `FlexTask` of SQuAD-format extractive QA (the columns of `rajpurkar/squad`)."""
    return FlexTask(name=name, kind="extractive_qa", text_columns=("question", "context"), label_column="answers")


def has_squad_columns(train: Dataset) -> bool:
    return set(SQUAD_COLUMNS) <= set(train.column_names)


def guess_text_columns(train: Dataset, label_column: str) -> tuple[str, ...]:
    """`sentence1`/`sentence2` when both exist, else the first one or two string columns besides the label."""
    columns = [name for name in train.column_names if name != label_column]
    if {"sentence1", "sentence2"} <= set(columns):
        return ("sentence1", "sentence2")
    strings = [name for name in columns if getattr(train.features[name], "dtype", None) in STRING_DTYPES]
    if not strings:
        raise FlexDataError(
            f"The train split has no text column besides {label_column!r} (columns: {train.column_names}); "
            "name them with --text_column_names."
        )
    return tuple(strings[:2])


def resolve_task(
    raw: DatasetDict,
    *,
    task_name: str | None = None,
    text_columns: Sequence[str] | None = None,
    label_column: str = "label",
    is_regression: bool | None = None,
) -> FlexTask:
    """The task `raw` holds: a GLUE task's shortcut filled in from its data, or one read off the columns.

    Args:
        raw: The loaded splits (`train` and the dev split at least).
        task_name: A GLUE task name (its columns, dev splits and metrics), `squad`, or `None` to read the task off
            the data (SQuAD's columns mean extractive QA).
        text_columns: The text column(s); guessed as `run_glue.py` does when not given.
        label_column: The gold-label column.
        is_regression: Force regression (`True`) or classification (`False`); `None` infers it from the label
            column (floats mean regression).
    """
    if "train" not in raw:
        raise FlexDataError(f"The data has no `train` split (splits: {list(raw)}).")
    train = raw["train"]
    if task_name == SQUAD_TASK or (task_name is None and has_squad_columns(train)):
        task = squad_task()
        for split_name in ("train", task.dev_split):
            if split_name in raw and not has_squad_columns(raw[split_name]):
                raise FlexDataError(
                    f"Extractive QA reads the columns {list(SQUAD_COLUMNS)}; the {split_name} split has "
                    f"{raw[split_name].column_names}."
                )
        check_columns(raw, task)
        return task
    if task_name is not None:
        task = glue_task(task_name)
        if text_columns:
            task.text_columns = tuple(text_columns)
    else:
        task = FlexTask(
            name="custom",
            kind="classification",
            text_columns=tuple(text_columns or guess_text_columns(train, label_column)),
            label_column=label_column,
        )
    check_columns(raw, task)
    feature = train.features[task.label_column]
    regression = is_regression if is_regression is not None else task.kind == "regression" or is_float(feature)
    task.kind = "regression" if regression else "classification"
    task.label_names, task.label_to_id = (None, None) if regression else label_vocabulary(train, task.label_column)
    return task


def is_float(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype in FLOAT_DTYPES


def label_vocabulary(train: Dataset, label_column: str) -> tuple[tuple[str, ...], dict | None]:
    """Class names in id order, and the raw value -> id map (`None` when the column is a `ClassLabel` of ids)."""
    feature = train.features[label_column]
    if isinstance(feature, ClassLabel):
        return tuple(feature.names), None
    values = [value for value in train.unique(label_column) if value is not None]
    if any(isinstance(value, float) for value in values) or not values:
        raise FlexDataError(
            f"The label column {label_column!r} of the train split holds {feature}; classification needs class "
            "names or integer ids (pass --is_regression for scores)."
        )
    ordered = sorted(values)
    return tuple(str(value) for value in ordered), {value: index for index, value in enumerate(ordered)}


def check_columns(raw: DatasetDict, task: FlexTask) -> None:
    """Every split that will be read has the task's text and label columns."""
    for split_name in ("train", task.dev_split, *task.extra_dev_splits.values()):
        if split_name not in raw:
            if split_name in task.extra_dev_splits.values():
                continue  # an extra dev set (MNLI mismatched) is reported only where the data has it
            raise FlexDataError(
                f"The data has no {split_name!r} split to evaluate on (splits: {list(raw)}); pass a --validation_file."
            )
        for column in (*task.text_columns, task.label_column):
            if column not in raw[split_name].column_names:
                raise FlexDataError(
                    f"The {split_name} split has no column {column!r} (columns: {raw[split_name].column_names}); "
                    "name the columns with --text_column_names and --label_column_name."
                )


def check_splits(task: FlexTask, train: Dataset, dev_splits: dict[str, Dataset]) -> None:
    """The examples that will train and evaluate are usable: no empty split, no missing label, at least two classes
    in training, and no dev label the training examples never show."""
    for split_name, split in {"train": train, **dev_splits}.items():
        if len(split) == 0:
            raise FlexDataError(f"The {split_name} split is empty.")
        if task.is_qa:
            continue
        labels = split[task.label_column]
        if any(label is None for label in labels):
            raise FlexDataError(f"The {split_name} split has examples without a {task.label_column!r} label.")
    if task.is_qa:
        check_qa_splits(train, dev_splits)
        return
    if task.kind == "regression":
        return
    trained = set(train[task.label_column])
    if len(trained) < 2:
        raise FlexDataError(
            f"The {len(train)} training examples all have one class ({describe(task, trained)}): a classifier "
            "needs at least two."
        )
    for split_name, split in dev_splits.items():
        unseen = set(split[task.label_column]) - trained
        if unseen:
            raise FlexDataError(
                f"The {split_name} split has label(s) {describe(task, unseen)} that none of the {len(train)} "
                f"training examples has (column {task.label_column!r})."
            )


def check_qa_splits(train: Dataset, dev_splits: dict[str, Dataset]) -> None:
    """Every dev question has a reference answer (the metric needs one); training questions whose answer is not
    where `answer_start` says train as "no answer in this window", which is logged with their number."""
    for split_name, split in dev_splits.items():
        unanswered = [example_id for example_id, answers in zip(split["id"], split["answers"]) if not answers["text"]]
        if unanswered:
            raise FlexDataError(
                f"{len(unanswered)} question(s) of the {split_name} split have no reference answer (e.g. "
                f"{unanswered[0]!r}): SQuAD v1.1 scoring needs one."
            )
    misplaced = misplaced_answers(train)
    if misplaced:
        logger.warning(
            "%d of %d training questions (e.g. %r) have no answer at their `answer_start` in the context: they train "
            "as questions without an answer in the window (the CLS position).",
            len(misplaced),
            len(train),
            misplaced[0],
        )


def describe(task: FlexTask, labels: set) -> str:
    """Labels as the user wrote them: raw values, or ClassLabel names for ids."""
    if task.label_to_id is None and task.label_names is not None:
        labels = {task.label_names[label] if 0 <= label < len(task.label_names) else label for label in labels}
    return ", ".join(repr(label) for label in sorted(labels, key=str))


__all__ = ["TASK_KINDS", "FlexDataError", "FlexTask", "check_splits", "glue_task", "resolve_task", "squad_task"]
