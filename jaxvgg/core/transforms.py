"""torchvision's image transforms with the same semantics, on PIL images, without torch.

Pipelines stop at uint8 HWC arrays: normalisation happens on the device inside the compiled
step (:func:`jaxvgg.data.normalize.normalize`), which moves 4x fewer bytes to the accelerator than float32 images.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int) -> int:
    """The shorter side before the centre crop: 256 for 224, scaled alike for other sizes."""
    return int(image_size * 256 / 224)


def resize(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """``transforms.Resize``: an int sets the shorter side, a (h, w) pair the exact size; bilinear."""
    w, h = img.size
    if isinstance(size, int):
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.BILINEAR)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """``transforms.CenterCrop`` (zero-padded first when the image is smaller than the crop)."""
    w, h = img.size
    if w < size or h < size:
        padded = Image.new(img.mode, (max(w, size), max(h, size)))
        padded.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = padded, padded.size
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def random_resized_crop_box(
    width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """``RandomResizedCrop.get_params``: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """PIL image -> uint8 HWC array of ``image_size`` x ``image_size``.

    ``augment=False``: Resize(256/224 * size) + CenterCrop(size) (torchvision's evaluation), or with
    ``resize="squash"`` Resize([size, size]) (the tutorial's: the whole image, squashed).
    ``augment=True``: RandomResizedCrop(size) + RandomHorizontalFlip, the training transform.
    """

    image_size: int
    augment: bool = False
    resize: str = "crop"

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        if self.augment:
            if rng is None:
                raise ValueError("augmentation needs a random generator")
            top, left, h, w = random_resized_crop_box(img.size[0], img.size[1], rng)
            img = img.crop((left, top, left + w, top + h)).resize((self.image_size,) * 2, Image.BILINEAR)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        elif self.resize == "squash":
            img = img.resize((self.image_size,) * 2, Image.BILINEAR)
        else:
            img = center_crop(resize(img, resize_size(self.image_size)), self.image_size)
        return np.asarray(img, dtype=np.uint8)
