"""Data parallelism on CPU: 4 forced host devices against 1, and 2 processes on 127.0.0.1 against 1.

Each configuration runs in fresh processes (the device count and jax.distributed must be set
before JAX starts); every test bounds its own time and kills what it started.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import ROOT, on_all_cores, one_line_error, run_script

from jaxvgg.train.last_state import LastStates

WORKER = str(ROOT / "tests" / "dp_worker.py")
FOUR_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(commands: list[list[str]], env: dict[str, str], timeout: float = 240) -> list[str]:
    """Start every command, wait for all (killing all on a timeout or a failure), return their stdout."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    procs: list[subprocess.Popen] = []
    try:
        for c in commands:
            procs.append(subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env))
            if len(commands) > 1:  # ranks that wait on each other: not on one core
                on_all_cores(procs[-1].pid)
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, f"{p.args} failed ({p.returncode}):\n{out[-2000:]}\n{err[-3000:]}"
    return [out for out, _ in outs]


def worker(out, *args: str) -> list[str]:
    return [sys.executable, WORKER, str(out), *args]


def load(path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def assert_close(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """fp32 agreement: the reductions run in another order, and Adam rescales small gradients."""
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


def test_four_devices_train_like_one_with_the_batch_sharded(tmp_path):
    one, four = tmp_path / "one.npz", tmp_path / "four.npz"
    run_together([worker(one, "--devices", "1", "--steps", "3")], FOUR_DEVICES)
    run_together([worker(four, "--devices", "4", "--steps", "3")], FOUR_DEVICES)
    info = json.loads((tmp_path / "four.npz.json").read_text())
    # Each step's global batch of 8 lived on 4 devices, 2 rows each.
    assert info["devices"] == 4 and info["shardings"] == [[4, 2]] * 3
    assert json.loads((tmp_path / "one.npz.json").read_text())["shardings"] == [[1, 8]] * 3
    # Parameters and BatchNorm running statistics (global-batch means) agree to fp32 rounding.
    assert_close(load(four), load(one))


def test_two_processes_end_identical_and_equal_to_one_process(tmp_path):
    port = free_port()
    common = ["--steps", "2", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    run_together(
        [worker(tmp_path / f"p{i}.npz", *common, "--process-id", str(i)) for i in range(2)],
        {"JAX_PLATFORMS": "cpu"},
    )
    run_together([worker(tmp_path / "single.npz", "--steps", "2")], {"JAX_PLATFORMS": "cpu"})
    p0, p1 = load(tmp_path / "p0.npz"), load(tmp_path / "p1.npz")
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    info = json.loads((tmp_path / "p1.npz.json").read_text())
    assert info["processes"] == 2 and info["shardings"] == [[2, 4]] * 2  # 4 local rows of each batch of 8
    assert_close(p0, load(tmp_path / "single.npz"))


@pytest.mark.slow
def test_train_jax_on_four_devices_and_in_two_processes(tiny_data, tmp_path):
    # The mechanics of devices and processes, on a model that compiles in seconds.
    common = ["--data-dir", str(tiny_data), "--model", "student_cnn", "--image-size", "32", "--batch-size", "16"]
    common += ["--epochs", "1"]
    bad = run_script(
        "train_jax.py", *common, "--batch-size", "18", "--out-dir", str(tmp_path / "x"), check=False, env=FOUR_DEVICES
    )
    assert "--batch-size 18 does not split evenly over 4 devices" in one_line_error(bad)
    out = run_script("train_jax.py", *common, "--out-dir", str(tmp_path / "four"), env=FOUR_DEVICES).stdout
    assert "4 cpu device(s)" in out

    run_dir = tmp_path / "two"
    script = [sys.executable, str(ROOT / "scripts" / "train_jax.py")]

    def two_processes(*args: str) -> list[str]:
        dist = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
        return run_together(
            [[*script, *args, *dist, "--process-id", str(i)] for i in range(2)], {"JAX_PLATFORMS": "cpu"}
        )

    # Stop mid-way through epoch 2 (3 batches per epoch), then every process resumes from process 0's files.
    outs = two_processes(*common, "--epochs", "2", "--max-steps", "4", "--out-dir", str(run_dir))
    assert "2 cpu device(s) in 2 processes" in outs[0] and "continue with --resume" in outs[0]
    assert outs[1] == ""  # process 0 alone reports and writes
    outs = two_processes("--resume", str(run_dir))
    assert "resuming" in outs[0] and "best model" in outs[0] and outs[1] == ""
    assert [h["epoch"] for h in json.loads((run_dir / "history.json").read_text())] == [1, 2]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sum(map(sum, metrics["confusion_matrix"])) == 15  # every test image counted once
    for name in ("curves.png", "confusion.png", "best.msgpack", "last", "split.json"):
        assert (run_dir / name).exists(), name
    # The stop and the resume changed nothing: the same two processes straight through end bit-identical.
    two_processes(*common, "--epochs", "2", "--out-dir", str(tmp_path / "straight"))
    resumed, straight = (LastStates(d / "last").read() for d in (run_dir, tmp_path / "straight"))
    assert resumed[0]["epoch"] == straight[0]["epoch"] == 2
    for a, b in zip(jax.tree.leaves(resumed[1]), jax.tree.leaves(straight[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_torch_ddp_two_processes_end_identical_and_equal_to_one_process(tmp_path):
    pytest.importorskip("torch")
    script = str(ROOT / "tests" / "ddp_worker.py")
    dist = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    run_together(
        [[sys.executable, script, str(tmp_path / f"p{i}.npz"), *dist, "--process-id", str(i)] for i in range(2)], {}
    )
    run_together([[sys.executable, script, str(tmp_path / "single.npz")]], {})
    p0, p1, single = (load(tmp_path / f"{n}.npz") for n in ("p0", "p1", "single"))
    assert p0.pop("rows") == p1.pop("rows") == 8 and single.pop("rows") == 16  # each rank saw half of each batch
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    assert_close(p0, single)
