"""Dynamic inference on the real backbone and real GLUE dev sets: the batched engine never changes an answer."""

import pytest
import torch
from transformers import AutoTokenizer, DataCollatorWithPadding, pipeline

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.data import load_glue, tokenize_glue
from transformers_flex.modeling_flexbert import prediction_entropy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer(backbone_path):
    return AutoTokenizer.from_pretrained(backbone_path)


@pytest.fixture(scope="module")
def dynamic_model(backbone_path, tokenizer, data_dir):
    """MiniLM with off-ramps after layers 2 and 4 (copies of the final head) and width gates per 2 layers. The head
    is scaled so that entropies spread out; each gate is centred on real sentences (its mean logits subtracted) so
    that its choice varies from sentence to sentence."""
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification.from_pretrained(
        backbone_path, num_labels=2, exit_layers=[2, 4], gate_block_size=2
    ).eval()
    batch = tokenizer(load_glue("sst2", data_dir)["train"]["sentence"][:64], padding=True, return_tensors="pt")
    with torch.no_grad():
        model.classifier.weight.mul_(50)
        hidden_states = model(**batch, output_hidden_states=True).hidden_states
        for layer, gate in model.width_gates.items():
            gate.classifier.weight.mul_(50)
            pooled = gate.pool(hidden_states[int(layer)], batch["attention_mask"])
            gate.classifier.bias.sub_(gate(pooled).mean(dim=0))
    model.copy_head_to_off_ramps()
    return model


def median_ramp_entropy(model, batch) -> float:
    """The median entropy of the first ramp at full width: about half of the examples can leave there."""
    with torch.no_grad():
        hidden_states = model(**batch, output_hidden_states=True).hidden_states
    return prediction_entropy(model.ramp_logits(hidden_states)[2]).median().item()


def test_batched_engine_equals_one_example_at_a_time_on_every_mrpc_dev_example(dynamic_model, tokenizer, data_dir):
    dev = tokenize_glue(load_glue("mrpc", data_dir)["validation"], tokenizer, "mrpc", 128)
    dev = dev.remove_columns("labels")
    collate = DataCollatorWithPadding(tokenizer)
    examples = [dev[i] for i in range(len(dev))]
    threshold = median_ramp_entropy(dynamic_model, collate(examples[:64]))
    singles = [dynamic_model.dynamic_forward(**collate([example]), threshold=threshold) for example in examples]
    # Length-bucketed batches of 64, as a serving system would form them.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    batched = {}
    for start in range(0, len(order), 64):
        rows = order[start : start + 64]
        output = dynamic_model.dynamic_forward(**collate([examples[i] for i in rows]), threshold=threshold)
        for position, row in enumerate(rows):
            batched[row] = (output.exit_layers[position], output.layer_widths[position], output.logits[position])
    exits = torch.stack([batched[i][0] for i in range(len(examples))])
    assert len(examples) == 408 and len(exits.unique()) >= 2  # rows leave early and late in one batch
    patterns = {tuple(batched[i][1].tolist()) for i in batched}
    assert len({pattern[2] for pattern in patterns if pattern[2] > 0}) >= 2  # rows of one batch at several widths
    for row, single in enumerate(singles):
        assert int(single.exit_layers[0]) == int(batched[row][0]), row
        assert single.layer_widths[0].tolist() == batched[row][1].tolist(), row
        assert int(single.logits[0].argmax()) == int(batched[row][2].argmax()), row
        torch.testing.assert_close(single.logits[0], batched[row][2], atol=1e-4, rtol=1e-4)


def test_text_classification_pipeline_runs_the_engine(dynamic_model, tokenizer, data_dir):
    sentences = load_glue("sst2", data_dir)["validation"]["sentence"][:96]
    dynamic_model.config.exit_threshold = median_ramp_entropy(
        dynamic_model, tokenizer(sentences[:64], padding=True, return_tensors="pt")
    )
    dynamic_model.config.dynamic_inference = True
    try:
        classifier = pipeline("text-classification", model=dynamic_model, tokenizer=tokenizer, device="cpu")
        answers = classifier(sentences, batch_size=32, top_k=None)
        exits = set()
        for sentence, answer in zip(sentences, answers):
            alone = dynamic_model(**tokenizer(sentence, return_tensors="pt"))
            exits.add(int(alone.exit_layers[0]))
            probabilities = alone.logits[0].softmax(-1)
            scores = {item["label"]: item["score"] for item in answer}
            expected = {dynamic_model.config.id2label[k]: float(p) for k, p in enumerate(probabilities)}
            assert scores == pytest.approx(expected, abs=1e-4)
        assert len(exits) >= 2  # the pipeline's batches really mixed rows that exit at different layers
    finally:
        dynamic_model.config.dynamic_inference = False
