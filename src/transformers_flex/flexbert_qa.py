"""Extractive QA windows and span decoding, and a question-answering pipeline for FlexBert QA checkpoints.

A (question, context) pair becomes overlapping windows of at most `max_length` tokens, consecutive windows sharing
`doc_stride` context tokens, the question repeated in each. In every window the `n_best_size` highest start and end
logits are paired; pairs that leave the context, end before they start or are longer than `max_answer_length`
tokens are dropped; a span scores start logit + end logit (the conventions of transformers'
`examples/pytorch/question-answering/utils_qa.py`), and a question's answer is its best span over all of its windows.

`FlexBertQuestionAnsweringPipeline` (task `flex-question-answering`) does this for raw text: question and context
in; answer text, score and character span out; long contexts windowed, windows batched, at a static sub-network
(`width=`, `depth=`) or on the dynamic engine (`dynamic=True`). transformers 5.24 has no `question-answering`
pipeline of its own (and refuses that name for a registered one), hence a task name of its own.

Part of the portable unit copied into every QA checkpoint: imports only numpy/torch/transformers.
"""

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase
from transformers.pipelines.base import ChunkPipeline

MAX_SEQ_LENGTH = 384  # the defaults of transformers' run_qa.py
DOC_STRIDE = 128
MAX_QUESTION_LENGTH = 64  # Google BERT's max_query_length; no SQuAD v1.1 question is longer in WordPiece tokens
N_BEST_SIZE = 20
MAX_ANSWER_LENGTH = 30
PIPELINE_TASK = "flex-question-answering"
# What a QA checkpoint's config names for `trust_remote_code` users (`pipeline(model=<checkpoint>)`).
CUSTOM_PIPELINES = {
    PIPELINE_TASK: {
        "impl": "flexbert_qa.FlexBertQuestionAnsweringPipeline",
        "pt": ["AutoModelForQuestionAnswering"],
        "type": "text",
    }
}

Columns = Mapping[str, Sequence[Any]]  # a batch of rows as columns: a `datasets` batch, a Dataset, or a dict


def check_texts(examples: Columns, fields: Sequence[str]) -> None:
    """Raise a clear TypeError when a text field holds something other than strings (the tokenizer's own error
    names neither the field nor the row)."""
    for field in fields:
        for row, value in enumerate(examples[field]):
            if not isinstance(value, str):
                raise TypeError(f"SQuAD field {field!r} must hold strings; row {row} is {type(value).__name__}")


def question_token_budget(max_length: int, doc_stride: int, max_question_length: int = MAX_QUESTION_LENGTH) -> int:
    """The most question tokens a window may hold: `max_question_length`, and few enough that every window keeps
    more than `doc_stride` context tokens (the tokenizer refuses a stride as long as the window's context)."""
    # 3 special tokens ([CLS] question [SEP] context [SEP]) and doc_stride + 1 context tokens must fit.
    budget = min(max_question_length, max_length - doc_stride - 4)
    if budget < 1:
        raise ValueError(f"max_length={max_length} leaves no room for a question with doc_stride={doc_stride}")
    return budget


def truncate_questions(questions: Sequence[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> list[str]:
    """Questions without leading whitespace, each cut after its `max_tokens`-th token (at a token's last character,
    so re-tokenising the cut text gives the same tokens)."""
    questions = [question.lstrip() for question in questions]  # as run_qa.py: leading spaces waste window room
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    cut = []
    for question, offsets in zip(questions, encoded["offset_mapping"]):
        # Keep the question whole when it fits, else up to the end character of its last allowed token.
        cut.append(question if len(offsets) <= max_tokens else question[: offsets[max_tokens - 1][1]])
    return cut


def keep_segment_ids(tokenizer: PreTrainedTokenizerBase, model) -> None:
    """Make `tokenizer` return BERT's segment ids for a FlexBert `model`. Older transformers 5 releases (5.0
    measured) load a generic tokenizer for a checkpoint of a model type they do not know, and its default inputs lack
    `token_type_ids`, so text pairs and QA windows would run as one segment."""
    names = list(tokenizer.model_input_names)
    if getattr(model.config, "model_type", None) == "flexbert" and "token_type_ids" not in names:
        tokenizer.model_input_names = [*names, "token_type_ids"]


def context_sequence_index(tokenizer: PreTrainedTokenizerBase) -> int:
    """Which sequence of the pair is the context: the second when padding is on the right (BERT), else the first,
    so that truncation and padding both happen at the context's far end (as run_qa.py does)."""
    return 1 if tokenizer.padding_side == "right" else 0


def tokenize_windows(
    examples: Columns,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = MAX_SEQ_LENGTH,
    doc_stride: int = DOC_STRIDE,
    max_question_length: int = MAX_QUESTION_LENGTH,
    pad_to_max_length: bool = True,
) -> BatchEncoding:
    """Tokenise (question, context) pairs into windows of at most `max_length` tokens that overlap by `doc_stride`
    context tokens, padded to `max_length` when `pad_to_max_length` (else a collator pads each batch to its
    longest window); the result keeps `overflow_to_sample_mapping` (window -> example row) and `offset_mapping`."""
    check_texts(examples, ("question", "context"))
    budget = question_token_budget(max_length, doc_stride, max_question_length)
    questions = truncate_questions(list(examples["question"]), tokenizer, budget)
    contexts = list(examples["context"])
    # The context is the sequence that gets truncated and windowed; its place in the pair follows the padding side.
    pair = (questions, contexts) if context_sequence_index(tokenizer) == 1 else (contexts, questions)
    return tokenizer(
        *pair,
        truncation="only_second" if context_sequence_index(tokenizer) == 1 else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    )


def context_token_range(sequence_ids: Sequence[int | None], context_index: int) -> tuple[int, int] | None:
    """First and last token positions of the context in one window, or None when the window holds no context."""
    positions = [i for i, sequence in enumerate(sequence_ids) if sequence == context_index]
    return (positions[0], positions[-1]) if positions else None


def answer_token_span(
    offsets: Sequence[tuple[int, int]],
    context_range: tuple[int, int] | None,
    start_char: int,
    end_char: int,
) -> tuple[int, int] | None:
    """Token positions (start, end) of the characters [start_char, end_char) in one window, or None when the
    answer is not wholly inside the window's context.

    The start token is the last context token that starts at or before `start_char`, the end token the first
    that ends at or after `end_char` (the tokens that contain the answer's first and last characters)."""
    if context_range is None:
        return None
    first, last = context_range
    if start_char < offsets[first][0] or end_char > offsets[last][1]:
        return None  # the answer begins before or ends after this window's part of the context
    starts = [offsets[i][0] for i in range(first, last + 1)]  # non-decreasing along the context
    ends = [offsets[i][1] for i in range(first, last + 1)]
    start = first + bisect_right(starts, start_char) - 1
    end = first + bisect_left(ends, end_char)
    return (start, end) if end >= start else None  # end < start only for an answer that is pure whitespace


def window_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: Sequence[Sequence[int] | None],
    n_best_size: int = N_BEST_SIZE,
    max_answer_length: int = MAX_ANSWER_LENGTH,
) -> list[dict[str, Any]]:
    """The valid spans among the pairs of the window's `n_best_size` best start and end tokens, each as a dict
    with `score` (start + end logit), `start_logit`, `end_logit`, `start_char` and `end_char`.

    As run_qa.py, the best tokens are chosen among all positions before spans outside the context are dropped."""
    length = min(len(offsets), len(start_logits))  # logits may be padded beyond the window (Trainer pads with -100)
    start_logits = np.asarray(start_logits[:length], dtype=np.float64)
    end_logits = np.asarray(end_logits[:length], dtype=np.float64)
    in_context = np.array([o is not None and len(o) == 2 for o in offsets[:length]], dtype=bool)
    top_starts = np.argsort(-start_logits, kind="stable")[:n_best_size]  # highest logits first
    top_ends = np.argsort(-end_logits, kind="stable")[:n_best_size]
    starts, ends = np.meshgrid(top_starts, top_ends, indexing="ij")  # every (start, end) pair of the two lists
    span_length = ends - starts + 1
    valid = in_context[starts] & in_context[ends] & (span_length >= 1) & (span_length <= max_answer_length)
    candidates = []
    for start, end in zip(starts[valid], ends[valid]):
        candidates.append(
            {
                "score": float(start_logits[start] + end_logits[end]),
                "start_logit": float(start_logits[start]),
                "end_logit": float(end_logits[end]),
                "start_char": int(offsets[start][0]),
                "end_char": int(offsets[end][1]),
            }
        )
    return candidates


def softmax_scores(scores: np.ndarray) -> np.ndarray:
    """Probabilities from scores, shifted by their maximum so exp never overflows."""
    exp = np.exp(scores - scores.max())
    return exp / exp.sum()


def rank_spans(candidates: list[dict[str, Any]], context: str, n_best_size: int = N_BEST_SIZE) -> list[dict]:
    """A question's `n_best_size` best spans over all of its windows' `candidates`, best first, each with its `text`
    and `probability` (softmax over the kept spans' scores); empty when no window has a valid span."""
    ranked = sorted(candidates, key=lambda candidate: candidate["score"], reverse=True)[:n_best_size]
    if ranked:
        probabilities = softmax_scores(np.array([candidate["score"] for candidate in ranked]))
        for candidate, probability in zip(ranked, probabilities):
            candidate["text"] = context[candidate["start_char"] : candidate["end_char"]]
            candidate["probability"] = float(probability)
    return ranked


class FlexBertQuestionAnsweringPipeline(ChunkPipeline):
    """Extractive question answering with a FlexBert (or any extractive QA) model.

        answerer = pipeline("flex-question-answering", model="runs/squad/width_depth", width=0.5)
        answerer(question="Who wrote it?", context="It was written by Ada.")
        # {"answer": "Ada", "score": 0.93, "start": 18, "end": 21}

    Inputs: `question=` and `context=` (strings or equal-length lists), a `{"question", "context"}` dict, or a list
    of them. Call arguments: `top_k` (answers per question, default 1), `max_seq_len` (window length, default 384),
    `doc_stride` (128), `max_question_len` (64), `max_answer_len` (30), `n_best_size` (20), and the sub-network:
    `width`, `depth`, `dynamic` (the engine instead of the static model). `score` is the answer's probability among
    the question's n-best spans over all its windows. A context without a valid span (e.g. empty) answers `""`
    with score 0 and start = end = 0.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tokenizer is None:
            raise ValueError("The flex-question-answering pipeline needs the model's tokenizer.")
        keep_segment_ids(self.tokenizer, self.model)

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        max_seq_len: int | None = None,
        doc_stride: int | None = None,
        max_question_len: int | None = None,
        max_answer_len: int | None = None,
        n_best_size: int | None = None,
        width: float | list[float] | None = None,
        depth: float | None = None,
        dynamic: bool | None = None,
        question: str | list[str] | None = None,
        context: str | list[str] | None = None,
    ) -> tuple[dict, dict, dict]:
        preprocess = {"max_seq_len": max_seq_len, "doc_stride": doc_stride, "max_question_len": max_question_len}
        forward = {"width": width, "depth": depth, "dynamic": dynamic}
        postprocess = {"top_k": top_k, "max_answer_len": max_answer_len, "n_best_size": n_best_size}
        if top_k is not None and top_k < 1:
            raise ValueError(f"`top_k` must be at least 1, got {top_k}.")
        return (
            {key: value for key, value in preprocess.items() if value is not None},
            {key: value for key, value in forward.items() if value is not None},
            {key: value for key, value in postprocess.items() if value is not None},
        )

    def __call__(self, inputs=None, question=None, context=None, **kwargs):
        """Answers for `question`/`context` (or `inputs`: a dict or a list of dicts): one dict per question (a list
        of `top_k` dicts when `top_k` > 1), a list of them for several questions."""
        if inputs is None:
            if question is None or context is None:
                raise ValueError("Pass `question=` and `context=` (or a {'question', 'context'} dict).")
            if isinstance(question, list) != isinstance(context, list):
                raise TypeError("`question` and `context` must both be strings or both be lists.")
            if isinstance(question, list):
                if len(question) != len(context):
                    raise ValueError(f"{len(question)} questions for {len(context)} contexts.")
                inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
            else:
                inputs = {"question": question, "context": context}
        items = inputs if isinstance(inputs, list) else [inputs]
        for item in items:
            if not isinstance(item, Mapping) or not {"question", "context"} <= set(item):
                raise TypeError(f"Each input is a {{'question', 'context'}} dict, got {type(item).__name__}.")
            check_texts({"question": [item["question"]], "context": [item["context"]]}, ("question", "context"))
        return super().__call__(inputs, **kwargs)

    def preprocess(
        self,
        inputs: Mapping[str, str],
        max_seq_len: int = MAX_SEQ_LENGTH,
        doc_stride: int = DOC_STRIDE,
        max_question_len: int = MAX_QUESTION_LENGTH,
    ) -> Iterator[dict]:
        encoded = tokenize_windows(
            {"question": [inputs["question"]], "context": [inputs["context"]]},
            self.tokenizer,
            max_seq_len,
            doc_stride,
            max_question_len,
            pad_to_max_length=False,
        )
        context_index = context_sequence_index(self.tokenizer)
        windows = len(encoded["input_ids"])
        for window in range(windows):
            sequence_ids = encoded.sequence_ids(window)
            offsets = [
                list(o) if s == context_index else None
                for o, s in zip(encoded["offset_mapping"][window], sequence_ids)
            ]
            tensors = {
                name: torch.tensor([encoded[name][window]])
                for name in self.tokenizer.model_input_names
                if name in encoded
            }
            yield {**tensors, "offsets": offsets, "context": inputs["context"], "is_last": window == windows - 1}

    def _forward(self, model_inputs: dict, width=None, depth=None, dynamic=None) -> dict:
        names = [name for name in self.tokenizer.model_input_names if name in model_inputs]
        subnet = {}
        if getattr(self.model.config, "model_type", None) == "flexbert":  # other QA models have no sub-networks
            subnet = {"width": width, "depth": depth, "dynamic": dynamic}
        elif width is not None or depth is not None or dynamic:
            raise ValueError(f"A {type(self.model).__name__} has no sub-networks: drop width/depth/dynamic.")
        output = self.model(**{name: model_inputs[name] for name in names}, **subnet)
        passed = {key: value for key, value in model_inputs.items() if key not in names}
        return {"start_logits": output.start_logits, "end_logits": output.end_logits, **passed}

    def postprocess(
        self,
        windows: list[dict],
        top_k: int = 1,
        max_answer_len: int = MAX_ANSWER_LENGTH,
        n_best_size: int = N_BEST_SIZE,
    ):
        candidates = []
        for window in windows:
            candidates += window_candidates(
                window["start_logits"][0].float().numpy(),
                window["end_logits"][0].float().numpy(),
                window["offsets"],
                n_best_size,
                max_answer_len,
            )
        ranked = rank_spans(candidates, windows[0]["context"], n_best_size)
        answers = [
            {
                "answer": span["text"],
                "score": span["probability"],
                "start": span["start_char"],
                "end": span["end_char"],
            }
            for span in ranked[:top_k]
        ] or [{"answer": "", "score": 0.0, "start": 0, "end": 0}]
        return answers[0] if top_k == 1 else answers


__all__ = [
    "CUSTOM_PIPELINES",
    "DOC_STRIDE",
    "MAX_ANSWER_LENGTH",
    "MAX_QUESTION_LENGTH",
    "MAX_SEQ_LENGTH",
    "N_BEST_SIZE",
    "PIPELINE_TASK",
    "FlexBertQuestionAnsweringPipeline",
    "answer_token_span",
    "check_texts",
    "context_sequence_index",
    "context_token_range",
    "keep_segment_ids",
    "question_token_budget",
    "rank_spans",
    "softmax_scores",
    "tokenize_windows",
    "truncate_questions",
    "window_candidates",
]
