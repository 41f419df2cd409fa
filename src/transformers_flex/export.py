"""Static export: a FlexBert sub-network as a plain `BertFor*` model that loads without this package."""

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
    Off-ramps are left out: the BERT model always answers with its final classifier.
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


__all__ = ["to_bert"]
