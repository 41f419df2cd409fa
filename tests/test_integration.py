"""The real backbone (all-MiniLM-L6-v2) and real SST-2 data."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from clean_process import run_without_package
from pipeline_runs import trained_anything
from torch.utils.data import DataLoader
from transformers import (
    AutoTokenizer,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    DataCollatorWithPadding,
)

from transformers_flex import FlexBertForQuestionAnswering, FlexBertForSequenceClassification, FlexBertModel
from transformers_flex.data import load_glue, split_train_heldout, tokenize_glue
from transformers_flex.export import to_bert
from transformers_flex.importance import compute_importance, rewire
from transformers_flex.training_pipeline import load_teacher
from transformers_flex.training_pipeline import main as pipeline_main

pytestmark = pytest.mark.integration

SENTENCES = ["a gripping , beautifully acted film .", "dull"]
PAIRS = (
    ["The cat sat on the mat.", "Stocks fell sharply on Monday after the report was published."],
    ["A cat was sitting on a mat.", "Markets dropped."],
)


@pytest.fixture(scope="module")
def tokenizer(backbone_path):
    return AutoTokenizer.from_pretrained(backbone_path)


@pytest.fixture(scope="module")
def bert_checkpoint(backbone_path, tmp_path_factory):
    """A real BERT classifier checkpoint: the backbone with a seeded classification head."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bert")
    BertForSequenceClassification.from_pretrained(backbone_path, num_labels=2).save_pretrained(path)
    return path


def batches(tokenizer):
    single = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    pairs = tokenizer(*PAIRS, padding=True, return_tensors="pt")
    assert not single["attention_mask"].all() and not pairs["attention_mask"].all()  # both batches are padded
    return [single, pairs]


def test_full_flexbert_equals_vanilla_bert_on_the_real_backbone(bert_checkpoint, tokenizer):
    bert = BertForSequenceClassification.from_pretrained(bert_checkpoint).eval()
    flex = FlexBertForSequenceClassification.from_pretrained(bert_checkpoint).eval()
    with torch.no_grad():
        for batch in batches(tokenizer):
            assert (flex(**batch).logits - bert(**batch).logits).abs().max() <= 1e-5


def test_qa_head_equals_vanilla_bert_on_the_real_backbone(backbone_path, tokenizer, tmp_path):
    torch.manual_seed(0)
    BertForQuestionAnswering.from_pretrained(backbone_path).save_pretrained(tmp_path)
    bert = BertForQuestionAnswering.from_pretrained(tmp_path).eval()
    flex = FlexBertForQuestionAnswering.from_pretrained(tmp_path).eval()
    batch = tokenizer(*PAIRS, padding=True, return_tensors="pt")
    with torch.no_grad():
        flex_out, bert_out = flex(**batch), bert(**batch)
    assert (flex_out.start_logits - bert_out.start_logits).abs().max() <= 1e-5
    assert (flex_out.end_logits - bert_out.end_logits).abs().max() <= 1e-5


def test_rewiring_keeps_outputs_and_sorts_importance(bert_checkpoint, tokenizer, data_dir):
    train = load_glue("sst2", data_dir)["train"]
    _, heldout = split_train_heldout(train, num_train=0, num_heldout=64, seed=0)
    loader = DataLoader(
        tokenize_glue(heldout, tokenizer, "sst2", max_length=64),
        batch_size=16,
        collate_fn=DataCollatorWithPadding(tokenizer),
    )
    model = FlexBertForSequenceClassification.from_pretrained(bert_checkpoint).eval()
    probe = batches(tokenizer)
    with torch.no_grad():
        before = [model(**batch).logits for batch in probe]
    importance = compute_importance(model, loader, show_progress=False)
    assert all(p.grad is None for p in model.parameters())  # importance leaves no gradients behind
    rewire(model, importance)
    with torch.no_grad():
        for batch, logits in zip(probe, before):
            assert (model(**batch).logits - logits).abs().max() <= 1e-4
    after = compute_importance(model, loader, show_progress=False)
    for old, new in zip(importance.heads + importance.neurons, after.heads + after.neurons):
        assert torch.all(new[:-1] >= new[1:] - 1e-4 * new.max())  # sorted descending, up to float noise
        torch.testing.assert_close(new, old.sort(descending=True).values, rtol=1e-3, atol=1e-6)


REMOTE_LOADER = textwrap.dedent(
    """
    import torch
    import transformers

    checkpoint, auto_class, inputs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    model = getattr(transformers, auto_class).from_pretrained(checkpoint, trust_remote_code=True).eval()
    with torch.no_grad():
        output = model(**{key: torch.tensor(value) for key, value in inputs.items()})
    first = output[0] if auto_class != "AutoModelForQuestionAnswering" else output.start_logits
    exits = output.get("exit_layers")
    print(json.dumps({
        "class": type(model).__name__,
        "module": type(model).__module__,
        "output": first.tolist(),
        "exit_layers": None if exits is None else exits.tolist(),
    }))
    """
)


def load_in_clean_process(checkpoint, auto_class, inputs, tmp_path):
    """Load `checkpoint` with `auto_class` in a subprocess where transformers_flex cannot be imported."""
    encoded = json.dumps({key: value.tolist() for key, value in inputs.items()})
    return json.loads(run_without_package(REMOTE_LOADER, str(checkpoint), auto_class, encoded, workdir=tmp_path)[-1])


@pytest.mark.parametrize(
    ("cls", "auto_class"),
    [
        (FlexBertModel, "AutoModel"),
        (FlexBertForSequenceClassification, "AutoModelForSequenceClassification"),
        (FlexBertForQuestionAnswering, "AutoModelForQuestionAnswering"),
    ],
)
def test_checkpoint_loads_with_remote_code_without_the_package(backbone_path, tokenizer, tmp_path, cls, auto_class):
    torch.manual_seed(0)
    model = cls.from_pretrained(backbone_path, depth_rule="prefix").eval()
    model.save_pretrained(tmp_path / "checkpoint")
    assert {"configuration_flexbert.py", "modeling_flexbert.py"} <= set(os.listdir(tmp_path / "checkpoint"))
    batch = tokenizer(*PAIRS, padding=True, return_tensors="pt")
    loaded = load_in_clean_process(tmp_path / "checkpoint", auto_class, batch, tmp_path)
    assert loaded["class"] == cls.__name__ and loaded["module"].startswith("transformers_modules")
    with torch.no_grad():
        output = model(**batch)
    expected = output.start_logits if auto_class == "AutoModelForQuestionAnswering" else output[0]
    assert (torch.tensor(loaded["output"]) - expected).abs().max() <= 1e-5


def test_dynamic_checkpoint_runs_its_engine_with_remote_code(backbone_path, tokenizer, tmp_path):
    """Ramps, gates and `dynamic_inference` travel in the checkpoint: the portable file alone runs the engine."""
    torch.manual_seed(0)
    model = FlexBertForSequenceClassification.from_pretrained(
        backbone_path, num_labels=2, exit_layers=[2, 4], gate_block_size=3, dynamic_inference=True
    ).eval()
    model.copy_head_to_off_ramps()
    model.config.exit_threshold = 0.6931  # just below ln 2: only rows whose ramp leans either way leave
    model.save_pretrained(tmp_path / "checkpoint")
    batch = tokenizer(SENTENCES + PAIRS[1], padding=True, return_tensors="pt")
    loaded = load_in_clean_process(tmp_path / "checkpoint", "AutoModelForSequenceClassification", batch, tmp_path)
    output = model(**batch)
    assert loaded["exit_layers"] == output.exit_layers.tolist()
    assert (torch.tensor(loaded["output"]) - output.logits).abs().max() <= 1e-5


def test_every_auto_class_loads_one_checkpoint(bert_checkpoint, tokenizer, tmp_path):
    """One saved classifier also loads as the bare encoder (the full auto_map is a config default)."""
    model = FlexBertForSequenceClassification.from_pretrained(bert_checkpoint).eval()
    model.save_pretrained(tmp_path / "checkpoint")
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    loaded = load_in_clean_process(tmp_path / "checkpoint", "AutoModel", batch, tmp_path)
    assert loaded["class"] == "FlexBertModel"
    with torch.no_grad():
        expected = model.bert(**batch).last_hidden_state
    assert (torch.tensor(loaded["output"]) - expected).abs().max() <= 1e-5


def test_bert_export_loads_without_the_package(bert_checkpoint, tokenizer, tmp_path):
    flex = FlexBertForSequenceClassification.from_pretrained(bert_checkpoint).eval()
    to_bert(flex, width=1.0, depth=0.5).save_pretrained(tmp_path / "bert")
    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    assert config["model_type"] == "bert" and "auto_map" not in config
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    loaded = load_in_clean_process(tmp_path / "bert", "AutoModelForSequenceClassification", batch, tmp_path)
    assert loaded["class"] == "BertForSequenceClassification"
    with torch.no_grad(), flex.subnet(depth=0.5):
        assert (torch.tensor(loaded["output"]) - flex(**batch).logits).abs().max() <= 1e-5


def test_demo_runs_end_to_end(data_dir, tmp_path):
    """`transformers-flex demo` on a small budget: a flexible checkpoint and a row for every sub-network it trains
    (every width at depths 1.0 and 0.75 by default)."""
    command = [sys.executable, "-m", "transformers_flex.cli", "demo", "--output-dir", str(tmp_path)]
    command += ["--train-samples", "64", "--importance-samples", "32", "--eval-samples", "64", "--latency-rounds", "1"]
    command += ["--distill-samples", "32"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=900, env=os.environ | {"HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {(row["width"], row["depth"]) for row in results["subnets"]} == {
        (w, d) for w in (1.0, 0.75, 0.5, 0.25) for d in (1.0, 0.75)
    }
    assert results["rewiring_max_logit_change"] <= 1e-4
    full = next(row for row in results["subnets"] if (row["width"], row["depth"]) == (1.0, 1.0))
    assert full["accuracy_rewired"] == full["accuracy_before_rewiring"]  # rewiring never changes the full model
    assert all(row["accuracy_distilled"] == row["accuracy"] for row in results["subnets"])
    reloaded = FlexBertForSequenceClassification.from_pretrained(tmp_path / "model")
    assert reloaded.config.model_type == "flexbert" and reloaded.config.depth_mults == [1.0, 0.75]


def test_glue_pipeline_example_runs_and_skips_finished_stages(data_dir, tmp_path, capfd, caplog):
    """examples/run_glue_flex.py --flex_stage all on a tiny MRPC budget, then the same command again (the reruns in
    this process: the pipeline's main, which is all the example runs)."""
    script = Path(__file__).resolve().parents[1] / "examples" / "run_glue_flex.py"
    arguments = ["--task_name", "mrpc", "--output_dir", str(tmp_path), "--flex_stage", "all"]
    arguments += ["--max_train_samples", "32", "--max_eval_samples", "16", "--importance_samples", "16"]
    arguments += ["--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--grafting", "--use_cpu"]
    arguments += ["--subnet_sampling", "sandwich", "--report_to", "none", "--disable_tqdm", "true"]
    arguments += ["--save_strategy", "epoch", "--save_total_limit", "1"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first = subprocess.run(
        [sys.executable, str(script), *arguments], capture_output=True, text=True, timeout=900, env=env
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert "train_runtime" in first.stdout + first.stderr  # what the reruns below must not log
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["stages"]) == ["teacher", "rewire", "width", "width_depth"]
    final = results["stages"]["width_depth"]["metrics"]
    assert len([key for key in final if key.endswith("_f1") and key.startswith("eval_w")]) == 12
    for stage in ("teacher", "rewire", "width", "width_depth"):
        assert (tmp_path / stage / "model.safetensors").exists()
    for stage in ("teacher", "width", "width_depth"):
        summary = results["stages"][stage]
        assert summary["steps_trained"] == summary["steps"] > 0 and summary["resumed_from"] is None
        assert summary["seconds_per_step"] == summary["train_runtime"] / summary["steps"]
    pipeline_main(arguments)
    assert json.loads((tmp_path / "results.json").read_text()) == results  # every stage was found finished
    assert not trained_anything(capfd, caplog)  # nothing was trained again
    # Stopping earlier (as the grafting ablation does) still reports the width_depth stage found on disk.
    pipeline_main([*arguments, "--last_stage", "width"])
    assert json.loads((tmp_path / "results.json").read_text()) == results
    # A run that died after the width_depth stage's last checkpoint but before its results resumes from that
    # checkpoint: nothing is trained, the metrics are the same, and no step time is made up.
    (tmp_path / "width_depth" / "stage_results.json").unlink()
    pipeline_main(arguments)
    summary = json.loads((tmp_path / "results.json").read_text())["stages"]["width_depth"]
    assert summary["resumed_from"].endswith(f"checkpoint-{results['stages']['width_depth']['steps']}")
    assert summary["steps_trained"] == 0 and summary["seconds_per_step"] is None
    quality = [key for key in final if key.endswith(("_f1", "_accuracy", "_loss"))]
    assert {key: summary["metrics"][key] for key in quality} == {key: final[key] for key in quality}


def test_single_distillation_stage_needs_a_trained_teacher(bert_checkpoint, backbone_path, tmp_path):
    """`--flex_stage width` whose teacher is the raw backbone (the default) stops with a clear error before any data
    work or output; a fine-tuned checkpoint is accepted as teacher."""
    script = Path(__file__).resolve().parents[1] / "examples" / "run_glue_flex.py"
    output_dir = tmp_path / "width"
    command = [sys.executable, str(script), "--task_name", "mrpc", "--output_dir", str(output_dir)]
    command += ["--flex_stage", "width", "--use_cpu", "--report_to", "none"]
    command += ["--data_dir", str(tmp_path / "missing")]  # loading data would fail: the teacher check comes first
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode != 0 and "has no trained classifier" in refused.stderr
    assert not output_dir.exists()
    with pytest.raises(SystemExit, match="no trained classifier"):
        load_teacher(backbone_path, num_labels=2)
    teacher = load_teacher(str(bert_checkpoint), num_labels=2)
    expected = BertForSequenceClassification.from_pretrained(bert_checkpoint).classifier.weight
    assert torch.equal(teacher.classifier.weight, expected)


def write_mnli_stand_in(root: Path) -> dict[str, list[dict]]:
    """A tiny MNLI in the local mirror's layout (MNLI is not in the mirror and the Hub is unreachable here)."""
    from datasets import Dataset

    texts = SENTENCES + [text for pair in PAIRS for text in pair]
    splits = {}
    for name, size, shift in (("train", 16, 0), ("validation_matched", 4, 1), ("validation_mismatched", 6, 2)):
        splits[name] = [
            {"premise": texts[(i + shift) % len(texts)], "hypothesis": texts[(i * 3) % len(texts)], "label": i % 3}
            for i in range(size)
        ]
        (root / "glue" / "mnli").mkdir(parents=True, exist_ok=True)
        Dataset.from_list(splits[name]).to_parquet(root / "glue" / "mnli" / f"{name}-00000-of-00001.parquet")
    files = "".join(f"  - split: {name}\n    path: mnli/{name}-*\n" for name in splits)
    (root / "glue" / "README.md").write_text(f"---\nconfigs:\n- config_name: mnli\n  data_files:\n{files}---\n")
    return splits


def test_mnli_reports_matched_and_mismatched_dev_sets(tokenizer, tmp_path):
    """GLUE reports MNLI on both dev sets: the stage's metrics hold `eval_accuracy` (matched) and `eval_mm_accuracy`,
    the saved model's accuracy on the mismatched examples."""
    splits = write_mnli_stand_in(tmp_path / "data")
    script = Path(__file__).resolve().parents[1] / "examples" / "run_glue_flex.py"
    output_dir = tmp_path / "teacher"
    command = [sys.executable, str(script), "--task_name", "mnli", "--data_dir", str(tmp_path / "data")]
    command += ["--output_dir", str(output_dir), "--flex_stage", "teacher", "--max_steps", "1"]
    command += ["--importance_samples", "4", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true"]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((output_dir / "stage_results.json").read_text())["metrics"]
    model = FlexBertForSequenceClassification.from_pretrained(output_dir).eval()
    for prefix, split in (("eval", "validation_matched"), ("eval_mm", "validation_mismatched")):
        rows = splits[split]
        texts = [r["premise"] for r in rows], [r["hypothesis"] for r in rows]
        batch = tokenizer(*texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            predictions = model(**batch).logits.argmax(-1)
        accuracy = (predictions == torch.tensor([r["label"] for r in rows])).float().mean().item()
        assert metrics[f"{prefix}_accuracy"] == pytest.approx(accuracy)


def test_glue_example_adds_ramps_then_gates_to_a_checkpoint(bert_checkpoint, tokenizer, data_dir, tmp_path):
    """The dynamic stages of examples/run_glue_flex.py: new off-ramps start as copies of the final head, then the
    gates stage trains only the gates on top of the ramps checkpoint."""
    tokenizer.save_pretrained(bert_checkpoint)
    script = Path(__file__).resolve().parents[1] / "examples" / "run_glue_flex.py"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    common = [sys.executable, str(script), "--task_name", "sst2", "--max_train_samples", "32"]
    common += ["--max_eval_samples", "16", "--importance_samples", "16", "--max_steps", "2", "--use_cpu"]
    common += ["--per_device_train_batch_size", "16", "--report_to", "none", "--disable_tqdm", "true"]
    stages = [
        ["--flex_stage", "ramps", "--model_name_or_path", str(bert_checkpoint), "--exit_layers", "2", "4"],
        ["--flex_stage", "gates", "--model_name_or_path", str(tmp_path / "ramps"), "--gate_block_size", "3"],
    ]
    for stage in stages:
        output_dir = tmp_path / stage[1]
        run = subprocess.run(
            [*common, *stage, "--output_dir", str(output_dir)], capture_output=True, text=True, timeout=900, env=env
        )
        assert run.returncode == 0, run.stderr[-3000:]
    start = FlexBertForSequenceClassification.from_pretrained(bert_checkpoint)
    ramps = FlexBertForSequenceClassification.from_pretrained(tmp_path / "ramps")
    gated = FlexBertForSequenceClassification.from_pretrained(tmp_path / "gates")
    assert list(ramps.off_ramps) == ["2", "4"] and list(gated.width_gates) == ["0", "3"]
    for name, value in gated.state_dict().items():
        if name.startswith("width_gates."):
            continue
        assert torch.equal(value, ramps.state_dict()[name]), name  # the gates stage trained only the gates
    # two_stage ramps learnt from copies of the final head; the backbone and head stayed as they were
    assert torch.equal(ramps.classifier.weight, start.classifier.weight)
    assert not torch.equal(ramps.off_ramps["2"].classifier.weight, start.classifier.weight)
    assert (ramps.off_ramps["2"].classifier.weight - start.classifier.weight).abs().max() < 0.01  # a copy, nudged
