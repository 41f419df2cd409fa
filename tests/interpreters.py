"""The Python interpreters that clean-process loaders run in: this one, and — under `make test` — a venv with the
oldest transformers that pyproject.toml allows (FLEX_OLDEST_PYTHON, built by the Makefile from the package
registry), because downloaders run a checkpoint's portable code on their own transformers."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

OLDEST_PYTHON = os.environ.get("FLEX_OLDEST_PYTHON")
PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"

INTERPRETERS = [
    pytest.param(sys.executable, id="installed-transformers"),
    pytest.param(
        OLDEST_PYTHON,
        id="oldest-transformers",
        marks=pytest.mark.skipif(not OLDEST_PYTHON, reason="FLEX_OLDEST_PYTHON unset: `make test` builds that venv"),
    ),
]


def lowest_allowed_transformers() -> str:
    """The lower bound of pyproject.toml's `transformers>=X` requirement."""
    return re.search(r'"transformers>=([\d.]+)', PYPROJECT.read_text())[1]


def transformers_version(python: str) -> str:
    command = [python, "-c", "import transformers; print(transformers.__version__)"]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout.strip()
