"""Head and neuron importance, and network rewiring (ALGORITHMS.md §3).

- Head importance (Michel et al. 2019): a gate of ones multiplies each head's context vectors; the importance is
  the sum over batches of `|dLoss/dgate|`.
- Neuron importance (first-order Taylor): for FFN neuron j,
  `|sum_k W1[j,k] g(W1[j,k]) + b1[j] g(b1[j])| + |sum_k W2[k,j] g(W2[k,j])|`, summed over batches.
- Rewiring permutes each layer's heads and neurons into descending importance. The full model computes the same
  function afterwards, and "the first k heads" of a narrower width become "the k most important".

Compute importance on a held-out slice of the *training* data, never on the dev set you report on. Rewire before
creating an optimizer or adding adapters: their state follows the old unit order.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .modeling_flexbert import FlexBertLayer, FlexBertPreTrainedModel


@dataclass
class Importance:
    """Per-layer importance scores, one tensor per layer of the model (layers may differ in size).

    Args:
        heads: `heads[l][h]` is the importance of head h of layer l.
        neurons: `neurons[l][j]` is the importance of FFN neuron j of layer l.
    """

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]


def _layers(model: FlexBertPreTrainedModel) -> list[FlexBertLayer]:
    return list(model.base_model.encoder.layer)


def _gate_heads(layer: FlexBertLayer, gate: torch.Tensor) -> torch.utils.hooks.RemovableHandle:
    """Multiply each head's context vectors by its entry of `gate` (before the attention output projection)."""
    head_size = layer.attention.self.head_size

    def hook(module, inputs, output):
        context, probs = output
        return context * gate.repeat_interleave(head_size), probs

    return layer.attention.self.register_forward_hook(hook)


def _neuron_scores(layer: FlexBertLayer) -> torch.Tensor:
    """First-order Taylor score of every FFN neuron of `layer` from the gradients now in `.grad`."""
    ffn_in, ffn_out = layer.intermediate.dense, layer.output.dense
    incoming = (ffn_in.weight * ffn_in.weight.grad).sum(dim=1) + ffn_in.bias * ffn_in.bias.grad
    outgoing = (ffn_out.weight * ffn_out.weight.grad).sum(dim=0)
    return incoming.abs() + outgoing.abs()


def compute_importance(
    model: FlexBertPreTrainedModel,
    batches: Iterable[Mapping[str, torch.Tensor]],
    max_batches: int | None = None,
    show_progress: bool = True,
) -> Importance:
    """Head and FFN-neuron importance of the full model over `batches` (dicts of model inputs with labels).

    The model runs at full width and depth with dropout off; gradients are zeroed for every batch and left at
    `None` afterwards; the training mode, sub-network and `requires_grad` flags are restored.
    """
    layers = _layers(model)
    device = model.device
    gates = [torch.ones(layer.num_heads, device=device, requires_grad=True) for layer in layers]
    head_scores = [torch.zeros(layer.num_heads, device=device) for layer in layers]
    neuron_scores = [torch.zeros(layer.intermediate_size, device=device) for layer in layers]
    ffn_params = [
        p for layer in layers for m in (layer.intermediate.dense, layer.output.dense) for p in m.parameters()
    ]
    saved_requires_grad = [p.requires_grad for p in ffn_params]
    hooks = [_gate_heads(layer, gate) for layer, gate in zip(layers, gates)]
    was_training = model.training
    model.eval()
    try:
        with model.subnet(width=1.0, depth=1.0):
            for p in ffn_params:
                p.requires_grad_(True)
            total = len(batches) if hasattr(batches, "__len__") else None
            if max_batches is not None:
                total = max_batches if total is None else min(total, max_batches)
            progress = tqdm(batches, total=total, desc="importance", disable=not show_progress)
            for step, batch in enumerate(progress):
                if max_batches is not None and step >= max_batches:
                    break
                model.zero_grad(set_to_none=True)
                for gate in gates:
                    gate.grad = None
                loss = model(**{key: value.to(device) for key, value in batch.items()}).loss
                if loss is None:
                    raise ValueError("Importance needs a loss: the batches must carry labels.")
                loss.backward()
                with torch.no_grad():
                    for index, layer in enumerate(layers):
                        head_scores[index] += gates[index].grad.abs()
                        neuron_scores[index] += _neuron_scores(layer)
    finally:
        for hook in hooks:
            hook.remove()
        for p, flag in zip(ffn_params, saved_requires_grad):
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return Importance(heads=head_scores, neurons=neuron_scores)


def _head_rows(order: torch.Tensor, head_size: int) -> torch.Tensor:
    """Row indices of the weight blocks of heads `order`, in that order."""
    return (order[:, None] * head_size + torch.arange(head_size, device=order.device)).flatten()


@torch.no_grad()
def permute_layer(layer: FlexBertLayer, head_order: torch.Tensor, neuron_order: torch.Tensor) -> None:
    """Reorder the heads and FFN neurons of `layer` in place: new unit i is old unit `order[i]`."""
    attention = layer.attention
    rows = _head_rows(head_order.to(attention.self.query.weight.device), attention.self.head_size)
    for projection in (attention.self.query, attention.self.key, attention.self.value):
        projection.weight.copy_(projection.weight[rows])  # indexing copies first, so copy_ is safe
        projection.bias.copy_(projection.bias[rows])
    attention.output.dense.weight.copy_(attention.output.dense.weight[:, rows])
    neuron_order = neuron_order.to(layer.intermediate.dense.weight.device)
    layer.intermediate.dense.weight.copy_(layer.intermediate.dense.weight[neuron_order])
    layer.intermediate.dense.bias.copy_(layer.intermediate.dense.bias[neuron_order])
    layer.output.dense.weight.copy_(layer.output.dense.weight[:, neuron_order])


def rewire(model: FlexBertPreTrainedModel, importance: Importance) -> Importance:
    """Sort every layer's heads and neurons by descending importance (network rewiring).

    Returns the importance in the new order (each layer sorted descending).
    """
    layers = _layers(model)
    if len(importance.heads) != len(layers) or len(importance.neurons) != len(layers):
        raise ValueError(
            f"Importance covers {len(importance.heads)} layers but the model has {len(layers)}; "
            "compute it on this model."
        )
    sorted_heads, sorted_neurons = [], []
    for layer, head_scores, neuron_scores in zip(layers, importance.heads, importance.neurons):
        if head_scores.numel() != layer.num_heads or neuron_scores.numel() != layer.intermediate_size:
            raise ValueError(
                f"Importance shapes ({head_scores.numel()} heads, {neuron_scores.numel()} neurons) do not match "
                f"the layer ({layer.num_heads} heads, {layer.intermediate_size} neurons)."
            )
        head_values, head_order = head_scores.sort(descending=True, stable=True)
        neuron_values, neuron_order = neuron_scores.sort(descending=True, stable=True)
        permute_layer(layer, head_order, neuron_order)
        sorted_heads.append(head_values)
        sorted_neurons.append(neuron_values)
    return Importance(heads=sorted_heads, neurons=sorted_neurons)


__all__ = ["Importance", "compute_importance", "permute_layer", "rewire"]
