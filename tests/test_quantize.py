"""scripts/quantize.py: an int8 run folder of a run of either framework, which predict.py and
evaluate.py take like any run. Tiny runs (student_cnn, 32 px, 2 epochs, on noise images whose
class is a faint colour cast: 89-100% test accuracy after two epochs) are trained here; the int8
model's logits are compared with the float model's on the run's own test images."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error, run_command, run_script
from PIL import Image

from jaxvgg.core.config import TrainConfig
from jaxvgg.core.errors import UserError
from jaxvgg.core.images import load_batch
from jaxvgg.core.weights import weights_file
from jaxvgg.data import load_split, scan_image_folder
from jaxvgg.tools.predict import predictor
from jaxvgg.tools.quantize import calibration_samples, load_images, quantize_run

SIZE = 32
CLASSES = ["blue", "green", "red"]
# Test accuracies may differ by one image (of 18): int8 can flip a prediction whose top two logits are close.
ACCURACY_TOLERANCE_IMAGES = 1
# The largest logit difference, as a share of the largest float logit: 8-bit steps of weights and
# inputs stay well inside it (measured 0.6-2.2% on the runs of docs/compression.md, ~1% here).
LOGIT_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Three classes of 30 noise images each, 32 px, one colour channel raised by 12 of 255."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir()
        for i in range(30):
            img = rng.normal(100, 40, (SIZE, SIZE, 3))
            img[..., k] += 12
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def train(framework, data, out):
    cfg = TrainConfig(
        model="student_cnn",
        data_dir=str(data),
        image_size=SIZE,
        batch_size=16,
        epochs=2,
        lr=1e-3,
        out_dir=str(out),
        workers=0,
    )
    if framework == "jax":
        from jaxvgg.train.loop import fit

        fit(cfg)
    else:
        from torchref.train import fit

        fit(cfg, "cpu")
    return out


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_quantize_a_run_then_predict_and_evaluate_the_int8_run(framework, colours, tmp_path, monkeypatch, capsys):
    """One test per framework (its run trained once, on one pytest-xdist worker)."""
    if framework == "torch":
        pytest.importorskip("torch")
    run = train(framework, colours, tmp_path / "run")
    out = tmp_path / "int8"
    done = run_script("quantize.py", "--run", str(run), "--out-dir", str(out), "--calibration-images", "32")
    check_the_record_and_the_logits(framework, run, out, done.stdout)
    check_the_checkpoint_holds_int8_weights(framework, out)
    check_evaluate_and_predict(run, out, colours, tmp_path, monkeypatch, capsys)
    check_bad_input(run, out, tmp_path / "bad", monkeypatch, capsys)


def check_the_record_and_the_logits(framework, run, out, stdout):
    record = json.loads((out / "quantize.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == "int8" and config["quantized_from"] == str(run)
    assert config["framework"] == framework and record["calibration_images"] == 32
    float_file, int8_file = run / record["float"]["file"], out / record["int8"]["file"]
    assert (record["float"]["bytes"], record["int8"]["bytes"]) == (float_file.stat().st_size, int8_file.stat().st_size)
    assert int8_file.stat().st_size < 0.3 * float_file.stat().st_size  # int8 weights, float32 scales and biases
    assert f"{record['int8']['bytes']:,} bytes" in stdout and "test accuracy (18 images): float" in stdout

    # Independently of the record: both run folders through the predictor predict.py uses.
    cfg = TrainConfig.from_json(config)
    split = load_split(out / "split.json", scan_image_folder(cfg.data_dir))
    images, labels = load_images(Path(cfg.data_dir), split.samples("test"), cfg)
    float_logits = predictor(run, "cpu")[0].logits(images)
    int8_logits = predictor(out, "cpu")[0].logits(images)
    assert not np.array_equal(float_logits, int8_logits)  # really another model
    assert np.abs(int8_logits - float_logits).max() <= LOGIT_TOLERANCE * np.abs(float_logits).max()
    float_acc = (float_logits.argmax(-1) == labels).mean()
    int8_acc = (int8_logits.argmax(-1) == labels).mean()
    assert float_acc > 0.6  # a trained model, not chance (3 classes)
    assert abs(float_acc - int8_acc) * len(labels) <= ACCURACY_TOLERANCE_IMAGES + 1e-9
    assert (record["float"]["test_accuracy"], record["int8"]["test_accuracy"]) == pytest.approx((float_acc, int8_acc))
    assert record["max_logit_difference"] == pytest.approx(np.abs(int8_logits - float_logits).max(), rel=1e-5)


def check_the_checkpoint_holds_int8_weights(framework, out):
    if framework == "jax":
        from flax import serialization

        state = serialization.msgpack_restore((out / "best-int8.msgpack").read_bytes())["state"]
        layer = state["params"]["features_0"]
        assert layer["kernel"].dtype == np.int8 and layer["input_scale"].dtype == np.float32
    else:
        import torch

        state = torch.load(out / "best-int8.pth", weights_only=True)["model"]
        assert state["features.0.weight"].dtype == torch.qint8


def jaxvgg_command(monkeypatch, capsys, *argv):
    """``jaxvgg COMMAND ...`` in this process (the scripts' own entry point, without a second
    start-up of JAX and torch): (exit status, stdout, stderr)."""
    from jaxvgg.tools.commands import main

    capsys.readouterr()  # what came before: the training's lines
    monkeypatch.setattr(sys, "argv", ["jaxvgg"])  # main() replaces it; monkeypatch puts it back
    monkeypatch.setenv("JAXVGG_COMPILE_CACHE", "0")  # leave this worker's JAX configuration alone
    with pytest.raises(SystemExit) as stopped:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return stopped.value.code, out, err


def check_evaluate_and_predict(run, out, colours, tmp_path, monkeypatch, capsys):
    record = json.loads((out / "quantize.json").read_text())
    code, evaluated, _ = jaxvgg_command(monkeypatch, capsys, "evaluate", "--run", out)
    assert code == 0 and evaluated.startswith(f"{out}: accuracy {record['int8']['test_accuracy']:.2%}"), evaluated
    leaf = sorted((colours / "red").iterdir())[0]
    code, predicted, _ = jaxvgg_command(
        monkeypatch, capsys, "predict", leaf, "--run", out, "--json", tmp_path / "p.json"
    )
    assert code == 0 and predicted.startswith(f"{leaf}: "), predicted
    probs = json.loads((tmp_path / "p.json").read_text())[0]
    cfg = TrainConfig.from_json(json.loads((out / "config.json").read_text()))
    images, _, _ = load_batch([leaf], cfg.image_size, cfg.resize)
    expected = predictor(out, "cpu")[0](images)[0]  # the int8 model, calibrated by its own calibration.json
    np.testing.assert_allclose([probs[c] for c in CLASSES], expected, atol=1e-4)
    code, _, err = jaxvgg_command(monkeypatch, capsys, "predict", leaf, "--run", out, "--explain", tmp_path / "e.png")
    assert code == 2 and err.strip() == f"error: {out}: an int8 run (quantized from {run}); --explain " + (
        f"(Grad-CAM's gradients) needs the float run: use {run}"
    )


def check_bad_input(run, out, tmp_path, monkeypatch, capsys):
    tmp_path.mkdir()
    # Once through the script, as a user runs it: one line, no traceback.
    error = one_line_error(run_command("quantize.py", "--run", str(out), "--out-dir", str(tmp_path / "x"), check=False))
    assert error == f"error: {out}: an int8 run (quantized from {run}); quantizing needs the float run: use {run}"
    code, _, err = jaxvgg_command(monkeypatch, capsys, "quantize", "--run", tmp_path, "--out-dir", tmp_path / "x")
    assert code == 2 and err == f"error: {tmp_path}: not a run folder (no config.json)\n"
    with pytest.raises(UserError, match=f"reading its float weights needs the float run: use {run}$"):
        weights_file(out)  # what --init-from, --pretrained and --teacher read
    with pytest.raises(UserError, match="not empty; the int8 run goes into a new or empty folder"):
        quantize_run(run, out, 8)
    with pytest.raises(UserError, match="--calibration-images 0: must be at least 1"):
        quantize_run(run, tmp_path / "y", 0)
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "data_dir": str(tmp_path / "gone")}))
    with pytest.raises(UserError, match=r"its data folder .*gone no longer exists"):
        quantize_run(moved, tmp_path / "z", 8)
    assert not any((tmp_path / name).exists() for name in "xyz")


def test_calibration_images_are_drawn_across_the_classes_with_the_runs_seed():
    """quantize.py and lighten.py's int8 row calibrate on the same draw: a split lists its samples
    in class order, so its first 64 of 1,000/1,000/152 would all be the first class."""
    train = [(f"{c}/{i}.png", k) for k, (c, n) in enumerate([("a", 1000), ("b", 1000), ("c", 152)]) for i in range(n)]
    pick = calibration_samples(train, 64, seed=0)
    assert len(pick) == len(set(pick)) == 64 and set(pick) <= set(train)
    counts = np.bincount([label for _, label in pick], minlength=3)
    assert counts.min() >= 1 and counts.max() < 48, counts
    assert pick == calibration_samples(train, 64, seed=0) != calibration_samples(train, 64, seed=1)
    assert pick == sorted(pick, key=train.index), "in the split's order"
