"""scripts/system-deps.sh, the Debian packages `make test` installs before the tests (chromium, chromium-driver,
postgresql; python3-venv for .venv/), and .ci/run, which leaves all of it to the Makefile.

The script runs for real; only ``apt-get``, ``sudo`` and ``id`` are stand-ins on PATH that record their
arguments, so nothing is installed and root or not is chosen by the test.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "system-deps.sh"
POSTGRES_HERE = bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _tool(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _run(
    tmp: Path, *groups: str, uid: int, env: dict[str, str], sudo: bool = True, apt_get: str = ""
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Runs the script with only bash, env, a recording ``apt-get`` (then running ``apt_get``), an ``id``
    answering ``uid`` and, if ``sudo``, a recording ``sudo`` on PATH; returns the recorded calls."""
    bin_ = tmp / "bin"
    bin_.mkdir()
    for name in ("bash", "env"):
        (bin_ / name).symlink_to(shutil.which(name) or f"/usr/bin/{name}")
    log = tmp / "calls.log"
    _tool(bin_ / "apt-get", f'echo "apt-get $*" >> {log}\n{apt_get}')
    _tool(bin_ / "id", f"echo {uid}")
    if sudo:
        _tool(bin_ / "sudo", f'echo "sudo" >> {log}; exec "$@"')
    base = {"PATH": str(bin_), "PYTHON": sys.executable}
    proc = subprocess.run(
        [str(SCRIPT), *groups], env=base | env, capture_output=True, text=True, timeout=60, check=False
    )
    return proc, log.read_text().splitlines() if log.exists() else []


def _present(tmp: Path) -> dict[str, str]:
    """Overrides under which chromium, chromedriver and initdb are all found (as the tests would find them)."""
    (tmp / "pg").mkdir()
    _tool(tmp / "pg" / "initdb", "true")
    return {
        "CHROMIUM": str(_tool(tmp / "chromium", "true")),
        "CHROMEDRIVER": str(_tool(tmp / "chromedriver", "true")),
        "CTR_PG_BINDIR": str(tmp / "pg"),
    }


def test_everything_present_installs_nothing_and_says_nothing(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, "venv", "test", uid=1000, env=_present(tmp_path))
    assert (proc.returncode, proc.stdout, proc.stderr, calls) == (0, "", "", [])


def test_missing_browser_is_installed_as_root_without_sudo(tmp_path: Path) -> None:
    env = _present(tmp_path) | {"CHROMIUM": str(tmp_path / "absent"), "CHROMEDRIVER": str(tmp_path / "absent")}
    proc, calls = _run(tmp_path, "venv", "test", uid=0, env=env)
    assert proc.returncode == 0, proc.stderr
    assert calls == ["apt-get update -q", "apt-get install -y -q chromium chromium-driver"]
    assert "installing chromium chromium-driver" in proc.stderr


def test_missing_packages_are_installed_through_sudo_when_not_root(tmp_path: Path) -> None:
    env = _present(tmp_path) | {"CHROMEDRIVER": str(tmp_path / "absent"), "CTR_PG_BINDIR": str(tmp_path / "none")}
    proc, calls = _run(tmp_path, "test", uid=1000, env=env)
    assert proc.returncode == 0, proc.stderr
    wanted = "chromium-driver postgresql" if not POSTGRES_HERE else "chromium-driver"
    assert calls == ["sudo", "apt-get update -q", "sudo", f"apt-get install -y -q {wanted}"]


def test_a_python_without_venv_gets_python3_venv(tmp_path: Path) -> None:
    proc, calls = _run(tmp_path, "venv", uid=0, env={"PYTHON": str(tmp_path / "no-python")})
    assert proc.returncode == 0, proc.stderr
    assert calls == ["apt-get update -q", "apt-get install -y -q python3 python3-venv"]


def test_a_failed_install_fails_the_script(tmp_path: Path) -> None:
    env = _present(tmp_path) | {"CHROMIUM": str(tmp_path / "absent")}
    fail = 'case "$1" in install) echo "E: Unable to locate package chromium" >&2; exit 100;; esac'
    proc, calls = _run(tmp_path, "test", uid=0, apt_get=fail, env=env)
    assert proc.returncode == 100
    assert calls == ["apt-get update -q", "apt-get install -y -q chromium"]
    assert "Unable to locate package chromium" in proc.stderr


def test_not_root_without_sudo_fails_naming_the_packages(tmp_path: Path) -> None:
    env = _present(tmp_path) | {"CHROMIUM": str(tmp_path / "absent")}
    proc, calls = _run(tmp_path, "test", uid=1000, sudo=False, env=env)
    assert (proc.returncode, calls) == (1, [])
    assert proc.stderr == (
        "scripts/system-deps.sh: error: not root and no sudo: run as root: apt-get install -y chromium\n"
    )


def test_ci_runs_only_make_lint_and_make_test() -> None:
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "make lint", "make test"]


def test_make_test_runs_the_system_package_check_before_the_tests() -> None:
    # as a user's shell runs it: not as a sub-make of `make test` (which would add "Entering directory" lines)
    outside_make = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(
        ["make", "-n", "-B", "test"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True, env=outside_make
    )
    lines = out.stdout.splitlines()
    assert lines[0].endswith("scripts/system-deps.sh venv"), lines
    assert lines[1] == "scripts/system-deps.sh test", lines
    assert lines[-1].endswith("-m pytest -q"), lines
