"""FlexBert: a BERT encoder whose width (heads + FFN neurons) and depth change at run time, from one weight set.

Parameter names are BERT's, so every BERT checkpoint loads unchanged. A sub-network keeps a *prefix* of each
layer's heads and FFN neurons (DynaBERT) and a subset of the layers (`every_other` or `prefix`). Every hidden
state stays `hidden_size` wide.

Part of the portable unit copied into every checkpoint: imports only torch/transformers and flat siblings.
"""

import copy
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
)

from .configuration_flexbert import DEPTH_RULES, EXIT_CRITERIA, FlexBertConfig

Width = float | Sequence[float]


@dataclass
class FlexBertDynamicOutput(SequenceClassifierOutput):
    """Sequence classification output of dynamic (per-example) inference.

    Args:
        exit_layers (`torch.LongTensor` of shape `(batch_size,)`):
            1-based layer after which each example answered (its off-ramp's, or the last layer's classifier).
        layer_widths (`torch.FloatTensor` of shape `(batch_size, num_hidden_layers)`):
            Width multiplier every layer ran at for each example; 0 for the layers it did not run.
        flops (`torch.DoubleTensor` of shape `(batch_size,)`):
            FLOPs each example spent at its real (unpadded) length: layers, gates, off-ramps and head that ran.
    """

    exit_layers: torch.LongTensor | None = None
    layer_widths: torch.FloatTensor | None = None
    flops: torch.DoubleTensor | None = None


def _round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's `round` sends 2.5 to 2)."""
    return int(math.floor(value + 0.5))


def heads_for_width(num_heads: int, width: float) -> int:
    """Heads kept at width multiplier `width`: `round(num_heads * width)`, at least one."""
    return max(1, _round_half_up(num_heads * width))


def neurons_for_heads(intermediate_size: int, kept_heads: int, num_heads: int) -> int:
    """FFN neurons kept alongside `kept_heads` heads: the FFN follows the head ratio (DynaBERT)."""
    return max(1, kept_heads * intermediate_size // num_heads)


def width_shape(num_heads: int, intermediate_size: int, width: float) -> tuple[int, int]:
    """(heads, FFN neurons) a layer of this size keeps at `width`."""
    heads = heads_for_width(num_heads, width)
    return heads, neurons_for_heads(intermediate_size, heads, num_heads)


def kept_layer_indices(num_layers: int, depth: float, depth_rule: str) -> list[int]:
    """0-based indices of the layers a depth multiplier keeps, under `every_other` or `prefix`."""
    if depth_rule not in DEPTH_RULES:
        raise ValueError(f"`depth_rule` must be one of {DEPTH_RULES}, got {depth_rule!r}.")
    kept = max(1, _round_half_up(num_layers * depth))
    if depth_rule == "prefix":
        return list(range(kept))
    # every_other: layer floor(i / d) for i < n; the epsilon keeps exact quotients such as 3 / 0.75 at 4.
    return [min(num_layers - 1, int(math.floor(i / depth + 1e-6))) for i in range(kept)]


def subnet_layer_shapes(config: FlexBertConfig, width: Width, depth: float) -> list[tuple[int, int, int]]:
    """`(layer index, heads, FFN neurons)` of every layer a sub-network runs; validates width and depth."""
    widths = _per_layer_widths(width, config.num_hidden_layers)
    _check_multiplier("depth", depth)
    shapes = []
    for index in kept_layer_indices(config.num_hidden_layers, depth, config.depth_rule):
        heads, neurons = width_shape(
            config.num_heads_of_layer(index), config.intermediate_size_of_layer(index), widths[index]
        )
        shapes.append((index, heads, neurons))
    return shapes


def _check_multiplier(name: str, value) -> None:
    """Raise a clear error unless `value` is a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"`{name}` must be a number in (0, 1], got {value!r}.")


def _per_layer_widths(width: Width, num_layers: int) -> list[float]:
    """Expand a width (one number, or one per layer) to a validated per-layer list."""
    if isinstance(width, (list, tuple)):
        if len(width) != num_layers:
            raise ValueError(
                f"A per-layer `width` needs one entry per layer ({num_layers}), got {len(width)}: {list(width)}."
            )
        for layer_width in width:
            _check_multiplier("width", layer_width)
        return [float(layer_width) for layer_width in width]
    _check_multiplier("width", width)
    return [float(width)] * num_layers


def layer_macs(hidden_size: int, head_size: int, heads: int, neurons: int, seq_length, linear_only: bool = False):
    """Multiply-accumulates of one layer for one example of `seq_length` tokens (an int, or a tensor of lengths):
    the linear layers plus, unless `linear_only`, the two attention matmuls (ALGORITHMS.md §10)."""
    attention_width = heads * head_size
    linear = seq_length * (
        3 * hidden_size * attention_width + attention_width * hidden_size + 2 * hidden_size * neurons
    )
    attention = 0 if linear_only else 2 * seq_length * seq_length * attention_width
    return linear + attention


def cls_head_macs(hidden_size: int, num_outputs: int) -> int:
    """Multiply-accumulates of a head on the [CLS] vector, dense H->H then H->outputs: the pooler + classifier, an
    off-ramp, or a width gate."""
    return hidden_size * hidden_size + hidden_size * num_outputs


def prediction_entropy(logits: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """Entropy (natural log) of each row's softmax; divided by ln(classes) when `normalized` (FastBERT)."""
    log_probs = logits.float().log_softmax(dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return entropy / math.log(logits.shape[-1]) if normalized else entropy


def patience_update(
    logits: torch.Tensor, previous: torch.Tensor | None, streak: torch.Tensor, regression_tolerance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PABEE's counter: (prediction, consecutive agreements) after one more ramp.

    Classification: a ramp agrees when its argmax equals the previous ramp's. Regression: when its output differs
    from the previous one by less than `regression_tolerance`.
    """
    prediction = logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(dim=-1).to(logits.dtype)
    if previous is None:
        return prediction, torch.zeros_like(streak)
    if logits.shape[-1] == 1:
        agrees = (prediction - previous).abs() < regression_tolerance
    else:
        agrees = prediction == previous
    return prediction, torch.where(agrees, streak + 1, torch.zeros_like(streak))


def last_real_column(attention_mask: torch.Tensor) -> int:
    """One past the last column holding a real token in any row: what can be cut off (right padding only). A batch
    with no real token at all is kept whole."""
    real_columns = attention_mask.any(dim=0).nonzero()
    return int(real_columns.max()) + 1 if len(real_columns) else attention_mask.shape[1]


class FlexBertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout (as BERT's)."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        seq_length = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(seq_length, device=inputs_embeds.device).unsqueeze(0)
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        embeddings = (
            inputs_embeds + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        )
        return self.dropout(self.LayerNorm(embeddings))


class FlexBertSelfAttention(nn.Module):
    """Multi-head self-attention that runs its first `active_heads` heads."""

    def __init__(self, config: FlexBertConfig, num_heads: int):
        super().__init__()
        self.head_size = config.head_size
        self.num_heads = num_heads
        self.active_heads = num_heads
        self.query = nn.Linear(config.hidden_size, num_heads * self.head_size)
        self.key = nn.Linear(config.hidden_size, num_heads * self.head_size)
        self.value = nn.Linear(config.hidden_size, num_heads * self.head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.config = config  # read at run time: `set_attn_implementation` may switch to eager later

    def _project(self, linear: nn.Linear, hidden_states: torch.Tensor) -> torch.Tensor:
        """Apply `linear` for the active heads only, as (batch, heads, length, head_size)."""
        if self.active_heads == self.num_heads:
            projected = linear(hidden_states)  # the module itself, so adapters wrapping it (LoRA) take part
        else:
            rows = self.active_heads * self.head_size  # a row prefix of the weight is a contiguous view
            projected = F.linear(hidden_states, linear.weight[:rows], linear.bias[:rows])
        batch_size, seq_length, _ = hidden_states.shape
        return projected.view(batch_size, seq_length, self.active_heads, self.head_size).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        query = self._project(self.query, hidden_states)
        key = self._project(self.key, hidden_states)
        value = self._project(self.value, hidden_states)
        dropout = self.dropout.p if self.training else 0.0
        if output_attentions or self.config._attn_implementation == "eager":
            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_size)
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = F.dropout(scores.softmax(dim=-1), p=dropout, training=self.training)
            context = torch.matmul(probs, value)
        else:
            probs = None
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout)
        # (batch, heads, length, head_size) -> (batch, length, heads * head_size)
        context = context.transpose(1, 2).flatten(2)
        return context, (probs if output_attentions else None)


def _input_prefix_linear(linear: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    """Apply `linear` to inputs that may be narrower than its input size, using the first columns of its weight."""
    if inputs.shape[-1] == linear.in_features:
        return linear(inputs)  # the module itself, so adapters wrapping it (LoRA) take part
    return F.linear(inputs, linear.weight[:, : inputs.shape[-1]], linear.bias)


class FlexBertSelfOutput(nn.Module):
    """Attention output projection (its input width follows the active heads), residual, LayerNorm."""

    def __init__(self, config: FlexBertConfig, num_heads: int):
        super().__init__()
        self.dense = nn.Linear(num_heads * config.head_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(_input_prefix_linear(self.dense, context)) + residual)


class FlexBertAttention(nn.Module):
    def __init__(self, config: FlexBertConfig, num_heads: int):
        super().__init__()
        self.self = FlexBertSelfAttention(config, num_heads)
        self.output = FlexBertSelfOutput(config, num_heads)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, probs = self.self(hidden_states, attention_mask, output_attentions)
        return self.output(context, hidden_states), probs


class FlexBertIntermediate(nn.Module):
    """First FFN projection, running its first `active_size` neurons."""

    def __init__(self, config: FlexBertConfig, intermediate_size: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, intermediate_size)
        self.active_size = intermediate_size
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.active_size == self.dense.out_features:
            projected = self.dense(hidden_states)
        else:
            projected = F.linear(
                hidden_states, self.dense.weight[: self.active_size], self.dense.bias[: self.active_size]
            )
        return self.intermediate_act_fn(projected)


class FlexBertOutput(nn.Module):
    """Second FFN projection (its input width follows the active neurons), residual, LayerNorm."""

    def __init__(self, config: FlexBertConfig, intermediate_size: int):
        super().__init__()
        self.dense = nn.Linear(intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, intermediate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(_input_prefix_linear(self.dense, intermediate)) + residual)


class FlexBertLayer(nn.Module):
    """One Transformer layer whose width (heads, and FFN neurons in the same ratio) can be narrowed."""

    def __init__(self, config: FlexBertConfig, layer_index: int):
        super().__init__()
        self.num_heads = config.num_heads_of_layer(layer_index)
        self.intermediate_size = config.intermediate_size_of_layer(layer_index)
        self.attention = FlexBertAttention(config, self.num_heads)
        self.intermediate = FlexBertIntermediate(config, self.intermediate_size)
        self.output = FlexBertOutput(config, self.intermediate_size)

    def set_width(self, width: float) -> None:
        """Run the first `round(heads * width)` heads and the same share of FFN neurons."""
        heads, neurons = width_shape(self.num_heads, self.intermediate_size, width)
        self.attention.self.active_heads, self.intermediate.active_size = heads, neurons

    @contextmanager
    def at_width(self, width: float) -> Iterator["FlexBertLayer"]:
        """Run at `width` inside the block, then return to the previous width."""
        previous = (self.attention.self.active_heads, self.intermediate.active_size)
        self.set_width(width)
        try:
            yield self
        finally:
            self.attention.self.active_heads, self.intermediate.active_size = previous

    @property
    def active_heads(self) -> int:
        return self.attention.self.active_heads

    @property
    def active_intermediate_size(self) -> int:
        return self.intermediate.active_size

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_output, probs = self.attention(hidden_states, attention_mask, output_attentions)
        intermediate = self.intermediate(attention_output)
        return self.output(intermediate, attention_output), probs


class FlexBertEncoder(nn.Module):
    """The stack of layers; runs the layers the active depth keeps, each at its active width."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([FlexBertLayer(config, index) for index in range(config.num_hidden_layers)])
        self.width: Width = 1.0
        self.depth: float = 1.0
        self.active_layers: list[int] = list(range(config.num_hidden_layers))

    def set_subnet(self, width: Width = 1.0, depth: float = 1.0) -> None:
        """Validate and apply a width (one number or one per layer) and a depth multiplier."""
        widths = _per_layer_widths(width, len(self.layer))
        _check_multiplier("depth", depth)
        for layer, layer_width in zip(self.layer, widths):
            layer.set_width(layer_width)
        self.active_layers = kept_layer_indices(len(self.layer), depth, self.config.depth_rule)
        self.width = list(width) if isinstance(width, (list, tuple)) else width
        self.depth = depth

    @property
    def layer_widths(self) -> list[float]:
        """The active width multiplier of every layer."""
        return _per_layer_widths(self.width, len(self.layer))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for index in self.active_layers:
            hidden_states, probs = self.layer[index](hidden_states, attention_mask, output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (probs,)
        return hidden_states, all_hidden_states, all_attentions


class FlexBertPooler(nn.Module):
    """Dense + tanh on the first ([CLS]) token (as BERT's)."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class FlexBertOffRamp(nn.Module):
    """An early-exit classifier after one layer: pooler (dense + tanh on [CLS]) -> dropout -> linear."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.pooler = FlexBertPooler(config)
        classifier_dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(self.pooler(hidden_states)))

    def macs(self, lengths: torch.Tensor) -> torch.Tensor:
        """Multiply-accumulates per example (independent of its length)."""
        return torch.full_like(lengths, cls_head_macs(self.classifier.in_features, self.classifier.out_features))


class FlexBertAttentionRamp(nn.Module):
    """A FastBERT-style off-ramp: project every token to a small width, one self-attention layer, then dense + tanh
    and a linear classifier on [CLS]. Only the [CLS] output is read, so only its query is computed — the answer is
    the full self-attention layer's at [CLS]."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        size, self.num_heads = config.ramp_attention_size, config.ramp_attention_heads
        self.down = nn.Linear(config.hidden_size, size)
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size)
        self.value = nn.Linear(size, size)
        self.output = nn.Linear(size, size)
        self.pooler = nn.Linear(size, size)
        classifier_dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(size, config.num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.down(hidden_states)
        batch_size, seq_length, size = tokens.shape
        head_size = size // self.num_heads
        # (batch, heads, 1, head_size) query of [CLS]; (batch, heads, length, head_size) keys and values.
        query = self.query(tokens[:, :1]).view(batch_size, 1, self.num_heads, head_size).transpose(1, 2)
        key = self.key(tokens).view(batch_size, seq_length, self.num_heads, head_size).transpose(1, 2)
        value = self.value(tokens).view(batch_size, seq_length, self.num_heads, head_size).transpose(1, 2)
        mask = additive_attention_mask(attention_mask, tokens.dtype)
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        cls = self.output(context.transpose(1, 2).reshape(batch_size, size)) + tokens[:, 0]  # residual
        return self.classifier(self.dropout(torch.tanh(self.pooler(cls))))

    def macs(self, lengths: torch.Tensor) -> torch.Tensor:
        """Multiply-accumulates per example of the given real lengths."""
        hidden_size, size = self.down.in_features, self.down.out_features
        per_token = hidden_size * size + 2 * size * size + 2 * size  # down, key, value, score and weighted sum
        return lengths * per_token + 3 * size * size + size * self.classifier.out_features  # query, output, pooler


class FlexBertLayerMix(nn.Module):
    """GEEP's knowledgeable classifier input: a learned softmax-weighted mix of several layers' [CLS] states."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.layers = list(config.knowledgeable_layers)
        self.weights = nn.Parameter(torch.zeros(len(self.layers)))  # zeros: a uniform mix to start

    def forward(self, cls_states: dict[int, torch.Tensor]) -> torch.Tensor:
        """Mix `{1-based layer: (batch, hidden)}`; layers that did not run (a shallower sub-network) drop out."""
        present = [position for position, layer in enumerate(self.layers) if layer in cls_states]
        if not present:
            raise ValueError(
                f"None of the knowledgeable layers {self.layers} ran in this sub-network; pick a deeper one."
            )
        weights = self.weights[present].softmax(dim=0)
        return sum(weight * cls_states[self.layers[position]] for weight, position in zip(weights, present))


class FlexBertWidthGate(nn.Module):
    """A width gate (Flexible BERT): dense H->H, ReLU, dense H->K; class k means width `config.gate_widths[k]` for
    the next block of layers.

    The paper's gates read the [CLS] state. The in-gate reads the embeddings' mean over real tokens instead: the
    [CLS] embedding is the same for every input. Gates after a layer read that mean too by default
    (`config.gate_pooling`): in all-MiniLM-L6-v2 the [CLS] state of layers 1-3 barely varies between inputs.
    """

    def __init__(self, config: FlexBertConfig, mean_pool: bool):
        super().__init__()
        self.mean_pool = mean_pool
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.ReLU()
        self.classifier = nn.Linear(config.hidden_size, len(config.gate_widths))

    def pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(batch, hidden) input of the gate: the mean over real tokens, or the [CLS] state (`mean_pool=False`)."""
        if not self.mean_pool:
            return hidden_states[:, 0]
        if attention_mask is None:
            return hidden_states.mean(dim=1)
        weights = attention_mask[:, :, None].to(hidden_states.dtype)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.activation(self.dense(pooled)))


class FlexBertPreTrainedModel(PreTrainedModel):
    config_class = FlexBertConfig
    config: FlexBertConfig
    base_model_prefix = "bert"
    _supports_sdpa = True
    _no_split_modules = ["FlexBertEmbeddings", "FlexBertLayer"]
    # BERT checkpoints may carry these buffers (and pre-training heads); they are not part of FlexBert.
    _keys_to_ignore_on_load_unexpected = [r"position_ids", r"token_type_ids", r"^cls\."]
    # forward has no **kwargs, so the Trainer must not hand it loss kwargs (DESIGN.md rule 5).
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, FlexBertLayerMix):
            init.zeros_(module.weights)  # built on the meta device: initialise here, not in __init__ (rule 3)

    # --- sub-network selection -------------------------------------------------------------------------------

    @property
    def _encoder(self) -> FlexBertEncoder:
        return self.base_model.encoder

    def set_subnet(self, width: Width = 1.0, depth: float = 1.0) -> None:
        """Make the sub-network of width `width` (a multiplier, or one per layer) and depth `depth` active.

        Raises `ValueError` for a width outside (0, 1], a per-layer list of the wrong length, or a depth outside
        (0, 1].
        """
        self._encoder.set_subnet(width=width, depth=depth)

    @contextmanager
    def subnet(self, width: Width = 1.0, depth: float = 1.0) -> Iterator["FlexBertPreTrainedModel"]:
        """Context manager form of `set_subnet`: the previous sub-network is restored on exit."""
        previous = self.active_subnet
        self.set_subnet(width=width, depth=depth)
        try:
            yield self
        finally:
            self.set_subnet(**previous)

    @property
    def active_subnet(self) -> dict:
        """The active sub-network as `{"width": ..., "depth": ...}`."""
        return {"width": self._encoder.width, "depth": self._encoder.depth}

    def subnet_shape(self, width: Width = 1.0, depth: float = 1.0) -> list[tuple[int, int, int]]:
        """`(layer index, heads, FFN neurons)` of every layer the given sub-network runs."""
        return subnet_layer_shapes(self.config, width, depth)

    def export_subnet(self, width: Width = 1.0, depth: float = 1.0) -> "FlexBertPreTrainedModel":
        """A physically smaller copy that computes exactly what the given sub-network computes.

        Its config lists each layer's head count and FFN size (`layer_num_heads`, `layer_intermediate_sizes`);
        it saves and loads like any FlexBert checkpoint.
        """
        shape = self.subnet_shape(width=width, depth=depth)
        kept = [index for index, _, _ in shape]
        config = copy.deepcopy(self.config)
        config.num_hidden_layers = len(shape)
        config.layer_num_heads = [heads for _, heads, _ in shape]
        config.layer_intermediate_sizes = [neurons for _, _, neurons in shape]
        # Widths and depths of the export are relative to its own (smaller) layers.
        config.width_mults, config.depth_mults = [1.0], [1.0]
        config.gate_widths, config.gate_block_size = [1.0], 0  # gates pick supernet widths: not exported
        config.exit_layers = [kept.index(layer - 1) + 1 for layer in config.exit_layers if layer - 1 in kept]
        mixed = [layer for layer in config.knowledgeable_layers or [] if layer - 1 in kept]
        if config.knowledgeable_layers is not None:
            if not mixed:
                raise ValueError(
                    f"This sub-network keeps none of the knowledgeable layers {config.knowledgeable_layers}; "
                    "export a deeper one."
                )
            config.knowledgeable_layers = [kept.index(layer - 1) + 1 for layer in mixed]
        compact = type(self)(config).to(device=self.device, dtype=self.dtype)
        source = self.state_dict()
        compact_state = {}
        for name, tensor in compact.state_dict().items():
            # Layers and off-ramps are renumbered: compact layer i is supernet layer kept[i].
            source_name = re.sub(r"encoder\.layer\.(\d+)\.", lambda m: f"encoder.layer.{kept[int(m[1])]}.", name)
            source_name = re.sub(
                r"^off_ramps\.(\d+)\.", lambda m: f"off_ramps.{kept[int(m[1]) - 1] + 1}.", source_name
            )
            if name == "layer_mix.weights":  # the mix keeps the weights of the layers the export keeps
                positions = [self.config.knowledgeable_layers.index(layer) for layer in mixed]
                compact_state[name] = source[name][positions].clone()
                continue
            # Every sliced tensor keeps a prefix along each dimension (heads and neurons are prefixes).
            compact_state[name] = source[source_name][tuple(slice(0, size) for size in tensor.shape)].clone()
        compact.load_state_dict(compact_state)
        compact.train(self.training)
        return compact

    # --- shared forward pieces ---------------------------------------------------------------------------------

    @staticmethod
    def _reject_head_mask(head_mask: torch.Tensor | None) -> None:
        if head_mask is not None:
            raise ValueError(
                "FlexBert does not take `head_mask` (transformers 5 removed it); choose heads with "
                "`model.set_subnet(width=...)`, or see `transformers_flex.importance` for head gates."
            )


def additive_attention_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(batch, length) 1/0 mask -> (batch, 1, 1, length) additive mask; None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    blocked = attention_mask[:, None, None, :].eq(0)
    return torch.zeros(blocked.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        blocked, torch.finfo(dtype).min
    )


class FlexBertModel(FlexBertPreTrainedModel):
    """The bare FlexBert encoder (embeddings, flexible layers, optional pooler)."""

    def __init__(self, config: FlexBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = FlexBertEmbeddings(config)
        self.encoder = FlexBertEncoder(config)
        self.pooler = FlexBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        self._reject_head_mask(head_mask)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        output_attentions = bool(output_attentions if output_attentions is not None else self.config.output_attentions)
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        embeddings = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        mask = additive_attention_mask(attention_mask, embeddings.dtype)
        sequence_output, hidden_states, attentions = self.encoder(
            embeddings, mask, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        output = BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output) if self.pooler is not None else None,
            hidden_states=hidden_states,
            attentions=attentions,
        )
        return output if return_dict is not False else output.to_tuple()


class FlexBertForSequenceClassification(FlexBertPreTrainedModel):
    """FlexBert with BERT's classification head (pooler -> dropout -> linear) for GLUE-style tasks."""

    def __init__(self, config: FlexBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = FlexBertModel(config)
        classifier_dropout = (
            config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        )
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        # One off-ramp after each exit layer but the last, whose answer is the final classifier's.
        ramp_layers = [layer for layer in config.exit_layers if layer < config.num_hidden_layers]
        ramp_class = FlexBertAttentionRamp if config.ramp_type == "attention" else FlexBertOffRamp
        self.off_ramps = nn.ModuleDict({str(layer): ramp_class(config) for layer in ramp_layers})
        self.layer_mix = FlexBertLayerMix(config) if config.knowledgeable_layers else None
        # Width gates keyed by the number of layers run before them ("0": the in-gate on the embeddings).
        self.width_gates = nn.ModuleDict(
            {
                str(layer): FlexBertWidthGate(config, mean_pool=layer == 0 or config.gate_pooling == "mean")
                for layer in config.gate_layers
            }
        )
        self.post_init()

    @torch.no_grad()
    def copy_head_to_off_ramps(self, layers: Sequence[int] | None = None) -> None:
        """Initialise off-ramps as copies of the final pooler and classifier (Flexible BERT's `copy` mode): those
        after the given 1-based `layers`, or all of them."""
        if self.config.ramp_type != "pooler":
            raise ValueError(
                f"Only `ramp_type='pooler'` ramps can copy the final head, not {self.config.ramp_type!r}."
            )
        chosen = self.off_ramps.keys() if layers is None else [str(layer) for layer in layers]
        for ramp in [self.off_ramps[name] for name in chosen]:
            ramp.pooler.load_state_dict(self.bert.pooler.state_dict())
            ramp.classifier.load_state_dict(self.classifier.state_dict())

    def final_logits(self, hidden: torch.Tensor, cls_states: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """The final classifier on the last layer's states, or on the mix of `cls_states` (`{1-based layer:
        (batch, hidden)}`) for a knowledgeable classifier."""
        if self.layer_mix is not None:
            hidden = self.layer_mix(cls_states)[:, None]  # the pooler reads position 0
        return self.classifier(self.dropout(self.bert.pooler(hidden)))

    def ramp_logits(
        self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        """Logits of every off-ramp whose layer ran, keyed by its 1-based layer, from a forward's hidden states."""
        ran = self.bert.encoder.active_layers
        return {
            int(layer): ramp(hidden_states[ran.index(int(layer) - 1) + 1], attention_mask)
            for layer, ramp in self.off_ramps.items()
            if int(layer) - 1 in ran
        }

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BERT's loss choice: MSE for regression, cross-entropy for single-label, BCE for multi-label."""
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))

    # --- dynamic (per-example) inference: ALGORITHMS.md §5-7, §9 -------------------------------------------------

    def _check_dynamic_settings(self, criterion: str, use_gates: bool, use_ramps: bool) -> None:
        if criterion not in EXIT_CRITERIA:
            raise ValueError(f"`criterion` must be one of {EXIT_CRITERIA}, got {criterion!r}.")
        if use_ramps and len(self.off_ramps) and self.num_labels == 1 and criterion != "patience":
            raise ValueError("A regression model has no prediction entropy: use `criterion='patience'`.")
        if not use_gates:
            return
        if len(self.width_gates) and self.bert.encoder.depth != 1.0:
            raise ValueError(
                "Width gates are trained at full depth: use them with `depth=1.0`, or pass `use_gates=False`."
            )
        for gate in self.width_gates.values():
            if gate.classifier.out_features != len(self.config.gate_widths):
                raise ValueError(
                    f"The width gates have {gate.classifier.out_features} classes but `config.gate_widths` lists "
                    f"{len(self.config.gate_widths)} widths: remap them with a list of the same length."
                )

    def _run_layer_by_width(
        self, layer: FlexBertLayer, hidden: torch.Tensor, mask: torch.Tensor, widths: torch.Tensor, lengths
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer with every row at its own width. Each run of consecutive rows sharing a width (one run per width
        when `widths` is sorted) runs as one dense batch, trimmed to its longest row. With one width the layer's
        output is a new tensor; with several, each run's output is written back into `hidden` in place (no gather or
        scatter), so callers must not keep views of `hidden`. Returns the new hidden states and each row's FLOPs."""
        config = self.config
        block_widths, block_sizes = torch.unique_consecutive(widths, return_counts=True)
        if len(block_widths) == 1:  # the common case: one width for all rows
            with layer.at_width(float(block_widths[0])):
                output, _ = layer(hidden, additive_attention_mask(mask, hidden.dtype))
                heads, neurons = layer.active_heads, layer.active_intermediate_size
            return output, 2 * layer_macs(config.hidden_size, config.head_size, heads, neurons, lengths.double())
        flops = torch.zeros(len(widths), dtype=torch.float64, device=hidden.device)
        start = 0
        for width, size in zip(block_widths.tolist(), block_sizes.tolist()):
            block = slice(start, start + size)
            longest = last_real_column(mask[block])
            with layer.at_width(width):
                block_mask = additive_attention_mask(mask[block, :longest], hidden.dtype)
                # The block's padding columns past `longest` keep their old (finite, never attended) states.
                hidden[block, :longest], _ = layer(hidden[block, :longest], block_mask)
                heads, neurons = layer.active_heads, layer.active_intermediate_size
            block_lengths = lengths[block].double()
            flops[block] = 2 * layer_macs(config.hidden_size, config.head_size, heads, neurons, block_lengths)
            start += size
        return hidden, flops

    @torch.no_grad()
    def dynamic_forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        criterion: str | None = None,
        threshold: float | None = None,
        use_gates: bool = True,
        use_ramps: bool = True,
    ) -> FlexBertDynamicOutput:
        """Per-example inference on a batch: width gates pick each block's width, off-ramps answer early.

        After every layer with an off-ramp, rows whose ramp satisfies the exit criterion (`criterion`/`threshold`,
        by default the config's) answer and leave; the rest continue as a smaller dense batch with trailing padding
        trimmed. Rows that gates sent to different widths run a layer as one dense group per width; gates override
        the active sub-network's width and need full depth. Without gates (or with `use_gates=False`), every layer
        runs at the active sub-network's width; with `use_ramps=False` no ramp runs and the last active layer
        answers. Every example gets the answer, exit layer and widths it would get alone.
        """
        config, encoder = self.config, self.bert.encoder
        criterion = config.exit_criterion if criterion is None else criterion
        threshold = config.exit_threshold if threshold is None else threshold
        self._check_dynamic_settings(criterion, use_gates, use_ramps)
        hidden = self.bert.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        batch_size, device = hidden.shape[0], hidden.device
        mask = (
            torch.ones(hidden.shape[:2], dtype=torch.long, device=device) if attention_mask is None else attention_mask
        )
        lengths = mask.sum(dim=1)
        gates = self.width_gates if use_gates else {}
        ramps = self.off_ramps if use_ramps else {}
        gate_widths = torch.tensor(config.gate_widths, dtype=torch.float64, device=device)
        static_widths = encoder.layer_widths
        logits = torch.zeros(batch_size, config.num_labels, device=device)
        exit_layers = torch.zeros(batch_size, dtype=torch.long, device=device)
        layer_widths = torch.zeros(batch_size, config.num_hidden_layers, device=device)
        flops = torch.zeros(batch_size, dtype=torch.float64, device=device)
        head_flops = 2 * cls_head_macs(config.hidden_size, config.num_labels)
        gate_flops = 2 * cls_head_macs(config.hidden_size, len(config.gate_widths))
        rows = torch.arange(batch_size, device=device)  # original index of every row still running
        row_widths = None  # each running row's width, once a gate has picked one
        mixed_layers = [] if self.layer_mix is None else self.layer_mix.layers
        cls_states = {}  # [CLS] states of the knowledgeable classifier's layers, for the running rows
        previous, streak = None, torch.zeros(batch_size, dtype=torch.long, device=device)
        for index in encoder.active_layers:
            # Trailing columns that are padding for every running row are dropped (length bucketing on the fly).
            longest = last_real_column(mask)
            hidden, mask = hidden[:, :longest], mask[:, :longest]
            if str(index) in gates:
                gate = gates[str(index)]
                row_widths = gate_widths[gate(gate.pool(hidden, mask)).argmax(dim=-1)]
                flops[rows] += gate_flops
                # Rows sorted by width until the next gate: each width's rows are one contiguous block.
                order = row_widths.argsort(stable=True)
                rows, hidden, mask, row_widths = rows[order], hidden[order], mask[order], row_widths[order]
                cls_states = {layer: states[order] for layer, states in cls_states.items()}
                previous = None if previous is None else previous[order]
            widths = row_widths
            if widths is None:
                widths = torch.full((len(rows),), static_widths[index], dtype=torch.float64, device=device)
            hidden, spent = self._run_layer_by_width(encoder.layer[index], hidden, mask, widths, lengths[rows])
            flops[rows] += spent
            layer_widths[rows, index] = widths.float()
            if index + 1 in mixed_layers:
                cls_states[index + 1] = hidden[:, 0].clone()  # later width blocks write into `hidden` in place
            if index == encoder.active_layers[-1]:
                logits[rows] = self.final_logits(hidden, cls_states).float()
                exit_layers[rows] = index + 1
                flops[rows] += head_flops
                break
            if str(index + 1) not in ramps:
                continue
            ramp = ramps[str(index + 1)]
            answer = ramp(hidden, mask).float()
            flops[rows] += 2 * ramp.macs(lengths[rows].double())
            if criterion == "patience":
                previous, streak[rows] = patience_update(
                    answer, previous, streak[rows], config.exit_regression_tolerance
                )
                done = streak[rows] >= threshold
            else:
                done = prediction_entropy(answer, normalized=criterion == "normalized_entropy") < threshold
            if not bool(done.any()):
                continue  # nobody leaves: no copies
            logits[rows[done]] = answer[done]
            exit_layers[rows[done]] = index + 1
            # Compaction: only the rows that go on run the next layers, as a smaller dense batch.
            keep = ~done
            rows, hidden, mask = rows[keep], hidden[keep], mask[keep]
            row_widths = None if row_widths is None else row_widths[keep]
            cls_states = {layer: states[keep] for layer, states in cls_states.items()}
            previous = None if previous is None else previous[keep]
            if rows.numel() == 0:
                break
        return FlexBertDynamicOutput(
            loss=self.classification_loss(logits, labels) if labels is not None else None,
            logits=logits,
            exit_layers=exit_layers,
            layer_widths=layer_widths,
            flops=flops,
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        if self.config.dynamic_inference and not self.training:
            self._reject_head_mask(head_mask)
            if output_attentions or output_hidden_states:
                raise ValueError(
                    "Dynamic inference returns no hidden states or attentions (rows leave the batch early); set "
                    "`config.dynamic_inference = False` to get them."
                )
            output = self.dynamic_forward(
                input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, labels
            )
            return output if return_dict is not False else output.to_tuple()
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        knowledgeable = self.layer_mix is not None
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            head_mask=head_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states or knowledgeable,  # the mix reads several layers
        )
        if knowledgeable:
            ran = self.bert.encoder.active_layers
            cls_states = {index + 1: outputs.hidden_states[position + 1][:, 0] for position, index in enumerate(ran)}
            logits = self.final_logits(outputs.last_hidden_state, cls_states)
        else:
            logits = self.classifier(self.dropout(outputs.pooler_output))
        output = SequenceClassifierOutput(
            loss=self.classification_loss(logits, labels) if labels is not None else None,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
            attentions=outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()


class FlexBertForQuestionAnswering(FlexBertPreTrainedModel):
    """FlexBert with BERT's extractive QA head (start and end logits per token)."""

    def __init__(self, config: FlexBertConfig):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"Question answering needs `num_labels=2` (start and end), got {config.num_labels}.")
        self.num_labels = config.num_labels
        self.bert = FlexBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> QuestionAnsweringModelOutput | tuple:
        outputs = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            head_mask=head_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).unbind(dim=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the input (truncated answers) are clamped to an ignored index, as in BERT.
            ignored = start_logits.shape[1]
            start_loss = F.cross_entropy(
                start_logits, start_positions.view(-1).clamp(0, ignored), ignore_index=ignored
            )
            end_loss = F.cross_entropy(end_logits, end_positions.view(-1).clamp(0, ignored), ignore_index=ignored)
            loss = (start_loss + end_loss) / 2
        output = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits.contiguous(),
            end_logits=end_logits.contiguous(),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict is not False else output.to_tuple()


__all__ = [
    "FlexBertAttentionRamp",
    "FlexBertDynamicOutput",
    "FlexBertForQuestionAnswering",
    "FlexBertForSequenceClassification",
    "FlexBertModel",
    "FlexBertPreTrainedModel",
    "heads_for_width",
    "kept_layer_indices",
    "layer_macs",
    "neurons_for_heads",
    "prediction_entropy",
    "subnet_layer_shapes",
]
