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


def test_gpu_script_runs_from_a_pack_without_datasets(classification_run, tmp_path):
    """The GPU image has no `datasets`: the packed folder is read with pyarrow alone, and without CUDA the script runs
    its CPU fallback, says so, and measures every variant (each static sub-network's ideal speed-up is its FLOPs')."""
    run_dir, _ = classification_run
    pack = tmp_path / "pack"
    run_script("gpu_throughput", "--pack", "--run", run_dir, "--into", pack, "--max-eval-samples", "8",
               "--geep-train-examples", "8")  # fmt: skip
    assert (pack / "model" / "config.json").is_file() and (pack / "dev.parquet").is_file()
    output = tmp_path / "gpu.json"
    block = "import runpy, sys; sys.modules['datasets'] = None; sys.path.insert(0, 'benchmarks'); "
    block += f"sys.argv = ['gpu_throughput.py', '--packed', {str(pack)!r}, '--output', {str(output)!r}]; "
    block += "runpy.run_path('benchmarks/gpu_throughput.py', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CPU fallback" in result.stdout and "On a GPU this measures" in result.stdout
    report = json.loads(output.read_text())
    assert report["fallback"] and report["dev_examples"] == 8
    config = FlexBertConfig.from_pretrained(pack / "model")
    static = {(row["width"], row["depth"]): row for row in report["rows"] if row["variant"] == "static"}
    assert len(static) == len(config.width_mults) * len(config.depth_mults)
    assert static[1.0, 1.0]["measured_speedup"] == 1.0 and static[1.0, 1.0]["flops_ideal_speedup"] == 1.0
    assert static[0.5, 1.0]["flops_ideal_speedup"] > 1.5  # half the width: about twice as fast in FLOPs
    assert {row["variant"] for row in report["rows"]} == {"static", "engine", "gated", "geep"}


def test_every_benchmark_script_is_in_the_smoke_budget():
    """A Python script under benchmarks/ that the smoke budget does not run could break unnoticed (the two training
    recipes, train_*.sh, are shell commands of `transformers-flex train`, which the pipeline tests cover)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import suite

    shared_modules = {"common", "suite", "squad_setup", "results_merge"}
    scripts = {path.stem for path in (ROOT / "benchmarks").glob("*.py")}
    smoked = {name.split(":")[0] for name in suite.SMOKE}
    assert scripts - shared_modules == smoked


def test_smoke_budget_runs_every_benchmark_script(classification_run, tmp_path):
    """`make bench BUDGET=smoke`, on the shared tiny run: every script ends well (the suite fails if one breaks)."""
    run_dir, _ = classification_run
    command = [sys.executable, "benchmarks/suite.py", "--budget", "smoke", "--classification-run", str(run_dir)]
    result = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "FAIL" not in result.stdout
