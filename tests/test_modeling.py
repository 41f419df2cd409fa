"""Width and depth slicing on a tiny random model, checked against independent references."""

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

from transformers_flex import FlexBertForQuestionAnswering, FlexBertForSequenceClassification, FlexBertModel
from transformers_flex.export import FLEX_ONLY_FIELDS
from transformers_flex.modeling_flexbert import heads_for_width, kept_layer_indices, neurons_for_heads


def make_model(config, seed=0, cls=FlexBertForSequenceClassification):
    torch.manual_seed(seed)
    return cls(config).eval()


def bert_twin(flex, bert_cls):
    """A vanilla transformers BERT with the FlexBert model's weights (same parameter names)."""
    fields = {k: v for k, v in flex.config.to_dict().items() if k not in FLEX_ONLY_FIELDS}
    bert = bert_cls(BertConfig(**fields)).eval()
    bert.load_state_dict(flex.state_dict(), strict=True)
    return bert


def test_every_other_depth_keeps_dynabert_layers():
    # docs/algorithms.md §2: for 12 layers, depth 0.75 drops layers 3, 7, 11 and depth 0.5 every odd layer.
    assert sorted(set(range(12)) - set(kept_layer_indices(12, 0.75, "every_other"))) == [3, 7, 11]
    assert kept_layer_indices(12, 0.5, "every_other") == [0, 2, 4, 6, 8, 10]
    assert kept_layer_indices(12, 1.0, "every_other") == list(range(12))
    assert kept_layer_indices(12, 0.5, "prefix") == list(range(6))


def test_width_keeps_whole_heads_and_the_head_ratio_of_neurons():
    assert [heads_for_width(12, w) for w in (1.0, 0.75, 0.5, 0.25)] == [12, 9, 6, 3]
    assert [neurons_for_heads(3072, h, 12) for h in (12, 9, 6, 3)] == [3072, 2304, 1536, 768]
    assert heads_for_width(12, 0.01) == 1


@pytest.mark.parametrize("bert_cls", [BertForSequenceClassification, BertForQuestionAnswering])
def test_full_model_equals_vanilla_bert(tiny_config, tiny_inputs, bert_cls):
    flex_cls = (
        FlexBertForSequenceClassification
        if bert_cls is BertForSequenceClassification
        else (FlexBertForQuestionAnswering)
    )
    tiny_config.num_labels = 2
    flex = make_model(tiny_config, cls=flex_cls)
    bert = bert_twin(flex, bert_cls)
    with torch.no_grad():
        flex_out, bert_out = flex(**tiny_inputs), bert(**tiny_inputs)
    for key in ("logits",) if bert_cls is BertForSequenceClassification else ("start_logits", "end_logits"):
        torch.testing.assert_close(flex_out[key], bert_out[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("depth_rule", ["every_other", "prefix"])
@pytest.mark.parametrize("depth", [0.75, 0.5])
def test_depth_equals_bert_with_only_the_kept_layers(tiny_config, tiny_inputs, depth_rule, depth):
    tiny_config.depth_rule = depth_rule
    flex = make_model(tiny_config)
    bert = bert_twin(flex, BertForSequenceClassification)
    kept = kept_layer_indices(tiny_config.num_hidden_layers, depth, depth_rule)
    bert.bert.encoder.layer = nn.ModuleList([bert.bert.encoder.layer[i] for i in kept])
    with torch.no_grad(), flex.subnet(depth=depth):
        torch.testing.assert_close(flex(**tiny_inputs).logits, bert(**tiny_inputs).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("width", [0.75, 0.5, 0.25, [1.0, 0.5, 0.25, 0.75]])
def test_width_equals_full_model_with_dropped_units_silenced(tiny_config, tiny_inputs, width):
    """Slicing a prefix == zeroing the inputs that dropped heads/neurons feed into the output projections."""
    flex = make_model(tiny_config)
    silenced = make_model(tiny_config)
    widths = width if isinstance(width, list) else [width] * tiny_config.num_hidden_layers
    head_size = tiny_config.head_size
    with torch.no_grad():
        for layer, layer_width in zip(silenced.bert.encoder.layer, widths):
            heads = heads_for_width(tiny_config.num_attention_heads, layer_width)
            neurons = neurons_for_heads(tiny_config.intermediate_size, heads, tiny_config.num_attention_heads)
            layer.attention.output.dense.weight[:, heads * head_size :] = 0
            layer.output.dense.weight[:, neurons:] = 0
        with flex.subnet(width=width):
            torch.testing.assert_close(flex(**tiny_inputs).logits, silenced(**tiny_inputs).logits, atol=1e-6, rtol=0)


def test_subnet_context_restores_the_previous_subnet_even_on_error(tiny_config, tiny_inputs):
    model = make_model(tiny_config)
    model.set_subnet(width=0.5, depth=0.75)
    with pytest.raises(RuntimeError, match="boom"), model.subnet(width=0.25, depth=0.5):
        assert model.active_subnet == {"width": 0.25, "depth": 0.5}
        raise RuntimeError("boom")
    assert model.active_subnet == {"width": 0.5, "depth": 0.75}
    with torch.no_grad():
        narrowed = model(**tiny_inputs).logits
        model.set_subnet()
        assert not torch.allclose(narrowed, model(**tiny_inputs).logits)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0.0}, "width"),
        ({"width": 1.2}, "width"),
        ({"width": True}, "width"),
        ({"width": [1.0, 0.5]}, "one entry per layer"),
        ({"width": [1.0, 0.5, 0.5, 0.0]}, "width"),
        ({"depth": 0}, "depth"),
        ({"depth": 1.5}, "depth"),
    ],
)
def test_invalid_subnet_is_a_clear_error_and_changes_nothing(tiny_config, kwargs, message):
    model = make_model(tiny_config)
    model.set_subnet(width=0.5, depth=0.5)
    with pytest.raises(ValueError, match=message):
        model.set_subnet(**kwargs)
    assert model.active_subnet == {"width": 0.5, "depth": 0.5}


def test_head_mask_is_refused(tiny_config, tiny_inputs):
    model = make_model(tiny_config)
    with pytest.raises(ValueError, match="head_mask"):
        model(**tiny_inputs, head_mask=torch.ones(4, 4))


def test_outputs_follow_the_active_subnet(tiny_config, tiny_inputs):
    model = make_model(tiny_config, cls=FlexBertModel)
    with torch.no_grad(), model.subnet(width=0.5, depth=0.5):
        out = model(**tiny_inputs, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 1 + 2  # embeddings + the two kept layers
    assert all(h.shape == (2, 9, 64) for h in out.hidden_states)  # every hidden state stays full width
    assert [a.shape for a in out.attentions] == [(2, 2, 9, 9)] * 2  # two of four heads
    torch.testing.assert_close(out.attentions[0][1, :, :, 5:], torch.zeros(2, 9, 4))  # padding gets no attention


def test_eager_and_sdpa_agree(tiny_config, tiny_inputs):
    model = make_model(tiny_config)
    with torch.no_grad(), model.subnet(width=0.75):
        sdpa = model(**tiny_inputs).logits
        model.config._attn_implementation = "eager"
        eager = model(**tiny_inputs).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-6, rtol=0)


@pytest.mark.parametrize("num_labels", [1, 3])
def test_loss_matches_bert(tiny_config, tiny_inputs, num_labels):
    tiny_config.num_labels = num_labels
    flex = make_model(tiny_config)
    bert = bert_twin(flex, BertForSequenceClassification)
    labels = torch.tensor([0.3, -1.2]) if num_labels == 1 else torch.tensor([2, 0])
    with torch.no_grad():
        torch.testing.assert_close(flex(**tiny_inputs, labels=labels).loss, bert(**tiny_inputs, labels=labels).loss)


def test_narrow_subnet_trains_only_its_own_slice(tiny_config, tiny_inputs):
    model = make_model(tiny_config)
    model.train()
    with model.subnet(width=0.5):
        model(**tiny_inputs, labels=torch.tensor([1, 2])).loss.backward()
    query = model.bert.encoder.layer[0].attention.self.query
    kept_rows = 2 * tiny_config.head_size
    assert query.weight.grad[:kept_rows].abs().sum() > 0
    assert query.weight.grad[kept_rows:].abs().sum() == 0
