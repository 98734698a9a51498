"""The fast subset of the tests on the newest Python of this machine, in a venv of its own, without torch.

`.ci/run` runs the whole suite on the Python it is started with (3.11 on our machines, where torch lies on
local disk) and then this script. It finds the newest released Python newer than that one (``python3.N`` on
PATH and pyenv's versions), makes a fresh venv in a temporary folder, installs ``.[test]`` there (jax, flax
and optax as pip resolves them for that Python; torch would download gigabytes, so the torch tests skip) and
runs FAST_SUBSET. A failed venv, install or test fails CI; a machine with no newer Python says so and passes.

    python .ci/newest_python.py          # all of it
    python .ci/newest_python.py --find   # only print the interpreter it would use
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every test that is not slow, bar three of the heaviest: the two in test_parallel start five fresh JAX
# processes (test_loader's four-device batch still runs the sharding here), and the mean-colour test draws
# 450 full-size images with numpy and PIL alone. Its time is in docs/testing.md.
FAST_SUBSET = [
    "-m",
    "not slow",
    "--deselect",
    "tests/test_parallel.py::test_four_devices_train_like_one_with_the_batch_sharded",
    "--deselect",
    "tests/test_parallel.py::test_two_processes_end_identical_and_equal_to_one_process",
    "--deselect",
    "tests/test_data.py::test_mean_colour_does_not_give_the_class_away",
]
# What the run reports pip chose, so that CI's log says which versions the subset ran on.
REPORTED = ["jax", "jaxlib", "flax", "optax", "numpy"]
REPORT = "import importlib.metadata as m; print(', '.join(n + ' ' + m.version(n) for n in {names!r}))"
PROBE = "import sys; v = sys.version_info; print(v.releaselevel, v.major, v.minor, v.micro)"


def candidates() -> list[str]:
    """Every ``python3.N`` on PATH and every pyenv version's python3, possibly twice or broken."""
    found = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if os.path.isdir(folder):
            found += sorted(str(p) for p in Path(folder).glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name))
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found += sorted(str(p) for p in pyenv.glob("*/bin/python3"))
    return found


def version(python: str) -> tuple[int, int, int] | None:
    """The interpreter's release, or None if it does not run (a pyenv shim of an unselected version does
    not) or is a pre-release (jaxlib ships no wheels for those)."""
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 4 or words[0] != "final":
        return None
    return int(words[1]), int(words[2]), int(words[3])


def newest_python() -> tuple[str, tuple[int, int, int]] | None:
    """The newest working interpreter newer (major.minor) than the one running this script, or None."""
    best = None
    for python in candidates():
        v = version(python)
        if v and v[:2] > sys.version_info[:2] and (best is None or v > best[1]):
            best = (python, v)
    return best


def run(*args: str | Path, echo: bool = True) -> str:
    """Run a step (echoed, or its output returned); a failure stops CI, naming the step and its status."""
    command = shlex.join(map(str, args))
    if echo:
        print("+", command, flush=True)
    done = subprocess.run([str(a) for a in args], cwd=ROOT, stdout=None if echo else subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"newest-python: {command} failed with exit status {done.returncode}")
    return done.stdout or ""


def main() -> None:
    found = newest_python()
    if "--find" in sys.argv[1:]:
        print(found[0] if found else "")
        return
    if found is None:
        print(f"newest-python: no Python newer than {sys.version_info[0]}.{sys.version_info[1]} here; skipped")
        return
    python, v = found
    print(f"newest-python: Python {'.'.join(map(str, v))} ({python}): fast subset, no torch", flush=True)
    start = time.monotonic()
    venv = Path(tempfile.mkdtemp(prefix="jaxvgg-newest-python-"))
    try:
        run(python, "-m", "venv", venv)
        py = venv / "bin" / "python"
        run(py, "-m", "pip", "install", "--quiet", "-e", ".[test]")
        print("newest-python: pip resolved", run(py, "-c", REPORT.format(names=REPORTED), echo=False), end="")
        installed = time.monotonic()
        run(py, "-m", "pytest", *FAST_SUBSET)
        tested = time.monotonic()
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # ~1 GB in ~20,000 files
    took = f"venv and install {installed - start:.0f} s, tests {tested - installed:.0f} s"
    print(f"newest-python: {took}, removing the venv {time.monotonic() - tested:.0f} s")


if __name__ == "__main__":
    main()
