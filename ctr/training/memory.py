"""glibc ``malloc`` settings for training processes: freed activation buffers stay in the heap.

A training step allocates and frees the same large buffers every step (activations and their gradients:
``[4096, 39, 16]`` float32 is 10 MB). Under glibc's defaults, blocks of that size are ``mmap``-ed and
unmapped again, or trimmed off the top of the heap, so steps pay for fresh pages. On the 2-core benchmark VM
one bf16-mixed DeepFM epoch (batch 4096, 1M rows) took 1.2-1.5M minor page faults and 3.4-4.3 s of kernel time
under the defaults, and 153k faults and 1.2-1.4 s with the settings below (``docs/benchmarks.md``). The same
effect is why PyTorch's CPU tuning guides recommend jemalloc or tcmalloc; ``mallopt`` gets it without a
preloaded library.

:func:`keep_freed_memory` is called once per training process (``ctr.runs.train``, i.e. every rank and every
Ray worker); ``trainer.keep_freed_memory=false`` leaves glibc's defaults. Off glibc (macOS, musl) it does
nothing and says so by returning ``False``. The cost: memory a step frees is kept for the next step instead of
going back to the system, so the process's resident size stays at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap, not from mmap (glibc's maximum on 64-bit: 32 MiB).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the top of the heap is given back to the system only beyond this.
TRIM_THRESHOLD = 1024 * 1024 * 1024
#: Extra memory requested whenever the heap grows, so that it grows in few steps.
TOP_PAD = 64 * 1024 * 1024


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold, trim threshold and top pad (once per process). ``False`` off glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    return all(mallopt(param, value) == 1 for param, value in settings)
