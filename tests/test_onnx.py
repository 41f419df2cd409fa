"""ONNX export of static sub-networks (transformers_flex.export.export_onnx, `transformers-flex export --onnx`): for a
trained model, ONNX Runtime's outputs equal PyTorch's (≤ 1e-4) for each exported sub-network, on padded and unpadded
batches of other sizes than the export's example (dynamic batch and sequence axes, the mask kept), and the graph
records which sub-network it is."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from transformers_flex import (
    FlexBertConfig,
    FlexBertForQuestionAnswering,
    FlexBertForSequenceClassification,
    FlexBertModel,
    to_bert,
)
from transformers_flex.cli import main as cli_main
from transformers_flex.export import ONNX_INPUTS, export_onnx, quantize_onnx

ort = pytest.importorskip("onnxruntime")  # the [onnx] extra; `make test` installs it with the dev tools

pytestmark = pytest.mark.integration
TEXTS = ["a gripping , beautifully acted film .", "dull", "it is not a film i would see twice , or once ."]
# The full model, the smallest sub-network, one in between and one per-layer width list. Each export is ~10 s; that
# `export_subnet` equals the sliced supernet at every (width, depth) is test_export.py's check, in PyTorch.
SUBNETS = [(1.0, 1.0), (0.25, 0.5), (0.75, 0.75), ([1.0, 0.25, 0.75, 0.5, 1.0, 0.5], 1.0)]


def batches(tokenizer) -> list[dict[str, np.ndarray]]:
    """Three padded rows, and one unpadded row of another length."""
    padded = tokenizer(TEXTS, padding=True, return_tensors="np")
    single = tokenizer(TEXTS[2] + " " + TEXTS[0], return_tensors="np")
    return [dict(padded), dict(single)]


def run_onnx(path, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path))
    return session.run(None, {name: batch[name].astype(np.int64) for name in ONNX_INPUTS})


def as_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(value) for name, value in batch.items()}


@pytest.fixture(scope="module")
def trained(classification_run):
    checkpoint = classification_run[0] / "gates"
    model = FlexBertForSequenceClassification.from_pretrained(checkpoint).eval()
    return model, AutoTokenizer.from_pretrained(checkpoint)


@pytest.mark.parametrize(("width", "depth"), SUBNETS, ids=str)
def test_onnx_runtime_equals_pytorch_for_every_exported_subnetwork(trained, tmp_path, width, depth):
    model, tokenizer = trained
    path = export_onnx(model, tmp_path / "model.onnx", width=width, depth=depth)
    metadata = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert (metadata["flexbert_width"], metadata["flexbert_depth"]) == (str(width), str(depth))
    for batch in batches(tokenizer):
        with torch.no_grad():
            expected = model(**as_torch(batch), width=width, depth=depth, dynamic=False).logits
        (logits,) = run_onnx(path, batch)
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)


def test_plain_bert_export_and_question_answering_heads(trained, backbone_path, tmp_path):
    model, tokenizer = trained
    bert = to_bert(model, width=1.0, depth=0.5)
    path = export_onnx(bert, tmp_path / "bert.onnx")
    batch = batches(tokenizer)[0]
    with torch.no_grad():
        expected = model(**as_torch(batch), depth=0.5, dynamic=False).logits
    np.testing.assert_allclose(run_onnx(path, batch)[0], expected.numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="no sub-networks"):
        export_onnx(bert, tmp_path / "narrow.onnx", width=0.5)
    torch.manual_seed(0)
    qa = FlexBertForQuestionAnswering.from_pretrained(backbone_path, exit_layers=[2, 4]).eval()
    path = export_onnx(qa, tmp_path / "qa.onnx", width=0.5)
    with torch.no_grad():
        output = qa(**as_torch(batch), width=0.5, dynamic=False)
    start, end = run_onnx(path, batch)
    np.testing.assert_allclose(start, output.start_logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(end, output.end_logits.numpy(), atol=1e-4, rtol=0)


def test_export_command_writes_the_graph_with_config_and_tokenizer(trained, classification_run, tmp_path, capsys):
    model, tokenizer = trained
    checkpoint = str(classification_run[0] / "gates")
    cli_main(["export", checkpoint, str(tmp_path / "out"), "--width", "0.5", "--onnx", "--int8"])
    assert "model.onnx" in capsys.readouterr().out and (tmp_path / "out" / "model_int8.onnx").is_file()
    with pytest.raises(SystemExit, match="add --onnx"):
        cli_main(["export", checkpoint, str(tmp_path / "other"), "--int8"])
    config = FlexBertConfig.from_pretrained(tmp_path / "out")
    assert config.layer_num_heads == [model.config.num_attention_heads // 2] * model.config.num_hidden_layers
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["model_input_names"]
    batch = batches(AutoTokenizer.from_pretrained(tmp_path / "out"))[0]
    with torch.no_grad():
        expected = model(**as_torch(batch), width=0.5, dynamic=False).logits
    np.testing.assert_allclose(run_onnx(tmp_path / "out" / "model.onnx", batch)[0], expected.numpy(), atol=1e-4)


def test_int8_graph_is_smaller_and_keeps_the_representations(backbone_path, tmp_path):
    """Dynamic INT8 of the real backbone at width 0.5: a quarter of the size (weights in 8 bits), and every real
    token's hidden state points where the fp32 graph's does (cosine similarity)."""
    model = FlexBertModel.from_pretrained(backbone_path).eval()
    fp32 = export_onnx(model, tmp_path / "model.onnx", width=0.5)
    int8 = quantize_onnx(fp32, tmp_path / "model_int8.onnx")
    assert int8.stat().st_size < 0.3 * fp32.stat().st_size
    metadata = ort.InferenceSession(str(int8)).get_modelmeta().custom_metadata_map
    assert (metadata["flexbert_width"], metadata["flexbert_precision"]) == ("0.5", "int8")
    batch = batches(AutoTokenizer.from_pretrained(backbone_path))[0]
    (reference,), (quantized,) = run_onnx(fp32, batch), run_onnx(int8, batch)
    real = batch["attention_mask"].astype(bool)
    cosine = (reference * quantized).sum(-1) / np.linalg.norm(reference, axis=-1) / np.linalg.norm(quantized, axis=-1)
    assert cosine[real].min() > 0.9 and cosine[real].mean() > 0.97
    assert not np.allclose(reference, quantized, atol=1e-3)  # it is quantized, not a copy


def test_a_depth_answered_by_its_attention_ramp_exports_with_that_ramp(classification_run, tmp_path):
    """Flexible BERT's depth sub-networks with FastBERT-style ramps (`depth_heads="ramps"`): the 3-layer graph ends
    in the attention ramp after layer 3 and gives what the sliced supernet's depth 0.5 gives, not its final head."""
    checkpoint = classification_run[0] / "gates"
    torch.manual_seed(0)  # the new attention ramps' initialisation
    model = FlexBertForSequenceClassification.from_pretrained(
        checkpoint, depth_rule="prefix", exit_layers=[3, 5], ramp_type="attention", depth_heads="ramps"
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    path = export_onnx(model, tmp_path / "model.onnx", width=0.5, depth=0.5)
    for batch in batches(tokenizer):
        with torch.no_grad():
            expected = model(**as_torch(batch), width=0.5, depth=0.5, dynamic=False).logits
            model.config.depth_heads = "final"
            final_head = model(**as_torch(batch), width=0.5, depth=0.5, dynamic=False).logits
            model.config.depth_heads = "ramps"
        (logits,) = run_onnx(path, batch)
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=0)
        assert not np.allclose(logits, final_head.numpy(), atol=1e-3)  # the ramp answers, not the final head
