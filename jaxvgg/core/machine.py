"""What CPU a figure was measured on: model name and the vector/matrix extensions that decide
which kernels win (AVX2, AVX-512 and its bf16/VNNI parts, AMX), printed with every benchmark."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# /proc/cpuinfo flag -> how a table names it, in the order they are printed.
FEATURES = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
}


def parse_cpuinfo(text: str) -> tuple[str, list[str]]:
    """(model name, the :data:`FEATURES` it has) from the text of ``/proc/cpuinfo``."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, [name for flag, name in FEATURES.items() if flag in flags]


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask (taskset, a cgroup cpuset, the test
    suite's pinned workers) where the OS has one, not every core of the machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_cpu() -> str:
    """e.g. ``Intel(R) Xeon(R) Processor, 2 cores; AVX2 FMA AVX-512 ... AMX-INT8`` (Linux; elsewhere
    what :mod:`platform` says)."""
    cores = usable_cores()
    try:
        model, features = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, features = "", []
    model = model or platform.processor() or platform.machine()
    return f"{model}, {cores} cores" + (f"; {' '.join(features)}" if features else "")
