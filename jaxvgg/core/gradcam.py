"""Grad-CAM (Selvaraju et al., 2017), the part that is the same in both frameworks.

Each framework hands over the activations of the explained layer and the gradient of one class
logit with respect to them (NHWC arrays); from there everything happens here, in numpy, once:
channel weights = the gradient's spatial mean, map = ReLU(sum_c w_c A_c), upsampled bilinearly
to the image size and scaled to [0, 1]. Which layer is explained comes from the model table
(:func:`cam_layer`), named the way torch names modules, so that torch hooks that module and the
Flax model splits itself there (``until``/``after``) by the same name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np

from jaxvgg.core.errors import UserError
from jaxvgg.core.specs import RESNET_BLOCKS, get_spec
from jaxvgg.core.stages import vgg_stages

# uint8 NHWC images and the class index to explain for each -> heat maps (N, H, W) in [0, 1]
Explainer = Callable[[np.ndarray, np.ndarray], np.ndarray]

HEAT_ALPHA = 0.45  # how strongly the heat map covers the image in the picture


def cam_layer(name: str) -> str:
    """The torch name of the module whose output Grad-CAM weighs: the last convolution stage.

    VGG family (student_cnn included): the ReLU after the last convolution, the module just
    before the last max-pool (``features.29`` in VGG-16, ``features.42`` with BatchNorm); ResNet-50:
    ``layer4``, the last bottleneck stage. The deepest maps still laid out in space: the most
    class-specific, at the coarsest resolution (VGG-16: image/16; ResNet-50: image/32).
    """
    if get_spec(name).family == "resnet":
        return f"layer{len(RESNET_BLOCKS)}"
    pool = vgg_stages(name)[-1].pool  # "features.N", the max-pool ending the last stage
    return f"features.{int(pool.split('.')[1]) - 1}"


def class_activation(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """ReLU(sum_c w_c A_c), w_c the spatial mean of dlogit/dA_c: (N, h, w) from NHWC ``acts``/``grads``."""
    acts, grads = np.asarray(acts, np.float64), np.asarray(grads, np.float64)
    if acts.shape != grads.shape or acts.ndim != 4:
        raise ValueError(f"activations {acts.shape} and gradients {grads.shape}: expected two equal NHWC shapes")
    weights = grads.mean(axis=(1, 2), keepdims=True)
    return np.maximum((weights * acts).sum(axis=-1), 0.0)


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights with pixel centres aligned (torch's
    ``interpolate(mode="bilinear", align_corners=False)``, OpenCV's ``INTER_LINEAR``)."""
    x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = x - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def upsample_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) maps resized bilinearly to (N, *size)."""
    rows, cols = _resize_matrix(maps.shape[1], size[0]), _resize_matrix(maps.shape[2], size[1])
    return np.einsum("Hh,nhw,Ww->nHW", rows, maps, cols)


def normalise(maps: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1] (min to 0, max to 1); a flat map (no evidence for the class) is all 0."""
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)


def grad_cam(acts: np.ndarray, grads: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Heat maps (N, *size) in [0, 1], float32, from the explained layer's NHWC activations and gradients."""
    return normalise(upsample_bilinear(class_activation(acts, grads), size)).astype(np.float32)


def class_targets(
    probs: np.ndarray, classes: Sequence[str], class_name: str | None, run_dir: str | os.PathLike
) -> np.ndarray:
    """The class to explain for each image: its predicted one, or ``class_name`` for all (``--class``)."""
    if class_name is None:
        return np.asarray(probs).argmax(axis=1)
    if class_name not in classes:
        raise UserError(f"--class {class_name!r}: not a class of {run_dir} (its classes: {', '.join(classes)})")
    return np.full(len(probs), list(classes).index(class_name))


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What an ``--explain`` picture draws over each image, in place of the image as it is on disk."""

    images: np.ndarray  # uint8 NHWC: what the model saw (resized and cropped), so that the map lines up
    maps: np.ndarray  # (N, H, W) in [0, 1], from grad_cam
    targets: np.ndarray  # the class explained for each image
    classes: Sequence[str]

    def draw(self, ax, i: int) -> str:
        """Image ``i`` under its heat map (red: where the class's evidence is) on ``ax``; returns a title line."""
        ax.imshow(self.images[i])
        ax.imshow(self.maps[i], cmap="jet", alpha=HEAT_ALPHA, vmin=0.0, vmax=1.0)
        return f"Grad-CAM: {self.classes[int(self.targets[i])]}"
