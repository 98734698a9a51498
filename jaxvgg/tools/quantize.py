"""An int8 run folder from a float run of either framework (``scripts/quantize.py``).

The int8 model is made in the run's own framework (:mod:`jaxvgg.compress.quantize`: integer
GEMMs in XLA; :func:`torchref.compress.quantize_int8`: FX graph mode, fbgemm/x86), its activation
scales calibrated on images of the run's training split. The folder is a run folder like any:
``config.json`` (the run's settings, marked ``"quantization": "int8"`` with the source run),
``split.json``, the int8 checkpoint, ``calibration.json`` refitted on the int8 model's own
validation logits, and ``quantize.json``: both file sizes and both test accuracies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from jaxvgg.core.atomic import write_bytes, write_json
from jaxvgg.core.calibration import fit_calibration, report_lines, save_calibration
from jaxvgg.core.config import TrainConfig, float_run_only, load_run_config
from jaxvgg.core.errors import UserError
from jaxvgg.core.metrics import classification_report
from jaxvgg.core.run import QUANTIZE_FILE, data_root
from jaxvgg.data import Loader, Pipeline, load_split, scan_image_folder
from jaxvgg.tools.predict import for_run, predictor

DEFAULT_CALIBRATION_IMAGES = 256


def int8_jax(run_dir: str | Path, images: np.ndarray, out_dir: Path) -> tuple[Path, Path]:
    """The JAX half: ``run_dir``'s best model with int8 weights and input scales calibrated on
    ``images`` (uint8 NHWC), into ``out_dir``; returns (the float file, the int8 file)."""
    from jaxvgg.compress.quantize import quantize_images
    from jaxvgg.train.checkpoint import BEST, INT8_BEST, load_variables, save

    model, variables, meta = load_variables(run_dir)
    save(out_dir / INT8_BEST, quantize_images(model, variables, images), {**meta, "quantization": "int8"})
    return Path(run_dir) / BEST, out_dir / INT8_BEST


def load_images(root: Path, samples: list[tuple[str, int]], cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, labels) of ``samples``, preprocessed as evaluation does."""
    pipeline = Pipeline(cfg.image_size, resize=cfg.resize)
    loader = Loader(root, samples, pipeline, cfg.batch_size, train=False, workers=cfg.workers)
    images, labels = [], []
    for batch in loader.epoch(0):
        keep = batch.weight > 0
        images.append(batch.image[keep])
        labels.append(batch.label[keep])
    return np.concatenate(images), np.concatenate(labels)


def calibration_samples(train: list[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` training samples drawn with the run's seed across the whole split: its first ``n``
    would be one class (a split lists its samples in class order)."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[:n])
    return [train[i] for i in pick]


def _check_out_dir(run: Path, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        what = "the run itself" if out.resolve() == run.resolve() else "not empty"
        raise UserError(f"--out-dir {out}: {what}; the int8 run goes into a new or empty folder")


def quantize_run(run_dir: str | Path, out_dir: str | Path, calibration_images: int) -> dict[str, Any]:
    """Write the int8 run folder of ``run_dir`` into ``out_dir``; returns ``quantize.json``'s record."""
    run, out = Path(run_dir), Path(out_dir)
    cfg = load_run_config(run)
    float_run_only(run, "quantizing")
    if calibration_images < 1:
        raise UserError(f"--calibration-images {calibration_images}: must be at least 1")
    make = for_run(run, int8_jax, "quantize:write_int8")  # a torch run without torch stops here
    _check_out_dir(run, out)
    root = data_root(cfg)
    if not root.is_dir():
        raise UserError(f"{run}: its data folder {root} no longer exists (the split and calibration images are there)")
    split = load_split(run / "split.json", scan_image_folder(root))
    calibration, _ = load_images(root, calibration_samples(split.samples("train"), calibration_images, cfg.seed), cfg)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write(run, out, cfg, root, split, calibration, make)
    except BaseException:
        if created:  # no half-written run folder left behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write(run: Path, out: Path, cfg: TrainConfig, root: Path, split: Any, calibration: np.ndarray, make: Any):
    float_file, int8_file = make(run, calibration, out)
    config = json.loads((run / "config.json").read_text())
    write_json(out / "config.json", {**config, "quantization": "int8", "quantized_from": str(run)})
    write_bytes(out / "split.json", (run / "split.json").read_bytes())
    # The same loader path as predict.py and evaluate.py: what is measured is what they will run.
    float_model, _ = predictor(run, "cpu")
    int8_model, _ = predictor(out, "cpu")
    test_images, test_labels = load_images(root, split.samples("test"), cfg)
    float_logits, int8_logits = float_model.logits(test_images), int8_model.logits(test_images)
    val_subset = "val" if split.subsets["val"] else "test"
    if val_subset == "val":
        val_images, val_labels = load_images(root, split.samples("val"), cfg)
        val = (int8_model.logits(val_images), val_labels)
    else:
        val = (int8_logits, test_labels)
    calibration_record = fit_calibration(val, (int8_logits, test_labels), fitted_on=val_subset)
    save_calibration(out, calibration_record)
    reports = {
        name: classification_report(test_labels.tolist(), z.argmax(-1).tolist(), split.classes)
        for name, z in (("float", float_logits), ("int8", int8_logits))
    }
    files = {"float": float_file, "int8": int8_file}
    record = {
        "source": str(run),
        "framework": config.get("framework", "jax"),
        "model": cfg.model,
        "calibration_images": len(calibration),
        "calibration_subset": "train",
        "test_images": len(test_labels),
        **{
            name: {
                "file": files[name].name,
                "bytes": files[name].stat().st_size,
                "test_accuracy": reports[name]["accuracy"],
                "macro_f1": reports[name]["macro_f1"],
            }
            for name in ("float", "int8")
        },
        "size_ratio": int8_file.stat().st_size / float_file.stat().st_size,
        "same_prediction": float((float_logits.argmax(-1) == int8_logits.argmax(-1)).mean()),
        "max_logit_difference": float(np.abs(int8_logits - float_logits).max()),
        "max_abs_float_logit": float(np.abs(float_logits).max()),
        "calibration": report_lines(calibration_record),
    }
    write_json(out / QUANTIZE_FILE, record)
    return record


def report(record: dict[str, Any], out_dir: str | Path) -> list[str]:
    """The command's closing lines."""
    f, q = record["float"], record["int8"]
    return [
        f"int8 run in {out_dir}: {record['model']} ({record['framework']}) from {record['source']}, activations "
        f"calibrated on {record['calibration_images']} training images",
        f"file: {f['file']} {f['bytes'] / 1e6:.2f} MB -> {q['file']} {q['bytes'] / 1e6:.2f} MB "
        f"({record['size_ratio']:.1%}; {f['bytes']:,} -> {q['bytes']:,} bytes)",
        f"test accuracy ({record['test_images']} images): float {f['test_accuracy']:.1%} -> int8 "
        f"{q['test_accuracy']:.1%} (macro-F1 {f['macro_f1']:.3f} -> {q['macro_f1']:.3f}); same prediction on "
        f"{record['same_prediction']:.1%}, logits within {record['max_logit_difference']:.3g} "
        f"(largest float logit {record['max_abs_float_logit']:.3g})",
        *record["calibration"],
        f"wrote {Path(out_dir) / QUANTIZE_FILE}",
    ]
