"""Analytic cost model of FlexBert sub-networks (docs/algorithms.md §10).

FLOPs = 2 x multiply-accumulates (MACs). Per layer with `a` heads of size `d_h`, `f` FFN neurons and `n` tokens:
`n * (3*H*a*d_h + a*d_h*H + 2*H*f)` MACs in the linear layers plus `2 * n^2 * a*d_h` in the two attention
matmuls (QK^T and attention x V); then the head that answers: the pooler and classifier (or the QA head), or, for a
model whose shallower sub-networks are answered by their own attention off-ramps (`depth_heads="ramps"`), that
ramp. Embedding lookups, LayerNorm, softmax and activations are not counted (as in the papers and in
`torch.utils.flop_counter`).
"""

from typing import Literal

from .configuration_flexbert import FlexBertConfig
from .flexbert_layers import Width, attention_ramp_macs, cls_head_macs, layer_macs, subnet_layer_shapes

Head = Literal["sequence_classification", "question_answering", "none"]
PAPER_SEQ_LENGTH = 128  # the papers count linear layers only, at padded length 128 (thop style)


def head_macs(config: FlexBertConfig, head: Head, seq_length: int) -> int:
    """Multiply-accumulates of the task head: pooler + classifier, or the per-token QA projection."""
    if head == "sequence_classification":
        return cls_head_macs(config.hidden_size, config.num_labels)
    if head == "question_answering":
        return seq_length * config.hidden_size * config.num_labels
    return 0


def answering_head_macs(
    config: FlexBertConfig, head: Head, seq_length: int, layers_run: int, linear_only: bool = False
) -> int:
    """Multiply-accumulates of the head that answers a sub-network of `layers_run` layers: the task head, except
    under `depth_heads="ramps"` with attention ramps, where the attention ramp after its last layer answers (a
    pooler ramp costs what the final head does)."""
    ramp_answers = config.depth_heads == "ramps" and layers_run in config.off_ramp_layers
    if head == "sequence_classification" and ramp_answers and config.ramp_type == "attention":
        size, num_labels = config.ramp_attention_size, config.num_labels
        return attention_ramp_macs(config.hidden_size, size, num_labels, seq_length, linear_only)
    return head_macs(config, head, seq_length)


def subnet_flops(
    config: FlexBertConfig,
    width: Width = 1.0,
    depth: float = 1.0,
    seq_length: int = PAPER_SEQ_LENGTH,
    head: Head = "sequence_classification",
    linear_only: bool = False,
) -> int:
    """FLOPs of one example of `seq_length` real tokens through the given sub-network and the head that answers it
    (`answering_head_macs`)."""
    shapes = subnet_layer_shapes(config, width, depth)
    macs = sum(
        layer_macs(config.hidden_size, config.head_size, heads, neurons, seq_length, linear_only)
        for _, heads, neurons in shapes
    )
    return 2 * (macs + answering_head_macs(config, head, seq_length, len(shapes), linear_only))


def paper_flops(
    config: FlexBertConfig, width: Width = 1.0, depth: float = 1.0, head: Head = "sequence_classification"
) -> int:
    """The papers' figure: linear layers only, padded length 128 (BERT-base: 21.7 GFLOPs)."""
    return subnet_flops(config, width, depth, PAPER_SEQ_LENGTH, head, linear_only=True)


def subnet_num_parameters(
    config: FlexBertConfig, width: Width = 1.0, depth: float = 1.0, head: Head = "sequence_classification"
) -> int:
    """Parameters of the compact model `export_subnet(width, depth)` builds (embeddings and final head included,
    its off-ramps not)."""
    hidden_size = config.hidden_size
    layer_norm = 2 * hidden_size
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * hidden_size
    total = embeddings + layer_norm
    for _, heads, neurons in subnet_layer_shapes(config, width, depth):
        attention_width = heads * config.head_size
        total += 3 * (hidden_size * attention_width + attention_width)  # query, key, value
        total += attention_width * hidden_size + hidden_size + layer_norm  # attention output + LayerNorm
        total += hidden_size * neurons + neurons  # FFN in
        total += neurons * hidden_size + hidden_size + layer_norm  # FFN out + LayerNorm
    if head == "sequence_classification":
        total += hidden_size * hidden_size + hidden_size  # pooler
        total += hidden_size * config.num_labels + config.num_labels
    elif head == "question_answering":
        total += hidden_size * config.num_labels + config.num_labels
    else:
        total += hidden_size * hidden_size + hidden_size  # the bare model keeps its pooler
    return total


__all__ = ["answering_head_macs", "head_macs", "layer_macs", "paper_flops", "subnet_flops", "subnet_num_parameters"]
