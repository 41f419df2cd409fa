"""GEEP exit-layer prediction and bucketed inference (ALGORITHMS.md §8).

The per-example engine with compaction, gates and exit criteria lives in the portable model file
(`FlexBertForSequenceClassification.dynamic_forward`, used by `model(...)` when `config.dynamic_inference`); this
module adds GEEP's alternative: predict each example's exit layer from its tokens, then run each predicted layer's
rows as one full batch to exactly that layer.
"""

import torch

from .modeling_flexbert import (
    FlexBertDynamicOutput,
    FlexBertForSequenceClassification,
    additive_attention_mask,
    cls_head_macs,
    last_real_column,
    layer_macs,
)


class ExitLayerPredictor:
    """GEEP's exit-layer prediction from tokens (ALGORITHMS.md §8, our reading).

    `fit` counts, for every token id, the exit layers of the training examples it appears in (one vote per
    occurrence); `predict` gives a new example the mean expected exit layer of its real tokens, rounded to the
    nearest layer that has a classifier.

    Args:
        vocab_size: Size of the tokenizer's vocabulary.
        exit_layers: The 1-based layers that can answer (the off-ramps' layers and the last layer), ascending.
    """

    def __init__(self, vocab_size: int, exit_layers: list[int]):
        self.exit_layers = sorted(exit_layers)
        self.counts = torch.zeros(vocab_size, len(self.exit_layers), dtype=torch.float64)

    def fit(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, observed: torch.Tensor
    ) -> "ExitLayerPredictor":
        """Add one batch of examples with their observed exit layers (e.g. from `early_exit_forward`)."""
        column = torch.tensor([self.exit_layers.index(int(layer)) for layer in observed])
        tokens = input_ids[attention_mask.bool()].cpu()
        columns = column[:, None].expand_as(input_ids)[attention_mask.bool().cpu()]
        self.counts.index_put_((tokens, columns), torch.ones(len(tokens), dtype=torch.float64), accumulate=True)
        return self

    def predict(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch,) predicted 1-based exit layer; unseen tokens vote for no layer, an unseen example for the last."""
        layers = torch.tensor(self.exit_layers, dtype=torch.float64)
        seen = self.counts.sum(dim=1)
        # Expected exit layer of every token over the layers it was seen leaving at.
        token_layer = (self.counts @ layers) / seen.clamp(min=1)
        ids, mask = input_ids.cpu(), attention_mask.cpu().bool() & (seen[input_ids.cpu()] > 0)
        expected = (token_layer[ids] * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        expected = torch.where(mask.any(dim=1), expected, layers[-1])
        nearest = (expected[:, None] - layers[None, :]).abs().argmin(dim=1)
        return layers[nearest].long().to(input_ids.device)


@torch.no_grad()
def fit_exit_predictor(
    model: FlexBertForSequenceClassification, batches, criterion: str = "entropy", threshold: float | None = None
) -> ExitLayerPredictor:
    """GEEP's token table from the exits the engine (ramps only) takes on training batches."""
    answering = sorted({int(layer) for layer in model.off_ramps} | {model.config.num_hidden_layers})
    predictor = ExitLayerPredictor(model.config.vocab_size, answering)
    for batch in batches:
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        exits = model.dynamic_forward(**inputs, criterion=criterion, threshold=threshold, use_gates=False).exit_layers
        predictor.fit(batch["input_ids"], batch["attention_mask"], exits)
    return predictor


@torch.no_grad()
def bucketed_forward(
    model: FlexBertForSequenceClassification,
    input_ids: torch.Tensor,
    predicted_layers: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> FlexBertDynamicOutput:
    """GEEP-style inference: rows grouped by predicted exit layer, each group run as one dense batch to exactly that
    layer (at the active sub-network's widths), and only that layer's classifier (its off-ramp, or the final head)
    evaluated."""
    config, encoder = model.config, model.bert.encoder
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    batch_size, device = input_ids.shape[0], input_ids.device
    logits = torch.zeros(batch_size, config.num_labels, device=device)
    flops = torch.zeros(batch_size, dtype=torch.float64, device=device)
    layer_widths = torch.zeros(batch_size, config.num_hidden_layers, device=device)
    head_flops = 2 * cls_head_macs(config.hidden_size, config.num_labels)
    answering = {index + 1 for index in encoder.active_layers if str(index + 1) in model.off_ramps}
    answering.add(encoder.active_layers[-1] + 1)
    unknown = set(predicted_layers.tolist()) - answering
    if unknown:
        raise ValueError(
            f"Predicted layers {sorted(unknown)} have no classifier; layers that answer: {sorted(answering)}."
        )
    for layer in predicted_layers.unique().tolist():
        rows = (predicted_layers == layer).nonzero().squeeze(1)
        lengths = attention_mask[rows].sum(dim=1)
        longest = last_real_column(attention_mask[rows])  # each bucket is trimmed to its own longest row
        types = None if token_type_ids is None else token_type_ids[rows, :longest]
        hidden = model.bert.embeddings(input_ids[rows, :longest], types, None, None)
        additive = additive_attention_mask(attention_mask[rows, :longest], hidden.dtype)
        cls_states = {}  # what a knowledgeable final classifier mixes
        for index in [i for i in encoder.active_layers if i < layer]:
            block = encoder.layer[index]
            hidden, _ = block(hidden, additive)
            cls_states[index + 1] = hidden[:, 0]
            heads, neurons = block.active_heads, block.active_intermediate_size
            flops[rows] += 2 * layer_macs(config.hidden_size, config.head_size, heads, neurons, lengths.double())
            layer_widths[rows, index] = encoder.layer_widths[index]
        if layer == encoder.active_layers[-1] + 1:
            logits[rows] = model.final_logits(hidden, cls_states).float()
            flops[rows] += head_flops
        else:
            ramp = model.off_ramps[str(layer)]
            logits[rows] = ramp(hidden, attention_mask[rows, :longest]).float()
            flops[rows] += 2 * ramp.macs(lengths.double())
    return FlexBertDynamicOutput(
        logits=logits, exit_layers=predicted_layers.clone(), layer_widths=layer_widths, flops=flops
    )


__all__ = ["ExitLayerPredictor", "bucketed_forward", "fit_exit_predictor"]
