"""Calibrated probabilities and the "unsure" flag, the same for both frameworks (numpy only).

At the end of a run the best model's logits on the validation split fit one temperature T
(Guo et al. 2017, "On Calibration of Modern Neural Networks": softmax(z / T) minimising the
negative log-likelihood), and the same logits set the threshold of an out-of-distribution score
so that :data:`FALSE_ALARM` of the validation images would be flagged. Both go into the run
folder's ``calibration.json``; a predictor of a run that has one returns calibrated
probabilities and says which images are ``unsure`` (see docs/calibration.md for the measured
choice of score).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jaxvgg.core.atomic import write_json
from jaxvgg.core.errors import UserError

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15  # equal-width confidence bins: the standard expected calibration error
FALSE_ALARM = 0.05  # the share of validation images the threshold flags (at most)
# Temperatures searched. The bounds keep a tiny or perfectly separated validation split (whose NLL
# falls for ever as T -> 0) from making the model arbitrarily sharp; a fit at a bound is reported.
T_BOUNDS = (0.05, 20.0)
# The scores an image is judged by; higher means more like the training images.
SCORES = ("msp", "energy", "distance")
# Measured on tiny runs of the drawn leaves (docs/calibration.md): the distance flagged noise,
# stripes, flat colours and gradient scenes; the maximum softmax probability and the energy
# almost never (a ReLU network is most sure far from its data).
DEFAULT_SCORE = "distance"


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(logits, temperature))


def logsumexp(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    top = z.max(axis=-1)
    return top + np.log(np.exp(z - top[..., None]).sum(axis=-1))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    labels = np.asarray(labels, np.int64)
    if not len(labels):
        return 0.0
    return float(-log_softmax(logits, temperature)[np.arange(len(labels)), labels].mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_b (n_b / N) · |accuracy_b − mean confidence_b| over equal-width bins (i/bins, (i+1)/bins]
    of the top probability."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    if not len(labels):
        return 0.0
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(labels))


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = T_BOUNDS, tol: float = 1e-6
) -> float:
    """The T within ``bounds`` that minimises :func:`nll`, by golden-section search over log T.

    The NLL is convex in 1/T (a log-sum-exp of functions linear in it, minus one), so it has one
    minimum along log T too and the search needs no derivatives or starting point.
    """
    if not len(labels):
        return 1.0
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    f = lambda u: nll(z, y, math.exp(u))
    a, b = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return math.exp((a + b) / 2)


@dataclasses.dataclass(frozen=True)
class LogitGaussians:
    """One Gaussian per class over the logits, with a shared covariance: the Mahalanobis score of
    Lee et al. (2018), taken on the logits rather than a hidden layer, so that it needs nothing
    but what every model of both frameworks outputs."""

    means: np.ndarray  # (classes seen, logits)
    precision: np.ndarray  # the inverse of the pooled within-class covariance

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray) -> LogitGaussians:
        z, y = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
        means = np.stack([z[y == k].mean(axis=0) for k in np.unique(y)])
        centred = z - means[np.searchsorted(np.unique(y), y)]
        cov = centred.T @ centred / len(z)
        # A little ridge: a few dozen images of a class that the model always gets right can be
        # almost flat in some direction.
        cov += (1e-3 * np.trace(cov) / len(cov) + 1e-12) * np.eye(len(cov))
        return cls(means, np.linalg.inv(cov))

    def distance(self, logits: np.ndarray) -> np.ndarray:
        """Each image's Mahalanobis distance to the nearest class mean."""
        d = np.asarray(logits, np.float64)[:, None, :] - self.means[None]
        return np.sqrt(np.einsum("nki,ij,nkj->nk", d, self.precision, d).min(axis=1))

    def to_json(self) -> dict[str, Any]:
        return {"means": self.means.tolist(), "precision": self.precision.tolist()}


def held_out_distances(logits: np.ndarray, labels: np.ndarray, most: int = 2000) -> np.ndarray:
    """Each image's :meth:`LogitGaussians.distance` under Gaussians fitted to the others (leave one
    out; past ``most`` images, to all of them: one image then hardly moves the fit)."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    if len(z) > most or len(z) < 3:
        return LogitGaussians.fit(z, y).distance(z)
    keep = ~np.eye(len(z), dtype=bool)
    return np.array([LogitGaussians.fit(z[keep[i]], y[keep[i]]).distance(z[i : i + 1])[0] for i in range(len(z))])


def familiarity(
    logits: np.ndarray, temperature: float, score: str, gaussians: LogitGaussians | None = None
) -> np.ndarray:
    """How much each image looks like the training images (higher: more): the calibrated model's
    maximum softmax probability (``msp``), the negative energy T·logsumexp(z / T) (``energy``),
    or minus the Mahalanobis distance of the logits to the nearest class (``distance``)."""
    if score == "msp":
        return softmax(logits, temperature).max(axis=-1)
    if score == "energy":
        return temperature * logsumexp(logits, temperature)
    if score == "distance" and gaussians is not None:
        return -gaussians.distance(logits)
    raise ValueError(f"unknown score {score!r} (or no class Gaussians for it); expected one of {SCORES}")


def threshold_at(scores: np.ndarray, false_alarm: float = FALSE_ALARM) -> float:
    """The threshold below which at most ``false_alarm`` of ``scores`` fall (those are flagged)."""
    ordered = np.sort(np.asarray(scores, np.float64))
    return float(ordered[min(int(false_alarm * len(ordered)), len(ordered) - 1)])


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What a predictor needs from ``calibration.json``."""

    temperature: float
    score: str
    threshold: float
    gaussians: LogitGaussians | None = None  # the ``distance`` score's

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.temperature).astype(np.float32)

    def familiarity(self, logits: np.ndarray) -> np.ndarray:
        return familiarity(logits, self.temperature, self.score, self.gaussians)

    def unsure(self, logits: np.ndarray) -> np.ndarray:
        """True for the images that look like none of the training images."""
        return self.familiarity(logits) < self.threshold


def _split_figures(logits: np.ndarray, labels: np.ndarray, cal: Calibration) -> dict[str, Any]:
    return {
        "images": len(labels),
        "ece_before": expected_calibration_error(softmax(logits), labels),
        "ece_after": expected_calibration_error(cal.probabilities(logits), labels),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, cal.temperature),
        "flagged": float(cal.unsure(logits).mean()) if len(labels) else 0.0,
    }


def fit_calibration(
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    fitted_on: str,
    score: str = DEFAULT_SCORE,
    false_alarm: float = FALSE_ALARM,
) -> dict[str, Any]:
    """The ``calibration.json`` record: T and the threshold fitted on ``val`` (logits, labels),
    and the calibration error before/after on both splits. ``fitted_on`` names the split ``val`` is."""
    (val_logits, val_labels), (test_logits, test_labels) = val, test
    temperature = fit_temperature(val_logits, val_labels)
    gaussians = LogitGaussians.fit(val_logits, val_labels) if score == "distance" else None
    if gaussians is None:
        val_scores = familiarity(val_logits, temperature, score)
    else:  # each image judged by Gaussians fitted without it, as unseen images will be
        val_scores = -held_out_distances(val_logits, val_labels)
    threshold = threshold_at(val_scores, false_alarm)
    cal = Calibration(temperature, score, threshold, gaussians)
    return {
        "temperature": temperature,
        "at_bound": not T_BOUNDS[0] * 1.001 < temperature < T_BOUNDS[1] / 1.001,
        "fitted_on": fitted_on,
        "ece_bins": ECE_BINS,
        "ood": {
            "score": score,
            "threshold": threshold,
            "false_alarm": false_alarm,
            **(gaussians.to_json() if gaussians else {}),
        },
        "val": _split_figures(val_logits, val_labels, cal),
        "test": _split_figures(test_logits, test_labels, cal),
    }


def describe_rule(score: str, threshold: float) -> str:
    """When an image is unsure, in words."""
    if score == "msp":
        return f"top calibrated probability below {threshold:.4f}"
    if score == "energy":
        return f"T·logsumexp(logits / T) below {threshold:.4g}"
    return f"logits farther than {-threshold:.4g} (Mahalanobis) from every class's mean"


def report_lines(record: dict[str, Any]) -> list[str]:
    """The final report's lines about the calibration ``record``."""
    val, test, ood = record["val"], record["test"], record["ood"]
    fitted = record["fitted_on"]
    where = (
        f"the validation split ({val['images']} images)"
        if fitted == "val"
        else f"the test split ({val['images']} images; --val-fraction 0: the split that validated, so the test "
        "figures are not held out)"
    )
    lines = [
        f"calibration: temperature {record['temperature']:.3f} fitted on {where}"
        + (" (at the search bound: too few or too easy validation images)" if record["at_bound"] else ""),
        f"expected calibration error ({record['ece_bins']} bins): {fitted} {val['ece_before']:.4f} -> "
        f"{val['ece_after']:.4f}, test {test['ece_before']:.4f} -> {test['ece_after']:.4f}; test NLL "
        f"{test['nll_before']:.4f} -> {test['nll_after']:.4f}",
        f"unsure: {describe_rule(ood['score'], ood['threshold'])} (at most {ood['false_alarm']:.0%} of {fitted} "
        f"images; {val['flagged']:.1%} flagged there, {test['flagged']:.1%} of test images)",
    ]
    return lines


def save_calibration(run_dir: str | Path, record: dict[str, Any]) -> Path:
    return write_json(Path(run_dir) / CALIBRATION_FILE, record)


def load_calibration(run_dir: str | Path) -> Calibration | None:
    """The run's calibration, or None for a run without ``calibration.json`` (trained before it existed)."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        ood = record["ood"]
        gaussians = None
        if ood["score"] == "distance":
            gaussians = LogitGaussians(np.array(ood["means"], np.float64), np.array(ood["precision"], np.float64))
        cal = Calibration(float(record["temperature"]), ood["score"], float(ood["threshold"]), gaussians)
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from e
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"{path}: not a calibration record ({type(e).__name__}: {e})") from e
    if not (math.isfinite(cal.temperature) and cal.temperature > 0) or cal.score not in SCORES:
        raise UserError(f"{path}: temperature {cal.temperature} / score {cal.score!r} out of range")
    g = cal.gaussians
    if g is not None and not (g.means.ndim == 2 and g.precision.shape == (g.means.shape[1],) * 2):
        raise UserError(f"{path}: class means {g.means.shape} and precision {g.precision.shape} do not fit")
    return cal


class CalibratedPredictor:
    """A run's model as a function of uint8 images: calibrated probabilities (plain softmax for a
    run without ``calibration.json``), and with :meth:`judge` also which images are unsure.

    ``logits`` is the framework's forward pass; both frameworks' predictors wrap theirs in this,
    so they calibrate and flag identically.
    """

    def __init__(self, logits: Callable[[np.ndarray], np.ndarray], calibration: Calibration | None) -> None:
        self.logits, self.calibration = logits, calibration

    def judge(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, unsure flags); the flags are None when the run has no calibration."""
        z = self.logits(images)
        if self.calibration is None:
            return softmax(z).astype(np.float32), None
        return self.calibration.probabilities(z), self.calibration.unsure(z)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.judge(images)[0]
