"""Static export: a FlexBert sub-network as a plain `BertFor*` model that loads without this package, or as an ONNX
graph that runs without PyTorch (ONNX Runtime)."""

import inspect
from pathlib import Path

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    PreTrainedModel,
)

from .configuration_flexbert import FLEX_FIELDS
from .modeling_flexbert import FlexBertPreTrainedModel, Width

# FlexBert class name -> the transformers class with the same parameter names. Branch on names, not isinstance:
# remote-code classes are not the package's classes (docs/architecture.md#branch-on-model-type).
BERT_CLASSES = {
    "FlexBertModel": BertModel,
    "FlexBertForSequenceClassification": BertForSequenceClassification,
    "FlexBertForQuestionAnswering": BertForQuestionAnswering,
}
# What a plain BertConfig must not receive: FlexBert's own fields and the remote-code bookkeeping.
FLEX_ONLY_FIELDS = (*FLEX_FIELDS, "auto_map", "architectures", "model_type")


def to_bert(model: FlexBertPreTrainedModel, width: Width = 1.0, depth: float = 1.0) -> PreTrainedModel:
    """The (width, depth) sub-network as a vanilla `BertModel` / `BertFor*` with identical outputs.

    BERT gives every layer the same number of heads and FFN neurons, so only sub-networks of full width can be
    written this way; narrower ones are exported with `model.export_subnet` (a compact FlexBert checkpoint).
    Off-ramps are left out: the BERT model always answers with its final classifier (a shallower sub-network
    answered by a pooler off-ramp under `depth_heads="ramps"` becomes that classifier; an attention ramp cannot).
    """
    class_name = type(model).__name__
    if class_name not in BERT_CLASSES:
        raise ValueError(f"No BERT equivalent of {class_name}; expected one of {sorted(BERT_CLASSES)}.")
    if getattr(model.config, "knowledgeable_layers", None):
        raise ValueError(
            "A knowledgeable classifier (`knowledgeable_layers`) mixes several layers' states, which BERT cannot "
            "express: save `model.export_subnet(...)` as a FlexBert checkpoint instead."
        )
    compact = model.export_subnet(width=width, depth=depth)
    if compact.depth_head(compact.config.num_hidden_layers) is not None:
        raise ValueError(
            f"This sub-network is answered by its {model.config.ramp_type} off-ramp (`depth_heads='ramps'`), which "
            "BERT's heads cannot express: save `model.export_subnet(...)` as a FlexBert checkpoint or use "
            "`export_onnx` instead."
        )
    config = compact.config
    if set(config.layer_num_heads) != {config.num_attention_heads} or set(config.layer_intermediate_sizes) != {
        config.intermediate_size
    }:
        raise ValueError(
            "A plain BERT checkpoint needs every layer at full width (all heads and FFN neurons); got heads "
            f"{config.layer_num_heads} and FFN sizes {config.layer_intermediate_sizes}. Use width=1.0, or save "
            "`model.export_subnet(...)` as a FlexBert checkpoint instead."
        )
    fields = {key: value for key, value in config.to_dict().items() if key not in FLEX_ONLY_FIELDS}
    bert = BERT_CLASSES[class_name](BertConfig(**fields))
    # BERT has no off-ramps: the exported model answers with its final classifier only.
    state = {name: tensor for name, tensor in compact.state_dict().items() if not name.startswith("off_ramps.")}
    bert.load_state_dict(state, strict=True)
    return bert.to(device=model.device, dtype=model.dtype).train(model.training)


ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# What each head's graph returns, by the class name's ending (FlexBert and plain BERT classes alike).
ONNX_OUTPUTS = {
    "ForSequenceClassification": ("logits",),
    "ForQuestionAnswering": ("start_logits", "end_logits"),
    "Model": ("last_hidden_state",),
}


class OnnxGraph(nn.Module):
    """The computation an ONNX export records: BERT's three inputs in, the head's output tensors out."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model
        self.outputs = next(names for suffix, names in ONNX_OUTPUTS.items() if type(model).__name__.endswith(suffix))
        # FlexBert heads run the static model for this call whatever `config.dynamic_inference` says.
        self.static = {"dynamic": False} if "dynamic" in inspect.signature(model.forward).parameters else {}

    def forward(self, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, ...]:
        output = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **self.static
        )
        return tuple(output[name] for name in self.outputs)


def export_onnx(model: PreTrainedModel, path: str | Path, width: Width = 1.0, depth: float = 1.0) -> Path:
    """Write the static (width, depth) sub-network of a FlexBert (or a plain BERT model, e.g. from `to_bert`, at
    width = depth = 1) as an ONNX graph with dynamic batch and sequence axes; returns its path.

    The graph takes `input_ids`, `attention_mask` and `token_type_ids` (int64, `(batch, sequence)`) and returns the
    head's outputs (`logits`; `start_logits`, `end_logits`; or `last_hidden_state`). The attention mask is always
    applied (no "nothing padded" shortcut), so padded batches give what PyTorch gives. The sub-network is recorded
    in the graph's metadata (`flexbert_width`, `flexbert_depth`). Needs the `[onnx]` extra (onnx, onnxscript;
    onnxruntime to run it): torch's dynamo exporter, as optimum's ONNX export does not support transformers 5.
    """
    try:
        import onnx
    except ImportError as error:
        raise ImportError("ONNX export needs the onnx extra: pip install 'transformers-flex[onnx]'.") from error
    if hasattr(model, "export_subnet"):  # a FlexBert (the package's class or a remote-code one)
        model = model.export_subnet(width=width, depth=depth)  # compact: the graph holds only what runs
    elif width != 1.0 or depth != 1.0:
        raise ValueError(f"A {type(model).__name__} has no sub-networks: export it at width = depth = 1.0.")
    graph = OnnxGraph(model.eval())
    example = {  # two rows, the second padded: the traced graph must hold the masking
        "input_ids": torch.full((2, 8), 101, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3]),
        "token_type_ids": torch.zeros((2, 8), dtype=torch.long),
    }
    axes = {name: {0: "batch", 1: "sequence"} for name in ONNX_INPUTS}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (),
            kwargs=example,
            f=str(path),
            dynamo=True,
            input_names=list(ONNX_INPUTS),
            output_names=list(graph.outputs),
            dynamic_shapes=axes,
            external_data=False,
        )
    exported = onnx.load(str(path))
    for key, value in (("flexbert_width", width), ("flexbert_depth", depth)):
        exported.metadata_props.add(key=key, value=str(value))
    onnx.save(exported, str(path))
    return path


def quantize_onnx(path: str | Path, output: str | Path) -> Path:
    """INT8 dynamic quantization of an exported graph (ONNX Runtime's `quantize_dynamic`): the weights of its matrix
    multiplications stored as signed 8-bit integers, activations quantized per batch at run time; returns `output`.
    The sub-network metadata of `export_onnx` is kept, with `flexbert_precision` = `int8`."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:
        raise ImportError("INT8 quantization needs the onnx extra: pip install 'transformers-flex[onnx]'.") from error
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(path), str(output), weight_type=QuantType.QInt8)
    quantized = onnx.load(str(output))
    kept = {entry.key for entry in quantized.metadata_props}
    for entry in onnx.load(str(path)).metadata_props:  # quantize_dynamic does not copy them everywhere
        if entry.key not in kept:
            quantized.metadata_props.add(key=entry.key, value=entry.value)
    quantized.metadata_props.add(key="flexbert_precision", value="int8")
    onnx.save(quantized, str(output))
    return output


__all__ = ["ONNX_INPUTS", "OnnxGraph", "export_onnx", "quantize_onnx", "to_bert"]
