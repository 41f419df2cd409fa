"""Static export: physically smaller models that compute exactly what the sliced supernet computes."""

import pytest
import torch

from transformers_flex import FlexBertForQuestionAnswering, FlexBertForSequenceClassification, FlexBertModel
from transformers_flex.export import to_bert
from transformers_flex.flops import subnet_num_parameters

HEADS = {
    FlexBertForSequenceClassification: "sequence_classification",
    FlexBertForQuestionAnswering: "question_answering",
    FlexBertModel: "none",
}
SUBNETS = [(1.0, 1.0), (0.75, 0.75), (0.5, 1.0), (0.25, 0.5), ([1.0, 0.25, 0.5, 0.75], 0.75)]


def first_output(output):
    return output.logits if hasattr(output, "logits") else output[0]


@pytest.mark.parametrize("cls", list(HEADS))
@pytest.mark.parametrize(("width", "depth"), SUBNETS)
@pytest.mark.parametrize("depth_rule", ["every_other", "prefix"])
def test_export_equals_sliced_supernet_and_is_smaller(tiny_config, tiny_inputs, cls, width, depth, depth_rule):
    tiny_config.depth_rule = depth_rule
    tiny_config.num_labels = 2  # the QA head has two outputs (start, end)
    torch.manual_seed(0)
    model = cls(tiny_config).eval()
    compact = model.export_subnet(width=width, depth=depth)
    with torch.no_grad(), model.subnet(width=width, depth=depth):
        torch.testing.assert_close(
            first_output(compact(**tiny_inputs)), first_output(model(**tiny_inputs)), atol=1e-5, rtol=0
        )
    assert compact.num_parameters() == subnet_num_parameters(tiny_config, width, depth, head=HEADS[cls])
    assert model.active_subnet == {"width": 1.0, "depth": 1.0}  # exporting leaves the supernet untouched
    if (width, depth) != (1.0, 1.0):
        assert compact.num_parameters() < model.num_parameters()


def test_export_saves_and_loads_like_any_checkpoint(tiny_config, tiny_inputs, tmp_path):
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(tiny_config).eval()
    compact = model.export_subnet(width=[0.25, 0.5, 0.75, 1.0], depth=0.75)
    compact.save_pretrained(tmp_path)
    reloaded = FlexBertForSequenceClassification.from_pretrained(tmp_path).eval()
    # depth 0.75 of 4 layers keeps layers 0, 1, 2; their widths 0.25, 0.5, 0.75 keep 1, 2, 3 of 4 heads.
    assert reloaded.config.layer_num_heads == [1, 2, 3]
    assert reloaded.config.layer_intermediate_sizes == [32, 64, 96]
    with torch.no_grad(), model.subnet(width=[0.25, 0.5, 0.75, 1.0], depth=0.75):
        torch.testing.assert_close(reloaded(**tiny_inputs).logits, model(**tiny_inputs).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("depth_rule", ["every_other", "prefix"])
def test_full_width_export_is_a_plain_bert(tiny_config, tiny_inputs, depth_rule):
    tiny_config.depth_rule = depth_rule
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(tiny_config).eval()
    bert = to_bert(model, width=1.0, depth=0.5).eval()
    assert type(bert).__name__ == "BertForSequenceClassification"
    assert bert.config.num_hidden_layers == 2
    with torch.no_grad(), model.subnet(depth=0.5):
        torch.testing.assert_close(bert(**tiny_inputs).logits, model(**tiny_inputs).logits, atol=1e-5, rtol=0)


def test_narrow_export_cannot_be_a_plain_bert(tiny_config):
    model = FlexBertForSequenceClassification(tiny_config)
    with pytest.raises(ValueError, match="full width"):
        to_bert(model, width=0.5)


def test_loading_into_mismatched_shapes_is_an_error(tiny_config, tmp_path):
    model = FlexBertForSequenceClassification(tiny_config)
    model.export_subnet(width=0.5).save_pretrained(tmp_path)
    # The same weights into a model that expects full-size layers: shapes disagree and loading must refuse.
    with pytest.raises(RuntimeError, match="mismatch"):
        FlexBertForSequenceClassification.from_pretrained(
            tmp_path, layer_num_heads=None, layer_intermediate_sizes=None
        )
