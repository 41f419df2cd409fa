"""The `flex-text-classification` pipeline (src/transformers_flex/flexbert_classification.py) on a small random
FlexBert classifier with off-ramps and width gates and the real tokenizer: static results equal the model's
probabilities at the call's sub-network, dynamic results equal `dynamic_forward` on each input alone (exit layer,
widths, FLOPs), batching changes nothing, the built-in task is untouched, and a saved checkpoint runs the pipeline
in a process without the package."""

import json
import os
import textwrap

import pytest
import torch
from clean_process import run_without_package
from interpreters import INTERPRETERS
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, pipeline
from transformers.pipelines.text_classification import TextClassificationPipeline

from transformers_flex import FlexBertForSequenceClassification, FlexBertTextClassificationPipeline

pytestmark = pytest.mark.integration  # the real backbone

TEXTS = [
    "a gripping , beautifully acted film .",
    "dull",
    "it is not a film i would see twice , or once , and the ending drags on for far too long .",
    {"text": "the cast is superb .", "text_pair": "the acting is wonderful ."},
]


@pytest.fixture(scope="module")
def tokenizer(backbone_path):
    return AutoTokenizer.from_pretrained(backbone_path)


@pytest.fixture(scope="module")
def model(backbone_path):
    """The real backbone with random heads: off-ramps after layers 2 and 4 (copies of the classifier, made sharp
    so that inputs differ in confidence) and width gates that send inputs to different widths."""
    torch.manual_seed(0)
    labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    model = FlexBertForSequenceClassification.from_pretrained(
        backbone_path, num_labels=2, exit_layers=[2, 4], gate_block_size=3, **labels
    ).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(300)
    model.copy_head_to_off_ramps()
    return model


@pytest.fixture(scope="module")
def threshold(model, tokenizer) -> float:
    """An entropy threshold between the first ramp's entropies on TEXTS: some inputs leave there, others go on."""
    entropies = []
    for text in TEXTS:
        with torch.no_grad():
            logits = model.dynamic_forward(**encode(tokenizer, text), exit_at=torch.tensor([2])).logits[0]
        entropies.append(float(-(logits.softmax(-1) * logits.log_softmax(-1)).sum()))
    # Halfway between the two middle entropies: torch's median of an even count is one of them, and an input whose
    # entropy equals the threshold would leave or stay on float noise (batched vs alone).
    low, high = sorted(entropies)[1:3]
    return (low + high) / 2


@pytest.fixture(scope="module")
def classifier(model, tokenizer):
    return pipeline("flex-text-classification", model=model, tokenizer=tokenizer)


def encode(tokenizer, text) -> dict[str, torch.Tensor]:
    pair = text if isinstance(text, dict) else {"text": text}
    return dict(tokenizer(**pair, return_tensors="pt"))


def expected_result(model, tokenizer, text, dynamic: bool, **settings) -> dict:
    """What the model itself says about `text` alone: label and probability (and its cost when dynamic)."""
    with torch.no_grad():
        if dynamic:
            output = model.dynamic_forward(**encode(tokenizer, text), **settings)
        else:
            output = model(**encode(tokenizer, text), dynamic=False, **settings)
    probabilities = output.logits[0].softmax(-1)
    result = {"label": model.config.id2label[int(probabilities.argmax())], "score": float(probabilities.max())}
    if dynamic:
        result["exit_layer"] = int(output.exit_layers[0])
        result["layer_widths"] = output.layer_widths[0].tolist()
        result["flops"] = float(output.flops[0])
    return result


def assert_same_results(found: list[dict], expected: list[dict]) -> None:
    for got, want in zip(found, expected, strict=True):
        assert got.keys() == want.keys()
        assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"], abs=1e-5)
        for key in {"exit_layer", "layer_widths", "flops"} & want.keys():
            assert got[key] == pytest.approx(want[key], rel=1e-9)


@pytest.mark.parametrize("subnet", [{}, {"width": 0.5}, {"width": [1.0, 0.25, 0.75, 0.5, 1.0, 0.25]}, {"depth": 0.5}])
def test_static_results_are_the_models_at_the_calls_subnetwork(classifier, model, tokenizer, subnet):
    found = classifier(TEXTS, **subnet)
    assert_same_results(found, [expected_result(model, tokenizer, text, False, **subnet) for text in TEXTS])


@pytest.mark.parametrize(
    "settings",
    [
        {"threshold": "median"},
        {"threshold": "median", "use_gates": False, "width": 0.5},
        {"criterion": "patience", "threshold": 1, "use_gates": False},
    ],
)
def test_dynamic_results_say_what_each_input_cost_and_batching_changes_nothing(
    classifier, model, tokenizer, threshold, settings
):
    if settings["threshold"] == "median":
        settings = settings | {"threshold": threshold}
    expected = [expected_result(model, tokenizer, text, True, **settings) for text in TEXTS]
    if len(settings) == 1:  # with gates and the median threshold, inputs leave apart and run at different widths
        assert len({result["exit_layer"] for result in expected}) > 1
        assert len({tuple(result["layer_widths"]) for result in expected}) > 2
    assert_same_results(classifier(TEXTS, dynamic=True, **settings), expected)
    assert_same_results(classifier(TEXTS, dynamic=True, batch_size=4, **settings), expected)


def test_top_k_lists_every_label_with_the_inputs_cost(classifier, model, tokenizer, threshold):
    found = classifier(TEXTS[0], dynamic=True, threshold=threshold, top_k=None)
    expected = expected_result(model, tokenizer, TEXTS[0], True, threshold=threshold)
    assert [entry["label"] for entry in found][0] == expected["label"] and len(found) == 2
    assert sum(entry["score"] for entry in found) == pytest.approx(1.0)
    for entry in found:
        assert entry["exit_layer"] == expected["exit_layer"] and entry["flops"] == expected["flops"]


def test_bad_settings_get_clear_errors(classifier, tokenizer, backbone_path):
    with pytest.raises(ValueError, match="only apply to dynamic inference"):
        classifier(TEXTS[0], threshold=0.3, dynamic=False)
    with pytest.raises(ValueError, match="width"):
        classifier(TEXTS[0], width=1.5)
    bert = BertForSequenceClassification(BertConfig(**{**classifier.model.config.to_dict(), "model_type": "bert"}))
    plain = pipeline("flex-text-classification", model=bert.eval(), tokenizer=tokenizer)
    assert plain(TEXTS[0])[0]["label"] in bert.config.id2label.values()  # any classifier runs statically
    with pytest.raises(ValueError, match="has no sub-networks"):
        plain(TEXTS[0], width=0.5)


def test_the_builtin_text_classification_task_is_untouched(model, tokenizer):
    builtin = pipeline("text-classification", model=model, tokenizer=tokenizer)
    assert type(builtin) is TextClassificationPipeline
    assert type(pipeline("flex-text-classification", model=model, tokenizer=tokenizer)) is (
        FlexBertTextClassificationPipeline
    )


REMOTE_PIPELINE = textwrap.dedent(
    """
    from transformers import pipeline

    checkpoint, texts = sys.argv[1], json.loads(sys.argv[2])
    classifier = pipeline("flex-text-classification", model=checkpoint, trust_remote_code=True)
    print(json.dumps({
        "module": type(classifier).__module__,
        "static": classifier(texts, width=0.5),
        "dynamic": classifier(texts, dynamic=True, threshold=float(sys.argv[3]), batch_size=4),
    }))
    """
)


@pytest.mark.parametrize("python", INTERPRETERS)
def test_a_saved_checkpoint_runs_the_pipeline_without_the_package(model, tokenizer, threshold, tmp_path, python):
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    assert "flexbert_classification.py" in os.listdir(checkpoint)
    custom = json.loads((checkpoint / "config.json").read_text())["custom_pipelines"]
    assert custom["flex-text-classification"]["impl"] == "flexbert_classification.FlexBertTextClassificationPipeline"
    arguments = str(checkpoint), json.dumps(TEXTS), str(threshold)
    loaded = json.loads(run_without_package(REMOTE_PIPELINE, *arguments, workdir=tmp_path, python=python)[-1])
    assert loaded["module"].startswith("transformers_modules")
    static = [expected_result(model, tokenizer, text, False, width=0.5) for text in TEXTS]
    dynamic = [expected_result(model, tokenizer, text, True, threshold=threshold) for text in TEXTS]
    assert_same_results(loaded["static"], static)
    assert_same_results(loaded["dynamic"], dynamic)
