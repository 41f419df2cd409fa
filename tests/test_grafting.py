"""Layer-wise neural grafting: exactly the published update, nothing else touched."""

import copy

import pytest
import torch

from transformers_flex import FlexBertModel
from transformers_flex.importance import Importance, entropy_alpha, graft, grafting_pairs


def test_pairs_least_with_most_important_by_rank():
    receivers, partners = grafting_pairs(torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2]))
    # ranks: 2 (0.9) > 4 (0.7) > 0 (0.5) > 3 (0.3) > 5 (0.2) > 1 (0.1)
    assert receivers.tolist() == [1, 5, 3] and partners.tolist() == [2, 4, 0]


def test_fixed_alpha_graft_is_the_published_update(tiny_config):
    torch.manual_seed(0)
    model = FlexBertModel(tiny_config)
    with torch.no_grad():  # non-zero biases, so their update is checked too
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    before = copy.deepcopy(model.state_dict())
    heads = [torch.tensor([0.4, 0.1, 0.9, 0.2]) for _ in range(tiny_config.num_hidden_layers)]
    neurons = [torch.rand(tiny_config.intermediate_size) for _ in range(tiny_config.num_hidden_layers)]
    graft(model, Importance(heads=heads, neurons=neurons), alpha=0.1)
    after = model.state_dict()
    head_size = tiny_config.head_size
    for layer in range(tiny_config.num_hidden_layers):
        prefix = f"encoder.layer.{layer}."
        # Heads: 1 (least) <- 2 (most), 3 <- 0; heads 0 and 2 unchanged.
        for name in ("attention.self.query", "attention.self.key", "attention.self.value"):
            for suffix in ("weight", "bias"):
                old, new = before[prefix + name + "." + suffix], after[prefix + name + "." + suffix]
                blocks = old.view(4, head_size, *old.shape[1:])
                expected = blocks.clone()
                expected[1] = 0.9 * blocks[1] + 0.1 * blocks[2]
                expected[3] = 0.9 * blocks[3] + 0.1 * blocks[0]
                torch.testing.assert_close(new, expected.view_as(old))
        out_old, out_new = (
            before[prefix + "attention.output.dense.weight"],
            after[prefix + "attention.output.dense.weight"],
        )
        expected = out_old.view(-1, 4, head_size).clone()
        expected[:, 1] = 0.9 * out_old.view(-1, 4, head_size)[:, 1] + 0.1 * out_old.view(-1, 4, head_size)[:, 2]
        expected[:, 3] = 0.9 * out_old.view(-1, 4, head_size)[:, 3] + 0.1 * out_old.view(-1, 4, head_size)[:, 0]
        torch.testing.assert_close(out_new, expected.view_as(out_old))
        # Neurons: bottom half receives from top half, by rank, rows of the FFN input and columns of its output.
        receivers, partners = grafting_pairs(neurons[layer])
        w1_old, w1_new = before[prefix + "intermediate.dense.weight"], after[prefix + "intermediate.dense.weight"]
        torch.testing.assert_close(w1_new[receivers], 0.9 * w1_old[receivers] + 0.1 * w1_old[partners])
        torch.testing.assert_close(w1_new[partners], w1_old[partners])
        w2_old, w2_new = before[prefix + "output.dense.weight"], after[prefix + "output.dense.weight"]
        torch.testing.assert_close(w2_new[:, receivers], 0.9 * w2_old[:, receivers] + 0.1 * w2_old[:, partners])
    untouched = [
        k for k in before if "LayerNorm" in k or "embeddings" in k or "pooler" in k or "output.dense.bias" in k
    ]
    assert untouched and all(torch.equal(before[k], after[k]) for k in untouched)


def test_entropy_alpha_favours_the_more_informative_unit():
    spread = torch.randn(1, 4000)  # many histogram bins used: high entropy
    peaked = torch.zeros(1, 4000)
    peaked[0, 0] = 1.0  # almost all weights in one bin: low entropy
    # A low-entropy receiver takes most of a high-entropy partner, within Filter Grafting's (0.3, 0.7) range.
    assert 0.5 < entropy_alpha(peaked, spread).item() < 0.7
    assert 0.3 < entropy_alpha(spread, peaked).item() < 0.5
    assert entropy_alpha(spread, spread).item() == pytest.approx(0.5)
