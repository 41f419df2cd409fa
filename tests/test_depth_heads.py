"""`depth_heads="ramps"`: a shallower prefix sub-network is answered by the off-ramp after its last layer (Flexible
BERT's depth sub-networks) — in the static forward, in the dynamic engine, in the static export and in the ramps
stage of `transformers-flex train --depth_heads ramps`."""

import csv
import json

import pytest
import torch
from pipeline_runs import DEPTHS, TINY_BUDGET, WIDTHS, csv_arguments, train_here
from test_pipeline import metric_keys
from transformers import AutoTokenizer

from transformers_flex import FlexBertConfig, FlexBertForQuestionAnswering, FlexBertForSequenceClassification
from transformers_flex.export import to_bert


def ramp_config(tiny_config: FlexBertConfig, ramp_type: str = "pooler") -> FlexBertConfig:
    """The tiny 4-layer config with the prefix rule and a ramp after the last layer of each shallower depth (0.75
    keeps 3 layers, 0.5 keeps 2)."""
    tiny_config.update({"depth_rule": "prefix", "exit_layers": [2, 3], "ramp_type": ramp_type})
    tiny_config.depth_heads = "ramps"
    return tiny_config


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"depth_heads": "ramps"}, "needs `depth_rule='prefix'`"),
        ({"depth_heads": "ramps", "depth_rule": "prefix", "knowledgeable_layers": [2, 4]}, "knowledgeable_layers"),
        ({"depth_heads": "off_ramps"}, "`depth_heads` must be one of"),
    ],
)
def test_bad_depth_heads_are_refused(tiny_config, fields, message):
    with pytest.raises(ValueError, match=message):
        FlexBertConfig(**{**tiny_config.to_dict(), **fields})


@pytest.mark.parametrize("ramp_type", ["pooler", "attention"])
def test_each_depth_is_answered_by_its_own_ramp(tiny_config, tiny_inputs, ramp_type):
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(ramp_config(tiny_config, ramp_type)).eval()
    with torch.no_grad():
        full = model(**tiny_inputs, width=0.5, output_hidden_states=True)
        ramps = model.ramp_logits(full.hidden_states, tiny_inputs["attention_mask"])  # read off the full depth
        for depth, layer in ((0.75, 3), (0.5, 2)):
            shallow = model(**tiny_inputs, width=0.5, depth=depth).logits
            torch.testing.assert_close(shallow, ramps[layer], atol=1e-5, rtol=0)
        model.config.depth_heads = "final"  # the same weights answered by the final head instead
        final_head = model(**tiny_inputs, width=0.5, depth=0.5).logits
    assert not torch.allclose(final_head, ramps[2], atol=1e-3)


def test_a_depth_without_its_ramp_is_an_error(tiny_config, tiny_inputs):
    config = ramp_config(tiny_config)
    config.exit_layers = [3]
    model = FlexBertForSequenceClassification(config).eval()
    with pytest.raises(ValueError, match="off-ramp after layer 2"):
        model(**tiny_inputs, depth=0.5)


@pytest.mark.parametrize(
    ("cls", "ramp_type"),
    [
        (FlexBertForSequenceClassification, "pooler"),
        (FlexBertForSequenceClassification, "attention"),
        (FlexBertForQuestionAnswering, "pooler"),  # span ramps are one linear layer whatever `ramp_type` says
    ],
)
def test_engine_and_export_answer_as_the_static_sub_network(tiny_config, tiny_inputs, cls, ramp_type):
    """No ramp exits (threshold 0): the engine runs the depth-0.5 sub-network and answers with its ramp, as the
    static forward does; the export of that sub-network computes the same, its final head being the pooler ramp,
    or its attention ramp kept after its last layer (which the export's engine answers with too)."""
    tiny_config.num_labels = 2  # the QA head has two outputs (start, end)
    torch.manual_seed(0)
    model = cls(ramp_config(tiny_config, ramp_type)).eval()

    def answer(output) -> torch.Tensor:
        return output.logits if hasattr(output, "logits") else torch.stack([output.start_logits, output.end_logits])

    with torch.no_grad():
        static = answer(model(**tiny_inputs, width=0.75, depth=0.5))
        engine = model.dynamic_forward(**tiny_inputs, width=0.75, depth=0.5, criterion="entropy", threshold=0.0)
        compact = model.export_subnet(width=0.75, depth=0.5)
        exported = answer(compact(**tiny_inputs))
        exported_engine = compact.dynamic_forward(**tiny_inputs, criterion="entropy", threshold=0.0)
    assert engine.exit_layers.tolist() == [2, 2] == exported_engine.exit_layers.tolist()
    real = tiny_inputs["attention_mask"].bool()  # the engine's QA logits hold the dtype's minimum on padding
    if cls is FlexBertForQuestionAnswering:
        torch.testing.assert_close(answer(engine)[:, real], static[:, real], atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(answer(engine), static, atol=1e-5, rtol=0)
        torch.testing.assert_close(answer(exported_engine), static, atol=1e-5, rtol=0)
    torch.testing.assert_close(exported, static, atol=1e-5, rtol=0)
    assert compact.config.num_hidden_layers == 2
    # Only an attention ramp stays a ramp (after the export's last layer); a pooler ramp became the final head.
    assert compact.config.exit_layers == ([2] if ramp_type == "attention" else [])


def test_a_depth_answered_by_an_attention_ramp_is_no_plain_bert(tiny_config):
    model = FlexBertForSequenceClassification(ramp_config(tiny_config, "attention"))
    with pytest.raises(ValueError, match="BERT's heads cannot express"):
        to_bert(model, depth=0.5)
    assert to_bert(model, depth=1.0).config.num_hidden_layers == 4  # the full depth has the final head


# --- the ramps stage of `transformers-flex train` with `--depth_heads ramps` ----------------------------------------


def ramps_stage_arguments(classification_run, data_files, output_dir) -> list:
    """One ramps stage from the shared run's width_depth model, on its CSV, at its tiny budget."""
    run_dir, _ = classification_run
    args = ["--flex_stage", "ramps", "--model_name_or_path", run_dir / "width_depth"]
    return [*args, *csv_arguments(data_files, output_dir), "--label_column_name", "sentiment", *TINY_BUDGET]


@pytest.mark.integration
def test_ramps_stage_gives_each_depth_its_ramp_and_scores_it(classification_run, data_files, tmp_path):
    """`--depth_rule prefix --depth_heads ramps` without `--exit_layers`: a ramp after the last layer of each
    shallower depth (3 and 5 of 6), and the stage's dev scores of all 12 sub-networks, each shallower one through
    its ramp: its reported loss is the cross-entropy of that ramp's logits read off the full depth."""
    args = [*ramps_stage_arguments(classification_run, data_files, tmp_path), "--depth_rule", "prefix"]
    # Randomly initialised ramps: a score read from the final head instead could not pass for the ramp's.
    train_here(*args, "--depth_heads", "ramps", "--copy_head_to_new_ramps", "false")
    metrics = json.loads((tmp_path / "stage_results.json").read_text())["metrics"]
    assert metric_keys(metrics, "accuracy") == {(width, depth) for width in WIDTHS for depth in DEPTHS}
    model = FlexBertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert model.config.depth_heads == "ramps" and model.config.exit_layers == [3, 5]
    dev = list(csv.DictReader(open(data_files["dev.csv"])))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    batch = tokenizer(
        [row["review"] for row in dev], truncation=True, max_length=32, padding=True, return_tensors="pt"
    )
    labels = torch.tensor([model.config.label2id[row["sentiment"]] for row in dev])
    with torch.no_grad():
        full = model(**batch, width=0.5, output_hidden_states=True, dynamic=False)
        ramps = model.ramp_logits(full.hidden_states, batch["attention_mask"])
        model.config.depth_heads = "final"
        final_head = model(**batch, width=0.5, depth=0.5, dynamic=False).logits
    for depth, layer in ((0.75, 5), (0.5, 3)):
        expected = torch.nn.functional.cross_entropy(ramps[layer], labels).item()
        assert metrics[f"eval_w0.5_d{depth}_loss"] == pytest.approx(expected, abs=1e-4)
    assert abs(torch.nn.functional.cross_entropy(final_head, labels).item() - expected) > 1e-2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "add --depth_rule prefix"),  # the shared run's rule is every_other
        (["--depth_rule", "prefix", "--exit_layers", "3"], "lacks \\[5\\]"),
    ],
)
def test_depth_heads_ramps_is_refused_without_what_it_needs(classification_run, data_files, tmp_path, extra, message):
    with pytest.raises(SystemExit, match=message):
        train_here(*ramps_stage_arguments(classification_run, data_files, tmp_path), "--depth_heads", "ramps", *extra)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_depth_heads_ramps_brings_the_ramps_stage_and_needs_it():
    from transformers_flex.training_pipeline import (
        ModelArguments,
        PipelineArguments,
        check_dynamic_flags,
        resolve_stages,
    )

    model_args = ModelArguments(depth_heads="ramps")
    assert resolve_stages(PipelineArguments(), model_args)[-1] == "ramps"  # default stages, no --exit_layers given
    stages = resolve_stages(PipelineArguments(stages=["teacher", "width"]), model_args)
    with pytest.raises(SystemExit, match="--depth_heads ramps shapes the ramps stage"):
        check_dynamic_flags(stages, model_args, FlexBertConfig())
    check_dynamic_flags((*stages, "ramps"), model_args, FlexBertConfig())  # the ramps stage has what it needs
