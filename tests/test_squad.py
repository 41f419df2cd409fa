"""SQuAD v1.1 pre-/post-processing and the official metrics (src/transformers_flex/squad.py).

Metrics: hand-computed cases from the official v1.1 normalisation rules, and agreement with an independent,
regex-free implementation written below on real dev questions. Windowing and decoding: real dev examples longer
than a small window (96 tokens, stride 32), oracle logits, and crafted logits for the answer-length and n-best rules.
"""

import numpy as np
import pytest
from transformers import AutoTokenizer, EvalPrediction

from transformers_flex.squad import (
    exact_match_score,
    f1_score,
    load_squad,
    nbest_predictions,
    normalize_answer,
    postprocess_predictions,
    prepare_eval_features,
    prepare_train_features,
    question_token_budget,
    squad_compute_metrics,
    squad_metrics,
    squad_references,
)

MAX_LENGTH, STRIDE = 96, 32  # small windows so that most dev contexts span several overlapping windows


@pytest.fixture(scope="module")
def tokenizer(backbone_path):
    return AutoTokenizer.from_pretrained(backbone_path)


@pytest.fixture(scope="module")
def dev(data_dir):
    if not (data_dir / "squad").is_dir():
        pytest.skip("No local SQuAD mirror")
    return load_squad(data_dir)["validation"].select(range(300))[:]  # columns as lists


@pytest.fixture(scope="module")
def windows(dev, tokenizer):
    """Train and eval features of the first 200 dev examples (the same windows, row for row)."""
    examples = {key: values[:200] for key, values in dev.items()}
    train = prepare_train_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    evaluation = prepare_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    return examples, train, evaluation


# ----------------------------------------------------------------------------------------------------------------
# Metrics: hand-computed cases
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Cat!", "cat"),
        ("  a  banana,  an apple\tand THE pear. ", "banana apple and pear"),
        ("theater anthem Anne", "theater anthem anne"),  # articles only as whole words
        ("a.m.", "am"),  # punctuation goes first, so "a.m." is no article
        ("U.S.A", "usa"),
        ("the_the", "thethe"),  # "_" is ASCII punctuation
        ("$1,000 (approx.)", "1000 approx"),
        ("Café “the” — résumé", "café “ ” — résumé"),  # non-ASCII punctuation is kept, "the" between it is a word
        ("the–war", "–war"),
        ("naïve a", "naïve"),
        ("aé éa", "aé éa"),  # accented letters are word characters (Python 3 \b)
        ("", ""),
        ("The", ""),
    ],
)
def test_normalize_answer_follows_the_official_rules(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_and_f1_hand_computed():
    assert exact_match_score("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match_score("Denver", "Denver Broncos") == 0.0
    assert exact_match_score("", "the") == 1.0  # both normalise to "": equal, as in the official script
    assert f1_score("", "the") == 0.0  # ... but no common token, so F1 is 0 (v1.1 has no empty-answer special case)
    assert f1_score("", "Denver") == 0.0
    # [cat, sat, on, mat] vs [cat, on, mat]: 3 common, precision 3/4, recall 1.
    assert f1_score("the cat sat on the mat", "a cat on a mat") == pytest.approx(2 * 0.75 / 1.75)
    # Token bags: one common "cat", precision 1/3, recall 1.
    assert f1_score("cat cat cat", "cat") == pytest.approx(0.5)
    assert f1_score("Denver Broncos", "broncos, denver!") == 1.0  # bags ignore order


def test_squad_metrics_hand_computed():
    references = {
        "q1": ["Denver Broncos", "The Broncos"],  # several references: the best one counts
        "q2": ["Santa Clara, California"],
        "q3": ["1990"],  # no prediction: scores 0 but still counts
        "q4": ["the"],  # an empty prediction matches an answer that normalises to ""
    }
    predictions = {"q1": "broncos", "q2": "Santa Clara", "q4": "", "extra": "ignored"}
    # q1 EM 1 (vs "The Broncos"); q2 F1: 2 common of 2 and 3 -> 2*1*(2/3)/(5/3) = 0.8; q4 EM 1, F1 0.
    metrics = squad_metrics(predictions, references)
    assert metrics["exact_match"] == pytest.approx(100 * 2 / 4)
    assert metrics["f1"] == pytest.approx(100 * (1 + 0.8) / 4)
    with pytest.raises(ValueError):
        squad_metrics({}, {})
    with pytest.raises(ValueError):
        squad_metrics({"q": "x"}, {"q": []})


# ----------------------------------------------------------------------------------------------------------------
# Metrics: an independent implementation on real dev questions
# ----------------------------------------------------------------------------------------------------------------

ASCII_PUNCTUATION = {chr(code) for code in range(33, 127) if not chr(code).isalnum()}  # == string.punctuation


def independent_normalize(text: str) -> str:
    """The official normalisation without regular expressions or str.split: character runs instead of \\b."""
    kept = [character for character in text.lower() if character not in ASCII_PUNCTUATION]
    runs: list[list[str]] = []  # maximal runs of word characters and of other characters
    for character in kept:
        is_word = character.isalnum() or character == "_"  # what \w means for a Python 3 str pattern
        if runs and runs[-1][0] == is_word:
            runs[-1][1] += character
        else:
            runs.append([is_word, character])
    text = "".join(" " if is_word and run in ("a", "an", "the") else run for is_word, run in runs)
    tokens, current = [], ""
    for character in text + " ":  # collapse whitespace by hand
        if character.isspace():
            if current:
                tokens.append(current)
            current = ""
        else:
            current += character
    return " ".join(tokens)


def independent_f1(prediction: str, reference: str) -> float:
    predicted = sorted(independent_normalize(prediction).split(" ")) if independent_normalize(prediction) else []
    expected = sorted(independent_normalize(reference).split(" ")) if independent_normalize(reference) else []
    common, i, j = 0, 0, 0
    while i < len(predicted) and j < len(expected):  # multiset intersection of two sorted lists
        if predicted[i] == expected[j]:
            common, i, j = common + 1, i + 1, j + 1
        elif predicted[i] < expected[j]:
            i += 1
        else:
            j += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def heuristic_predictions(example: dict, variant: int) -> str:
    """Cheap, varied predictions: words of the sentence holding the answer, or decorated gold answers."""
    context, gold = example["context"], example["answers"]["text"][0]
    start = example["answers"]["answer_start"][0]
    sentence_start = context.rfind(". ", 0, start) + 2 if context.rfind(". ", 0, start) >= 0 else 0
    words = context[sentence_start:].split()
    if variant == 0:
        return " ".join(words[:5])  # the first words of the answer's sentence
    if variant == 1:
        return f"The {gold.upper()}."  # article, case and punctuation around the gold answer
    if variant == 2:
        return " ".join(words[: len(gold.split()) + 2])
    if variant == 3:
        return gold.replace(" ", " – ")  # a non-ASCII dash between the words
    return ""


def test_metrics_agree_with_an_independent_implementation_on_real_dev(dev):
    rows = [{key: dev[key][i] for key in dev} for i in range(len(dev["id"]))]
    predictions = {row["id"]: heuristic_predictions(row, i % 5) for i, row in enumerate(rows)}
    references = squad_references(dev)
    texts = [*predictions.values(), *(answer for answers in references.values() for answer in answers)]
    assert any(not text.isascii() for text in texts)  # the sample exercises non-ASCII text
    for text in texts:
        assert normalize_answer(text) == independent_normalize(text)
    em_sum = f1_sum = 0.0
    for question_id, answers in references.items():
        prediction = predictions[question_id]
        em_sum += max(float(independent_normalize(prediction) == independent_normalize(a)) for a in answers)
        f1_sum += max(independent_f1(prediction, a) for a in answers)
        for answer in answers:
            assert f1_score(prediction, answer) == independent_f1(prediction, answer)
    metrics = squad_metrics(predictions, references)
    assert metrics == {"exact_match": 100 * em_sum / len(references), "f1": 100 * f1_sum / len(references)}
    assert 0 < metrics["exact_match"] < metrics["f1"] < 100  # the heuristic is neither all right nor all wrong


# ----------------------------------------------------------------------------------------------------------------
# Windowing
# ----------------------------------------------------------------------------------------------------------------


def windows_of(evaluation: dict) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for row, example_id in enumerate(evaluation["example_id"]):
        rows.setdefault(example_id, []).append(row)
    return rows


def context_offsets(offsets: list) -> list[tuple[int, int]]:
    return [tuple(offset) for offset in offsets if offset is not None]


def test_windows_overlap_and_cover_every_context_token(windows, tokenizer):
    examples, _, evaluation = windows
    rows = windows_of(evaluation)
    long_examples = [i for i, example_id in enumerate(examples["id"]) if len(rows[example_id]) > 1]
    assert len(long_examples) > 100  # most contexts need several windows at this length
    full = tokenizer(examples["question"], examples["context"], return_offsets_mapping=True)
    for i, example_id in enumerate(examples["id"]):
        sequence_ids = full.sequence_ids(i)
        all_tokens = [tuple(o) for o, s in zip(full["offset_mapping"][i], sequence_ids) if s == 1]
        per_window = [context_offsets(evaluation["offset_mapping"][row]) for row in rows[example_id]]
        covered = sorted(set().union(*per_window))
        assert covered == all_tokens  # every context token is in some window, and nothing else is context
        for row in rows[example_id]:
            assert len(evaluation["input_ids"][row]) == MAX_LENGTH
        for before, after in zip(per_window, per_window[1:]):
            assert before[-STRIDE:] == after[:STRIDE]  # consecutive windows share exactly `doc_stride` tokens
            assert after[STRIDE] == all_tokens[all_tokens.index(before[-1]) + 1]  # and then continue in order


def test_train_labels_decode_to_the_gold_answer(windows, tokenizer):
    examples, train, evaluation = windows
    assert train["input_ids"] == evaluation["input_ids"]  # the same windows, row for row
    index = {example_id: i for i, example_id in enumerate(examples["id"])}
    aligned_mismatch, answered = 0, set()
    for row, example_id in enumerate(evaluation["example_id"]):
        example = index[example_id]
        context, gold = examples["context"][example], examples["answers"][example]["text"][0]
        start_char = examples["answers"][example]["answer_start"][0]
        end_char = start_char + len(gold)
        offsets = evaluation["offset_mapping"][row]
        tokens = context_offsets(offsets)
        start, end = train["start_positions"][row], train["end_positions"][row]
        if start == 0:  # CLS: the answer is not wholly inside this window's context
            assert end == 0 and train["input_ids"][row][0] == tokenizer.cls_token_id
            assert start_char < tokens[0][0] or end_char > tokens[-1][1]
            continue
        answered.add(example_id)
        assert offsets[start] is not None and offsets[end] is not None and start <= end
        # The labelled tokens are the ones holding the answer's first and last characters ...
        assert offsets[start][0] <= start_char < offsets[start][1]
        assert offsets[end][0] < end_char <= offsets[end][1]
        decoded = context[offsets[start][0] : offsets[end][1]]
        # ... so they decode to the gold text exactly whenever the gold text begins and ends on token boundaries.
        starts, ends = {t[0] for t in tokens}, {t[1] for t in tokens}
        if start_char in starts and end_char in ends:
            assert decoded == gold
        else:
            assert gold in decoded
            aligned_mismatch += 1
    assert answered == set(examples["id"])  # every answer is wholly inside at least one window
    assert aligned_mismatch <= 10  # only answers cut inside a word (e.g. "Israel" of "Israelis") are widened


def oracle_logits(train: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Small noise everywhere, +20 at the labelled start/end tokens of windows that hold the answer."""
    start_logits = rng.normal(size=(len(train["input_ids"]), MAX_LENGTH))
    end_logits = rng.normal(size=start_logits.shape)
    for row, (start, end) in enumerate(zip(train["start_positions"], train["end_positions"])):
        if start > 0:
            start_logits[row, start] += 20.0
            end_logits[row, end] += 20.0
    return start_logits, end_logits


def test_oracle_logits_recover_the_gold_answer_across_windows(windows):
    examples, train, evaluation = windows
    start_logits, end_logits = oracle_logits(train, np.random.default_rng(0))
    labelled, lengths = {}, {}  # question id -> the texts its labelled tokens decode to; their length in tokens
    for row, example_id in enumerate(evaluation["example_id"]):
        start, end = train["start_positions"][row], train["end_positions"][row]
        if start > 0:
            offsets = evaluation["offset_mapping"][row]
            context = examples["context"][examples["id"].index(example_id)]
            labelled.setdefault(example_id, set()).add(context[offsets[start][0] : offsets[end][1]])
            lengths[example_id] = end - start + 1
    assert all(len(texts) == 1 for texts in labelled.values())  # the same text from every window that has it
    expected = {example_id: next(iter(texts)) for example_id, texts in labelled.items()}
    # With no length limit, the oracle span wins in every question, over all of its windows.
    predictions = postprocess_predictions(examples, evaluation, start_logits, end_logits, max_answer_length=MAX_LENGTH)
    assert predictions == expected
    metrics = squad_metrics(predictions, squad_references(examples))
    assert metrics["f1"] > 99.0 and metrics["exact_match"] > 97.0  # below 100 only for answers cut inside words
    # With the default limit of 30 tokens, exactly the longer gold answers are lost.
    limited = postprocess_predictions(examples, evaluation, start_logits, end_logits)
    long_answers = {example_id for example_id, length in lengths.items() if length > 30}
    assert long_answers  # the sample has some (e.g. a whole sentence)
    assert {example_id for example_id in expected if limited[example_id] != expected[example_id]} == long_answers
    # The same through Trainer's compute_metrics hook.
    compute = squad_compute_metrics(examples, evaluation)
    limited_metrics = squad_metrics(limited, squad_references(examples))
    assert compute(EvalPrediction(predictions=(start_logits, end_logits), label_ids=None)) == limited_metrics


def test_decoder_never_leaves_the_context(windows):
    """Random logits, with the largest on question and special tokens: every n-best span is a run of context
    tokens of one window, at most max_answer_length long, and its text is the context slice."""
    examples, _, evaluation = windows
    rng = np.random.default_rng(1)
    start_logits = rng.normal(size=(len(evaluation["example_id"]), MAX_LENGTH))
    end_logits = rng.normal(size=start_logits.shape)
    not_context = np.array([[offset is None for offset in offsets] for offsets in evaluation["offset_mapping"]])
    start_logits[not_context] += 50.0
    end_logits[not_context] += 50.0
    nbest = nbest_predictions(examples, evaluation, start_logits, end_logits, n_best_size=20, max_answer_length=5)
    rows = windows_of(evaluation)
    # Question, special and padding tokens take many of each window's 20 best places, yet valid spans remain.
    assert sum(bool(candidates) for candidates in nbest.values()) > len(nbest) // 2
    for example_id, context in zip(examples["id"], examples["context"]):
        spans = set()
        for row in rows[example_id]:
            tokens = context_offsets(evaluation["offset_mapping"][row])
            spans |= {(a[0], b[1]) for i, a in enumerate(tokens) for b in tokens[i : i + 5]}
        for candidate in nbest[example_id]:
            assert (candidate["start_char"], candidate["end_char"]) in spans
            assert candidate["text"] == context[candidate["start_char"] : candidate["end_char"]]


# ----------------------------------------------------------------------------------------------------------------
# Answer length and n-best on a crafted example
# ----------------------------------------------------------------------------------------------------------------

WORDS = "one two three four five six seven eight nine ten eleven twelve".split()


@pytest.fixture
def crafted(tokenizer):
    examples = {
        "id": ["q"],
        "question": ["which number?"],
        "context": [" ".join(WORDS)],
        "answers": [{"text": ["three"], "answer_start": [8]}],
    }
    features = prepare_eval_features(examples, tokenizer, max_length=64, doc_stride=16)
    assert len(features["example_id"]) == 1
    offsets = features["offset_mapping"][0]
    first = next(i for i, offset in enumerate(offsets) if offset is not None)
    assert [examples["context"][0][slice(*offsets[first + k])] for k in range(12)] == WORDS  # one token a word
    return examples, features, first


def test_max_answer_length(crafted):
    examples, features, first = crafted
    start_logits, end_logits = np.zeros((1, 64)), np.zeros((1, 64))
    start_logits[0, 0] = end_logits[0, 0] = 100.0  # CLS and question tokens are never answers
    start_logits[0, 2] = end_logits[0, 2] = 100.0
    end_logits[0, first - 1] = 9.0  # nor is the [SEP] before the context
    start_logits[0, first] = 10.0  # "one"
    end_logits[0, first + 11] = 10.0  # "twelve": the best pair, 12 tokens long
    end_logits[0, first + 2] = 8.0  # "three": the best pair of at most 11 tokens
    end_logits[0, first + 1] = 1.0  # "two": the best pair of at most 2 tokens

    def predict(**kwargs) -> str:
        return postprocess_predictions(examples, features, start_logits, end_logits, **kwargs)["q"]

    assert predict() == " ".join(WORDS)  # default max_answer_length=30
    assert predict(max_answer_length=12) == " ".join(WORDS)
    assert predict(max_answer_length=11) == "one two three"
    assert predict(max_answer_length=3) == "one two three"
    assert predict(max_answer_length=2) == "one two"
    assert predict(max_answer_length=1) == "one"


def test_end_before_start_is_never_a_span(crafted):
    examples, features, first = crafted
    start_logits, end_logits = np.zeros((1, 64)), np.zeros((1, 64))
    start_logits[0, first + 5] = 12.0  # "six"
    end_logits[0, first + 4] = 11.0  # "five": the strongest end, before the strongest start
    candidates = nbest_predictions(examples, features, start_logits, end_logits)["q"]
    assert candidates[0]["score"] == 12.0 and candidates[0]["text"].startswith("six")
    assert all(candidate["start_char"] < candidate["end_char"] for candidate in candidates)
    assert all(candidate["score"] < 23.0 for candidate in candidates)  # the pair (six, five) is dropped


def test_nbest_is_sorted_and_scored(crafted):
    examples, features, first = crafted
    rng = np.random.default_rng(2)
    start_logits, end_logits = rng.normal(size=(1, 64)), rng.normal(size=(1, 64))
    outside = np.array([offset is None for offset in features["offset_mapping"][0]])
    start_logits[0, outside] -= 10.0  # the 12 context tokens are then the top 12 starts and ends
    end_logits[0, outside] -= 10.0
    candidates = nbest_predictions(examples, features, start_logits, end_logits, n_best_size=20)["q"]
    assert len(candidates) == 20  # 78 valid spans (12 * 13 / 2), the best 20 kept
    scores = [candidate["score"] for candidate in candidates]
    assert scores == sorted(scores, reverse=True)
    assert sum(candidate["probability"] for candidate in candidates) == pytest.approx(1.0)
    probabilities = [candidate["probability"] for candidate in candidates]
    assert probabilities == sorted(probabilities, reverse=True)
    offsets = features["offset_mapping"][0]
    context = examples["context"][0]
    all_spans = sorted(
        (
            (start_logits[0, s] + end_logits[0, e], offsets[s][0], offsets[e][1])
            for s in range(first, first + 12)
            for e in range(s, first + 12)
        ),
        reverse=True,
    )
    assert [(c["score"], c["start_char"], c["end_char"]) for c in candidates] == all_spans[:20]
    for candidate in candidates:
        assert candidate["score"] == candidate["start_logit"] + candidate["end_logit"]
        assert candidate["text"] == context[candidate["start_char"] : candidate["end_char"]]
    assert postprocess_predictions(examples, features, start_logits, end_logits)["q"] == candidates[0]["text"]
    # n_best_size also caps the kept spans, and the tokens tried per window (5 starts x 5 ends).
    few = nbest_predictions(examples, features, start_logits, end_logits, n_best_size=5)["q"]
    assert len(few) == 5 and few[0]["score"] == candidates[0]["score"]


def test_no_valid_span_gives_an_empty_answer(crafted):
    examples, features, first = crafted
    start_logits, end_logits = np.zeros((1, 64)), np.zeros((1, 64))
    start_logits[0, : first + 1] = 50.0  # the only strong starts: CLS, the question, [SEP], "one"
    end_logits[0, :first] = 50.0  # ... and the only strong ends are outside the context
    assert postprocess_predictions(examples, features, start_logits, end_logits, n_best_size=first)["q"] == ""


def test_dataset_map_and_decoding_from_datasets(data_dir, tokenizer, windows):
    """The functions work as `Dataset.map(batched=True)` callbacks, and decoding reads Dataset columns (None
    offsets survive Arrow) with the same result as from plain lists."""
    from datasets import Dataset

    examples, train, evaluation = windows
    dataset = Dataset.from_dict({key: values[:50] for key, values in examples.items()})
    settings = {"tokenizer": tokenizer, "max_length": MAX_LENGTH, "doc_stride": STRIDE}
    train_set, eval_set = (
        dataset.map(prepare, batched=True, batch_size=16, remove_columns=dataset.column_names, fn_kwargs=settings)
        for prepare in (prepare_train_features, prepare_eval_features)
    )
    rows = len(train_set)
    assert train_set["start_positions"][:] == train["start_positions"][:rows]
    assert eval_set["offset_mapping"][:] == evaluation["offset_mapping"][:rows]
    start_logits, end_logits = oracle_logits(train_set[:], np.random.default_rng(3))
    from_lists = postprocess_predictions(dataset[:], eval_set[:], start_logits, end_logits)
    assert postprocess_predictions(dataset, eval_set, start_logits, end_logits) == from_lists


def test_long_question_is_cut_to_the_budget(tokenizer):
    assert question_token_budget(384, 128) == 64
    assert question_token_budget(96, 32) == 60  # the tokenizer needs more than `doc_stride` context tokens
    with pytest.raises(ValueError):
        question_token_budget(36, 32)
    examples = {
        "id": ["long"],
        "question": ["  why " * 200],  # 200 tokens: the tokenizer alone would fail on it
        "context": ["short context " * 40],
        "answers": [{"text": ["short"], "answer_start": [0]}],
    }
    features = prepare_train_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    assert len(features["input_ids"]) >= 1
    assert features["attention_mask"][0].count(0) == 0  # a full window: every type-0 token is question
    assert features["token_type_ids"][0].count(0) == 60 + 2  # [CLS] + 60 question tokens + [SEP]
    assert (features["start_positions"][0], features["end_positions"][0]) == (62, 62)  # "short", first token
    with pytest.raises(TypeError, match="question"):
        prepare_eval_features({**examples, "question": [None]}, tokenizer, MAX_LENGTH, STRIDE)


def test_empty_context_and_missing_answer(tokenizer):
    examples = {
        "id": ["empty", "absent"],
        "question": ["what?", "where?"],
        "context": ["", "a short context"],
        "answers": [{"text": [], "answer_start": []}, {"text": ["far away"], "answer_start": [200]}],
    }
    train = prepare_train_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    assert train["start_positions"] == train["end_positions"] == [0, 0]  # no answer in the window: CLS
    evaluation = prepare_eval_features(examples, tokenizer, MAX_LENGTH, STRIDE)
    logits = np.random.default_rng(4).normal(size=(2, MAX_LENGTH))
    predictions = postprocess_predictions(examples, evaluation, logits, logits)
    assert predictions["empty"] == ""  # no context token, so no span
    assert predictions["absent"] in examples["context"][1]
