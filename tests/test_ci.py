"""CI itself: `.ci/run` runs the README's test commands, and .ci/newest_python.py picks the newest Python."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys

from helpers import ROOT

SCRIPT = ROOT / ".ci" / "newest_python.py"


def commands_of_block_after(text: str, heading: str) -> list[str]:
    block = re.search(re.escape(heading) + r".*?```bash\n(.*?)```", text, re.S)
    assert block, f"no bash block after {heading!r}"
    return block.group(1).splitlines()


def test_ci_runs_exactly_the_readme_test_commands():
    readme = commands_of_block_after((ROOT / "README.md").read_text(), "**Install and run the whole test suite**")
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == readme
    assert commands_of_block_after((ROOT / "docs" / "testing.md").read_text(), "# Testing") == readme


def fake_python(path, answer: str) -> None:
    """An executable that answers the version probe as an interpreter of that release would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{answer}\n")
    path.chmod(0o755)


def find(tmp_path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": str(tmp_path / "bin"), "PYENV_ROOT": str(tmp_path / "pyenv")}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, check=check)


def test_the_newest_final_release_above_this_python_is_picked(tmp_path):
    minor = sys.version_info.minor
    fake_python(tmp_path / "bin" / f"python3.{minor + 1}", f"echo final 3 {minor + 1} 4")
    fake_python(tmp_path / "bin" / f"python3.{minor + 3}", f"echo alpha 3 {minor + 3} 0")  # no jaxlib wheels
    fake_python(tmp_path / "bin" / f"python3.{minor + 4}", "exit 127")  # a pyenv shim of an unselected version
    fake_python(tmp_path / "bin" / f"python3.{minor}", f"echo final 3 {minor} 99")  # not newer: same minor
    newest = tmp_path / "pyenv" / "versions" / f"3.{minor + 2}.0" / "bin" / "python3"
    fake_python(newest, f"echo final 3 {minor + 2} 0")
    assert find(tmp_path, "--find").stdout == f"{newest}\n"


def test_a_machine_without_a_newer_python_says_so_and_passes(tmp_path):
    older = sys.version_info.minor - 1
    fake_python(tmp_path / "bin" / f"python3.{older}", f"echo final 3 {older} 0")
    done = find(tmp_path)
    assert done.stdout == f"newest-python: no Python newer than 3.{sys.version_info.minor} here; skipped\n"


def test_the_tests_the_fast_subset_leaves_out_exist():
    """A renamed test would silently join the subset again (pytest ignores a --deselect that names nothing)."""
    subset = runpy.run_path(str(SCRIPT))["FAST_SUBSET"]
    left_out = [subset[i + 1] for i, arg in enumerate(subset) if arg == "--deselect"]
    assert left_out
    for node in left_out:
        path, name = node.split("::")
        assert f"\ndef {name}(" in (ROOT / path).read_text(), node


def test_a_newer_python_that_cannot_make_the_venv_fails_ci(tmp_path):
    newer = sys.version_info.minor + 1
    fake_python(tmp_path / "bin" / f"python3.{newer}", f'[ "$1" = -c ] && echo final 3 {newer} 0 || exit 3')
    done = find(tmp_path, check=False)
    assert done.returncode == 1 and "-m venv" in done.stderr and "failed with exit status 3" in done.stderr
