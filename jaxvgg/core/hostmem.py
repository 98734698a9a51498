"""Keep freed host memory inside the process instead of handing it back to the kernel.

glibc's malloc returns large blocks to the kernel on ``free`` (``mmap``/``munmap``, and
trimming the heap top), so the next allocation of the same size touches fresh pages: one
page fault per 4 KiB. XLA:CPU allocates its temporaries afresh for every execution, and a
training step's temporaries are hundreds of MB, so the kernel zeroes them again on every step.
Measured on a 2-core x86 VM (jax 0.10.2): vgg16_gap at 32 px, batch 32, faulted 272 MB per
train step (0.27 s of system time); with these settings 53 MB. PyTorch gains from the same
settings (student_cnn at 32 px: about 1.1k -> 1.7k images/s), so both frameworks' scripts use
them and the benchmark gives both children the same setting.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed memory: one arena (threads' arenas would ``mmap`` big blocks),
    no ``mmap`` for large blocks, no trimming. Returns whether the settings were applied.

    A no-op off glibc (macOS, musl) and with ``JAXVGG_MALLOC=0``. The costs: the process keeps
    its peak heap until it exits, and one arena serialises ``malloc`` across threads (a compile-
    bound slice of the test suite took 163 s with it, 142 s without, one run each, so the tests
    leave it off).
    """
    if os.environ.get("JAXVGG_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: other libcs lack these parameters
        return False
    # A trim threshold of -1 never trims (mallopt(3)); the largest int, 2**31 - 1, still trimmed a
    # heap top over 2 GiB: vgg16's train step at 224 px (batch 4) faulted 2.5 GB on every step,
    # 3.3 s a step against 2.4 s with -1 (docs/performance.md).
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
