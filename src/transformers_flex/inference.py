"""Batched early-exit inference (ALGORITHMS.md §5, §9): exit criteria and an engine that keeps batches dense.

After each layer that has an off-ramp, the rows whose ramp is confident enough leave the batch; the remaining rows
are compacted (index-selected) and their padding trimmed to the longest remaining row, so later layers run on a
smaller, shorter, still dense batch. Every row's answer and exit layer are what running it alone would give.
"""

import math
from dataclasses import dataclass

import torch

from .configuration_flexbert import EXIT_CRITERIA
from .flops import head_macs, layer_macs
from .modeling_flexbert import FlexBertForSequenceClassification, additive_attention_mask


@dataclass
class EarlyExitOutput:
    """Per-example results of early-exit inference.

    Args:
        logits: (batch, classes) logits of the classifier that answered.
        exit_layers: (batch,) 1-based index of the layer after which each example left.
        flops: (batch,) FLOPs each example spent (its real length; layers, ramps and head that ran for it).
    """

    logits: torch.Tensor
    exit_layers: torch.Tensor
    flops: torch.Tensor


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
    """One past the last column holding a real token in any row: what can be cut off (right padding only)."""
    return int(attention_mask.any(dim=0).nonzero().max()) + 1


def layer_flops(config, layer, lengths: torch.Tensor) -> torch.Tensor:
    """FLOPs of one layer at its active width for each example of the given real lengths."""
    macs = layer_macs(
        config.hidden_size,
        config.head_size,
        layer.active_heads,
        layer.active_intermediate_size,
        lengths.double(),
        linear_only=False,
    )
    return 2 * macs


@torch.inference_mode()
def early_exit_forward(
    model: FlexBertForSequenceClassification,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    criterion: str | None = None,
    threshold: float | None = None,
    regression_tolerance: float = 0.01,
) -> EarlyExitOutput:
    """Run a batch with early exits at the model's off-ramps, compacting the batch as rows leave.

    `criterion` and `threshold` default to the config's `exit_criterion` / `exit_threshold`: an entropy below the
    threshold exits (`entropy`, `normalized_entropy`), or `patience` exits once `threshold` consecutive ramps agree.
    The active sub-network (width per layer, depth) is respected; the last active layer always answers.
    """
    config = model.config
    criterion = config.exit_criterion if criterion is None else criterion
    threshold = config.exit_threshold if threshold is None else threshold
    if criterion not in EXIT_CRITERIA:
        raise ValueError(f"`criterion` must be one of {EXIT_CRITERIA}, got {criterion!r}.")
    if config.num_labels == 1 and criterion != "patience":
        raise ValueError("A regression model has no prediction entropy: use `criterion='patience'`.")
    encoder = model.bert.encoder
    batch_size = input_ids.shape[0]
    device = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    hidden = model.bert.embeddings(input_ids, token_type_ids, None, None)
    lengths = attention_mask.sum(dim=1)
    logits = torch.zeros(batch_size, config.num_labels, device=device)
    exit_layers = torch.zeros(batch_size, dtype=torch.long, device=device)
    flops = torch.zeros(batch_size, dtype=torch.float64, device=device)
    rows = torch.arange(batch_size, device=device)  # original index of every row still running
    mask = attention_mask
    previous, streak = None, torch.zeros(batch_size, dtype=torch.long, device=device)
    head_flops = 2 * head_macs(config, "sequence_classification", seq_length=0)

    for position, index in enumerate(encoder.active_layers):
        # Trailing columns that are padding for every running row are dropped (length bucketing on the fly).
        longest = last_real_column(mask)
        hidden, mask = hidden[:, :longest], mask[:, :longest]
        layer = encoder.layer[index]
        hidden, _ = layer(hidden, additive_attention_mask(mask, hidden.dtype))
        flops[rows] += layer_flops(config, layer, lengths[rows])
        if position == len(encoder.active_layers) - 1:
            logits[rows] = model.classifier(model.bert.pooler(hidden)).float()
            exit_layers[rows] = index + 1
            flops[rows] += head_flops
            break
        ramp = model.off_ramps[str(index + 1)] if str(index + 1) in model.off_ramps else None
        if ramp is None:
            continue
        ramp_logits = ramp(hidden).float()
        flops[rows] += head_flops
        if criterion == "patience":
            previous, streak_rows = patience_update(ramp_logits, previous, streak[rows], regression_tolerance)
            streak[rows] = streak_rows
            done = streak_rows >= threshold
        else:
            done = prediction_entropy(ramp_logits, normalized=criterion == "normalized_entropy") < threshold
        logits[rows[done]] = ramp_logits[done]
        exit_layers[rows[done]] = index + 1
        # Compaction: only the rows that go on run the next layers, as a smaller dense batch.
        keep = ~done
        rows, hidden, mask = rows[keep], hidden[keep], mask[keep]
        if previous is not None:
            previous = previous[keep]
        if rows.numel() == 0:
            break
    return EarlyExitOutput(logits=logits, exit_layers=exit_layers, flops=flops)


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


@torch.inference_mode()
def bucketed_forward(
    model: FlexBertForSequenceClassification,
    input_ids: torch.Tensor,
    predicted_layers: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> EarlyExitOutput:
    """GEEP-style inference: rows grouped by predicted exit layer, each group run as one dense batch to exactly that
    layer, and only that layer's classifier (its off-ramp, or the final head) evaluated."""
    config = model.config
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    batch_size = input_ids.shape[0]
    logits = torch.zeros(batch_size, config.num_labels, device=input_ids.device)
    flops = torch.zeros(batch_size, dtype=torch.float64, device=input_ids.device)
    encoder = model.bert.encoder
    head_flops = 2 * head_macs(config, "sequence_classification", seq_length=0)
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
        longest = last_real_column(attention_mask[rows])
        mask = attention_mask[rows, :longest]
        types = None if token_type_ids is None else token_type_ids[rows, :longest]
        hidden = model.bert.embeddings(input_ids[rows, :longest], types, None, None)
        additive = additive_attention_mask(mask, hidden.dtype)
        for index in [i for i in encoder.active_layers if i < layer]:
            block = encoder.layer[index]
            hidden, _ = block(hidden, additive)
            flops[rows] += layer_flops(config, block, lengths)
        if layer == encoder.active_layers[-1] + 1:
            logits[rows] = model.classifier(model.bert.pooler(hidden)).float()
        else:
            logits[rows] = model.off_ramps[str(layer)](hidden).float()
        flops[rows] += head_flops
    return EarlyExitOutput(logits=logits, exit_layers=predicted_layers.clone(), flops=flops)


__all__ = [
    "EarlyExitOutput",
    "ExitLayerPredictor",
    "bucketed_forward",
    "early_exit_forward",
    "patience_update",
    "prediction_entropy",
]
