"""Which forward a convolution takes when it is not differentiated, measured on this CPU.

``torch.backends.cudnn.benchmark`` for XLA:CPU: the first time a shape is traced, each candidate
forward (XLA's own convolution, im2col + GEMM) is compiled alone and timed, and the faster one is
kept in ``$JAXVGG_CACHE/conv-routes.json`` under this machine's key (CPU model and extensions,
core count, jax version, ``XLA_FLAGS``), so later runs on the same kind of machine trace at once.

Why measure: the faster forward depends on the shape *and* the CPU. On a 2-core AMD EPYC with
AVX-512, XLA's convolution won the 8x8 to 112x112 maps of vgg16 at 64 px (eval 53.6 -> 63.1
img/s) and was 4x slower on the 2x2/4x4 maps of vgg16 at 32 px (146 -> 34 img/s); on an AVX2
EPYC it won only from 56x56 up (docs/performance.md). A fixed threshold is right on one CPU.

``JAXVGG_CONV_TUNING=0`` turns measuring off: the fixed rule decides (the test suite runs so,
for its time; tests/test_conv_choice.py measures). Deleting the file measures afresh. The shape
timed is the one traced: under a batch-sharded ``jit`` the global batch, on one device.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxvgg.core.atomic import write_json
from jaxvgg.core.cache import cache_dir
from jaxvgg.core.errors import UserError
from jaxvgg.core.machine import describe_cpu
from jaxvgg.ops import native
from jaxvgg.ops.compiler import inference_options
from jaxvgg.ops.switch import set_within

FILE_NAME = "conv-routes.json"
# Candidates are timed in turns until each has had this much time and MIN_CALLS calls after a
# warm-up call; each one's fastest call counts.
TIME_PER_CANDIDATE_S = 0.1
MIN_CALLS = 3

_lock = threading.Lock()
# machine key -> that key's measured shapes, as read from disk once per key
_tables: dict[str, dict[str, dict]] = {}
_told = False


_rule_only = contextvars.ContextVar("rule_only", default=False)


def measuring_allowed() -> bool:
    """Whether a shape not yet measured is measured now; where not, the fixed rule decides.

    Not on other backends, not with ``JAXVGG_CONV_TUNING=0``, not inside :func:`rule_only`, and
    not in a run of several processes: each would time on its own, maybe on the same cores at
    once, and could compile one program with different choices."""
    return (
        os.environ.get("JAXVGG_CONV_TUNING", "1") != "0"
        and not _rule_only.get()
        and jax.default_backend() == "cpu"
        and jax.process_count() == 1
    )


def rule_only() -> contextlib.AbstractContextManager[None]:
    """Trace with the fixed rule: for shape-only passes (``jax.eval_shape``), which compute nothing."""
    return set_within(_rule_only, True)


def machine_key() -> str:
    """What a measurement holds for: the CPU, the jax that compiled it, XLA's flags, whether glibc's
    allocator keeps freed memory (im2col's patch buffers depend on it, jaxvgg.core.hostmem) and which
    build of the hand-written kernels it may call (jaxvgg.ops.native: their sources' fingerprint), so
    a changed kernel is measured again."""
    flags = os.environ.get("XLA_FLAGS", "")
    malloc = os.environ.get("JAXVGG_MALLOC", "1") == "0"
    return (
        f"{describe_cpu()}; jax {jax.__version__}"
        + (f"; XLA_FLAGS={flags}" if flags else "")
        + ("; JAXVGG_MALLOC=0" if malloc else "")
        + (f"; kernels {kernels}" if (kernels := native.kernels_in_use()) else "")
    )


def routes_file() -> Path:
    return cache_dir() / FILE_NAME


def fastest(
    key: str,
    candidates: dict[str, Callable],
    shapes: list[tuple[tuple[int, ...], str]],
    compiler_options: dict | None = None,
) -> str:
    """The name of the fastest of ``candidates`` (functions of arrays of ``shapes``: (shape, dtype)
    pairs), measured once for ``key`` on this machine and remembered on disk. Each is compiled with
    ``compiler_options``, by default the eval step's (:func:`jaxvgg.ops.compiler.inference_options`)."""
    with _lock:
        table = _load()
        if key not in table:
            options = inference_options() if compiler_options is None else compiler_options
            table[key] = _measure(candidates, shapes, options)
            _save(key, table[key])
        return table[key]["route"]


def _measure(candidates: dict[str, Callable], shapes: list[tuple[tuple[int, ...], str]], options: dict) -> dict:
    global _told
    if not _told:
        print(f"measuring convolution routes on this CPU, once per shape (kept in {routes_file()})", file=sys.stderr)
        _told = True
    rng = np.random.default_rng(0)
    # Tracing a model is under way: without this, every call below would be staged into that trace.
    with jax.ensure_compile_time_eval():
        args = [jax.device_put(rng.standard_normal(shape).astype(jnp.dtype(dtype))) for shape, dtype in shapes]
        jitted = {name: jax.jit(fn, compiler_options=options) for name, fn in candidates.items()}
        compiled = {name: fn.lower(*args).compile() for name, fn in jitted.items()}
        times: dict[str, list[float]] = {name: [] for name in compiled}
        # In turns, after a call each: a slow spell of a shared machine, or the first calls of a heap that
        # still page-faults fresh memory for the temporaries (jaxvgg.core.hostmem), hits every candidate.
        for fn in compiled.values():
            jax.block_until_ready(fn(*args))
        while pending := [n for n, t in times.items() if len(t) < MIN_CALLS or sum(t) < TIME_PER_CANDIDATE_S]:
            for name in pending:  # a fast candidate's extra calls do not make a slow one run again
                fn = compiled[name]
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times[name].append(time.perf_counter() - start)
    ms = {name: round(1e3 * min(t), 3) for name, t in times.items()}
    return {"route": min(ms, key=ms.__getitem__), "ms": ms}


def _load() -> dict[str, dict]:
    key = machine_key()
    if key not in _tables:
        _tables[key] = _entries(_read().get(key))
    return _tables[key]


def _entries(table: object) -> dict[str, dict]:
    """The well-formed entries of one machine's table; anything else is as if never measured."""
    if not isinstance(table, dict):
        return {}
    return {k: v for k, v in table.items() if isinstance(v, dict) and isinstance(v.get("route"), str)}


def _read() -> dict:
    try:
        data = json.loads(routes_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(key: str, entry: dict) -> None:
    """Merged into what is on disk now, so another process's shapes are kept unless it writes
    between our read and our write (then one of the two measures that shape again); a cache
    folder that cannot be written leaves the choice in memory only."""
    data = _read()
    data[machine_key()] = {**_entries(data.get(machine_key())), key: entry}
    try:
        routes_file().parent.mkdir(parents=True, exist_ok=True)
        write_json(routes_file(), data)
    except (OSError, UserError):
        pass


def forget() -> None:
    """Drop what this process has read (tests; a changed ``JAXVGG_CACHE``)."""
    with _lock:
        _tables.clear()
