"""Small shared test fixtures: tiny datasets and runs of the command-line scripts."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def on_all_cores(pid: int) -> None:
    """Let a process this test started use every core again, not only its pinned worker's
    (tests/conftest.py): processes that wait on each other, such as the ranks of one distributed
    run, lose more sharing one core than they gain from leaving the other worker its own."""
    cores = os.environ.get("JAXVGG_TEST_ALL_CORES")
    if cores:
        with contextlib.suppress(ProcessLookupError):  # it has ended already: its exit status says why
            os.sched_setaffinity(pid, [int(c) for c in cores.split(",")])


def run_script(name: str, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``scripts/<name>`` in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True, env=full_env, timeout=600
    )
    return checked(proc, check)


def run_command(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the command behind ``scripts/<name>`` in this process: the same ``main`` (its argument
    parsing, its one-line errors and exit status), without a second start of Python, JAX and torch.

    For what needs no process of its own: refusals and reports, not environment variables, signals
    or several processes (those use :func:`run_script`). Its compiles use the worker's compilation
    cache (tests/conftest.py), the folder the scripts it starts use."""
    import importlib
    import io
    from unittest import mock

    main = importlib.import_module("jaxvgg.tools.commands." + name.removesuffix(".py")).main
    out, err = io.StringIO(), io.StringIO()
    argv = [str(ROOT / "scripts" / name), *args]
    with (
        mock.patch.object(sys, "argv", argv),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return checked(subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue()), check)


def checked(proc: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    """``proc``; with ``check``, an error showing the end of its output if it failed."""
    if check and proc.returncode != 0:
        cmd = " ".join(map(str, proc.args))
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The script failed with exit status 2 and a single ``error:`` line, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def random_flax_variables(model, size: int, seed: int):
    """Random weights of ``model``'s shapes at ``size`` px, scaled by fan-in so that the logits stay
    finite, and random BatchNorm statistics and scales (not the initial 0/1, so a lost one shows);
    drawn with numpy, so no init is compiled."""
    import jax
    import numpy as np

    from jaxvgg.models import variable_shapes

    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind = path[-1].key
        if kind == "kernel":
            return rng.standard_normal(leaf.shape, np.float32) / np.float32(np.sqrt(np.prod(leaf.shape[:-1])))
        if kind in ("scale", "var"):
            return 0.5 + rng.random(leaf.shape, np.float32)
        return 0.4 * rng.random(leaf.shape, np.float32) - 0.2  # biases, running means

    return jax.tree_util.tree_map_with_path(draw, variable_shapes(model, size))


def randomize_batchnorm(model) -> None:
    """Give every BatchNorm2d of a torch model random statistics, scales and shifts (in place), so
    that a conversion that lost one would show."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
