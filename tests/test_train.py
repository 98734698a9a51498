"""Training: optimizer semantics, schedules, the loop end to end, resume, and user errors (no torch)."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization
from helpers import one_line_error, run_command, run_script
from PIL import Image

from jaxvgg.core.config import TrainConfig
from jaxvgg.core.errors import UserError
from jaxvgg.core.run import TrainingStopped
from jaxvgg.train import checkpoint
from jaxvgg.train import loop as loop_module
from jaxvgg.train import steps as steps_module
from jaxvgg.train.last_state import LastStates
from jaxvgg.train.optim import epoch_lr, make_optimizer, make_schedule


def one_step(name, p, g, lr=0.1, wd=0.01):
    tx = make_optimizer(name, lr, wd)
    updates, _ = tx.update(g, tx.init(p), p)
    return optax.apply_updates(p, updates)


def test_adam_decay_is_coupled_and_adamw_decoupled():
    p, g = jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, 0.1, -0.2])
    lr, wd, eps = 0.1, 0.01, 1e-8
    coupled = g + wd * p  # torch Adam: L2 enters the moments; the first step is g'/(|g'| + eps)
    np.testing.assert_allclose(one_step("adam", p, g), p - lr * coupled / (jnp.abs(coupled) + eps), rtol=1e-6)
    np.testing.assert_allclose(one_step("adamw", p, g), p - lr * (g / (jnp.abs(g) + eps) + wd * p), rtol=1e-6)
    np.testing.assert_allclose(one_step("sgd", p, g), p - lr * (g + wd * p), rtol=1e-6)


def test_schedules_step_per_epoch_like_torch():
    spe = 5
    cosine = make_schedule("cosine", 0.1, 10, spe)
    for epoch in range(10):
        for step in (epoch * spe, epoch * spe + spe - 1):
            assert float(cosine(step)) == pytest.approx(epoch_lr("cosine", 0.1, epoch, 10), rel=1e-6)
    assert epoch_lr("cosine", 0.1, 5, 10) == pytest.approx(0.05)
    step = make_schedule("step", 0.1, 100, spe, step_size=3, gamma=0.5)
    assert [round(float(step(e * spe)), 6) for e in range(7)] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    with pytest.raises(UserError, match="--schedule 'linear'"):
        make_schedule("linear", 0.1, 10, spe)


def tiny_config(data, out, **kw):
    base = dict(
        model="student_cnn",
        data_dir=str(data),
        image_size=32,
        batch_size=8,
        epochs=3,
        lr=1e-3,
        out_dir=str(out),
        workers=2,
        val_fraction=0.0,  # these tests count batches of the 80% training split
    )
    return TrainConfig(**{**base, **kw})


def tiny_flags(data, out):
    """The command-line twin of :func:`tiny_config`."""
    return [
        "--model",
        "student_cnn",
        "--data-dir",
        str(data),
        "--image-size",
        "32",
        "--out-dir",
        str(out),
        "--workers",
        "2",
    ]


def params_of(run_dir):
    meta, state = LastStates(run_dir / "last").read()
    return meta, jax.tree.leaves(state)


def test_training_end_to_end_writes_every_output(tiny_data, tmp_path):
    report = loop_module.fit(tiny_config(tiny_data, tmp_path / "run"))
    run = tmp_path / "run"
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"], "the loss falls"
    assert history[1]["lr"] == pytest.approx(epoch_lr("cosine", 1e-3, 1, 3))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == report
    assert set(metrics["per_class"]) == {"Early_blight", "Late_blight", "healthy"}
    assert np.sum(metrics["confusion_matrix"]) == 15 and 0 <= metrics["macro_f1"] <= 1
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 57 and len(split["test"]) == 15
    assert json.loads((run / "config.json").read_text())["model"] == "student_cnn"
    for png in ("curves.png", "confusion.png"):
        assert Image.open(run / png).size[0] > 300
    best = checkpoint.read(run / "best.msgpack")[0]
    assert best["model"] == "student_cnn"
    val_acc = [h["val_acc"] for h in history]
    assert best["epoch"] == 1 + val_acc.index(max(val_acc)), "the first epoch of the best validation accuracy"
    assert params_of(run)[0]["model"] == "student_cnn"


def test_select_by_macro_f1_keeps_the_epoch_of_the_best_validation_macro_f1(tiny_data, tmp_path):
    loop_module.fit(tiny_config(tiny_data, tmp_path / "run", epochs=4, select_by="macro_f1"))
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    f1 = [h["val_macro_f1"] for h in history]
    best = checkpoint.read(tmp_path / "run" / "best.msgpack")[0]
    assert best["epoch"] == 1 + f1.index(max(f1)) and best["val_macro_f1"] == max(f1)


def test_resume_mid_epoch_equals_an_uninterrupted_run(tiny_data, tmp_path):
    loop_module.fit(tiny_config(tiny_data, tmp_path / "whole", epochs=2))
    stopped = loop_module.fit(tiny_config(tiny_data, tmp_path / "parts", epochs=2, max_steps=10))
    assert stopped is None
    meta, _ = params_of(tmp_path / "parts")
    assert (meta["epoch"], meta["batch"]) == (1, 3)  # 7 batches per epoch: stopped in the second
    loop_module.fit(tiny_config(tiny_data, tmp_path / "parts", epochs=2, resume=str(tmp_path / "parts")))
    _, whole = params_of(tmp_path / "whole")
    _, parts = params_of(tmp_path / "parts")
    assert len(whole) == len(parts)
    for a, b in zip(whole, parts, strict=True):
        assert np.array_equal(a, b), "resumed training must be bit-identical"
    h1 = json.loads((tmp_path / "whole" / "history.json").read_text())
    h2 = json.loads((tmp_path / "parts" / "history.json").read_text())
    timing = ("seconds", "train_images_per_s")
    assert [{k: v for k, v in h.items() if k not in timing} for h in h1] == [
        {k: v for k, v in h.items() if k not in timing} for h in h2
    ], "the resumed epoch's history row counts the batches before the stop too"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    real = steps_module.train_step

    def poisoned(state, batch, aux=None, **kw):
        state, m = real(state, batch, aux, **kw)
        bad = jnp.where(state.step > 9, jnp.nan, m["loss_sum"])  # second epoch
        return state, {**m, "loss_sum": bad}

    monkeypatch.setattr(steps_module, "train_step", poisoned)
    with pytest.raises(TrainingStopped, match="loss became nan at epoch 2"):
        loop_module.fit(tiny_config(tiny_data, tmp_path / "run"))
    meta, _ = params_of(tmp_path / "run")
    assert meta["epoch"] == 1 and all(np.isfinite(x).all() for x in params_of(tmp_path / "run")[1])


@pytest.mark.slow
def test_scripts_train_predict_evaluate(tiny_data, tmp_path):
    run = tmp_path / "run"
    out = run_script("train_jax.py", *tiny_flags(tiny_data, run), "--batch-size", "8", "--epochs", "2").stdout
    assert "best model (epoch" in out and "epoch 2/2" in out
    single = run_script("predict.py", str(tiny_data / "healthy" / "healthy_00000.jpg"), "--run", str(run)).stdout
    assert single.splitlines()[0].endswith(("Early_blight", "Late_blight", "healthy"))
    assert len(single.splitlines()) == 4
    table = run_script("predict.py", str(tiny_data / "healthy"), "--run", str(run)).stdout
    assert len(table.splitlines()) == 2 + 24
    # Several targets (as a shell's glob gives them), each image once, and the table as CSV/JSON.
    leaves = [str(tiny_data / "healthy" / f"healthy_0000{i}.jpg") for i in range(3)]
    csv_out, json_out = tmp_path / "p.csv", tmp_path / "p.json"
    run_script(
        "predict.py",
        *leaves,
        str(tiny_data / "healthy"),
        "--run",
        str(run),
        "--csv",
        str(csv_out),
        "--json",
        str(json_out),
    )
    records = json.loads(json_out.read_text())
    assert len(records) == 24 and records[0]["image"] == leaves[0]
    assert abs(sum(records[0][c] for c in ("Early_blight", "Late_blight", "healthy")) - 1) < 1e-5
    # A calibrated run (calibration.json) adds whether each image is unsure (docs/calibration.md).
    assert csv_out.read_text().splitlines()[0] == "image,prediction,Early_blight,Late_blight,healthy,unsure"
    assert len(csv_out.read_text().splitlines()) == 1 + 24
    evaluated = run_script("evaluate.py", "--run", str(run)).stdout
    accuracy = json.loads((run / "metrics.json").read_text())["accuracy"]
    assert f"accuracy {accuracy:.2%}" in evaluated

    # Bad input: one line, exit status 2, and nothing lost.
    msg = one_line_error(run_command("train_jax.py", "--resume", str(run), "--model", "vgg16_gap", check=False))
    assert "--model vgg16_gap (the run has student_cnn)" in msg
    assert (run / "best.msgpack").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data-dir", "/nonexistent/potatoes"], "data directory does not exist"),
        (["--model", "vgg17"], "--model 'vgg17': choose one of"),
        (["--optimizer", "rmsprop"], "--optimizer 'rmsprop'"),
        (["--batch-size", "500"], "fewer than --batch-size 500"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--freeze", "features.99"], "--freeze 'features.99': student_cnn has no such layer"),
        (["--pretrained", "/nonexistent/vgg16.pth"], "--pretrained /nonexistent/vgg16.pth: no such file"),
        (["--teacher", "/nonexistent/run"], "/nonexistent/run: not a run folder"),
        (["--prune-amount", "1.5"], "--prune-amount 1.5: must be in [0, 1)"),
        (["--precision", "fp16"], "--precision 'fp16': choose fp32 or bf16"),
    ],
)
def test_bad_training_input_is_one_clear_line(tiny_data, tmp_path, args, expected):
    assert expected in one_line_error(
        run_command("train_jax.py", *tiny_flags(tiny_data, tmp_path / "r"), *args, check=False)
    )


def test_distill_script_needs_a_teacher(tiny_data):
    assert "--teacher RUN_DIR is required" in one_line_error(run_command("distill.py", check=False))


def test_checkpoint_of_another_model_is_refused(tiny_data, tmp_path):
    loop_module.fit(tiny_config(tiny_data, tmp_path / "run", epochs=1))
    state = loop_module.build_state(tiny_config(tiny_data, tmp_path / "x", model="student_cnn", image_size=64), 3, 7)
    with pytest.raises(UserError, match="does not fit student_cnn"):
        LastStates(tmp_path / "run" / "last").restore(state, "student_cnn")
    with pytest.raises(UserError, match="saved state is for student_cnn, not vgg16_gap"):
        LastStates(tmp_path / "run" / "last").restore(state, "vgg16_gap")
    (tmp_path / "junk.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="not a jaxvgg checkpoint or damaged"):
        checkpoint.read(tmp_path / "junk.msgpack")
    # The first format's FC rows after the flatten are in another order: refused by name, not misread.
    old = serialization.msgpack_serialize({"format": "jaxvgg-checkpoint-1", "meta": "{}", "state": {}})
    (tmp_path / "old.msgpack").write_bytes(old)
    with pytest.raises(UserError, match=r"earlier jaxvgg \(jaxvgg-checkpoint-1\), whose flatten order differs"):
        checkpoint.read(tmp_path / "old.msgpack")


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_checkpoint(tiny_data, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT

    run = tmp_path / "run"
    args = [
        "--data-dir",
        str(tiny_data),
        "--model",
        "student_cnn",  # the mechanics of Ctrl-C, on a model that compiles in seconds
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "50",
        "--out-dir",
        str(run),
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train_jax.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (run / "history.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        # Straight after the first epoch's history is written: inside the end-of-epoch bookkeeping,
        # the narrowest window (Ctrl-C there must wait for the checkpoint, then stop).
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: saved" in out and "Traceback" not in err
    meta, _ = params_of(run)
    assert meta["epoch"] >= 1
    resumed = run_script("train_jax.py", "--resume", str(run), "--max-steps", str(14 * 2 + 3)).stdout
    assert f"resuming {run} at epoch" in resumed


def test_metrics_read_back_every_few_steps_give_the_sums_of_reading_every_step(tiny_data, tmp_path):
    """The loop reads the device metrics back every --log-every steps; the epoch sums must not care."""
    histories = []
    for every in (1, 4):
        out = tmp_path / f"every{every}"
        loop_module.fit(tiny_config(tiny_data, out, epochs=2, log_every=every))
        history = json.loads((out / "history.json").read_text())
        histories.append([(h["train_loss"], h["train_acc"]) for h in history])
    assert histories[0] == histories[1]
    # metrics.csv (timm's summary.csv columns) holds the same rows as history.json.
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history]
    for r, h in zip(rows, history, strict=True):
        assert float(r["train_loss"]) == h["train_loss"] and float(r["eval_loss"]) == h["val_loss"]
        assert float(r["eval_top1"]) == pytest.approx(100 * h["val_acc"]) and float(r["lr"]) == h["lr"]


@pytest.mark.slow
def test_progress_in_a_log_is_a_few_plain_lines(tiny_data, tmp_path):
    """Output that is not a terminal gets no progress-bar redraws: a short run stays a few KB."""
    done = run_script("train_jax.py", *tiny_flags(tiny_data, tmp_path / "run"), "--epochs", "3")
    log = done.stdout + done.stderr
    assert "\r" not in log and len(log) < 4000, (len(log), log[-1500:])
    assert log.count("epoch ") >= 3 and "best model (epoch" in log
