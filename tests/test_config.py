import json

import pytest

from transformers_flex import FlexBertConfig
from transformers_flex.configuration_flexbert import FLEXBERT_AUTO_MAP


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width_mults", [1.0, 0.0]),
        ("width_mults", [1.5]),
        ("width_mults", []),
        ("width_mults", [True]),
        ("depth_mults", [0.5, -1]),
        ("depth_rule", "odd_layers"),
        ("exit_layers", [0]),
        ("exit_layers", [13]),
        ("exit_criterion", "confidence"),
        ("exit_threshold", -0.1),
        ("gate_widths", [0.5, 2.0]),
        ("layer_num_heads", [12] * 11),
        ("layer_num_heads", [13] * 12),
        ("layer_intermediate_sizes", [0] * 12),
    ],
)
def test_invalid_field_is_a_clear_value_error(field, value):
    with pytest.raises(ValueError, match=field):
        FlexBertConfig(**{field: value})


def test_hidden_size_must_split_into_heads():
    with pytest.raises(ValueError, match="num_attention_heads"):
        FlexBertConfig(hidden_size=100, num_attention_heads=12)


def test_relative_position_embeddings_are_refused():
    with pytest.raises(ValueError, match="position_embedding_type"):
        FlexBertConfig(position_embedding_type="relative_key")


def test_bert_config_loads_as_flexbert(backbone_path):
    config = FlexBertConfig.from_pretrained(backbone_path)
    assert config.model_type == "flexbert"
    assert config.to_dict()["model_type"] == "flexbert"
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 384, 12)
    assert config.width_mults == [1.0, 0.75, 0.5, 0.25] and config.depth_mults == [1.0, 0.75, 0.5]


def test_saved_config_keeps_the_full_auto_map_and_flex_fields(tmp_path):
    FlexBertConfig(depth_rule="prefix", width_mults=[1.0, 0.5], exit_layers=[3, 6]).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == FLEXBERT_AUTO_MAP
    reloaded = FlexBertConfig.from_pretrained(tmp_path)
    assert (reloaded.depth_rule, reloaded.width_mults, reloaded.exit_layers) == ("prefix", [1.0, 0.5], [3, 6])
