"""GEEP exit-layer prediction and bucketed inference (docs/algorithms.md §8).

The per-example engine with compaction, gates and exit criteria lives in the portable unit (`flexbert_engine.py`:
`model.dynamic_forward`, used by `model(...)` when `config.dynamic_inference`); this module adds GEEP's alternative:
predict each example's exit layer from its tokens, then run each predicted layer's rows as one full batch to exactly
that layer, on the same engine with planned exits.
"""

import torch

from .modeling_flexbert import FlexBertDynamicOutput, FlexBertForSequenceClassification


class ExitLayerPredictor:
    """GEEP's exit-layer prediction from tokens (docs/algorithms.md §8, our reading).

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
    layer (at the active sub-network's widths, trimmed to the group's longest row), and only that layer's classifier
    (its off-ramp, or the final head) evaluated. Each group is one call of the engine with planned exits."""
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    parts = []
    for layer in predicted_layers.unique().tolist():
        rows = (predicted_layers == layer).nonzero().squeeze(1)
        output = model.dynamic_forward(
            input_ids[rows],
            attention_mask[rows],
            None if token_type_ids is None else token_type_ids[rows],
            use_gates=False,
            exit_at=predicted_layers[rows],
        )
        parts.append((rows, output))
    merged = {}
    for key in ("logits", "exit_layers", "layer_widths", "flops"):
        first = parts[0][1][key]
        merged[key] = first.new_zeros((len(input_ids), *first.shape[1:]))
        for rows, output in parts:
            merged[key][rows] = output[key]
    return FlexBertDynamicOutput(**merged)


__all__ = ["ExitLayerPredictor", "bucketed_forward", "fit_exit_predictor"]
