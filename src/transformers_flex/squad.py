"""Extractive question answering on SQuAD v1.1: windowed pre-processing, span post-processing, and the official
exact-match and F1 metrics, all offline.

Windowing and span decoding live in the portable `flexbert_qa.py` (QA checkpoints carry them for their pipeline).
Pre-processing splits each (question, context) pair into overlapping windows of `max_length` tokens, consecutive
windows sharing `doc_stride` context tokens; the question is repeated in every window. Train features carry the
token positions of the first gold answer (the CLS position when the answer is not fully inside the window); eval
features carry the question id (`example_id`) and the character offsets of the context tokens (None elsewhere),
which post-processing uses to map token spans back to text.

Post-processing follows the conventions of transformers' `examples/pytorch/question-answering/utils_qa.py`: in
every window the `n_best_size` highest start and end logits are paired, pairs that leave the context, end before
they start or are longer than `max_answer_length` tokens are dropped, a span scores start logit + end logit, and a
question's answer is its best span over all of its windows.

The metrics reproduce the official SQuAD v1.1 evaluation script (run under Python 3): answers are lower-cased,
stripped of ASCII punctuation and of the articles a/an/the, and whitespace-collapsed; F1 is computed on bags of
tokens; each prediction takes its best score over the reference answers; a question without a prediction scores
0; both averages are reported ×100.

Columns follow the Hub's `rajpurkar/squad`: `id`, `title`, `context`, `question`,
`answers = {"text": [...], "answer_start": [...]}`.
"""

from __future__ import annotations  # `DatasetDict` in annotations, imported only where data is loaded

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import BatchEncoding, EvalPrediction, PreTrainedTokenizerBase

if TYPE_CHECKING:
    from datasets import DatasetDict

from .flexbert_qa import (
    DOC_STRIDE,
    MAX_ANSWER_LENGTH,
    MAX_QUESTION_LENGTH,
    MAX_SEQ_LENGTH,
    N_BEST_SIZE,
    Columns,
    answer_token_span,
    context_sequence_index,
    context_token_range,
    question_token_budget,
    rank_spans,
    tokenize_windows,
    truncate_questions,
    window_candidates,
)
from .utils import default_data_dir

HUB_SQUAD = "rajpurkar/squad"


def load_squad(data_dir: str | Path | None = None, hub_dataset: str = HUB_SQUAD) -> DatasetDict:
    """SQuAD v1.1 (`train` 87,599, `validation` 10,570): the local mirror `<data_dir>/squad` where it exists
    (default: `utils.default_data_dir()`), else the Hub dataset."""
    from datasets import load_dataset  # here, so that inference needs no `datasets` (a GPU image may lack it)

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if root is not None and (root / "squad").is_dir():
        return load_dataset(str(root / "squad"), "plain_text")
    return load_dataset(hub_dataset, "plain_text")


# ----------------------------------------------------------------------------------------------------------------
# Pre-processing
# ----------------------------------------------------------------------------------------------------------------


def answer_positions(
    encoded: BatchEncoding, all_answers: Sequence[Mapping[str, Sequence]], tokenizer: PreTrainedTokenizerBase
) -> tuple[list[int], list[int]]:
    """Token positions (start, end) of every window's first gold answer, both the CLS position (0 for BERT) when that
    answer is not wholly inside the window or the example has none; `all_answers` are the examples' `answers`."""
    context_index = context_sequence_index(tokenizer)
    start_positions, end_positions = [], []
    for window, offsets in enumerate(encoded["offset_mapping"]):
        cls_position = encoded["input_ids"][window].index(tokenizer.cls_token_id)
        answers = all_answers[encoded["overflow_to_sample_mapping"][window]]
        span = None
        if answers["answer_start"]:  # train on the first answer, as run_qa.py does
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            context_range = context_token_range(encoded.sequence_ids(window), context_index)
            span = answer_token_span(offsets, context_range, start_char, end_char)
        start, end = span if span is not None else (cls_position, cls_position)
        start_positions.append(start)
        end_positions.append(end)
    return start_positions, end_positions


def prepare_train_features(
    examples: Columns,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = MAX_SEQ_LENGTH,
    doc_stride: int = DOC_STRIDE,
    max_question_length: int = MAX_QUESTION_LENGTH,
    pad_to_max_length: bool = True,
) -> dict[str, list]:
    """Training windows (for `Dataset.map(batched=True, remove_columns=...)`): input ids, masks, token types, and
    `start_positions` / `end_positions` of the first gold answer (see `answer_positions`)."""
    encoded = tokenize_windows(examples, tokenizer, max_length, doc_stride, max_question_length, pad_to_max_length)
    # A list: indexing a Dataset column row by row is slow.
    start_positions, end_positions = answer_positions(encoded, list(examples["answers"]), tokenizer)
    features = {key: encoded[key] for key in encoded if key not in ("offset_mapping", "overflow_to_sample_mapping")}
    return {**features, "start_positions": start_positions, "end_positions": end_positions}


def prepare_eval_features(
    examples: Columns,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = MAX_SEQ_LENGTH,
    doc_stride: int = DOC_STRIDE,
    max_question_length: int = MAX_QUESTION_LENGTH,
    pad_to_max_length: bool = True,
    with_answer_positions: bool = False,
) -> dict[str, list]:
    """Evaluation windows (for `Dataset.map(batched=True, remove_columns=...)`): the model inputs plus
    `example_id` (the question id of each window) and `offset_mapping`, with None for every token that is not
    context (question, special tokens, padding) so post-processing can never pick it. `with_answer_positions` adds
    the first answer's `start_positions` / `end_positions`, so `Trainer` reports a dev loss (and, having labels,
    calls `compute_metrics`)."""
    encoded = tokenize_windows(examples, tokenizer, max_length, doc_stride, max_question_length, pad_to_max_length)
    context_index = context_sequence_index(tokenizer)
    ids = list(examples["id"])  # a list: indexing a Dataset column row by row is slow
    example_ids, offset_mapping = [], []
    for window, offsets in enumerate(encoded["offset_mapping"]):
        example_ids.append(ids[encoded["overflow_to_sample_mapping"][window]])
        sequence_ids = encoded.sequence_ids(window)
        offset_mapping.append([list(o) if s == context_index else None for o, s in zip(offsets, sequence_ids)])
    features = {key: encoded[key] for key in encoded if key not in ("offset_mapping", "overflow_to_sample_mapping")}
    if with_answer_positions:
        start_positions, end_positions = answer_positions(encoded, list(examples["answers"]), tokenizer)
        features |= {"start_positions": start_positions, "end_positions": end_positions}
    return {**features, "example_id": example_ids, "offset_mapping": offset_mapping}


# ----------------------------------------------------------------------------------------------------------------
# Post-processing
# ----------------------------------------------------------------------------------------------------------------


def nbest_predictions(
    examples: Columns,
    features: Columns,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int = N_BEST_SIZE,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> dict[str, list[dict[str, Any]]]:
    """For every question, its `n_best_size` best spans over all of its windows, best first, each with `text`,
    `score`, `probability` (softmax over the kept spans), logits and character span in its context; an empty list
    when no window has a valid span. `features` are the eval features in the order of the logits' rows."""
    if len(start_logits) != len(features["example_id"]) or len(end_logits) != len(start_logits):
        raise ValueError(f"{len(start_logits)} rows of logits for {len(features['example_id'])} features")
    windows_of: dict[str, list[int]] = {}  # question id -> its rows among the features
    for row, example_id in enumerate(features["example_id"]):
        windows_of.setdefault(example_id, []).append(row)
    offset_mapping = list(features["offset_mapping"])  # a list: indexing a Dataset column row by row is slow
    predictions = {}
    for example_id, context in zip(examples["id"], examples["context"]):
        candidates = []
        for row in windows_of.get(example_id, []):
            candidates += window_candidates(
                start_logits[row], end_logits[row], offset_mapping[row], n_best_size, max_answer_length
            )
        predictions[example_id] = rank_spans(candidates, context, n_best_size)
    return predictions


def postprocess_predictions(
    examples: Columns,
    features: Columns,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int = N_BEST_SIZE,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> dict[str, str]:
    """One answer text per question: its best span over all of its windows ("" when there is none), as
    `{question id: text}`, the format of the official evaluation script's prediction file."""
    nbest = nbest_predictions(examples, features, start_logits, end_logits, n_best_size, max_answer_length)
    return {example_id: candidates[0]["text"] if candidates else "" for example_id, candidates in nbest.items()}


# ----------------------------------------------------------------------------------------------------------------
# Official SQuAD v1.1 metrics
# ----------------------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)  # ASCII only, as the official script: "“" or "–" are kept
_ARTICLES = re.compile(r"\b(a|an|the)\b")  # Python 3 str patterns: \b and \w are Unicode-aware


def normalize_answer(text: str) -> str:
    """The official v1.1 normalisation, in its order: lower case, drop ASCII punctuation, replace the articles
    a/an/the (whole words) by a space, collapse whitespace."""
    text = text.lower()
    text = "".join(character for character in text if character not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, reference: str) -> float:
    """1.0 when the normalised texts are equal (two answers that normalise to "" match), else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def f1_score(prediction: str, reference: str) -> float:
    """Token-bag F1 of the normalised texts; 0.0 when they share no token (also when either is empty)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(predicted) & Counter(expected)).values())  # multiset intersection size
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def max_over_references(metric: Callable[[str, str], float], prediction: str, references: Sequence[str]) -> float:
    """The prediction's best score against any of the reference answers."""
    return max(metric(prediction, reference) for reference in references)


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Official SQuAD v1.1 `exact_match` and `f1` (both ×100), averaged over the questions of `references`
    (`{id: [answer texts]}`); a question missing from `predictions` scores 0, extra predictions are ignored."""
    if not references:
        raise ValueError("squad_metrics needs at least one reference question")
    exact_match = f1 = 0.0
    for question_id, answers in references.items():
        if not answers:
            raise ValueError(f"question {question_id!r} has no reference answer")
        if question_id not in predictions:
            continue  # the official script counts it with score 0
        exact_match += max_over_references(exact_match_score, predictions[question_id], answers)
        f1 += max_over_references(f1_score, predictions[question_id], answers)
    return {"exact_match": 100.0 * exact_match / len(references), "f1": 100.0 * f1 / len(references)}


def squad_references(examples: Columns) -> dict[str, list[str]]:
    """`{question id: [reference answer texts]}` from SQuAD columns."""
    return {example_id: list(answers["text"]) for example_id, answers in zip(examples["id"], examples["answers"])}


class SquadMetrics:
    """A `compute_metrics` for `Trainer` on the eval `features` of `examples`: decodes the predicted
    (start_logits, end_logits) to one answer per question and scores it with `squad_metrics`.

    Every call's answers (`{question id: text}`, the official prediction-file format) are kept in `predictions`, in
    call order, so that a caller evaluating several sub-networks can write each one's `predictions.json`.
    """

    def __init__(
        self,
        examples: Columns,
        features: Columns,
        n_best_size: int = N_BEST_SIZE,
        max_answer_length: int = MAX_ANSWER_LENGTH,
    ):
        self.examples, self.features = examples, features
        self.n_best_size, self.max_answer_length = n_best_size, max_answer_length
        self.references = squad_references(examples)
        self.predictions: list[dict[str, str]] = []

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        start_logits, end_logits = prediction.predictions[:2]  # a QA model returns (start, end, ...)
        texts = postprocess_predictions(
            self.examples, self.features, start_logits, end_logits, self.n_best_size, self.max_answer_length
        )
        self.predictions.append(texts)
        return squad_metrics(texts, self.references)


def squad_compute_metrics(
    examples: Columns,
    features: Columns,
    n_best_size: int = N_BEST_SIZE,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> SquadMetrics:
    """`SquadMetrics` of the eval `features` of `examples` (a `compute_metrics` for `Trainer`)."""
    return SquadMetrics(examples, features, n_best_size, max_answer_length)


def misplaced_answers(examples: Columns) -> list[str]:
    """Ids of training examples whose first answer is not at its `answer_start` in the context (or is missing):
    they train as "no answer in this window" (the CLS position), so a caller should say how many there are."""
    misplaced = []
    for example_id, context, answers in zip(examples["id"], examples["context"], examples["answers"]):
        texts, starts = answers["text"], answers["answer_start"]
        if not texts or not starts or context[starts[0] : starts[0] + len(texts[0])] != texts[0] or not texts[0]:
            misplaced.append(example_id)
    return misplaced


__all__ = [
    "DOC_STRIDE",
    "HUB_SQUAD",
    "MAX_ANSWER_LENGTH",
    "MAX_QUESTION_LENGTH",
    "MAX_SEQ_LENGTH",
    "N_BEST_SIZE",
    "answer_positions",
    "answer_token_span",
    "context_token_range",
    "exact_match_score",
    "f1_score",
    "load_squad",
    "misplaced_answers",
    "nbest_predictions",
    "normalize_answer",
    "postprocess_predictions",
    "prepare_eval_features",
    "prepare_train_features",
    "question_token_budget",
    "SquadMetrics",
    "squad_compute_metrics",
    "squad_metrics",
    "squad_references",
    "tokenize_windows",
    "truncate_questions",
    "window_candidates",
]
