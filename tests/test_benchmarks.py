"""The benchmark scripts of the deploy issue run end to end on the tiny pipeline run (the shared three-class CSV run)
as a user runs them (`python benchmarks/<script>.py`), write JSON that records the command, commit, machine and
versions, and print their tables again with `--show`. A script that breaks fails here; the numbers are checked
for the properties they must have, not for values."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_runs import ENV

from transformers_flex import FlexBertConfig

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[1]


def run_script(name: str, *args) -> str:
    """`python benchmarks/<name>.py args` from the repository root; its stdout."""
    command = [sys.executable, f"benchmarks/{name}.py", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture
def run_copy(classification_run, tmp_path) -> Path:
    """The run's record and final checkpoint in a folder of this test's own (budget search writes to its config)."""
    run_dir, _ = classification_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("results.json", "run_config.json"):
        shutil.copy(run_dir / name, copy / name)
    shutil.copytree(run_dir / "gates", copy / "gates", ignore=shutil.ignore_patterns("checkpoint-*"))
    return copy


def assert_recorded(report: dict, script: str) -> None:
    assert report["command"].startswith(f"python benchmarks/{script}.py --run ")
    assert report["versions"]["torch"] and report["versions"]["transformers"] and report["machine"]["cores"]


def test_deploy_tradeoffs_measures_every_subnetwork_at_every_precision(run_copy, tmp_path):
    output = tmp_path / "deploy.json"
    subnets = ["1.0,1.0", "0.5,0.5"]
    run_script(
        "deploy_tradeoffs", "--run", run_copy, "--subnets", *subnets, "--rounds", "1", "--batch-size", "2",
        "--seq-length", "16", "--max-eval-samples", "8", "--output", output,
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert_recorded(report, "deploy_tradeoffs")
    assert report["dev_examples"] == 8
    rows = {(row["width"], row["depth"], row["precision"]): row for row in report["rows"]}
    assert len(rows) == 6
    assert rows[1.0, 1.0, "torch_fp32"]["latency_ratio"] == 1.0 and rows[1.0, 1.0, "torch_fp32"]["flops_ratio"] == 1.0
    assert rows[0.5, 0.5, "torch_fp32"]["flops_ratio"] < 0.5  # half the width of half the layers
    for width, depth in ((1.0, 1.0), (0.5, 0.5)):
        # The exported graph gives PyTorch's logits, so the same dev score; INT8 shrinks the file.
        assert rows[width, depth, "onnx_fp32"]["max_abs_logit_difference"] <= 1e-4
        assert rows[width, depth, "onnx_fp32"]["score"] == rows[width, depth, "torch_fp32"]["score"]
        assert rows[width, depth, "onnx_int8"]["file_bytes"] < rows[width, depth, "onnx_fp32"]["file_bytes"] / 2
    shown = run_script("deploy_tradeoffs", "--show", output).strip().splitlines()
    assert len(shown) == 2 + len(rows)  # header, rule, one line a row


def test_budget_search_stores_points_that_fit_and_scores_them_on_dev(run_copy, tmp_path):
    output = tmp_path / "budget.json"
    run_script(
        "budget_search", "--run", run_copy, "--budgets", "0.7", "--seeds", "0", "1", "--heldout-samples", "8",
        "--max-eval-samples", "8", "--output", output,
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert_recorded(report, "budget_search")
    assert [(row["budget"], row["seed"]) for row in report["rows"]] == [(0.7, 0), (0.7, 1)]
    points = FlexBertConfig.from_pretrained(run_copy / "gates").operating_points
    for row in report["rows"]:
        for label in ("searched", "uniform"):
            assert row[label]["cost"] <= 0.7 and 0.0 <= row[label]["dev_score"] <= 1.0
        assert points[row["name"]]["width"] == row["searched"]["width"]  # what the checkpoint now offers
    shown = run_script("budget_search", "--show", output).strip().splitlines()
    assert len(shown) == 2 + 2 * len(report["rows"])
