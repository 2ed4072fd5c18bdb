"""`make demo` end to end at 4,000 rows (issue #21, item 6): the command the Makefile's recipe runs, with its
environment, and the summary it promises (README "Two commands")."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ctr.artifact.export import load_exported

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_demo_runs_synth_prepare_and_optembed_to_an_int8_artifact(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    recipe = (REPO / "Makefile").read_text().split("\ndemo: $(STAMP)\n\t", 1)[1].split("\n", 1)[0]
    # make itself is not run: its prerequisite would reinstall .venv whenever pyproject.toml is newer
    assert recipe == "DEMO_DIR=$(DEMO_DIR) DEMO_ROWS=$(DEMO_ROWS) $(BIN)/python -m pipelines.demo", recipe
    env = subprocess_env | {"DEMO_DIR": str(tmp_path / "demo"), "DEMO_ROWS": "4000"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("[1/3] synth: 4,000", "[2/3] prepare", "[3/3] optembed", "OptEmbed test AUC", "export (int8)"):
        assert step in proc.stdout, (step, proc.stdout[-3000:])
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    run = tmp_path / "demo" / "optembed"
    result = json.loads((run / "result.json").read_text())
    assert printed == {k: result[k] for k in ("baseline", "final", "params_ratio", "sparsity")}
    assert result["final"]["embedding_params"] < result["baseline"]["embedding_params"]
    assert re.search(r"parameters kept\s+\d+\.\d%", proc.stdout)
    spec = json.loads((run / "export" / "model.json").read_text())
    assert spec["int8"] is True
    load_exported(run / "export")
