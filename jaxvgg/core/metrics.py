"""Classification metrics shared by both frameworks (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# What --select-by may name: a figure of classification_report, higher is better.
SELECTION_SCORES = ("accuracy", "macro_f1")


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, int), np.asarray(preds, int)), 1)
    return cm


def classification_report(labels: Sequence[int], preds: Sequence[int], classes: Sequence[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro-F1 and the confusion matrix (rows: truth)."""
    cm = confusion_matrix(labels, preds, len(classes))
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.nan_to_num(tp / cm.sum(0))
        recall = np.nan_to_num(tp / cm.sum(1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1.mean()),
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, cm.sum(1), strict=True)
        },
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
    }


def balanced_class_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """``n / (C * n_c)`` per class (scikit-learn's "balanced"): every class weighs as much in the
    loss as if the classes were equally frequent. A class absent from ``labels`` gets weight 0."""
    counts = np.bincount(np.asarray(labels, int), minlength=num_classes).astype(float)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, counts.sum() / (num_classes * counts), 0.0)
    return weights.tolist()
