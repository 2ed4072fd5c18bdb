"""The suite's own rules (issue #21, item 8): every child process a test starts is waited on with a timeout, and
the markers that select the fast subset (``make test-fast``: ``-m "not slow"``) are declared and used."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# Calls that block until a child process ends: without a timeout a hang outlives every per-test limit's clean-up.
_SUBPROCESS = {"run", "check_output", "check_call", "call"}
_WAITS = {"wait", "communicate"}


def _untimed_calls(source: str) -> list[tuple[int, str]]:
    """(line, call) of each ``subprocess.run/check_output/check_call/call`` without ``timeout=``, and each
    ``.wait()``/``.communicate()`` with neither ``timeout=`` nor a positional argument."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name, owner = node.func.attr, ast.unparse(node.func.value)
        blocking = (owner == "subprocess" and name in _SUBPROCESS) or name in _WAITS
        timed = any(k.arg == "timeout" for k in node.keywords) or (name in _WAITS and bool(node.args))
        if blocking and not timed:
            found.append((node.lineno, ast.unparse(node)[:80]))
    return found


def test_the_checker_finds_an_untimed_call() -> None:
    source = "import subprocess\nsubprocess.run(['x'])\np.wait()\np.wait(5)\nsubprocess.run(['y'], timeout=1)\n"
    assert _untimed_calls(source) == [(2, "subprocess.run(['x'])"), (3, "p.wait()")]


def test_every_subprocess_in_the_tests_has_a_timeout() -> None:
    untimed = {
        f"{path.name}:{line}": call
        for path in sorted(TESTS.glob("*.py"))
        for line, call in _untimed_calls(path.read_text())
    }
    assert untimed == {}


def test_the_fast_subset_leaves_out_the_slow_tests_and_both_are_declared() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    declared = {m.split(":")[0] for m in options["markers"]}
    assert {"slow", "dist", "gpu"} <= declared and "--strict-markers" in options["addopts"]
    assert isinstance(options["timeout"], int) and options["timeout"] > 0
    makefile = (REPO / "Makefile").read_text()
    assert '-m "not slow"' in makefile.split("test-fast:")[1].split("\n\n")[0]
    slow = [p.name for p in TESTS.glob("*.py") if "pytest.mark.slow" in p.read_text()]
    assert slow, "no test is marked slow: the fast subset would be the whole suite"
