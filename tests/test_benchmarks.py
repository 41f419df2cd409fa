"""The smoke budget (`make bench BUDGET=smoke`) runs every benchmark script end to end on tiny runs (the shared
three-class CSV run for classification) as a user runs them (`python benchmarks/<script>.py`); the JSON they write
records the command, commit, machine and versions, and `--show` prints their tables again. A script that breaks
fails here; the numbers of the deploy and GPU scripts are checked for the properties they must have, not for
values, in the smoke run's own output (each script runs once)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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


@pytest.fixture(scope="module")
def smoke(classification_run, tmp_path_factory) -> Path:
    """The smoke budget on the shared tiny run, two commands at a time: the folder its results were written to."""
    run_dir, _ = classification_run
    out = tmp_path_factory.mktemp("smoke")
    command = [sys.executable, "benchmarks/suite.py", "--budget", "smoke", "--classification-run", str(run_dir)]
    result = subprocess.run(
        [*command, "--jobs", "2", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, env=ENV
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "FAIL" not in result.stdout
    return out


def assert_recorded(report: dict, script: str) -> None:
    assert report["command"].startswith(f"python benchmarks/{script}.py --run ")
    assert report["versions"]["torch"] and report["versions"]["transformers"] and report["machine"]["cores"]


def test_deploy_tradeoffs_measures_every_subnetwork_at_every_precision(smoke):
    output = smoke / "deploy_tradeoffs.json"  # sub-networks 1.0,1.0 and 0.5,0.5 on 8 dev examples
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


def test_budget_search_stores_points_that_fit_and_scores_them_on_dev(smoke):
    output = smoke / "budget_search.json"  # budget 0.7, seeds 0 and 1, on a copy of the run (it writes the config)
    report = json.loads(output.read_text())
    assert_recorded(report, "budget_search")
    assert [(row["budget"], row["seed"]) for row in report["rows"]] == [(0.7, 0), (0.7, 1)]
    points = FlexBertConfig.from_pretrained(smoke / "run_copy" / "gates").operating_points
    for row in report["rows"]:
        for label in ("searched", "uniform"):
            assert row[label]["cost"] <= 0.7 and 0.0 <= row[label]["dev_score"] <= 1.0
        assert points[row["name"]]["width"] == row["searched"]["width"]  # what the checkpoint now offers
    shown = run_script("budget_search", "--show", output).strip().splitlines()
    assert len(shown) == 2 + 2 * len(report["rows"])


def test_gpu_script_runs_from_a_pack_without_datasets(smoke, tmp_path):
    """The GPU image has no `datasets`: the packed folder is read with pyarrow alone, and without CUDA the script runs
    its CPU fallback, says so, and measures every variant (each static sub-network's ideal speed-up is its FLOPs'),
    the tiny QA run's too (its sub-networks and engines, under `qa`)."""
    pack = smoke / "device_pack"  # the smoke budget's pack of the tiny runs (16 dev examples; 4 QA dev questions)
    assert (pack / "model" / "config.json").is_file() and (pack / "dev.parquet").is_file()
    output = tmp_path / "gpu.json"
    block = "import runpy, sys; sys.modules['datasets'] = None; sys.path.insert(0, 'benchmarks'); "
    block += f"sys.argv = ['gpu_throughput.py', '--packed', {str(pack)!r}, '--output', {str(output)!r}]; "
    block += "runpy.run_path('benchmarks/gpu_throughput.py', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CPU fallback" in result.stdout and "On a GPU this measures" in result.stdout
    report = json.loads(output.read_text())
    assert report["fallback"] and report["dev_examples"] == 16
    config = FlexBertConfig.from_pretrained(pack / "model")
    static = {(row["width"], row["depth"]): row for row in report["rows"] if row["variant"] == "static"}
    assert len(static) == len(config.width_mults) * len(config.depth_mults)
    assert static[1.0, 1.0]["measured_speedup"] == 1.0 and static[1.0, 1.0]["flops_ideal_speedup"] == 1.0
    assert static[0.5, 1.0]["flops_ideal_speedup"] > 1.5  # half the width: about twice as fast in FLOPs
    assert {row["variant"] for row in report["rows"]} == {"static", "engine", "gated", "geep"}
    qa, qa_config = report["qa"], FlexBertConfig.from_pretrained(pack / "qa" / "model")
    assert qa["task"] == "squad" and qa["dev_windows"] == 8  # the fallback's first 8 windows
    assert {row["head"] for row in qa["rows"]} == {"question_answering"}
    qa_static = {(row["width"], row["depth"]): row for row in qa["rows"] if row["variant"] == "static"}
    assert set(qa_static) == {(width, depth) for width in qa_config.width_mults for depth in qa_config.depth_mults}
    assert qa_static[1.0, 1.0]["measured_speedup"] == 1.0 and qa_static[1.0, 1.0]["flops_ideal_speedup"] == 1.0
    assert {row["variant"] for row in qa["rows"]} == {"static", "engine", "gated"}  # the tiny QA run has both
    assert "windows/s" in result.stdout  # the QA table is printed after the classification one


def test_every_benchmark_script_is_in_the_smoke_budget():
    """A Python script under benchmarks/ that the smoke budget does not run could break unnoticed (the two training
    recipes, train_*.sh, are shell commands of `transformers-flex train`, which the pipeline tests cover)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import suite

    shared_modules = {"common", "suite", "squad_setup", "results_merge"}
    scripts = {path.stem for path in (ROOT / "benchmarks").glob("*.py")}
    smoked = {name.split(":")[0] for name in suite.SMOKE}
    assert scripts - shared_modules == smoked


def test_method_comparison_can_draw_every_avenue():
    """Every avenue of recipe_avenues.py gets a marker of its own on the method-comparison plot."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import method_comparison
    import recipe_avenues

    assert len(set(method_comparison.AVENUE_STYLES)) >= len(recipe_avenues.AVENUES)


def test_smoke_budget_runs_every_benchmark_script(smoke):
    """`make bench BUDGET=smoke` ends well (the suite fails if one script breaks) and every script wrote its JSON."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import suite

    outputs = [word for arguments in suite.SMOKE.values() for word in arguments.split() if word.startswith("{out}")]
    written = {Path(word.format(out=smoke)) for word in outputs if word.endswith(".json")}
    assert written and all(path.is_file() for path in written), [str(path) for path in written if not path.is_file()]


def test_compiled_exports_give_the_eager_exports_logits(tiny_config, tiny_inputs):
    """subnet_latency.py --compile times `torch.compile`d exports: they must compute what the eager exports do."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import subnet_latency

    from transformers_flex import FlexBertForSequenceClassification

    model = FlexBertForSequenceClassification(tiny_config).eval()
    exports = {(0.5, 1.0): model.export_subnet(0.5, 1.0).eval()}
    compiled, logit_diffs = subnet_latency.compiled_exports(exports, tiny_inputs)
    with torch.inference_mode():
        expected = model(**tiny_inputs, width=0.5).logits  # the sliced supernet: what the export must give
        assert torch.allclose(compiled[0.5, 1.0](**tiny_inputs).logits, expected, atol=1e-5)
    assert 0 <= logit_diffs[0.5, 1.0] <= 1e-5


def test_ramp_avenue_counts_the_ramps_that_answer_its_depths(smoke):
    """prefix_ramps' shallower sub-networks are answered by attention ramps, which cost more than the final head:
    the avenue's own FLOPs ratios say so; full depth (the final head) costs what the reference does."""
    report = json.loads((smoke / "recipe_avenues.json").read_text())
    reference = {subnet["name"]: subnet["flops_ratio"] for subnet in report["subnets"]}
    rows = {row["name"]: row for row in report["avenues"]}
    assert "flops_ratio" not in rows["sandwich_final"]  # the final head answers every sub-network
    ramps = rows["prefix_ramps"]["flops_ratio"]
    for name, ratio in ramps.items():
        assert ratio == reference[name] if name.endswith("_d1.0") else ratio > reference[name]
