"""Run folders and checkpoints under attack or accident: pickled code in a .pth, folders that
would mix two runs, refused resumes that must change nothing, damaged checkpoints, a full disk,
a diverging loss. Every hostile file is built here; each case is one line on stderr, exit 2."""

import errno
import json
import os
import pathlib
import re
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import one_line_error, run_command

from jaxvgg.core.atomic import atomic_write, write_json
from jaxvgg.core.config import TrainConfig, config_from_args, load_run_config, resume_config
from jaxvgg.core.errors import UserError
from jaxvgg.core.run import TrainingStopped
from jaxvgg.data import make_split, save_split, scan_image_folder
from jaxvgg.tools.predict import predictor
from jaxvgg.tools.weights import read_weights
from jaxvgg.train import checkpoint
from jaxvgg.train import loop as jax_loop
from jaxvgg.train import steps as steps_module
from jaxvgg.train.last_state import LastStates

torch = pytest.importorskip("torch")

import torchref  # noqa: E402
from torchref import checkpoint as torch_checkpoint  # noqa: E402
from torchref import train as torch_loop  # noqa: E402

CLASSES = ["Early_blight", "Late_blight", "healthy"]


class Payload:
    """Unpickling this touches ``marker``: what a hostile best.pth would do, harmlessly."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def hostile_pth(path, marker):
    meta = {"framework": "torch", "model": "student_cnn", "num_classes": 3, "classes": CLASSES, "image_size": 32}
    torch.save({"model": Payload(marker), "meta": meta, "state_dict": {"x": Payload(marker)}}, path)
    return path


def settings(data, out, **kw):
    base = dict(model="student_cnn", data_dir=str(data), image_size=32, batch_size=8, epochs=1, workers=0)
    return TrainConfig(**{**base, "out_dir": str(out), **kw})


def run_folder(data, out, framework="torch", **kw):
    """A run folder by hand (config.json, split.json): no training needed to read one."""
    out.mkdir(parents=True)
    cfg = settings(data, out, **kw)
    (out / "config.json").write_text(json.dumps({**cfg.to_json(), "framework": framework, "classes": CLASSES}))
    index = scan_image_folder(data)
    save_split(make_split(index, "stratified", 0.2, 0.0, 0), data, out / "split.json")
    return out


def student_weights(path):
    model = torchref.create_model("student_cnn", 3, image_size=32)
    meta = {"framework": "torch", "model": "student_cnn", "num_classes": 3, "classes": CLASSES, "image_size": 32}
    torch.save({"model": model.state_dict(), "meta": {**meta, "epoch": 1}}, path)
    return path


def first_image(data):
    return str(next(p for p in sorted((data / CLASSES[0]).iterdir())))


ENTRY_POINTS = {
    "train_jax --pretrained": lambda d, run, pth, out: ["train_jax.py", *_new(d, out), "--pretrained", pth],
    "train_torch --pretrained": lambda d, run, pth, out: ["train_torch.py", *_new(d, out), "--pretrained", pth],
    "train_jax --init-from": lambda d, run, pth, out: ["train_jax.py", *_new(d, out), "--init-from", run],
    "train_torch --init-from": lambda d, run, pth, out: ["train_torch.py", *_new(d, out), "--init-from", pth],
    "train_jax --teacher": lambda d, run, pth, out: ["train_jax.py", *_new(d, out), "--teacher", run],
    "train_torch --teacher": lambda d, run, pth, out: ["train_torch.py", *_new(d, out), "--teacher", run],
    "train_torch --resume": lambda d, run, pth, out: ["train_torch.py", "--resume", run],
    "predict": lambda d, run, pth, out: ["predict.py", first_image(d), "--run", run],
    "evaluate": lambda d, run, pth, out: ["evaluate.py", "--run", run],
    "compare --torch-run": lambda d, run, pth, out: ["compare.py", "--skip", "jax", "--torch-run", run, "--out", out],
    "lighten": lambda d, run, pth, out: [
        "lighten.py",
        *("--framework", "torch", "--base", "student_cnn", "--variants", "base"),
        *("--image-size", "32", "--data-dir", str(d), "--out", str(pathlib.Path(run).parent)),
    ],
}


def _new(data, out):
    return ["--data-dir", str(data), "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--out-dir", out]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_pickled_payload_in_a_pth_never_runs(tiny_data, tmp_path, entry):
    marker = tmp_path / "payload-ran"
    # lighten re-uses <out>/torch-<base> when it holds metrics.json; the others take any run folder.
    run = run_folder(tiny_data, tmp_path / "lighten" / "torch-student_cnn")
    (run / "metrics.json").write_text("{}")
    for name in ("best.pth", "last.pth"):
        hostile_pth(run / name, marker)
    args = ENTRY_POINTS[entry](tiny_data, str(run), str(run / "best.pth"), str(tmp_path / "new"))
    msg = one_line_error(run_command(*args, check=False))
    assert not marker.exists(), f"{entry}: the payload ran"
    assert "weights_only" not in msg
    if "compare" not in entry:  # compare reads the run's JSON files only, and refuses the incomplete folder
        assert "not a plain weights file" in msg, msg


def test_load_refuses_code_and_names_damage(tmp_path):
    marker = tmp_path / "payload-ran"
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError, match=r"best.pth: not a plain weights file"):
        torch_checkpoint.load_model(run.parent, str(hostile_pth(run / "best.pth", marker).relative_to(run.parent)))
    assert not marker.exists()
    (run / "best.pth").write_bytes(student_weights(tmp_path / "ok.pth").read_bytes()[:100])
    with pytest.raises(UserError, match=r"best.pth: damaged or not a PyTorch file"):
        torch_checkpoint.load_model(run)


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({}, "no description of its model"),
        ({"model": "resnet9000"}, "names model 'resnet9000'"),
        ({"num_classes": 10**13}, "declares num_classes 10000000000000"),
        ({"classes": ["a", "b"]}, "class names do not match its num_classes 3"),
        ({"image_size": [32]}, "declares image_size [32]"),
    ],
)
@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_a_checkpoint_whose_meta_lies_is_refused_before_anything_is_built(
    tiny_data, tmp_path, meta, expected, framework
):
    run = run_folder(tiny_data, tmp_path / "run", framework)
    good = {"framework": framework, "model": "student_cnn", "num_classes": 3, "classes": CLASSES, "image_size": 32}
    bad = {} if not meta else {**good, **meta}
    if framework == "torch":
        model = torchref.create_model("student_cnn", 3, image_size=32)
        torch.save({"model": model.state_dict(), "meta": bad}, run / "best.pth")
    else:
        checkpoint.save(run / "best.msgpack", {"params": {}}, bad)
    with pytest.raises(UserError, match=re.escape(expected)) as e:
        predictor(run)
    assert "\n" not in str(e.value)


def test_damaged_checkpoints_and_configs_are_one_line_in_the_scripts(tiny_data, tmp_path):
    run = run_folder(tiny_data, tmp_path / "run")
    (run / "best.pth").write_bytes(student_weights(tmp_path / "ok.pth").read_bytes()[:200])  # truncated
    msg = one_line_error(run_command("predict.py", first_image(tiny_data), "--run", str(run), check=False))
    assert "best.pth: damaged or not a PyTorch file" in msg
    assert "best.pth: damaged" in one_line_error(run_command("evaluate.py", "--run", str(run), check=False))
    config = json.loads((run / "config.json").read_text())
    for key, value, expected in (
        ("batch_size", 0, "--batch-size must be at least 1"),
        ("image_size", "32", "image_size must be int, got '32'"),
        ("lr", [1e-3], "lr must be float"),
    ):
        (run / "config.json").write_text(json.dumps({**config, key: value}))
        msg = one_line_error(run_command("evaluate.py", "--run", str(run), check=False))
        assert "config.json" in msg and expected in msg, msg


def test_compare_names_what_a_torch_run_folder_lacks(tiny_data, tmp_path):
    run = run_folder(tiny_data, tmp_path / "run")
    out = str(tmp_path / "cmp")
    msg = one_line_error(run_command("compare.py", "--skip", "jax", "--torch-run", str(run), "--out", out, check=False))
    assert "history.json: missing" in msg
    msg = one_line_error(
        run_command("compare.py", "--skip", "jax", "--torch-run", str(tmp_path), "--out", out, check=False)
    )
    assert "not a run folder" in msg


@pytest.mark.parametrize("fit", [jax_loop.fit, lambda cfg: torch_loop.fit(cfg, "cpu")], ids=["jax", "torch"])
def test_a_non_empty_out_dir_is_refused_and_overwrite_replaces_only_run_files(tiny_data, tmp_path, fit):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "best.msgpack").write_bytes(b"stale")  # a file of another run
    (out / "best.pth").write_bytes(b"stale")
    with pytest.raises(UserError, match=r"the folder is not empty; continue that run with --resume"):
        fit(settings(tiny_data, out, max_steps=2))
    assert sorted(p.name for p in out.iterdir()) == ["best.msgpack", "best.pth", "notes.txt"]
    fit(settings(tiny_data, out, overwrite=True))
    assert (out / "notes.txt").read_text() == "mine"
    framework = json.loads((out / "config.json").read_text())["framework"]
    other = {"jax": "best.pth", "torch": "best.msgpack"}[framework]
    assert not (out / other).exists(), "the other framework's stale checkpoint must not survive"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_weights_from_a_run_folder_are_the_ones_its_config_names(tiny_data, tmp_path, capsys):
    from jaxvgg.core.weights import weights_file

    run = run_folder(tiny_data, tmp_path / "run", "torch")
    student_weights(run / "best.pth")
    (run / "best.msgpack").write_bytes(b"left over from another run")
    assert weights_file(run) == run / "best.pth"
    assert set(read_weights(run)) == set(torchref.create_model("student_cnn", 3, image_size=32).state_dict())
    jax_loop.build_state(settings(tiny_data, tmp_path / "new", init_from=str(run)), 3, 5, read_weights=read_weights)
    assert f"from {run / 'best.pth'}" in capsys.readouterr().out


def test_a_refused_resume_changes_nothing(tiny_data, tmp_path):
    torch_run = run_folder(tiny_data, tmp_path / "torch-run", "torch")
    student_weights(torch_run / "best.pth")
    jax_run = run_folder(tiny_data, tmp_path / "jax-run", "jax")
    old_jax_run = run_folder(tiny_data, tmp_path / "old-jax-run", "jax")
    checkpoint.save(old_jax_run / "last.msgpack", {"w": np.zeros(1)}, {"model": "student_cnn"})
    for run, script, expected in (
        (old_jax_run, "train_jax.py", "its last.msgpack is from an earlier jaxvgg, which this version does not resume"),
        (torch_run, "train_jax.py", "a torch run folder; continue it with scripts/train_torch.py --resume"),
        (jax_run, "train_torch.py", "a jax run folder; continue it with scripts/train_jax.py --resume"),
        (torch_run, "train_torch.py", "no last.pth to continue from"),
        (jax_run, "train_jax.py", "no last to continue from"),
    ):
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        msg = one_line_error(run_command(script, "--resume", str(run), check=False))
        assert expected in msg, msg
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before, f"{script} changed {run}"


def test_resume_lists_every_setting_that_differs_and_notes_the_safe_ones(tiny_data, tmp_path, capsys):
    run = run_folder(tiny_data, tmp_path / "run", "jax", model="vgg11", lr=1e-4)
    with pytest.raises(UserError, match=r"--image-size 48 \(the run has 32\); --lr 0.1 \(the run has 0.0001\)"):
        resume_config(run, {"image_size": 48, "lr": 0.1})
    cfg, notes = resume_config(run, {"epochs": 4, "max_steps": 3})
    assert (cfg.epochs, cfg.max_steps, cfg.model) == (4, 3, "vgg11")
    assert notes == ["--epochs 4 applies from now on (the run had 1)"]
    # The default --model, given explicitly, is compared like any other flag.
    import argparse

    from jaxvgg.core.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(UserError, match=r"--model student_cnn \(the run has vgg11\)"):
        config_from_args(parser.parse_args(["--resume", str(run), "--model", "student_cnn"]))
    assert config_from_args(parser.parse_args(["--resume", str(run)])).model == "vgg11"


def test_resume_with_more_epochs_trains_them(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    jax_loop.fit(settings(tiny_data, out, epochs=1))
    jax_loop.fit(TrainConfig(resume=str(out), epochs=2, workers=0))
    assert "--epochs 2 applies from now on (the run had 1)" in capsys.readouterr().out
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]
    assert load_run_config(out).epochs == 2


@pytest.mark.parametrize(
    "fit",
    [lambda cfg: jax_loop.fit(cfg, read_weights), lambda cfg: torch_loop.fit(cfg, "cpu")],
    ids=["jax", "torch"],
)
def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tiny_data, tmp_path, fit):
    bad_data = tmp_path / "data"
    for c in CLASSES:
        (bad_data / c).mkdir(parents=True)
        for i, src in enumerate(sorted((tiny_data / c).iterdir())[:8]):
            (bad_data / c / f"{i}.jpg").write_bytes(src.read_bytes())
    (bad_data / CLASSES[0] / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"unreadable image"):
        fit(settings(bad_data, out, strict=True))
    assert not out.exists()
    wrong = tmp_path / "vgg11.pth"
    torch.save(torchref.create_model("vgg11", 3).state_dict(), wrong)
    with pytest.raises(UserError, match=r"weights do not fit student_cnn"):
        fit(settings(bad_data, out, init_from=str(wrong)))
    assert not out.exists(), "the folder created for the run must go when the run fails before any checkpoint"


@pytest.mark.parametrize(
    ("fit", "last"),
    [(lambda cfg: jax_loop.fit(cfg, read_weights), "last"), (lambda cfg: torch_loop.fit(cfg, "cpu"), "last.pth")],
    ids=["jax", "torch"],
)
def test_keep_last_0_saves_no_resumable_state_and_a_negative_count_is_refused(tiny_data, tmp_path, fit, last):
    """lighten.py's runs are never resumed: --keep-last 0 spares them writing a VGG-16's weights and
    Adam moments (1.6 GB) every epoch. The best model and the report are written as always."""
    out = tmp_path / "run"
    fit(settings(tiny_data, out, epochs=2, keep_last=0))
    assert not (out / last).exists()
    assert (out / "metrics.json").exists() and len(json.loads((out / "history.json").read_text())) == 2
    assert any((out / name).exists() for name in ("best.msgpack", "best.pth"))
    refused = run_command("train_jax.py", "--keep-last", "-1", "--out-dir", str(tmp_path / "other"), check=False)
    assert "--keep-last -1: must be 0 or more" in one_line_error(refused)


def test_atomic_writes_leave_the_old_file_and_no_temporary_on_a_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "history.json"
    write_json(target, [1])

    def full_disk(f):
        f.write(b"[1, 2")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match=r"history.json: could not be written \(no space left on the device\)"):
        atomic_write(target, full_disk)
    assert json.loads(target.read_text()) == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]

    def no_fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_fsync)
    with pytest.raises(UserError, match=r"last.msgpack: could not be written"):
        checkpoint.save(tmp_path / "last.msgpack", {"w": np.zeros(3)}, {"model": "student_cnn"})
    with pytest.raises(UserError, match=r"last.pth: could not be written"):
        torch_checkpoint.save_torch_file(tmp_path / "last.pth", {"w": torch.zeros(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_a_full_disk_mid_run_is_one_line(tiny_data, tmp_path):
    # sitecustomize-free: a tiny wrapper script makes every fsync fail, as a full disk does.
    wrapper = tmp_path / "full_disk.py"
    wrapper.write_text(
        "import errno, os, runpy, sys\n"
        "def fsync(fd): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "os.fsync = fsync\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    import subprocess
    import sys

    from helpers import ROOT

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(wrapper), str(ROOT / "scripts" / "train_jax.py"), *_new(tiny_data, str(out))],
        capture_output=True,
        text=True,
    )
    assert "no space left on the device" in one_line_error(proc)
    assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_nan_before_any_checkpoint_says_none_was_written(tiny_data, tmp_path, monkeypatch):
    real = steps_module.train_step

    def poisoned(state, batch, aux=None, **kw):
        state, m = real(state, batch, aux, **kw)
        return state, {**m, "loss_sum": m["loss_sum"] * np.nan}

    monkeypatch.setattr(steps_module, "train_step", poisoned)
    with pytest.raises(
        TrainingStopped, match=r"loss became nan at epoch 1, batch 1; stopped; no checkpoint was written"
    ):
        jax_loop.fit(settings(tiny_data, tmp_path / "run"))


@pytest.mark.parametrize("fit", [jax_loop.fit, lambda cfg: torch_loop.fit(cfg, "cpu")], ids=["jax", "torch"])
def test_a_loss_that_explodes_is_never_called_best(tiny_data, tmp_path, fit):
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"diverged|became (nan|inf)") as e:
        fit(settings(tiny_data, out, lr=1e6, epochs=2))
    assert "\n" not in str(e.value)
    assert not (out / "best.msgpack").exists() and not (out / "best.pth").exists()


def test_the_torch_rendezvous_listens_on_the_address_given():
    import socket

    from torchref.distributed import rendezvous_store

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = rendezvous_store(f"127.0.0.1:{port}", 1, 0)
    store.set("k", "v")
    from torchref import distributed

    assert distributed._LISTENING[-1].getsockname() == ("127.0.0.1", port)
    with pytest.raises(UserError, match=r"expected HOST:PORT"):
        rendezvous_store("no-port", 1, 0)


def test_the_jax_coordinator_binds_to_the_address_given(monkeypatch):
    import jax

    from jaxvgg import parallel

    seen = {}
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **kw: seen.update(kw))
    parallel.initialize("127.0.0.1:1234", 2, 0)
    assert seen["coordinator_bind_address"] == "127.0.0.1:1234"


def test_review_cases_of_resume_overwrite_and_old_configs(tiny_data, tmp_path):
    import argparse

    from jaxvgg.core.config import add_arguments
    from jaxvgg.core.run import prepare_run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run = run_folder(tiny_data, tmp_path / "run", "jax", epochs=3)
    not_a_state = SimpleNamespace(
        step=np.int32(1), params={"w": np.zeros(1)}, batch_stats={}, opt_state=(), rng=np.zeros(2)
    )
    last = LastStates(run / "last")
    last.save(not_a_state, {"model": "student_cnn", "epoch": "3"})
    last.close()
    # --epochs equal to the default still counts: it was given.
    cfg = config_from_args(parser.parse_args(["--resume", str(run), "--epochs", str(TrainConfig().epochs)]))
    ctx = prepare_run(cfg, "jax")
    assert ctx.cfg.epochs == TrainConfig().epochs and ctx.config_changed
    # A last checkpoint whose position is mangled is one line, before config.json is rewritten.
    before = (run / "config.json").read_bytes()
    with pytest.raises(UserError, match="not a resumable checkpoint"):
        jax_loop.fit(cfg)
    assert (run / "config.json").read_bytes() == before
    # --overwrite never deletes the weights the run is to start from.
    student_weights(run / "best.pth")
    with pytest.raises(UserError, match="inside --out-dir"):
        prepare_run(settings(tiny_data, run, overwrite=True, init_from=str(run / "best.pth")), "torch")
    assert (run / "best.pth").exists()
    # A config.json from before --class-weights existed meant the plain loss.
    raw = json.loads((run / "config.json").read_text())
    del raw["class_weights"]
    (run / "config.json").write_text(json.dumps(raw))
    assert load_run_config(run).class_weights == "none"


def test_default_run_folders_are_unique_even_within_one_second(tmp_path):
    from jaxvgg.core.run import reserve_run_folder

    folders = [reserve_run_folder("student_cnn", "jax", tmp_path / "runs") for _ in range(3)]
    assert len(set(folders)) == 3 and all(f.is_dir() and not any(f.iterdir()) for f in folders)
    same_second = folders[1].name[:15] == folders[0].name[:15]
    assert folders[1].name == folders[0].name + "-2" or not same_second
