"""GLUE metrics with the official definitions, computed offline (no `evaluate.load`, which needs the Hub), and the
metrics of tasks that are not GLUE: accuracy + macro F1 for classification, Pearson + Spearman for regression.

Key names follow the Hub's `glue` metric: accuracy, f1, matthews_correlation, pearson, spearmanr; `macro_f1` is
the unweighted mean of the per-class F1 scores.
"""

from collections.abc import Callable

import numpy as np
from transformers import EvalPrediction

from .data import check_glue_task

GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


def binary_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    true_positives = np.sum((predictions == 1) & (labels == 1))
    predicted, actual = np.sum(predictions == 1), np.sum(labels == 1)
    if predicted + actual == 0:
        return 0.0
    return float(2 * true_positives / (predicted + actual))


def matthews_correlation(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation coefficient (binary, as CoLA reports); 0 when a marginal is empty."""
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    tn = float(np.sum((predictions == 0) & (labels == 0)))
    fp = float(np.sum((predictions == 1) & (labels == 0)))
    fn = float(np.sum((predictions == 0) & (labels == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))[0, 1])


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (as Spearman's correlation needs)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the average 1-based rank of that run.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], len(values)]
    run_ranks = (run_starts + run_ends + 1) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(run_ranks, run_ends - run_starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 scores over the classes seen in labels or predictions (scikit-learn's
    `f1_score(average="macro")`)."""
    classes = np.union1d(predictions, labels)
    scores = []
    for label in classes:
        true_positives = np.sum((predictions == label) & (labels == label))
        predicted, actual = np.sum(predictions == label), np.sum(labels == label)
        scores.append(2 * true_positives / (predicted + actual))  # never 0/0: the class occurs in one of them
    return float(np.mean(scores))


def classification_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro F1 of predicted class ids, for classification tasks that are not GLUE."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels)}


def regression_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlations of predicted scores, for regression tasks that are not GLUE."""
    scores, labels = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
    return {"pearson": pearson(scores, labels), "spearmanr": spearman(scores, labels)}


def glue_metrics(task: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's official GLUE metrics from raw model outputs (argmax for classification)."""
    names = GLUE_METRICS[check_glue_task(task)]
    labels = np.asarray(labels)
    if task == "stsb":
        scores = np.asarray(logits).reshape(-1)
        return {"pearson": pearson(scores, labels), "spearmanr": spearman(scores, labels)}
    predictions = np.asarray(logits).argmax(axis=-1)
    functions = {"accuracy": accuracy, "f1": binary_f1, "matthews_correlation": matthews_correlation}
    return {name: functions[name](predictions, labels) for name in names}


def glue_compute_metrics(task: str) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` for `Trainer` that reports the task's GLUE metrics."""
    check_glue_task(task)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return glue_metrics(task, logits, prediction.label_ids)

    return compute_metrics


def main_metric(task: str) -> str:
    """The metric a task is usually ranked by (first of its GLUE metrics)."""
    return GLUE_METRICS[check_glue_task(task)][0]


__all__ = [
    "GLUE_METRICS",
    "classification_metrics",
    "glue_compute_metrics",
    "glue_metrics",
    "macro_f1",
    "main_metric",
    "regression_metrics",
]
