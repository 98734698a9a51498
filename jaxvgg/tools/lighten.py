"""The tutorial's "making VGG-16 light" table, measured: what each lighter variant costs and keeps.

Every variant is measured the same way in each framework, on the same preprocessed test images
(uint8 arrays loaded once, normalised identically): parameters, non-zero parameters, forward
multiply-adds, file size on disk, test accuracy and macro-F1, and CPU latency per image at batch
1 and batch 32 (median of timed calls after a warm-up).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from jaxvgg.core.metrics import classification_report
from jaxvgg.data import load_split, scan_image_folder
from jaxvgg.data.normalize import normalize
from jaxvgg.ops.compiler import inference_options


@dataclasses.dataclass
class Variant:
    name: str  # row label, e.g. "vgg16 pruned 30% + fine-tuned"
    model: str  # architecture
    run: str  # the run folder its weights come from (per framework)
    kind: str = "float"  # "float", "pruned" or "int8"


@dataclasses.dataclass
class Measurement:
    variant: str
    framework: str
    params: int
    nonzero: int
    macs: int
    file_mb: float
    accuracy: float
    macro_f1: float
    ms_batch1: float  # per image
    ms_batch32: float  # per image


def load_images(run_dir: str | Path, subset: str, calibration: int | None = None):
    """(uint8 NHWC images, int labels, class names) of one subset of a run's split, preprocessed
    as for evaluation; with ``calibration``, only that many, drawn as ``quantize.py`` draws them."""
    from jaxvgg.core.config import load_run_config
    from jaxvgg.core.run import data_root
    from jaxvgg.tools.quantize import calibration_samples
    from jaxvgg.tools.quantize import load_images as load_samples

    cfg = load_run_config(run_dir)
    root = data_root(cfg)
    split = load_split(Path(run_dir) / "split.json", scan_image_folder(root))
    samples = split.samples(subset)
    if calibration is not None:
        samples = calibration_samples(samples, calibration, cfg.seed)
    images, labels = load_samples(root, samples, cfg)
    return images, labels, split.classes


def latency_ms(fn: Callable[[np.ndarray], Any], images: np.ndarray, batch: int, repeats: int = 5) -> float:
    """Median milliseconds per image of ``fn`` on a batch (cycled from ``images``) after a warm-up."""
    x = np.resize(images, (batch, *images.shape[1:]))
    fn(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / batch


def predict_all(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Predicted classes, in batches of ``batch`` (the last one padded: one compiled shape, the one timed)."""
    preds = []
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        preds.append(np.asarray(fn(padded)).argmax(-1)[: len(chunk)])
    return np.concatenate(preds)


def jax_row(
    variant: Variant, test: tuple, calibration: np.ndarray, macs: int, out_dir: Path, repeats: int = 5
) -> Measurement:
    """Measure one variant in JAX."""
    from jaxvgg.compress import quantize
    from jaxvgg.core.sparse import SPARSE_BEST
    from jaxvgg.train.checkpoint import BEST, load_variables

    model, variables, _ = load_variables(variant.run)
    apply, weights = model.apply, variables
    file_path = Path(variant.run) / (SPARSE_BEST if variant.kind == "pruned" else BEST)
    if variant.kind == "int8":
        inputs = [normalize(calibration[i : i + 32]) for i in range(0, len(calibration), 32)]
        weights = quantize.quantize(variables, quantize.calibrate(model, variables, inputs))
        apply = quantize.quantized_apply(model)
        file_path = out_dir / f"{Path(variant.run).name}-int8.msgpack"
        file_path.write_bytes(serialization.msgpack_serialize(weights))
    options = inference_options(int8=variant.kind == "int8")
    forward = jax.jit(lambda v, x: apply(v, normalize(x), train=False), compiler_options=options)
    weights = jax.device_put(weights)  # once: not a host-to-device copy of every weight per call

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(forward(weights, x))

    leaves = jax.tree.leaves(variables["params"])
    size = int(sum(np.size(p) for p in leaves))
    nonzero = int(sum(np.count_nonzero(p) for p in leaves))
    return measure(variant, "JAX", run, test, size, nonzero, macs, file_path, repeats)


def measure(
    variant: Variant,
    framework: str,
    run: Callable[[np.ndarray], np.ndarray],
    test: tuple,
    params: int,
    nonzero: int,
    macs: int,
    file_path: Path,
    repeats: int,
) -> Measurement:
    """Accuracy, macro-F1 and latency of ``run`` (uint8 images -> logits), the same for both frameworks."""
    images, labels, classes = test
    report = classification_report(labels.tolist(), predict_all(run, images).tolist(), classes)
    return Measurement(
        variant.name,
        framework,
        params,
        nonzero,
        macs,
        file_path.stat().st_size / 1e6,
        report["accuracy"],
        report["macro_f1"],
        latency_ms(run, images, 1, repeats),
        latency_ms(run, images, 32, repeats),
    )


def format_table(rows: list[Measurement]) -> str:
    head = (
        "| variant | framework | parameters | non-zero | forward MACs | file (MB) | test accuracy | macro-F1 "
        "| ms/image, batch 1 | ms/image, batch 32 |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r.variant} | {r.framework} | {r.params:,} | {r.nonzero:,} | {r.macs / 1e6:,.0f} M | "
            f"{r.file_mb:.1f} | {r.accuracy:.1%} | {r.macro_f1:.3f} | {r.ms_batch1:.2f} | {r.ms_batch32:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[Measurement], path: Path) -> None:
    """Accuracy against file size and against latency; colour = variant, marker = framework."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxvgg.core.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    markers = {"JAX": "o", "PyTorch": "s"}
    variants = list(dict.fromkeys(r.variant for r in rows))
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    for ax, (attr, label) in zip(
        axes, (("file_mb", "file size on disk (MB)"), ("ms_batch32", "CPU ms per image (batch 32)")), strict=True
    ):
        for r in rows:
            ax.scatter(
                getattr(r, attr),
                100 * r.accuracy,
                marker=markers.get(r.framework, "x"),
                s=60,
                color=colours[r.variant],
                edgecolors="black",
                linewidths=0.5,
                alpha=0.85,
            )
        ax.set_xscale("log")
        ax.set_xlabel(label + ", log scale")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy against size")
    axes[1].set_title("accuracy against latency")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[v], label=v) for v in variants]
    handles += [plt.Line2D([], [], marker=m, ls="", color="grey", label=f) for f, m in markers.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08 + 0.025 * -(-len(handles) // 3), 1, 1))
    save_figure(fig, path, dpi=120)
