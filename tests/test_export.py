"""scripts/export.py: a run's best model as a plain state_dict that torchvision's model loads with
strict=True, as Flax variables, and as ONNX run by onnxruntime, from runs of both frameworks; the
logits are the run's model's. The run folders are made by hand (config.json and a best checkpoint
of random weights with random BatchNorm statistics): no training is needed to export one."""

import functools
import json

import jax
import numpy as np
import pytest
from flax import serialization
from helpers import one_line_error, random_flax_variables, randomize_batchnorm, run_command

import jaxvgg
from jaxvgg.core.config import TrainConfig
from jaxvgg.core.specs import size_options
from jaxvgg.train import checkpoint

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import torchref  # noqa: E402
from jaxvgg.tools.commands.export import ONNX_OPSET, export_run  # noqa: E402
from torchref.checkpoint import save_best  # noqa: E402

CLASSES = ["Early_blight", "Late_blight", "healthy"]
SIZE = 32


def meta(name):
    return {"model": name, "num_classes": 3, "classes": CLASSES, "image_size": SIZE, "epoch": 1}


def run_folder(tmp_path, name, framework):
    out = tmp_path / f"{name}-{framework}"
    out.mkdir()
    cfg = TrainConfig(model=name, image_size=SIZE, out_dir=str(out))
    (out / "config.json").write_text(json.dumps({**cfg.to_json(), "framework": framework, "classes": CLASSES}))
    return out


@functools.cache
def jax_model(name):
    """The Flax model and its compiled forward pass, one per model for the whole module (a VGG-16
    compiles for seconds)."""
    model = jaxvgg.create_model(name, 3, **size_options(name, SIZE))
    forward = jax.jit(model.apply)
    return model, lambda variables, x: np.asarray(forward(variables, x.transpose(0, 2, 3, 1)))


def jax_run(tmp_path, name):
    """A JAX run folder; returns it and the run's model as a function of NCHW arrays."""
    out = run_folder(tmp_path, name, "jax")
    model, forward = jax_model(name)
    variables = random_flax_variables(model, SIZE, seed=1)
    checkpoint.save(out / "best.msgpack", variables, {"framework": "jax", **meta(name)})
    return out, lambda x: forward(variables, x)


def torch_run(tmp_path, name):
    out = run_folder(tmp_path, name, "torch")
    torch.manual_seed(1)
    model = torchref.create_model(name, 3, **size_options(name, SIZE))
    randomize_batchnorm(model)
    save_best(out / "best.pth", model, {"framework": "torch", **meta(name)})
    model.eval()

    def forward(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return out, forward


def images(n=4):
    return np.random.default_rng(2).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def torch_logits(model, x):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    ("framework", "name", "target"),
    [
        ("jax", "vgg16", lambda: torchvision.models.vgg16(num_classes=3)),
        ("torch", "resnet50", lambda: torchvision.models.resnet50(num_classes=3)),
        ("jax", "vgg16_gap_bn", lambda: torchref.create_model("vgg16_gap_bn", 3)),
    ],
)
def test_a_plain_pth_loads_strictly_and_gives_the_runs_logits(tmp_path, framework, name, target):
    run, forward = (jax_run if framework == "jax" else torch_run)(tmp_path, name)
    path, line = export_run(run, "pth")
    assert path == run / f"{name}.pth" and "strict=True" in line
    model = target()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)  # the tutorial's line, as it is
    x = images()
    assert relative(torch_logits(model, x), forward(x)) <= 1e-4


def test_msgpack_holds_the_flax_variables_of_a_torch_run(tmp_path):
    run, forward = torch_run(tmp_path, "vgg16_gap_bn")
    path, _ = export_run(run, "msgpack", tmp_path / "out" / "gap.msgpack")
    variables = serialization.msgpack_restore(path.read_bytes())
    assert set(variables) == {"params", "batch_stats"}
    _, jax_forward = jax_model("vgg16_gap_bn")
    x = images()
    assert relative(jax_forward(variables, x), forward(x)) <= 1e-4


def test_onnx_runs_in_onnxruntime_with_the_runs_logits(tmp_path):
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
    run, forward = jax_run(tmp_path, "vgg16_gap_bn")
    path, line = export_run(run, "onnx")
    assert f"opset {ONNX_OPSET}" in line
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images()  # 4 images, the export traced 2: the batch dimension is free
    (logits,) = session.run(["logits"], {"images": x})
    assert relative(logits, forward(x)) <= 1e-4


def test_the_export_command_line(tmp_path):
    run, forward = jax_run(tmp_path, "student_cnn")
    out = tmp_path / "student.pth"
    done = run_command("export.py", "--run", str(run), "--format", "pth", "--out", str(out))
    assert "torchref.create_model('student_cnn', 3, image_size=32)" in done.stdout, done.stdout
    model = torchref.create_model("student_cnn", 3, image_size=SIZE)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = images()
    assert relative(torch_logits(model, x), forward(x)) <= 1e-4
    own = str(run / "best.msgpack")
    refused = run_command("export.py", "--run", str(run), "--format", "pth", "--out", own, check=False)
    assert "one of the run's own files" in one_line_error(refused)
