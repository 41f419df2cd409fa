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
        ("exit_layers", [6, 3]),
        ("exit_layers", [3, 3]),
        ("exit_threshold", "0.5"),
        ("exit_threshold", float("nan")),
        ("exit_regression_tolerance", None),
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


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gate_widths", [2.0]),
        ("exit_layers", [9]),
        ("exit_threshold", "high"),
        ("depth_rule", "odd"),
        ("width_mults", []),
    ],
)
def test_an_invalid_assignment_is_refused_and_the_old_value_stays(field, value):
    config = FlexBertConfig(num_hidden_layers=6, exit_layers=[2, 4])
    before = config.to_dict()
    with pytest.raises(ValueError, match=field):
        setattr(config, field, value)
    assert config.to_dict() == before


@pytest.mark.parametrize(
    ("field", "value"), [("num_attention_heads", 0), ("ramp_attention_heads", 0), ("hidden_size", None)]
)
def test_sizes_must_be_positive_integers_and_a_refused_size_is_not_kept(field, value):
    config = FlexBertConfig()
    before = config.to_dict()
    with pytest.raises(ValueError, match=field):
        setattr(config, field, value)
    assert config.to_dict() == before


@pytest.mark.parametrize(
    "overrides",
    [{"num_hidden_layers": 3, "exit_layers": [1, 2]}, {"exit_layers": [1, 2], "num_hidden_layers": 3}],
)
def test_load_time_overrides_that_only_fit_together_load_in_any_order(tmp_path, overrides):
    FlexBertConfig(num_hidden_layers=6, exit_layers=[2, 5]).save_pretrained(tmp_path)
    config = FlexBertConfig.from_pretrained(tmp_path, **overrides)
    assert (config.num_hidden_layers, config.exit_layers) == (3, [1, 2])


def test_an_invalid_update_restores_every_field():
    config = FlexBertConfig(num_hidden_layers=6, exit_layers=[2, 4])
    before = config.to_dict()
    with pytest.raises(ValueError, match="exit_layers"):
        config.update({"num_hidden_layers": 3, "exit_threshold": 0.3})  # exit layer 4 no longer exists
    assert config.to_dict() == before
    config.update({"num_hidden_layers": 4, "exit_layers": [1, 3]})  # fields that only fit together are one update
    assert (config.num_hidden_layers, config.exit_layers) == (4, [1, 3])


def test_in_place_edits_are_caught_on_save_and_bad_files_on_load(tmp_path):
    config = FlexBertConfig()
    config.gate_widths.append(2.0)  # bypasses assignment
    with pytest.raises(ValueError, match="gate_widths"):
        config.save_pretrained(tmp_path / "edited")
    assert not (tmp_path / "edited" / "config.json").exists()
    FlexBertConfig().save_pretrained(tmp_path / "good")
    saved = json.loads((tmp_path / "good" / "config.json").read_text())
    assert not any(key.startswith("_flex") for key in saved)  # the run-time switch is never written
    (tmp_path / "good" / "config.json").write_text(json.dumps(saved | {"exit_layers": [5, 2]}))
    with pytest.raises(ValueError, match="exit_layers"):
        FlexBertConfig.from_pretrained(tmp_path / "good")


def test_gate_widths_that_no_longer_match_the_gates_are_refused_on_save(tiny_config, tmp_path):
    from transformers_flex import FlexBertForSequenceClassification

    tiny_config.gate_block_size = 2
    model = FlexBertForSequenceClassification(tiny_config)
    model.config.gate_widths = [0.5, 0.75]  # valid widths, but the gates have four classes
    with pytest.raises(ValueError, match="four|4 classes"):
        model.save_pretrained(tmp_path)
    model.config.gate_widths = [0.5, 0.55, 0.55, 0.75]  # a remap with one width per class saves
    model.save_pretrained(tmp_path)


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
