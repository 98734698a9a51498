"""The layering of docs/architecture.md, from the outside: each layer runs with the frameworks it
must not need blocked from import. (`lint-imports` in .ci/run checks the imports themselves.)"""

import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import jaxvgg
import jaxvgg.core

ROOT = Path(__file__).resolve().parent.parent
BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None  # import fails, as if not installed\n"


def blocked(names, body):
    return BLOCK.format(names=list(names)) + body


def run_script(script, args, names, cwd):
    code = blocked(
        names,
        f"import runpy\nsys.argv = [{script!r}, *{list(map(str, args))!r}]\n"
        f"runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n",
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


def contract_modules():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    jax_layer = next(c for c in contracts if c["name"] == "The JAX layer never imports torch")["source_modules"]
    return set(jax_layer)


def test_every_jaxvgg_module_is_in_a_layer():
    jax_layer = contract_modules()
    for m in pkgutil.iter_modules(jaxvgg.__path__):
        name = f"jaxvgg.{m.name}"
        if name == "jaxvgg.__main__":  # python -m jaxvgg: the entry point, on top of every layer
            continue
        assert name in {"jaxvgg.core", "jaxvgg.tools"} | jax_layer, f"{name} is in no layer of pyproject.toml"


def test_the_neutral_core_imports_with_both_frameworks_blocked():
    core = [f"jaxvgg.core.{m.name}" for m in pkgutil.iter_modules(jaxvgg.core.__path__)]
    code = blocked(["jax", "flax", "optax", "torch", "torchvision"], "\n".join(f"import {m}" for m in core))
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "blocked_names", "weights"),
    [
        ("scripts/train_torch.py", ["jax", "flax", "optax"], "best.pth"),
        ("scripts/train_jax.py", ["torch", "torchvision"], "best.msgpack"),
    ],
)
def test_each_framework_trains_with_the_other_blocked(tiny_data, tmp_path, script, blocked_names, weights):
    if script == "scripts/train_torch.py":
        pytest.importorskip("torch")
    out = tmp_path / "run"
    flags = ["--model", "student_cnn", "--data-dir", tiny_data, "--image-size", "32", "--epochs", "1"]
    done = run_script(script, [*flags, "--out-dir", out, "--workers", "0"], blocked_names, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / weights).is_file() and json.loads((out / "metrics.json").read_text())["accuracy"] >= 0


def test_the_architecture_diagram_is_current():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "architecture.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_jaxvgg_command_and_python_m_jaxvgg_run_the_scripts_commands():
    import shutil

    listed = subprocess.run([sys.executable, "-m", "jaxvgg", "--help"], capture_output=True, text=True, check=True)
    assert "train-torch" in listed.stdout and "make-dataset" in listed.stdout
    train = subprocess.run(
        [sys.executable, "-m", "jaxvgg", "train", "--help"], capture_output=True, text=True, check=True
    )
    assert train.stdout.startswith("usage: jaxvgg train") and "--class-weights" in train.stdout
    unknown = subprocess.run([sys.executable, "-m", "jaxvgg", "fly"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown command 'fly'" in unknown.stderr
    installed = shutil.which("jaxvgg")  # pip install -e . puts it on PATH ([project.scripts])
    assert installed, "the jaxvgg command is not installed: pip install -e ."
    assert "predict" in subprocess.run([installed, "--help"], capture_output=True, text=True, check=True).stdout
