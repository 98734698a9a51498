"""The run's figures: the tutorial's accuracy/loss curves and a confusion matrix."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from jaxvgg.core.atomic import atomic_write
from jaxvgg.core.folder import load_rgb
from jaxvgg.core.gradcam import Explanation


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write ``fig`` atomically, in the format its suffix names, and close it."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    finally:
        plt.close(fig)


def plot_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "", val_split: str = "val") -> None:
    """Two panels like the tutorial's: accuracy, then loss, for training and the split that
    chose the best model (``val``, or ``test`` when the test split doubled as validation)."""
    held_out = "validation" if val_split == "val" else "test (used for validation)"
    epochs = [h["epoch"] for h in history]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((acc, "acc", "Accuracy"), (loss, "loss", "Loss")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label=f"Training {label.lower()}")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], "s-", label=f"{held_out.capitalize()} {label.lower()}")
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.set_title(f"Training and {held_out.split()[0]} {label.lower()}")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_confusion(
    cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike, title: str = ""
) -> None:
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.6 * len(classes) + 2, 1.4 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Greens")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black"
            )
    ax.set_title(title or "Confusion matrix (test split)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_compare(histories: dict[str, Sequence[dict]], path: str | os.PathLike, title: str = "") -> None:
    """Accuracy and loss curves of several runs overlaid (solid: training, dashed: validation)."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (name, history) in enumerate(histories.items()):
        colour = f"C{i}"
        epochs = [h["epoch"] for h in history]
        for ax, key in ((acc, "acc"), (loss, "loss")):
            ax.plot(epochs, [h[f"train_{key}"] for h in history], "-o", color=colour, ms=3, label=f"{name} train")
            ax.plot(epochs, [h[f"val_{key}"] for h in history], "--s", color=colour, ms=3, label=f"{name} val")
    for ax, label in ((acc, "Accuracy"), (loss, "Loss")):
        ax.set_xlabel("Epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "JAX vs PyTorch")
    fig.tight_layout()
    save_figure(fig, path)


def plot_lr_find(result: dict, path: str | os.PathLike) -> None:
    """Loss against learning rate (log scale) from the range test, the suggestion marked."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(result["lrs"], result["losses"], color="0.75", lw=1, label="loss per step")
    ax.plot(result["lrs"], result["smoothed"], lw=2, label="smoothed")
    if (lr := result.get("suggested_lr")) is not None:
        ax.axvline(lr, color="tab:red", ls="--", label=f"suggested {lr:.1e}")
    finite = [v for v in result["smoothed"] if np.isfinite(v)]
    raw = [v for v in result["losses"] if np.isfinite(v)]
    if finite:  # the blow-up at the end would squash the interesting part
        ax.set_ylim(min(finite + raw) * 0.9, min(max(finite), 2 * finite[0]) * 1.1)
    ax.set_xscale("log")
    ax.set_xlabel("Learning rate")
    ax.set_ylabel("Training loss")
    ax.set_title(f"Learning-rate range test: {result['model']}, batch {result['batch_size']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


SHOWN = 16  # images in one --show picture


def plot_predictions(
    paths: Sequence[Path],
    probs: np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike,
    unsure: np.ndarray | None = None,
    explanation: Explanation | None = None,
) -> None:
    """Each image as it is on disk, titled with its predicted class and probability (in red, after
    "unsure:", for the flagged images), above a bar per class (the tutorial's ``predict_one_image``,
    for up to :data:`SHOWN` images). With an ``explanation`` (``--explain``), each image is the
    model's input under its Grad-CAM heat map."""
    n = min(len(paths), SHOWN)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        2 * rows, cols, figsize=(3.2 * cols, 4.2 * rows), squeeze=False, gridspec_kw={"height_ratios": [3, 1] * rows}
    )
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        top, bars = axes[2 * r, c], axes[2 * r + 1, c]
        best = int(np.argmax(probs[i]))
        flagged = unsure is not None and bool(unsure[i])
        guess = f"{classes[best]} {probs[i][best]:.1%}"
        title = f"{Path(paths[i]).name}\n" + (f"unsure: {guess}" if flagged else guess)
        if explanation is None:
            top.imshow(load_rgb(paths[i]))
        else:
            title += "\n" + explanation.draw(top, i)
        top.set_title(title, fontsize=9, color="tab:red" if flagged else "black")
        bars.axis("on")
        colours = ["tab:green" if k == best else "0.7" for k in range(len(classes))]
        bars.barh(range(len(classes)), probs[i], color=colours)
        bars.set_yticks(range(len(classes)), classes, fontsize=8)
        bars.set_xlim(0, 1)
        bars.invert_yaxis()
        bars.tick_params(axis="x", labelsize=7)
    if len(paths) > n:
        fig.suptitle(f"the first {n} of {len(paths)} images", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
