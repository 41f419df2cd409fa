"""Model cards and Hub pushes (transformers_flex.hub, `transformers-flex card|push`, `model.push_to_hub`, Trainer
pushes). The Hub is unreachable here: tests/hub_standin.py patches the HfApi calls and the card read, and
materialises each commit into a local Hub cache, from which a clean process (HF_HUB_OFFLINE=1, the package not
importable) loads the pushed repo id with `trust_remote_code=True`."""

import hashlib
import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from clean_process import run_without_package
from hub_standin import local_hub
from huggingface_hub import ModelCard
from interpreters import INTERPRETERS, OLDEST_PYTHON, lowest_allowed_transformers, transformers_version
from packaging.version import Version
from transformers import AutoTokenizer, pipeline

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.cli import main as cli_main
from transformers_flex.hub import CARD_NAME, CARD_PLOT_NAME, FlexHubError, push_run, write_model_card

pytestmark = pytest.mark.integration

CODE_FILES = {"configuration_flexbert.py", "modeling_flexbert.py", "flexbert_layers.py", "flexbert_engine.py"}
TEXTS = ["a gripping , beautifully acted film .", "dull", "it is not a film i would see twice , or once ."]

HUB_LOADER = textwrap.dedent(
    """
    import torch
    import transformers

    repo_id, width, inputs, texts = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    batch = {key: torch.tensor(value) for key, value in inputs.items()}
    config = transformers.AutoConfig.from_pretrained(repo_id, trust_remote_code=True)
    encoder = transformers.AutoModel.from_pretrained(repo_id, trust_remote_code=True).eval()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(repo_id, trust_remote_code=True).eval()
    with torch.no_grad():
        out = {
            "config": type(config).__name__,
            "module": type(model).__module__,
            "hidden": encoder(**batch).last_hidden_state.tolist(),
            "logits": model(**batch, dynamic=False).logits.tolist(),
            "narrow": model(**batch, width=width, dynamic=False).logits.tolist(),
        }
        dynamic = model.dynamic_forward(**batch, threshold=0.5)
        out |= {"dynamic_logits": dynamic.logits.tolist(), "exit_layers": dynamic.exit_layers.tolist()}
        out["layer_widths"] = dynamic.layer_widths.tolist()
    tokenizer = transformers.AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)
    out["tokenizer_inputs"] = sorted(tokenizer(texts[0], texts[1]).keys())  # a pair needs its segment ids
    classifier = transformers.pipeline("flex-text-classification", model=repo_id, trust_remote_code=True)
    out["pipeline"] = classifier(texts, dynamic=True, threshold=0.5, batch_size=len(texts))
    print(json.dumps(out))
    """
)


def load_pushed(
    repo_id: str, cache: Path, batch: dict, tmp_path: Path, width: float = 0.5, python: str = sys.executable
) -> dict:
    """Load `repo_id` from the stand-in's cache in a `python` process without the package; its outputs."""
    encoded = json.dumps({key: value.tolist() for key, value in batch.items()})
    arguments = repo_id, str(width), encoded, json.dumps(TEXTS)
    env = {"HF_HUB_CACHE": str(cache)}
    return json.loads(run_without_package(HUB_LOADER, *arguments, workdir=tmp_path, python=python, env=env)[-1])


def digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under `folder` (but `skip`) and the hash of its bytes."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in skip
    }


def scored_subnets(results: dict) -> dict[tuple[float, float, str], float]:
    """(width, depth, metric) -> value of the width_depth stage (the latest stage that scores every sub-network)."""
    scores = {}
    for key, value in results["stages"]["width_depth"]["metrics"].items():
        match = re.fullmatch(r"eval_w([\d.]+)_d([\d.]+)_(accuracy|macro_f1)", key)
        if match:
            scores[float(match[1]), float(match[2]), match[3]] = value
    return scores


@pytest.fixture(scope="module")
def batch(classification_run):
    tokenizer = AutoTokenizer.from_pretrained(classification_run[0] / "gates")
    return dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))


def test_card_of_a_run_loads_and_its_numbers_are_the_runs(classification_run):
    run_dir, _ = classification_run
    path = write_model_card(run_dir, "me/flex-reviews")
    assert path == run_dir / "gates" / CARD_NAME and (run_dir / "gates" / CARD_PLOT_NAME).stat().st_size > 0
    card = ModelCard.load(path)  # strict: metadata errors raise
    results = json.loads((run_dir / "results.json").read_text())
    expected = scored_subnets(results)
    assert len(expected) == 12 * 2  # accuracy and macro F1 of every sub-network
    found = {}
    for entry in card.data.eval_results:
        label = entry.metric_name.split("(")[1].rstrip(")")  # "accuracy (width 0.5, depth 1.0)"
        width, depth = (float(part.split()[1]) for part in label.split(", "))
        found[width, depth, entry.metric_type] = entry.metric_value
        assert entry.dataset_split == "validation" and entry.task_type == "text-classification"
    assert found == pytest.approx(expected)
    # The markdown table shows the same numbers, one row per sub-network, with the FLOPs ratio.
    rows = [line for line in card.text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    table = {
        (float(cells[0]), float(cells[1])): cells for cells in (row.strip("| ").split(" | ") for row in rows[:12])
    }
    for (width, depth, metric), value in expected.items():
        assert float(table[width, depth][2 if metric == "accuracy" else 3]) == pytest.approx(value, abs=6e-5)
    assert float(table[1.0, 1.0][4]) == 1.0 and float(table[0.5, 1.0][4]) == pytest.approx(0.5, abs=0.02)
    assert f"]({CARD_PLOT_NAME})" in card.text and "trust_remote_code=True" in card.text
    assert "transformers-flex" in card.data.tags and card.data.library_name == "transformers"


@pytest.mark.parametrize("python", INTERPRETERS)
def test_pushed_run_loads_without_the_package_and_matches(classification_run, batch, tmp_path, python):
    run_dir, _ = classification_run
    with local_hub(tmp_path / "hub") as hub:
        url = push_run(run_dir, "me/flex-reviews")
        assert url.startswith("https://huggingface.co/me/flex-reviews/commit/")
        files = hub.files("me/flex-reviews")
        card = ModelCard.load("me/flex-reviews")  # through the stand-in's read, as a downloader would
    assert CODE_FILES | {"config.json", "model.safetensors", CARD_NAME, CARD_PLOT_NAME} <= set(files)
    assert {"tokenizer.json", "run_config.json", "results.json"} <= set(files)
    assert not any(name.startswith("checkpoint-") or name == "training_args.bin" for name in files)
    assert len(hub.commits["me/flex-reviews"]) == 1  # one commit: weights, code and card together
    assert card.text == ModelCard.load(run_dir / "gates" / CARD_NAME).text
    loaded = load_pushed("me/flex-reviews", tmp_path / "hub", batch, tmp_path, python=python)
    assert loaded["module"].startswith("transformers_modules") and loaded["config"] == "FlexBertConfig"
    model = FlexBertForSequenceClassification.from_pretrained(run_dir / "gates").eval()
    with torch.no_grad():
        expected_hidden = model.bert(**batch).last_hidden_state
        static, narrow = model(**batch, dynamic=False).logits, model(**batch, width=0.5, dynamic=False).logits
        dynamic = model.dynamic_forward(**batch, threshold=0.5)
    assert torch.allclose(torch.tensor(loaded["hidden"]), expected_hidden, atol=1e-5)
    assert torch.allclose(torch.tensor(loaded["logits"]), static, atol=1e-5)
    assert torch.allclose(torch.tensor(loaded["narrow"]), narrow, atol=1e-5)
    assert torch.allclose(torch.tensor(loaded["dynamic_logits"]), dynamic.logits, atol=1e-5)
    assert loaded["exit_layers"] == dynamic.exit_layers.tolist()
    assert loaded["layer_widths"] == dynamic.layer_widths.tolist()
    assert loaded["tokenizer_inputs"] == ["attention_mask", "input_ids", "token_type_ids"]
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "gates")
    classifier = pipeline("flex-text-classification", model=model, tokenizer=tokenizer)
    local = classifier(TEXTS, dynamic=True, threshold=0.5)
    for remote, here in zip(loaded["pipeline"], local, strict=True):
        assert remote["label"] == here["label"] and remote["score"] == pytest.approx(here["score"], abs=1e-5)
        assert (remote["exit_layer"], remote["layer_widths"]) == (here["exit_layer"], here["layer_widths"])
        assert remote["flops"] == pytest.approx(here["flops"], rel=1e-9)


@pytest.mark.skipif(not OLDEST_PYTHON, reason="FLEX_OLDEST_PYTHON unset: `make test` builds that venv")
def test_the_oldest_interpreter_runs_the_lowest_transformers_pyproject_allows():
    """The `oldest-transformers` loads above ran on exactly the version pyproject.toml promises downloaders."""
    assert Version(transformers_version(OLDEST_PYTHON)) == Version(lowest_allowed_transformers())


def test_pushed_subnet_is_the_sliced_subnetwork(classification_run, batch, tmp_path):
    run_dir, _ = classification_run
    with local_hub(tmp_path / "hub") as hub:
        push_run(run_dir, "me/flex-reviews-half", subnet=(0.5, 1.0))
        card = ModelCard.load("me/flex-reviews-half")
        files = hub.files("me/flex-reviews-half")
    assert CODE_FILES <= set(files) and CARD_PLOT_NAME in files
    config = json.loads(files["config.json"])
    assert config["width_mults"] == [1.0] and config["layer_num_heads"] == [config["num_attention_heads"] // 2] * 6
    assert {entry.metric_name.split(" (")[1] for entry in card.data.eval_results} == {"width 0.5, depth 1.0)"}
    assert "one static sub-network (width 0.5, depth 1.0)" in card.text
    loaded = load_pushed("me/flex-reviews-half", tmp_path / "hub", batch, tmp_path, width=1.0)
    model = FlexBertForSequenceClassification.from_pretrained(run_dir / "gates").eval()
    with torch.no_grad():
        narrow = model(**batch, width=0.5, dynamic=False).logits
    assert torch.allclose(torch.tensor(loaded["logits"]), narrow, atol=1e-5)


def test_interrupted_push_leaves_the_run_and_a_retry_completes(classification_run, tmp_path):
    run_dir, _ = classification_run
    write_model_card(run_dir, "me/flex-retry")  # the card and plot are what a push adds to the run
    before = digest(run_dir)
    with local_hub(tmp_path / "hub", fail_commits=1) as hub:
        with pytest.raises(ConnectionError):
            push_run(run_dir, "me/flex-retry")
        assert hub.files("me/flex-retry") == {} and digest(run_dir) == before
        push_run(run_dir, "me/flex-retry")
        assert {"model.safetensors", CARD_NAME} <= set(hub.files("me/flex-retry"))
    assert digest(run_dir) == before


def test_bad_publishing_input_is_refused_before_any_upload(classification_run, tmp_path):
    run_dir, _ = classification_run
    with local_hub(tmp_path / "hub") as hub:
        with pytest.raises(FlexHubError, match="not a valid Hub repo id"):
            push_run(run_dir, "me/not a name")
        with pytest.raises(FlexHubError, match="no results.json"):
            push_run(tmp_path, "me/flex-empty")
        with pytest.raises(FlexHubError, match="scored no such sub-network"):
            push_run(run_dir, "me/flex-odd", subnet=(0.3, 1.0))
        assert hub.commits == {}
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    with pytest.raises(FlexHubError, match="damaged run record"):
        write_model_card(tmp_path / "broken")


def test_card_and_push_commands(classification_run, tmp_path, capsys):
    run_dir, _ = classification_run
    (run_dir / "gates" / CARD_NAME).unlink(missing_ok=True)
    cli_main(["card", str(run_dir), "--repo-id", "me/flex-cli"])
    assert "me/flex-cli" in (run_dir / "gates" / CARD_NAME).read_text()
    with local_hub(tmp_path / "hub") as hub:
        cli_main(["push", str(run_dir), "me/flex-cli", "--subnet", "0.25,0.5"])
        assert "one static sub-network (width 0.25, depth 0.5)" in hub.files("me/flex-cli")[CARD_NAME].decode()
        with pytest.raises(SystemExit, match="WIDTH,DEPTH"):
            cli_main(["push", str(run_dir), "me/flex-cli", "--subnet", "half"])
    assert "https://huggingface.co/me/flex-cli/commit/" in capsys.readouterr().out


def test_model_push_to_hub_ends_with_our_card(classification_run, tmp_path):
    """transformers' push reads the repo's existing card and uploads it; ours replaces it."""
    run_dir, _ = classification_run
    ours = write_model_card(run_dir, "me/flex-model").read_text()
    model = FlexBertForSequenceClassification.from_pretrained(run_dir / "gates")
    with local_hub(tmp_path / "hub") as hub:
        from huggingface_hub import CommitOperationAdd, HfApi

        HfApi().create_repo("me/flex-model")
        HfApi().create_commit("me/flex-model", [CommitOperationAdd(CARD_NAME, b"---\nlicense: mit\n---\nold card")])
        model.push_to_hub("me/flex-model")
        files = hub.files("me/flex-model")
    assert files[CARD_NAME].decode() == ours and CARD_PLOT_NAME in files
    assert CODE_FILES | {"config.json", "model.safetensors"} <= set(files)


def test_trainer_pushes_carry_code_from_the_first_commit_and_end_with_our_card(tiny_config, tmp_path):
    from conftest import pad_collate, random_classification_dataset

    from transformers_flex import FlexTrainer, FlexTrainingArguments

    torch.manual_seed(0)
    model = FlexBertForSequenceClassification(tiny_config)
    data = random_classification_dataset(16)
    args = FlexTrainingArguments(
        output_dir=str(tmp_path / "out"),
        flex_stage="width",
        per_device_train_batch_size=8,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        push_to_hub=True,
        hub_strategy="every_save",
        hub_model_id="me/flex-trainer",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    with local_hub(tmp_path / "hub") as hub:
        trainer = FlexTrainer(
            model=model,
            args=args,
            teacher_model=FlexBertForSequenceClassification(tiny_config),
            train_dataset=data,
            eval_dataset=data,
            data_collator=pad_collate,
            compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
        )
        trainer.train()
        trainer.push_to_hub(blocking=True)
        commits = hub.commits["me/flex-trainer"]
        card = ModelCard.load("me/flex-trainer")
    assert len(commits) >= 2
    assert CODE_FILES | {"config.json", "model.safetensors"} <= commits[0]["files"]
    assert "transformers-flex" in card.data.tags and "## Sub-networks" in card.text
    # The card's scores are the trainer's last evaluation of every width the stage trains.
    last = [entry for entry in trainer.state.log_history if "eval_w0.25_d1.0_accuracy" in entry][-1]
    scored = {entry.metric_name: entry.metric_value for entry in card.data.eval_results}
    assert scored == {
        f"accuracy (width {width}, depth 1.0)": last[f"eval_w{width}_d1.0_accuracy"]
        for width in (1.0, 0.75, 0.5, 0.25)
    }


def test_pipeline_pushes_its_final_checkpoint_once_at_the_end(classification_run, tmp_path):
    """`--push_to_hub` on a finished run: no stage pushes or retrains; the final checkpoint and its card go up in
    one commit (what a rerun after a failed push does too)."""
    from transformers_flex.training_args import PIPELINE_STAGE
    from transformers_flex.training_pipeline import main

    run_dir, args = classification_run
    weights = (run_dir / "gates" / "model.safetensors").read_bytes()
    with local_hub(tmp_path / "hub") as hub:
        main([*map(str, args), "--push_to_hub", "true", "--hub_model_id", "me/flex-pipeline"], PIPELINE_STAGE)
        files, commits = hub.files("me/flex-pipeline"), hub.commits
    assert list(commits) == ["me/flex-pipeline"] and len(commits["me/flex-pipeline"]) == 1
    assert files["model.safetensors"] == weights and "transformers-flex" in files[CARD_NAME].decode()
    assert (run_dir / "gates" / "model.safetensors").read_bytes() == weights
