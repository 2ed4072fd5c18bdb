"""``ctr.training.memory``: glibc's malloc settings for training processes."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from config.strict import ConfigError
from ctr.training.defaults import load_run_config


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_applies_on_glibc() -> None:
    """In a fresh process: every mallopt call is accepted (glibc returns 1), and a second call is a no-op."""
    code = (
        "from ctr.training.memory import keep_freed_memory\n"
        "first = keep_freed_memory(); second = keep_freed_memory()\n"
        "print(first, second, keep_freed_memory.cache_info().misses)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out == ["True", "True", "1"]


def test_keep_freed_memory_is_a_strict_trainer_option() -> None:
    off = load_run_config(None, ["trainer.keep_freed_memory=false"], data="d", model="fm")
    assert off.trainer.keep_freed_memory is False
    assert load_run_config(None, [], data="d", model="fm").trainer.keep_freed_memory is True
    with pytest.raises(ConfigError, match="keep_freed_memory"):
        load_run_config(None, ["trainer.keep_freed_memry=false"], data="d", model="fm")
