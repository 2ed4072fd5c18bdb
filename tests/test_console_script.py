"""The installed ``ctr`` command (the console script pip writes next to the interpreter) runs from outside the
repository: every top-level package it imports is one the project installs (pyproject ``packages.find``). Run as
a subprocess from a temporary folder, so the checkout on ``sys.path`` cannot hide a package left out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "ctr"


@pytest.mark.parametrize("stage", ["train", "optembed", "predict", "serve", "tune", "prepare"])
def test_installed_ctr_runs_outside_the_checkout(tmp_path: Path, stage: str) -> None:
    assert SCRIPT.exists(), f"no console script at {SCRIPT}: install the project with `make install`"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(SCRIPT), stage, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: ctr" in done.stdout and stage in done.stdout
