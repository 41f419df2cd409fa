"""Head and neuron importance, network rewiring and grafting (docs/algorithms.md §3-4).

- Head importance (Michel et al. 2019): a gate of ones multiplies each head's context vectors; the importance is
  the sum over batches of `|dLoss/dgate|`.
- Neuron importance (first-order Taylor): for FFN neuron j,
  `|sum_k W1[j,k] g(W1[j,k]) + b1[j] g(b1[j])| + |sum_k W2[k,j] g(W2[k,j])|`, summed over batches.
- Rewiring permutes each layer's heads and neurons into descending importance. The full model computes the same
  function afterwards, and "the first k heads" of a narrower width become "the k most important".

- Layer-wise neural grafting (Flexible BERT): in every layer, the least important half of the heads (and of the
  neurons) receives a share of the weights of the most important half, paired by rank:
  `W[u] = (1 - alpha) * W[u] + alpha * W[partner(u)]`. alpha is fixed (0.1 in the authors' code) or adapted per
  pair from the entropy of the two units' weights (Filter Grafting, Meng et al. 2020).

Compute importance on a held-out slice of the *training* data, never on the dev set you report on. Rewire before
creating an optimizer or adding adapters: their state follows the old unit order.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .flexbert_layers import FlexBertLayer
from .modeling_flexbert import FlexBertPreTrainedModel


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


def _refuse_adapters(model: torch.nn.Module, action: str) -> None:
    """Rewiring and grafting rewrite the frozen base weights that attached adapters (peft) were made for."""
    if any(hasattr(module, "base_layer") for module in model.modules()):  # peft's wrappers keep the layer there
        raise ValueError(
            f"{action} rewrites the base weights under the attached adapters: {action.lower()} the model first, "
            "then attach adapters (peft.get_peft_model)."
        )


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
    model.eval()  # no dropout; gradients still flow
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
                # The static full model: the dynamic engine has no gradients.
                inputs = {key: value.to(device) for key, value in batch.items()}
                loss = model(**inputs, dynamic=False).loss
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
    _refuse_adapters(model, "Rewiring")
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


def grafting_pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(receivers, partners): the bottom half by importance, each paired with the top unit of the same rank.

    The least important unit receives from the most important, the second least from the second most, and so on.
    With an odd count the middle unit is left alone.
    """
    order = scores.argsort(descending=True, stable=True)
    half = len(order) // 2
    return order.flip(0)[:half], order[:half]


def weight_entropy(weights: torch.Tensor, bins: int = 10) -> torch.Tensor:
    """Entropy (natural log) of a `bins`-bin histogram of each row of `weights` (Filter Grafting's H)."""
    rows = weights.detach().float()
    low, high = rows.min(dim=1, keepdim=True).values, rows.max(dim=1, keepdim=True).values
    # Bin index of every weight within its own row's range (a constant row falls entirely into bin 0).
    index = ((rows - low) / (high - low).clamp(min=1e-12) * bins).long().clamp(max=bins - 1)
    counts = torch.zeros(rows.shape[0], bins, device=rows.device).scatter_add_(1, index, torch.ones_like(rows))
    probs = counts / counts.sum(dim=1, keepdim=True)
    return -(probs * probs.clamp(min=1e-12).log()).sum(dim=1)


def entropy_alpha(receiver_weights: torch.Tensor, partner_weights: torch.Tensor, c: float = 500.0) -> torch.Tensor:
    """Share of the partner's weights each receiver takes, from the entropy of both units' weights.

    Filter Grafting keeps `0.4/pi * atan(c * (H(receiver) - H(partner))) + 0.5` of the receiver itself: a unit whose
    weights carry more information (higher entropy) keeps more of them. The partner's share is one minus that.
    """
    keep = 0.4 / math.pi * torch.atan(c * (weight_entropy(receiver_weights) - weight_entropy(partner_weights))) + 0.5
    return 1.0 - keep


def _head_unit_weights(layer: FlexBertLayer) -> torch.Tensor:
    """One row per head: its query/key/value rows and biases and its attention-output columns, flattened."""
    attention = layer.attention
    projections = (attention.self.query, attention.self.key, attention.self.value)
    parts = [projection.weight.view(layer.num_heads, -1) for projection in projections]
    parts += [projection.bias.view(layer.num_heads, -1) for projection in projections]
    parts.append(attention.output.dense.weight.t().reshape(layer.num_heads, -1))
    return torch.cat(parts, dim=1)


def _neuron_unit_weights(layer: FlexBertLayer) -> torch.Tensor:
    """One row per FFN neuron: its intermediate row and bias and its FFN-output column."""
    ffn_in, ffn_out = layer.intermediate.dense, layer.output.dense
    return torch.cat([ffn_in.weight, ffn_in.bias[:, None], ffn_out.weight.t()], dim=1)


def _mix_rows(tensor: torch.Tensor, receivers: torch.Tensor, partners: torch.Tensor, alpha: torch.Tensor) -> None:
    """`tensor[r] = (1 - alpha) * tensor[r] + alpha * tensor[p]` for each pair, rows of `tensor` in place."""
    alpha = alpha.to(tensor.dtype).view(-1, *([1] * (tensor.dim() - 1)))
    tensor[receivers] = (1 - alpha) * tensor[receivers] + alpha * tensor[partners]


def _grafting_plan(
    scores: torch.Tensor, unit_weights, alpha: float | None, entropy_c: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(receivers, partners, partner share per pair); `unit_weights()` is only built for the entropy mode."""
    receivers, partners = grafting_pairs(scores)
    if alpha is None:
        units = unit_weights()
        return receivers, partners, entropy_alpha(units[receivers], units[partners], entropy_c)
    return receivers, partners, torch.full((len(receivers),), float(alpha), device=scores.device)


@torch.no_grad()
def graft_layer(
    layer: FlexBertLayer,
    head_scores: torch.Tensor,
    neuron_scores: torch.Tensor,
    alpha: float | None = 0.1,
    entropy_c: float = 500.0,
) -> None:
    """Graft the top half of `layer`'s heads and neurons onto the bottom half (`alpha=None`: entropy-adaptive)."""
    attention = layer.attention
    head_size = attention.self.head_size
    head_scores = head_scores.to(attention.self.query.weight.device)
    receivers, partners, share = _grafting_plan(head_scores, lambda: _head_unit_weights(layer), alpha, entropy_c)
    # A head is a block of `head_size` rows (query/key/value) or columns (attention output).
    receiver_rows, partner_rows = _head_rows(receivers, head_size), _head_rows(partners, head_size)
    row_share = share.repeat_interleave(head_size)
    for projection in (attention.self.query, attention.self.key, attention.self.value):
        _mix_rows(projection.weight, receiver_rows, partner_rows, row_share)
        _mix_rows(projection.bias, receiver_rows, partner_rows, row_share)
    _mix_rows(attention.output.dense.weight.t(), receiver_rows, partner_rows, row_share)

    neuron_scores = neuron_scores.to(layer.intermediate.dense.weight.device)
    receivers, partners, share = _grafting_plan(neuron_scores, lambda: _neuron_unit_weights(layer), alpha, entropy_c)
    _mix_rows(layer.intermediate.dense.weight, receivers, partners, share)
    _mix_rows(layer.intermediate.dense.bias, receivers, partners, share)
    _mix_rows(layer.output.dense.weight.t(), receivers, partners, share)


def graft(model: FlexBertPreTrainedModel, importance: Importance, alpha: float | None = 0.1, entropy_c: float = 500.0):
    """Layer-wise neural grafting of every layer (see the module docstring); `alpha=None` adapts it by entropy."""
    _refuse_adapters(model, "Grafting")
    layers = _layers(model)
    if len(importance.heads) != len(layers):
        raise ValueError(f"Importance covers {len(importance.heads)} layers but the model has {len(layers)}.")
    for layer, head_scores, neuron_scores in zip(layers, importance.heads, importance.neurons):
        graft_layer(layer, head_scores, neuron_scores, alpha=alpha, entropy_c=entropy_c)


__all__ = ["Importance", "compute_importance", "entropy_alpha", "graft", "grafting_pairs", "permute_layer", "rewire"]
