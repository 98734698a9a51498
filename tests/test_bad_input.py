"""Hostile or mistaken input: symlinks in a data folder, decompression bombs, damaged run folders,
and a --out that is not ours. Every file is built here, in tmp_path."""

import json
import os
import re
import resource
import struct
import warnings
import zlib

import numpy as np
import pytest
from helpers import one_line_error, run_command, run_script
from PIL import Image

from jaxvgg.core import synthetic as synthetic_module
from jaxvgg.core.errors import UserError
from jaxvgg.core.synthetic import make_dataset
from jaxvgg.data import make_split, scan_image_folder
from jaxvgg.tools.predict import predictor


def bomb_png(path, width, height):
    """A PNG of a few bytes whose header declares ``width`` x ``height`` pixels (nothing is decoded)."""
    Image.new("1", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    # Signature (8), chunk length (4), b"IHDR" (4), then width and height; the CRC covers type and data.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def images(folder, n, shade):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (shade, 10 * i, 0)).save(folder / f"img{i}.jpg")


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_symlinked_folders_and_files_count_each_image_once(tmp_path):
    root = tmp_path / "data"
    images(root / "Early_blight", 6, 200)
    images(root / "healthy", 6, 50)
    (root / "Early_blight" / "self").symlink_to(".")  # the reviewer's loop: 12 images became 492
    (root / "healthy" / "blight").symlink_to("../Early_blight")  # a whole class again, as the other class
    (root / "healthy" / "copy.jpg").symlink_to("../Early_blight/img0.jpg")
    (root / "Early_blight" / "again.jpg").symlink_to("img1.jpg")
    outside = tmp_path / "elsewhere"
    images(outside, 2, 120)
    (root / "Early_blight" / "linked").symlink_to(outside)  # images kept elsewhere: still allowed
    (root / "healthy" / "linked_too").symlink_to(outside)  # ... but only once
    (root / "healthy" / "outside.jpg").symlink_to(outside / "img0.jpg")

    data = scan_image_folder(root)
    paths = [p for p, _ in data.samples]
    assert len(paths) == 14 and len(set(paths)) == 14
    assert data.samples == sorted(data.samples, key=lambda s: (s[1], s[0])), "torchvision's order"
    assert "Early_blight/linked/img0.jpg" in paths and "Early_blight/img1.jpg" in paths
    assert "healthy/outside.jpg" not in paths, "the same outside file through two links counts once"
    reasons = dict(data.skipped)
    assert reasons["Early_blight/self"] == "symlink to a folder already scanned (Early_blight)"
    assert "already scanned (Early_blight)" in reasons["healthy/blight"]
    assert reasons["healthy/copy.jpg"] == "duplicate of Early_blight/img0.jpg (same file through a symlink)"
    assert reasons["Early_blight/again.jpg"] == "duplicate of Early_blight/img1.jpg (same file through a symlink)"
    assert reasons["healthy/linked_too"] == "symlink to a folder already scanned (Early_blight/linked)"
    assert "duplicate of Early_blight/linked/img0.jpg" in reasons["healthy/outside.jpg"]
    real = {os.path.realpath(root / p) for p in paths}
    assert len(real) == len(paths), "no file is in the index twice"
    split = make_split(data, seed=0)
    train = {os.path.realpath(root / p) for p, _ in split.samples("train")}
    assert not train & {os.path.realpath(root / p) for p, _ in split.samples("test")}


def test_broken_and_looping_symlinks_are_skipped_with_a_reason(tmp_path):
    images(tmp_path / "a", 2, 200)
    images(tmp_path / "b", 2, 50)
    (tmp_path / "a" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (tmp_path / "b" / "one.png").symlink_to("two.png")
    (tmp_path / "b" / "two.png").symlink_to("one.png")
    data = scan_image_folder(tmp_path)
    assert len(data.samples) == 4
    reasons = dict(data.skipped)
    assert reasons["a/gone.jpg"].startswith("broken symlink")
    assert reasons["b/one.png"] == reasons["b/two.png"] == "symlink loop"
    with pytest.raises(UserError, match=r"3 unreadable image\(s\) \(--strict\): a/gone.jpg: broken symlink") as e:
        scan_image_folder(tmp_path, strict=True)
    assert "b/one.png: symlink loop" in str(e.value) and "\n" not in str(e.value)


def test_decompression_bombs_in_a_data_folder_are_skipped_without_decoding(tmp_path):
    images(tmp_path / "a", 2, 200)
    images(tmp_path / "b", 2, 50)
    bomb_png(tmp_path / "a" / "bomb.png", 20000, 20000)  # PIL refuses above 2x its limit
    bomb_png(tmp_path / "b" / "big.png", 10000, 10000)  # PIL only warns between 1x and 2x
    before = peak_rss_mib()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under python -W error: a warning must not escape either
        data = scan_image_folder(tmp_path, workers=2)
    assert len(data.samples) == 4
    reasons = dict(data.skipped)
    assert "too large to decode safely" in reasons["a/bomb.png"]
    assert reasons["b/big.png"] == "10000x10000 pixels is too large to decode safely (limit 89,478,485)"
    assert peak_rss_mib() - before < 200, "the bombs were refused from their header, not decoded"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A JAX run folder of an untrained student_cnn at 32 px: what predict.py reads, in a second.

    Training one (test_train does) would cost ten times as long; these tests are about the
    images, not the weights.
    """
    import jax

    import jaxvgg
    from jaxvgg.core.config import TrainConfig
    from jaxvgg.models import variable_shapes
    from jaxvgg.train import checkpoint

    run = tmp_path_factory.mktemp("runs") / "run"
    run.mkdir()
    classes = list(synthetic_module.CLASSES)
    cfg = TrainConfig(model="student_cnn", image_size=32, out_dir=str(run))
    (run / "config.json").write_text(json.dumps({**cfg.to_json(), "framework": "jax", "classes": classes}))
    shapes = dict(variable_shapes(jaxvgg.create_model("student_cnn", len(classes)), 32))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.05).astype(s.dtype), shapes)
    meta = {"framework": "jax", "model": "student_cnn", "num_classes": 3, "classes": classes, "image_size": 32}
    checkpoint.save(run / "best.msgpack", variables, {**meta, "epoch": 1})
    return run


def test_predict_skips_unreadable_images_and_goes_on(tiny_run, tmp_path):
    folder = tmp_path / "leaves"
    folder.mkdir()
    synthetic_module.draw_leaf(0, 2, 0, size=48).save(folder / "good.jpg")
    bomb_png(folder / "bomb.png", 20000, 20000)
    bomb_png(folder / "big.png", 10000, 10000)
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (folder / "text.jpg").write_text("not an image")
    proc = run_script("predict.py", str(folder), "--run", str(tiny_run), check=False, env={"PYTHONWARNINGS": "error"})
    assert proc.returncode == 1, proc.stderr  # 1: some files skipped, the rest predicted
    assert "Traceback" not in proc.stderr
    skipped = sorted(proc.stderr.splitlines())
    assert [line.split(":")[0] for line in skipped] == [
        f"skipped {folder / name}" for name in ("big.png", "bomb.png", "gone.jpg", "text.jpg")
    ], proc.stderr
    assert "too large to decode safely" in skipped[0] and "too large to decode safely" in skipped[1]
    assert "broken symlink" in skipped[2] and "not an image PIL can read" in skipped[3]
    rows = proc.stdout.splitlines()
    assert rows[0].startswith(str(folder / "good.jpg")) and rows[0].endswith(("Early_blight", "Late_blight", "healthy"))


def test_predict_with_nothing_readable_is_an_error(tiny_run, tmp_path):
    bomb = bomb_png(tmp_path / "bomb.png", 20000, 20000)
    msg = one_line_error(run_command("predict.py", str(bomb), "--run", str(tiny_run), check=False))
    assert msg.startswith(f"error: {bomb}: too large to decode safely")
    folder = tmp_path / "leaves"
    folder.mkdir()
    (folder / "a.jpg").write_text("not an image")
    (folder / "b.png").write_bytes(b"")
    proc = run_command("predict.py", str(folder), "--run", str(tiny_run), check=False)
    msg = one_line_error(proc)
    assert msg == f"error: {folder}: none of its 2 image file(s) could be read (see the skipped lines)"
    assert sum(line.startswith(f"skipped {folder}") for line in proc.stderr.splitlines()) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not a run folder (no config.json)"),
        ("{not json", "config.json: not valid JSON"),
        (b"\xff\xfe\x00", "config.json: not valid JSON"),
        ("[1, 2]", "config.json: expected a JSON object of settings, got list"),
        ('{"framework": "tensorflow"}', "config.json: framework 'tensorflow': expected jax or torch"),
        ('{"image_size": "big"}', "config.json: image_size"),
    ],
)
def test_a_missing_or_damaged_config_json_is_one_line(tmp_path, content, expected):
    run = tmp_path / "run"
    run.mkdir()
    if isinstance(content, str):
        (run / "config.json").write_text(content)
    elif content is not None:
        (run / "config.json").write_bytes(content)
    with pytest.raises(UserError, match=re.escape(expected)) as e:
        predictor(run)
    assert "\n" not in str(e.value)


def test_predict_script_names_a_damaged_config_json(tmp_path):
    image = tmp_path / "leaf.jpg"
    Image.new("RGB", (16, 16)).save(image)
    run = tmp_path / "run"
    (run / "config.json").mkdir(parents=True)  # a folder where the file should be
    assert "not a run folder (no config.json)" in one_line_error(
        run_command("predict.py", str(image), "--run", str(run), check=False)
    )
    (run / "config.json").rmdir()
    (run / "config.json").write_text('["not", "settings"]')
    msg = one_line_error(run_command("predict.py", str(image), "--run", str(run), check=False))
    assert msg.startswith(f"error: {run / 'config.json'}: ")


def test_make_dataset_never_deletes_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    (out / "Potato___healthy").mkdir(parents=True)
    (out / "Potato___healthy" / "notes.txt").write_text("my field notes")
    small = ["--counts", "1", "1", "1", "--size", "32"]
    msg = one_line_error(run_command("make_dataset.py", "--out", str(out), *small, check=False))
    assert msg == f"error: {out}: not empty and not a dataset written by make_dataset.py; use --force to replace it"
    assert (out / "Potato___healthy" / "notes.txt").read_text() == "my field notes"

    run_command("make_dataset.py", "--out", str(out), *small, "--force")
    assert not (out / "Potato___healthy").exists()
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["generator"] == synthetic_module.GENERATOR and manifest["counts"] == [1, 1, 1]
    # Its own dataset is replaced without --force ...
    run_command("make_dataset.py", "--out", str(out), *small, "--seed", "5")
    assert json.loads((out / "dataset.json").read_text())["seed"] == 5
    # ... unless the user has put something of theirs in it since.
    (out / "healthy" / "my_photo.jpg").write_bytes((out / "healthy" / "healthy_00000.jpg").read_bytes())
    assert "not a dataset written by make_dataset.py" in one_line_error(
        run_command("make_dataset.py", "--out", str(out), *small, check=False)
    )
    assert (out / "healthy" / "my_photo.jpg").exists()


def test_make_dataset_interrupted_midway_leaves_the_old_set(tmp_path, monkeypatch):
    out = make_dataset(tmp_path / "d", seed=1, counts=(2, 1, 1), size=32, progress=False)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    class CtrlC:  # stands in for the process pool: Ctrl-C while the images are drawn
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            raise KeyboardInterrupt

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(synthetic_module, "ProcessPoolExecutor", CtrlC)
    with pytest.raises(KeyboardInterrupt):
        make_dataset(out, seed=2, counts=(1, 1, 1), size=32, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert json.loads((out / "dataset.json").read_text())["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["d"], "no temporary folder is left behind"
    assert np.asarray(Image.open(out / "Early_blight" / "early_blight_00001.jpg")).shape == (32, 32, 3)
