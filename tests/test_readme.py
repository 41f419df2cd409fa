"""The README's walkthrough, run as written on a tiny budget: its `transformers-flex` commands train a flexible MRPC
model (on the local GLUE mirror), write its card and push it to the Hub stand-in (tests/hub_standin.py); then its
Python block runs, unchanged, in a process without the package (and on the oldest transformers pyproject.toml
allows), loading the pushed repo id and running it at the three budgets it shows. Each result must equal this
package's pipeline on the run's final checkpoint."""

import ast
import json
import re
import shlex
from pathlib import Path

import pytest
from clean_process import run_without_package
from hub_standin import local_hub
from interpreters import INTERPRETERS
from pipeline_runs import TINY_BUDGET, run_train
from transformers import AutoTokenizer, pipeline

from transformers_flex import FlexBertForSequenceClassification
from transformers_flex.cli import main as cli_main
from transformers_flex.hub import CARD_NAME

pytestmark = pytest.mark.integration

README = Path(__file__).parents[1] / "README.md"
# The walkthrough's output dir is replaced by the test's, and its budget by the tiny one (the last flag wins).
TINY_DATA = ["--max_train_samples", "48", "--max_eval_samples", "16"]


def walkthrough() -> tuple[list[list[str]], str]:
    """The commands of the walkthrough's bash block (comments dropped, continuations joined) and its Python block."""
    section = README.read_text().split("## Walkthrough")[1].split("\n## ")[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S)[1].replace("\\\n", " ")
    python = re.search(r"```python\n(.*?)```", section, re.S)[1]
    return [shlex.split(line, comments=True) for line in bash.splitlines() if line.strip()], python


@pytest.fixture(scope="module")
def published(data_dir, tmp_path_factory):
    """The walkthrough's train, card and push commands; (final checkpoint, Hub stand-in cache, repo id)."""
    commands, _ = walkthrough()
    (train, *train_args), (card, *card_args), (push, *push_args) = commands
    assert (train, card, push) == ("transformers-flex",) * 3
    assert (train_args[0], card_args[0], push_args[0]) == ("train", "card", "push")
    root = tmp_path_factory.mktemp("walkthrough")
    run_dir = train_args[train_args.index("--output_dir") + 1]
    replace = {run_dir: str(root / "run")}
    train_args = [replace.get(arg, arg) for arg in train_args[1:]] + TINY_BUDGET + TINY_DATA
    result = run_train(*train_args)
    assert result.returncode == 0, result.stderr[-3000:]
    cache = root / "hub"
    with local_hub(cache):
        cli_main([replace.get(arg, arg) for arg in card_args])
        cli_main([replace.get(arg, arg) for arg in push_args])
    repo_id = push_args[-1]
    checkpoint = root / "run" / "gates"  # the final stage: ramps and gates were asked for
    assert repo_id in (checkpoint / CARD_NAME).read_text()
    return checkpoint, cache, repo_id


@pytest.mark.parametrize("python", INTERPRETERS)
def test_readme_walkthrough_runs_as_written(published, python, tmp_path):
    checkpoint, cache, repo_id = published
    _, block = walkthrough()
    assert f'model="{repo_id}"' in block
    # The block's prints, one per budget, as JSON for the comparison.
    script = "print = lambda result: sys.stdout.write(json.dumps(result) + '\\n')\n" + block
    lines = run_without_package(script, workdir=tmp_path, python=python, env={"HF_HUB_CACHE": str(cache)})
    full, static, dynamic = (json.loads(line) for line in lines[-3:])
    # The same calls with this package's pipeline on the run's final checkpoint.
    pair = ast.literal_eval(re.search(r"^pair = (.*)$", block, re.M)[1])
    model = FlexBertForSequenceClassification.from_pretrained(checkpoint).eval()
    local = pipeline("flex-text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(checkpoint))
    expected = [local(pair), local(pair, width=0.5, depth=0.75), local(pair, dynamic=True, threshold=0.3)]
    for found, want in zip((full, static, dynamic), expected, strict=True):
        assert found.keys() == want.keys() and found["label"] == want["label"]
        assert found["score"] == pytest.approx(want["score"], abs=1e-5)
    assert {"exit_layer", "layer_widths", "flops"} <= dynamic.keys() and dynamic["exit_layer"] in (2, 4, 6)
    assert dynamic["exit_layer"] == expected[2]["exit_layer"] and dynamic["flops"] == pytest.approx(
        expected[2]["flops"]
    )
