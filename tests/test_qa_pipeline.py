"""The `flex-question-answering` pipeline (src/transformers_flex/flexbert_qa.py) on a small random FlexBert QA model
with the real tokenizer: its answers equal the SQuAD decoder's on the same logits (long contexts of many windows
included), batching changes nothing, the sub-network and the engine travel with the call, and bad input gets a
clear outcome."""

import pytest
import torch
from transformers import AutoTokenizer, pipeline

from transformers_flex import FlexBertConfig, FlexBertForQuestionAnswering
from transformers_flex.squad import postprocess_predictions, prepare_eval_features

CONTEXT = (
    "The Eiffel Tower was completed in 1889 for the World's Fair. It was designed by the company of Gustave "
    "Eiffel, whose engineers Maurice Koechlin and Émile Nouguier drew the first plans. "
)
QUESTIONS = ["When was the tower completed?", "Who designed it?", "What drew the first plans?"]
WINDOW, STRIDE = 64, 16  # small windows, so the long context below spans more than ten


@pytest.fixture(scope="module")
def tokenizer(backbone_path):
    return AutoTokenizer.from_pretrained(backbone_path)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = FlexBertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        num_labels=2,
    )
    return FlexBertForQuestionAnswering(config).eval()


@pytest.fixture(scope="module")
def answerer(model, tokenizer):
    return pipeline("flex-question-answering", model=model, tokenizer=tokenizer)


def decoder_answer(model, tokenizer, question: str, context: str, **subnet) -> str:
    """The answer `squad.py`'s windows and decoder give for the model's logits, window by window."""
    examples = {"id": ["q"], "question": [question], "context": [context]}
    features = prepare_eval_features(examples, tokenizer, WINDOW, STRIDE, pad_to_max_length=False)
    starts, ends = [], []
    for window in range(len(features["input_ids"])):
        inputs = {
            key: torch.tensor([features[key][window]]) for key in ("input_ids", "attention_mask", "token_type_ids")
        }
        with torch.no_grad():
            output = model(**inputs, **subnet)
        starts.append(output.start_logits[0])
        ends.append(output.end_logits[0])
    return postprocess_predictions(examples, features, starts, ends)["q"], len(starts)


def test_answers_equal_the_squad_decoder_across_many_windows(answerer, model, tokenizer):
    context = CONTEXT * 12
    for question in QUESTIONS:
        expected, windows = decoder_answer(model, tokenizer, question, context)
        assert windows > 10
        answer = answerer(question=question, context=context, max_seq_len=WINDOW, doc_stride=STRIDE)
        assert answer["answer"] == expected
        assert context[answer["start"] : answer["end"]] == answer["answer"] and 0 < answer["score"] <= 1


def test_batching_changes_no_answer(answerer):
    contexts = [CONTEXT, CONTEXT * 3, CONTEXT[:80]]
    settings = {"max_seq_len": WINDOW, "doc_stride": STRIDE, "top_k": 3}
    alone = [answerer(question=q, context=c, **settings) for q, c in zip(QUESTIONS, contexts)]
    batched = answerer(question=QUESTIONS, context=contexts, batch_size=8, **settings)
    assert [[a["answer"] for a in answers] for answers in batched] == [[a["answer"] for a in x] for x in alone]
    for together, single in zip(batched, alone):
        assert [a["score"] for a in together] == pytest.approx([a["score"] for a in single], abs=1e-5)
        assert [a["score"] for a in together] == sorted((a["score"] for a in together), reverse=True)


def test_sub_network_and_engine_travel_with_the_call(answerer, model, tokenizer):
    context = CONTEXT * 3
    settings = {"max_seq_len": WINDOW, "doc_stride": STRIDE}
    for width, depth in ((0.5, 1.0), (0.25, 0.5)):
        expected, _ = decoder_answer(model, tokenizer, QUESTIONS[0], context, width=width, depth=depth)
        assert (
            answerer(question=QUESTIONS[0], context=context, width=width, depth=depth, **settings)["answer"]
            == expected
        )
    static = answerer(question=QUESTIONS[1], context=context, width=0.5, **settings)
    engine = answerer(question=QUESTIONS[1], context=context, width=0.5, dynamic=True, **settings)
    assert engine["answer"] == static["answer"] and engine["score"] == pytest.approx(static["score"], abs=1e-5)
    assert model.active_subnet == {"width": 1.0, "depth": 1.0}  # the call left the model's default alone


def test_bad_input_gets_a_clear_outcome(answerer):
    assert answerer(question="Who?", context="") == {"answer": "", "score": 0.0, "start": 0, "end": 0}
    long_question = " ".join(["which tower"] * 200)  # longer than the window: cut to the question budget
    answer = answerer(question=long_question, context=CONTEXT, max_seq_len=WINDOW, doc_stride=STRIDE)
    assert CONTEXT[answer["start"] : answer["end"]] == answer["answer"]
    with pytest.raises(TypeError, match="question"):
        answerer(question=3, context=CONTEXT)
    with pytest.raises(TypeError, match="both"):
        answerer(question=["a", "b"], context=CONTEXT)
    with pytest.raises(ValueError, match="2 questions for 1"):
        answerer(question=["a", "b"], context=[CONTEXT])
    with pytest.raises(TypeError, match="dict"):
        answerer(["a question without a context"])
    with pytest.raises(ValueError, match="top_k"):
        answerer(question="Who?", context=CONTEXT, top_k=0)
