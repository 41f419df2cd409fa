"""The analytic cost model against torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from transformers_flex import FlexBertConfig, FlexBertForQuestionAnswering, FlexBertForSequenceClassification
from transformers_flex.flops import paper_flops, subnet_flops


@pytest.mark.parametrize(("width", "depth"), [(1.0, 1.0), (0.75, 0.75), (0.5, 0.5), ([0.25, 1.0, 0.5, 0.75], 1.0)])
@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize(
    ("cls", "head"),
    [
        (FlexBertForSequenceClassification, "sequence_classification"),
        (FlexBertForQuestionAnswering, "question_answering"),
    ],
)
def test_analytic_flops_match_flop_counter(tiny_config, width, depth, eager, cls, head):
    tiny_config.num_labels = 2
    if eager:
        tiny_config._attn_implementation = "eager"
    model = cls(tiny_config).eval()
    seq_length = 13
    input_ids = torch.randint(1, 99, (1, seq_length))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), model.subnet(width=width, depth=depth), counter:
        model(input_ids=input_ids)
    # Eager attention is two counted matmuls; torch's counter has no formula for the fused CPU SDPA kernel, so
    # under SDPA it sees exactly the linear layers.
    expected = subnet_flops(tiny_config, width, depth, seq_length, head=head, linear_only=not eager)
    assert counter.get_total_flops() == expected


def test_bert_base_paper_figure_and_ratios():
    # docs/algorithms.md §10: linear layers at padded length 128 give BERT-base about 21.7 GFLOPs (FastBERT: 21,785M).
    config = FlexBertConfig()
    assert 21.7e9 < paper_flops(config) < 21.8e9
    full = subnet_flops(config)
    for (width, depth), ratio in {(0.5, 1.0): 0.50, (0.75, 0.75): 0.5625, (0.25, 0.5): 0.125}.items():
        assert subnet_flops(config, width, depth) / full == pytest.approx(ratio, abs=1e-3)


@pytest.mark.parametrize("ramp_type", ["attention", "pooler"])
@pytest.mark.parametrize(("width", "depth"), [(1.0, 1.0), (0.5, 0.75), (0.25, 0.5)])
def test_flops_of_a_depth_answered_by_its_own_ramp_match_flop_counter(tiny_config, ramp_type, width, depth):
    """Under `depth_heads="ramps"` a shallower sub-network is answered by the off-ramp after its last layer, and
    only that head runs after the layers (no final pooler): the count is that ramp's cost."""
    tiny_config.update({"num_labels": 2, "depth_rule": "prefix", "depth_heads": "ramps", "ramp_type": ramp_type})
    tiny_config.update({"exit_layers": [2, 3], "dynamic_inference": False})  # depths 0.5 and 0.75 of 4 layers
    model = FlexBertForSequenceClassification(tiny_config).eval()
    seq_length = 13
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), model.subnet(width=width, depth=depth), counter:
        model(input_ids=torch.randint(1, 99, (1, seq_length)))
    # The counter sees the linear layers only (no formula for the fused CPU SDPA kernel, in the ramp too).
    assert counter.get_total_flops() == subnet_flops(tiny_config, width, depth, seq_length, linear_only=True)
