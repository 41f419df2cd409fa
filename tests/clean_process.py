"""Scripts run the way a downloader runs a checkpoint: in a fresh Python process where `transformers_flex` cannot be
imported, so only the checkpoint's own copied code (through `trust_remote_code`) can serve it."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# The first lines of every clean-process script: transformers_flex cannot be imported after them.
BLOCK_PACKAGE = textwrap.dedent(
    """
    import json, sys
    import importlib.abc

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "transformers_flex":
                raise ImportError("transformers_flex must not be importable here")

    sys.meta_path.insert(0, BlockPackage())
    """
)


def run_without_package(
    script: str, *args: str, workdir: Path, python: str = sys.executable, env: dict[str, str] | None = None
) -> list[str]:
    """Run `script` after BLOCK_PACKAGE in a `python` process, offline, in `workdir` with a modules cache of its own
    (so no earlier test's copy of the remote code is reused); assert it succeeded and return its stdout lines."""
    environment = os.environ | {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(workdir / "modules")} | (env or {})
    command = [python, "-c", BLOCK_PACKAGE + script, *args]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=workdir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()
