"""FlexBert's building blocks: sub-network shapes, embeddings, attention, layers, the encoder, ramps and gates.

Below both the dynamic engine (`flexbert_engine.py`) and the heads (`modeling_flexbert.py`), which import from here.
A sub-network keeps a *prefix* of each layer's heads and FFN neurons (DynaBERT) and a subset of the layers
(`every_other` or `prefix`); every hidden state stays `hidden_size` wide. Which sub-network runs travels with each
call (a `Subnet`), never in module attributes, so one model can serve several threads at once.

Part of the portable unit copied into every checkpoint: imports only torch/transformers and flat siblings.
"""

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .configuration_flexbert import DEPTH_RULES, FlexBertConfig

Width = float | Sequence[float]


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


def depth_ramp_layers(num_layers: int, depth_mults: Sequence[float]) -> list[int]:
    """The layers (1-based, ascending) after which each shallower depth's own off-ramp sits under the prefix rule
    (`depth_heads="ramps"`): the number of layers the depth keeps, which is its last layer."""
    shallower = {len(kept_layer_indices(num_layers, depth, "prefix")) for depth in depth_mults}
    return sorted(shallower - {num_layers})  # a depth that keeps every layer is answered by the final head


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
    the linear layers plus, unless `linear_only`, the two attention matmuls (docs/algorithms.md §10)."""
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


def attention_ramp_macs(hidden_size: int, size: int, num_outputs: int, lengths, linear_only: bool = False):
    """Multiply-accumulates of an attention off-ramp (`FlexBertAttentionRamp`) on `lengths` real tokens (an int or a
    tensor of them): per token the down projection, key, value and (unless `linear_only`) the [CLS] query's score and
    weighted sum; once the [CLS] query, output, pooler and classifier."""
    per_token = hidden_size * size + 2 * size * size + (0 if linear_only else 2 * size)
    return lengths * per_token + 3 * size * size + size * num_outputs


def last_real_column(attention_mask: torch.Tensor) -> int:
    """One past the last column holding a real token in any row: what can be cut off (right padding only). A batch
    with no real token at all is kept whole."""
    real_columns = attention_mask.any(dim=0).nonzero()
    return int(real_columns.max()) + 1 if len(real_columns) else attention_mask.shape[1]


def additive_attention_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(batch, length) 1/0 mask -> (batch, 1, 1, length) additive mask; None when nothing is padded (when exporting,
    only without a mask: an exporter would fix the data-dependent shortcut to the example batch's case)."""
    if attention_mask is None:
        return None
    if not torch.compiler.is_exporting() and bool(attention_mask.all()):
        return None  # no padding: attention without a mask is the same and faster
    blocked = attention_mask[:, None, None, :].eq(0)
    return torch.zeros(blocked.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        blocked, torch.finfo(dtype).min
    )


@dataclass(frozen=True)
class Subnet:
    """One sub-network: a width (a multiplier, or one per layer) and a depth multiplier. Build it with
    `FlexBertEncoder.make_subnet`, which validates both."""

    width: float | tuple[float, ...] = 1.0
    depth: float = 1.0

    def layer_widths(self, num_layers: int) -> list[float]:
        """The width multiplier of every layer."""
        return _per_layer_widths(self.width, num_layers)

    def as_dict(self) -> dict:
        """`{"width": ..., "depth": ...}` as `set_subnet` takes it (a per-layer width as a list)."""
        return {"width": list(self.width) if isinstance(self.width, tuple) else self.width, "depth": self.depth}


# The sub-networks chosen by `with model.subnet(...)` in the current context (thread or asyncio task), keyed by the
# id of the encoder they apply to. Each `with` sets a new read-only mapping and restores the old one on exit, so
# what one thread or task chooses is never seen by another.
_CONTEXT_SUBNETS: ContextVar[Mapping[int, Subnet]] = ContextVar(
    "flexbert_context_subnets", default=MappingProxyType({})
)


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


def sliced_linear(linear: nn.Module, inputs: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """`linear` restricted to its first `rows` outputs (all when None) and to the first `inputs.shape[-1]` input
    columns: the weight and bias prefixes a sub-network runs. A LoRA wrapper that peft put around `linear` takes part
    with the matching slices of its adapters, as it does at full width (`sliced_lora_update`)."""
    base = getattr(linear, "base_layer", linear)  # peft keeps the wrapped nn.Linear as `base_layer`
    rows = base.out_features if rows is None else rows
    columns = inputs.shape[-1]
    if rows == base.out_features and columns == base.in_features:
        return linear(inputs)  # the whole layer: the module itself, adapters run exactly as peft runs them
    bias = None if base.bias is None else base.bias[:rows]
    output = F.linear(inputs, base.weight[:rows, :columns], bias)  # prefixes of the weight are views
    update = None if base is linear else sliced_lora_update(linear, inputs, rows, columns)
    return output if update is None else output + update.to(output.dtype)


def sliced_lora_update(wrapper: nn.Module, inputs: torch.Tensor, rows: int, columns: int) -> torch.Tensor | None:
    """What the active LoRA adapters of a peft wrapper add to a sliced layer: `scale * B[:rows] A[:, :columns] x`
    (plus B's bias rows), the slice of the full layer's update `scale * B A x`; None when they add nothing. Other
    adapter types and LoRA variants (DoRA's magnitude normalises whole weight columns) cannot be sliced: a clear
    error, never a silent bypass."""
    is_lora_linear = type(wrapper).__name__ == "Linear" and type(wrapper).__module__.startswith("peft.tuners.lora")
    if not is_lora_linear:
        raise NotImplementedError(
            f"A {type(wrapper).__module__}.{type(wrapper).__name__} wraps a layer that this sub-network slices; below "
            "full width FlexBert supports peft's LoRA on nn.Linear modules (`target_modules`) only."
        )
    if wrapper.disable_adapters:
        if wrapper.merged:
            wrapper.unmerge()  # as peft's own forward does: the base weights must not hold the adapters
        return None
    if wrapper.merged:
        return None  # the base weights hold `B A`: their slices are already the sub-network's update
    update = None
    for name in wrapper.active_adapters:
        if name not in wrapper.lora_A:
            continue
        if name in getattr(wrapper, "lora_variant", {}):
            raise NotImplementedError(
                f"LoRA adapter {name!r} is a variant (e.g. DoRA) whose update needs the whole weight: it cannot run "
                "below full width. Use plain LoRA, or run this model at width 1.0."
            )
        down, up = wrapper.lora_A[name], wrapper.lora_B[name]
        hidden = F.linear(wrapper.lora_dropout[name](inputs.to(down.weight.dtype)), down.weight[:, :columns])
        up_bias = None if up.bias is None else up.bias[:rows]  # `lora_bias=True` gives B a bias
        adapter_update = F.linear(hidden, up.weight[:rows], up_bias) * wrapper.scaling[name]
        update = adapter_update if update is None else update + adapter_update
    return update


class FlexBertSelfAttention(nn.Module):
    """Multi-head self-attention that runs the first `heads` of its heads (all by default)."""

    def __init__(self, config: FlexBertConfig, num_heads: int):
        super().__init__()
        self.head_size = config.head_size
        self.num_heads = num_heads
        self.query = nn.Linear(config.hidden_size, num_heads * self.head_size)
        self.key = nn.Linear(config.hidden_size, num_heads * self.head_size)
        self.value = nn.Linear(config.hidden_size, num_heads * self.head_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.config = config  # read at run time: `set_attn_implementation` may switch to eager later

    def _project(self, linear: nn.Linear, hidden_states: torch.Tensor, heads: int) -> torch.Tensor:
        """Apply `linear` for the first `heads` heads only, as (batch, heads, length, head_size)."""
        projected = sliced_linear(linear, hidden_states, rows=heads * self.head_size)
        batch_size, seq_length, _ = hidden_states.shape
        return projected.view(batch_size, seq_length, heads, self.head_size).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        heads: int | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        heads = self.num_heads if heads is None else heads
        query = self._project(self.query, hidden_states, heads)
        key = self._project(self.key, hidden_states, heads)
        value = self._project(self.value, hidden_states, heads)
        dropout = self.dropout.p if self.training else 0.0
        if output_attentions or self.config._attn_implementation == "eager":
            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_size)
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = scores.softmax(dim=-1)  # returned before dropout: a distribution (attention distillation)
            context = torch.matmul(F.dropout(probs, p=dropout, training=self.training), value)
        else:
            probs = None
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout)
        # (batch, heads, length, head_size) -> (batch, length, heads * head_size)
        context = context.transpose(1, 2).flatten(2)
        return context, (probs if output_attentions else None)


class FlexBertSelfOutput(nn.Module):
    """Attention output projection (its input width follows the active heads), residual, LayerNorm."""

    def __init__(self, config: FlexBertConfig, num_heads: int):
        super().__init__()
        self.dense = nn.Linear(num_heads * config.head_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(sliced_linear(self.dense, context)) + residual)


class FlexBertAttention(nn.Module):
    def __init__(self, config: FlexBertConfig, num_heads: int):
        super().__init__()
        self.self = FlexBertSelfAttention(config, num_heads)
        self.output = FlexBertSelfOutput(config, num_heads)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        heads: int | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, probs = self.self(hidden_states, attention_mask, heads, output_attentions)
        return self.output(context, hidden_states), probs


class FlexBertIntermediate(nn.Module):
    """First FFN projection, running its first `neurons` neurons (all by default)."""

    def __init__(self, config: FlexBertConfig, intermediate_size: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor, neurons: int | None = None) -> torch.Tensor:
        return self.intermediate_act_fn(sliced_linear(self.dense, hidden_states, rows=neurons))


class FlexBertOutput(nn.Module):
    """Second FFN projection (its input width follows the active neurons), residual, LayerNorm."""

    def __init__(self, config: FlexBertConfig, intermediate_size: int):
        super().__init__()
        self.dense = nn.Linear(intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, intermediate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(sliced_linear(self.dense, intermediate)) + residual)


class FlexBertLayer(nn.Module):
    """One Transformer layer whose width (heads, and FFN neurons in the same ratio) is chosen per call."""

    def __init__(self, config: FlexBertConfig, layer_index: int):
        super().__init__()
        self.num_heads = config.num_heads_of_layer(layer_index)
        self.intermediate_size = config.intermediate_size_of_layer(layer_index)
        self.attention = FlexBertAttention(config, self.num_heads)
        self.intermediate = FlexBertIntermediate(config, self.intermediate_size)
        self.output = FlexBertOutput(config, self.intermediate_size)

    def shape_at(self, width: float) -> tuple[int, int]:
        """(heads, FFN neurons) this layer runs at `width`: `round(heads * width)` heads, the same share of neurons."""
        return width_shape(self.num_heads, self.intermediate_size, width)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        width: float = 1.0,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        heads, neurons = self.shape_at(width)
        attention_output, probs = self.attention(hidden_states, attention_mask, heads, output_attentions)
        intermediate = self.intermediate(attention_output, neurons)
        return self.output(intermediate, attention_output), probs


class FlexBertEncoder(nn.Module):
    """The stack of layers; runs the layers a sub-network keeps, each at its width.

    Which sub-network runs: the `subnet` a call passes, else the innermost `with encoder.subnet(...)` of the calling
    thread or task, else the default that `set_subnet` chose (full width and depth to start with).
    """

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([FlexBertLayer(config, index) for index in range(config.num_hidden_layers)])
        self.default_subnet = Subnet()

    def make_subnet(self, width: Width = 1.0, depth: float = 1.0) -> Subnet:
        """A validated `Subnet`: raises `ValueError` for a width or depth outside (0, 1] or a per-layer width list
        of the wrong length."""
        _per_layer_widths(width, len(self.layer))
        _check_multiplier("depth", depth)
        return Subnet(width=tuple(width) if isinstance(width, (list, tuple)) else width, depth=depth)

    def set_subnet(self, width: Width = 1.0, depth: float = 1.0) -> None:
        """Make (width, depth) the default sub-network: what runs when neither a call nor a `with` chooses one."""
        self.default_subnet = self.make_subnet(width, depth)

    @contextmanager
    def subnet(self, width: Width = 1.0, depth: float = 1.0) -> Iterator[Subnet]:
        """Run (width, depth) inside the block, in this thread or asyncio task only."""
        chosen = self.make_subnet(width, depth)
        token = _CONTEXT_SUBNETS.set(MappingProxyType({**_CONTEXT_SUBNETS.get(), id(self): chosen}))
        try:
            yield chosen
        finally:
            _CONTEXT_SUBNETS.reset(token)

    @property
    def active_subnet(self) -> Subnet:
        """The sub-network a call without its own choice runs in the current context."""
        return _CONTEXT_SUBNETS.get().get(id(self), self.default_subnet)

    def kept_layers(self, subnet: Subnet | None = None) -> list[int]:
        """0-based indices of the layers `subnet` (by default the active one) runs."""
        subnet = self.active_subnet if subnet is None else subnet
        return kept_layer_indices(len(self.layer), subnet.depth, self.config.depth_rule)

    @property
    def active_layers(self) -> list[int]:
        """0-based indices of the layers the active sub-network runs."""
        return self.kept_layers()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        subnet: Subnet | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        subnet = self.active_subnet if subnet is None else subnet  # resolved once: the whole call runs one subnet
        widths = subnet.layer_widths(len(self.layer))
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for index in self.kept_layers(subnet):
            hidden_states, probs = self.layer[index](hidden_states, attention_mask, widths[index], output_attentions)
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


class FlexBertSpanRamp(nn.Module):
    """An early-exit extractive-QA head after one layer: BERT's QA projection (start and end logit per token)."""

    def __init__(self, config: FlexBertConfig):
        super().__init__()
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.qa_outputs(hidden_states)  # (batch, length, 2)

    def macs(self, lengths: torch.Tensor) -> torch.Tensor:
        """Multiply-accumulates per example: one projection per real token."""
        return lengths * self.qa_outputs.in_features * self.qa_outputs.out_features


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
        hidden_size, size, num_outputs = self.down.in_features, self.down.out_features, self.classifier.out_features
        return attention_ramp_macs(hidden_size, size, num_outputs, lengths)


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


__all__ = [
    "FlexBertAttentionRamp",
    "FlexBertEmbeddings",
    "FlexBertEncoder",
    "FlexBertLayer",
    "FlexBertLayerMix",
    "FlexBertOffRamp",
    "FlexBertPooler",
    "FlexBertSpanRamp",
    "FlexBertWidthGate",
    "Subnet",
    "Width",
    "additive_attention_mask",
    "attention_ramp_macs",
    "cls_head_macs",
    "depth_ramp_layers",
    "heads_for_width",
    "kept_layer_indices",
    "last_real_column",
    "sliced_linear",
    "sliced_lora_update",
    "layer_macs",
    "neurons_for_heads",
    "subnet_layer_shapes",
    "width_shape",
]
