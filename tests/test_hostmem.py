"""The glibc settings that stop every large allocation from faulting in fresh pages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Allocate, touch and free SIZE bytes twice; print the page faults of the second round.
_PROBE = """
import ctypes, resource, sys
from jaxvgg.core.hostmem import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = int(sys.argv[1])
def round_trip():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
round_trip()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(setting: str, size: int = 128 << 20) -> tuple[bool, int]:
    env = {**os.environ, "JAXVGG_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", _PROBE, str(size)], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused_without_page_faults() -> None:
    applied, faults = _probe("1")
    if not applied:
        pytest.skip("not glibc")
    pages = (128 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert faults < pages // 100, f"{faults} page faults re-touching a freed block of {pages} pages"
    # The switch turns it off: glibc hands the block back and the second round faults again.
    off_applied, off_faults = _probe("0")
    assert not off_applied
    assert off_faults > pages // 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_a_freed_block_over_2_gib_is_kept_too() -> None:
    # A train step's temporaries pass 2 GiB (vgg16 at 224 px): glibc trimmed a heap top above the
    # largest positive trim threshold, so every step faulted them in again.
    size = (2 << 30) + (64 << 20)
    applied, faults = _probe("1", size)
    if not applied:
        pytest.skip("not glibc")
    pages = size // os.sysconf("SC_PAGE_SIZE")
    assert faults < pages // 100, f"{faults} page faults re-touching a freed block of {pages} pages"
