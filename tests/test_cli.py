"""The training command line: --help, --config files and --tensorboard (docs/cli.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error, run_command, run_script

from jaxvgg.core.config import GROUPS, PRESETS, TrainConfig, add_arguments, config_from_args, load_run_config
from jaxvgg.core.errors import UserError
from jaxvgg.core.run import prepare_run, reserve_run_folder

TENSORBOARD_SKIP = "tensorboardX is not installed; pip install 'jaxvgg[tensorboard]' runs this test"


def parse(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def tiny(data: Path, out: Path | None = None, **kw) -> TrainConfig:
    base = dict(model="student_cnn", data_dir=str(data), image_size=32, batch_size=8, epochs=1, workers=0)
    return TrainConfig(**{**base, "out_dir": str(out) if out else None, **kw})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def help_sections(text: str) -> dict[str, dict[str, str]]:
    """argparse's --help as {group title: {first flag of an entry: the entry, its lines joined}}."""
    sections: dict[str, dict[str, str]] = {}
    title = entry = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            title, entry = line[:-1], None
            sections[title] = {}
        elif title and line.startswith("  -"):
            entry = line.split()[0].rstrip(",")
            sections[title][entry] = line.strip()
        elif title and entry and line.startswith("    "):
            sections[title][entry] += " " + line.strip()
        else:  # a group's description, or a blank line
            entry = None
    return sections


@pytest.mark.parametrize("script", ["train_jax.py", "train_torch.py"])
def test_help_groups_every_flag_with_its_choices_and_one_default(script, tmp_path):
    text = run_script(script, "--help", env={"COLUMNS": "1000"}).stdout  # wide: no line breaks inside a name
    sections = help_sections(text)
    assert [title for title, _ in GROUPS.values()] == [t for t in sections if t != "options"]
    where = {f: title for title, entries in sections.items() for f in entries}
    entries = {f: entry for section in sections.values() for f, entry in section.items()}
    for f in dataclasses.fields(TrainConfig):
        assert where.get(flag(f.name)) == GROUPS[f.metadata["group"]][0], f"{flag(f.name)} is not in its group"
        entry = entries[flag(f.name)]
        assert len(entry.split()) > 4, f"{flag(f.name)} has no help: {entry!r}"
        for choice in f.metadata["choices"]:
            assert re.search(rf"[{{ ,]{re.escape(choice)}[}},); ]", entry), f"{flag(f.name)} does not show {choice}"
    for name, entry in entries.items():
        if name != "-h":
            assert entry.count("(default: ") == 1, f"{name}: {entry!r}"
    assert "(default: None)" not in text and "default: None" not in text
    assert all(p in entries["--preset"] for p in PRESETS) and "--config" in sections[GROUPS["settings"][0]]
    # --out-dir names the folder a run makes when it is left out, suffix included.
    made = reserve_run_folder("student_cnn", "jax" if script == "train_jax.py" else "torch", parent=tmp_path)
    assert re.fullmatch(r"\d{8}-\d{6}-student_cnn-(jax|torch)", made.name)
    assert "runs/<YYYYmmdd-HHMMSS>-<model>-jax, or -torch from PyTorch" in entries["--out-dir"]
    if script == "train_torch.py":
        assert "--device" in sections[GROUPS["devices"][0]]


def test_a_runs_config_json_repeats_the_run(tiny_data, tmp_path):
    settings = dict(lr=3e-3, optimizer="sgd", schedule="step", step_size=2, augment=True, class_weights="none")
    original = tiny(tiny_data, tmp_path / "a", epochs=3, val_fraction=0.2, seed=5, precision="bf16", **settings)
    prepare_run(original, "torch")  # config.json as every run writes it
    run = tmp_path / "a"
    assert load_run_config(run) == original
    # The file or its folder: every setting but where the run was written (out_dir).
    for source in (run / "config.json", run):
        assert parse("--config", str(source)) == dataclasses.replace(original, out_dir=None)
    # The repeat's own run folder records what it resolved: the same run, in another folder.
    repeat = parse("--config", str(run), "--out-dir", str(tmp_path / "b"))
    prepare_run(repeat, "jax")
    recorded = json.loads((tmp_path / "b" / "config.json").read_text())
    assert recorded == {
        **json.loads((run / "config.json").read_text()),
        "out_dir": str(tmp_path / "b"),
        "framework": "jax",
    }
    # A resumed run's record names the folder it continued, and --overwrite: neither is repeated.
    raw = json.loads((run / "config.json").read_text())
    (tmp_path / "resumed.json").write_text(json.dumps({**raw, "resume": str(run), "overwrite": True}))
    again = parse("--config", str(tmp_path / "resumed.json"))
    assert (again.resume, again.overwrite, again.out_dir) == (None, False, None)
    # A config.json from before --class-weights meant the plain loss, as load_run_config reads it.
    del raw["class_weights"]
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert parse("--config", str(tmp_path / "old.json")).class_weights == "none"


def test_precedence_defaults_preset_file_flags(tmp_path):
    text = "preset: tutorial\nepochs: 3\nlr: 1e-3\naugment: true\ndataset_counts: [8, 8, 8]\n"
    (tmp_path / "c.yaml").write_text(text)
    as_json = {"preset": "tutorial", "epochs": 3, "lr": 1e-3, "augment": True, "dataset_counts": [8, 8, 8]}
    (tmp_path / "c.json").write_text(json.dumps(as_json))
    cfg = parse("--config", str(tmp_path / "c.yaml"))
    assert parse("--config", str(tmp_path / "c.json")) == cfg  # YAML reads 1e-3 as a number, as JSON does
    # The file over the preset it names, the preset over the defaults.
    assert (cfg.model, cfg.image_size, cfg.weight_decay, cfg.optimizer) == ("vgg16_manual", 224, 0.0, "adam")
    assert (cfg.epochs, cfg.lr, cfg.augment, cfg.dataset_counts) == (3, 1e-3, True, (8, 8, 8))
    # Flags over the file, before it or after it.
    for argv in (
        ["--epochs", "7", "--config", str(tmp_path / "c.yaml")],
        ["--config", str(tmp_path / "c.yaml"), "--epochs", "7"],
    ):
        assert parse(*argv) == dataclasses.replace(cfg, epochs=7)
    # --preset given replaces the file's preset; the file's settings still stand over it.
    other = parse("--config", str(tmp_path / "c.yaml"), "--preset", "optimized", "--no-augment")
    assert (other.model, other.patience, other.schedule, other.weight_decay) == ("vgg16", 10, "cosine", 1e-5)
    assert (other.epochs, other.lr, other.augment) == (3, 1e-3, False)


BAD_FILES = [
    ("c.json", '{"lrr": 0.1}', "unknown setting 'lrr' (did you mean 'lr'?)"),
    ("c.yaml", "epochs: five\n", "epochs must be int, got 'five'"),
    ("c.yaml", "optimizer: rmsprop\n", "--optimizer 'rmsprop': choose one of adam, adamw, sgd"),
    ("c.json", '{"epochs": 0}', "--epochs must be at least 1, got 0"),
    ("c.json", '{"dataset_counts": [8, 8]}', "dataset_counts must be three integers, got [8, 8]"),
    ("c.json", "[1, 2]", "expected a mapping of setting names to values, got list"),
    ("c.json", "{", "not valid JSON"),
    ("c.yaml", "epochs: [1\n", "not valid YAML (line 2, column 1"),
    ("c.yaml", "preset: fast\n", "preset 'fast': choose one of optimized, quick, tutorial"),
    ("c.txt", "epochs: 2\n", "expected a .json, .yaml or .yml file"),
    ("gone.json", None, "no such file"),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_FILES, ids=[e for _, _, e in BAD_FILES])
def test_a_bad_config_file_is_one_line_naming_the_file(tmp_path, name, text, expected):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as caught:
        parse("--config", str(path), "--epochs", "2")
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message, message


def test_yaml_without_pyyaml_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text("epochs: 2\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # import fails, as if not installed
    with pytest.raises(UserError, match=r"c.yaml: reading YAML needs PyYAML, which is not installed: pip install"):
        parse("--config", str(tmp_path / "c.yaml"))


@pytest.mark.slow
def test_the_script_trains_what_the_config_file_says(tiny_data, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "c.yaml").write_text(
        f"data_dir: {tiny_data}\nmodel: student_cnn\nimage_size: 32\nbatch_size: 8\nworkers: 0\nlr: 2e-3\n"
    )
    argv = ["--config", str(tmp_path / "c.yaml"), "--out-dir", str(tmp_path / "run"), "--max-steps", "2"]
    run_script("train_torch.py", *argv)
    assert load_run_config(tmp_path / "run") == parse(*argv)
    (tmp_path / "bad.yaml").write_text("lr: -1\n")
    assert "bad.yaml: --lr must be positive" in one_line_error(
        run_command("train_torch.py", "--config", str(tmp_path / "bad.yaml"), check=False)
    )


def read_events(run: Path) -> tuple[dict[tuple[str, int], float], list[list[int]]]:
    """Every event file of ``run``: {(tag, step): value}, and per file the steps of its purges
    (SessionLog START). tensorboardX 2.6 ships no reader, so this reads TensorBoard's framing
    (length, its masked CRC-32C, the Event, its CRC), checking both CRCs with tensorboardX's own
    function and parsing with its own Event schema."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.record_writer import masked_crc32c

    scalars, purges = {}, []
    files = sorted(run.glob("events.out.tfevents.*"))
    assert files, f"no event file in {run}: {os.listdir(run)}"
    for path in files:
        data, at = path.read_bytes(), 0
        purges.append([])
        while at < len(data):
            header, (header_crc,) = data[at : at + 8], struct.unpack("<I", data[at + 8 : at + 12])
            (length,) = struct.unpack("<Q", header)
            body, (body_crc,) = data[at + 12 : at + 12 + length], struct.unpack("<I", data[at + 12 + length :][:4])
            assert (header_crc, body_crc) == (masked_crc32c(header), masked_crc32c(body)), f"{path}: damaged at {at}"
            at += 16 + length
            event = Event.FromString(body)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                purges[-1].append(event.step)
            for value in event.summary.value:
                scalars[value.tag, event.step] = value.simple_value
    return scalars, purges


TAGS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "accuracy/train": "train_acc",
    "accuracy/val": "val_acc",
    "lr": "lr",
    "epoch/seconds": "seconds",
    "epoch/train_images_per_s": "train_images_per_s",
}


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_tensorboard_event_files_hold_the_history(tiny_data, tmp_path, framework):
    pytest.importorskip("tensorboardX", reason=TENSORBOARD_SKIP)
    out = tmp_path / "run"
    if framework == "jax":
        from jaxvgg.train.loop import fit

        fit(tiny(tiny_data, out, epochs=2, tensorboard=True))
    else:  # torch trains in seconds: one epoch, then a resume for the second, into a file of its own
        pytest.importorskip("torch")
        from torchref.train import fit

        fit(tiny(tiny_data, out, epochs=1, tensorboard=True), "cpu")
        fit(TrainConfig(resume=str(out), epochs=2, workers=0), "cpu")
    history = json.loads((out / "history.json").read_text())
    scalars, purges = read_events(out)
    expected = {(tag, h["epoch"]): float(np.float32(h[key])) for h in history for tag, key in TAGS.items()}
    assert [h["epoch"] for h in history] == [1, 2] and scalars == expected  # simple_value is a float32
    # A resumed run's file drops what earlier files hold from its first epoch on.
    assert purges == ([[]] if framework == "jax" else [[], [2]])


def test_tensorboard_without_tensorboardx_stops_at_the_start(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails, as if not installed
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"--tensorboard needs tensorboardX, which is not installed: pip install "):
        prepare_run(tiny(tiny_data, out, tensorboard=True), "torch")
    assert not out.exists()
