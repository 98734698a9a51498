"""The cached route's augmentation on the device: RandomResizedCrop's crop and resize, and the
flip, computed as PIL computes them, inside one jitted function per batch shape.

PIL resizes separably, one axis and then the other, and rounds to uint8 after each pass; each
output pixel is a triangle-filter average over the crop ("bilinear", its support widened by
the downscale factor, so it antialiases), weights renormalised at the crop's edges
(``precompute_coeffs`` in Pillow's ``Resample.c``). Here each pass is one matrix product with
those coefficients, in PIL's order (:func:`vertical_first`). What differs is arithmetic:
float32 coefficients instead of PIL's 22-bit fixed point, so a rare pixel lands one grey level
off (measured in tests/test_loader.py and docs/performance.md#the-loader), within the
transforms' parity tolerance of 1/255.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxvgg.core.transforms import Pipeline
from jaxvgg.parallel import DataParallel

HIGHEST = jax.lax.Precision.HIGHEST  # float32 products on a GPU too: TF32 would round the weights to 10 bits


def resample_matrix(start: jax.Array, length: jax.Array, in_size: int, out_size: int) -> jax.Array:
    """(out_size, in_size) float32: PIL's bilinear weights for resizing pixels [start, start + length)
    of an axis of ``in_size`` pixels to ``out_size``; zero outside the crop."""
    length = jnp.maximum(length, 1)  # a padding row's empty box
    o = jnp.arange(out_size)[:, None]
    x = jnp.arange(in_size)[None, :]
    # PIL's filter argument (x - start + 0.5 - centre) / filterscale, centre = (o + 0.5) * length / out_size
    # and filterscale = max(length / out_size, 1), written as an exact integer over 2 * max(length, out_size):
    # one float32 division, so each weight is within an ulp of PIL's double-precision one.
    numerator = 2 * out_size * (x - start) + out_size - (2 * o + 1) * length
    arg = numerator.astype(jnp.float32) / (2 * jnp.maximum(length, out_size)).astype(jnp.float32)
    weight = jnp.maximum(0.0, 1.0 - jnp.abs(arg))
    weight = jnp.where((x >= start) & (x < start + length), weight, 0.0)
    return weight / jnp.sum(weight, axis=1, keepdims=True)


def vertical_first(height: jax.Array, width: jax.Array, size: int) -> jax.Array:
    """Whether PIL resizes a ``height`` x ``width`` crop to ``size`` x ``size`` vertically first:
    fitted to Pillow 13.0.0's choice on every one of 4,851 crop shapes (a grid, 16/24/32-px outputs)
    where the two orders give different pixels: tall downscaled crops go columns first (Pillow's
    classic ``Resample.c`` always went rows first)."""
    return (height > size) & (2 * jnp.maximum(width, size) < height + size)


def _to_uint8(x: jax.Array) -> jax.Array:
    """PIL's rounding of each pass: (sum + half) >> bits, clipped to 0..255."""
    return jnp.clip(jnp.floor(x + 0.5), 0, 255)


def crop_resize_flip(images: jax.Array, box: jax.Array, flip: jax.Array, size: int) -> jax.Array:
    """uint8 (B, H, W, 3) -> uint8 (B, size, size, 3): ``img.crop(box).resize((size, size), BILINEAR)``,
    then a left-right flip where ``flip``; ``box`` is (top, left, height, width) per image."""
    _, h, w, _ = images.shape

    def one(image: jax.Array, box: jax.Array, flip: jax.Array) -> jax.Array:
        top, left, height, width = box[0], box[1], box[2], box[3]
        rows = resample_matrix(top, height, h, size)
        cols = resample_matrix(left, width, w, size)
        cols = jnp.where(flip, cols[::-1], cols)  # flipping the output = reversing the column weights
        x = image.astype(jnp.float32)
        across = _to_uint8(jnp.einsum("ox,yxc->yoc", cols, x, precision=HIGHEST))
        across = _to_uint8(jnp.einsum("py,yoc->poc", rows, across, precision=HIGHEST))
        down = _to_uint8(jnp.einsum("py,yxc->pxc", rows, x, precision=HIGHEST))
        down = _to_uint8(jnp.einsum("ox,pxc->poc", cols, down, precision=HIGHEST))
        # The pass order changes the intermediate rounding, and Pillow 13 picks it by the crop's
        # shape: both orders are computed and PIL's kept.
        return jnp.where(vertical_first(height, width, size), down, across).astype(jnp.uint8)

    return jax.vmap(one)(images, box, flip)


def device_feed(
    par: DataParallel, pipeline: Pipeline, stored: np.ndarray | None = None
) -> Callable[[dict[str, np.ndarray]], dict[str, jax.Array]]:
    """A cached batch's host arrays -> the steps' batch ``{"image", "label", "weight", "index"}`` on the
    devices, sharded along the batch.

    ``stored``: the cache's images, put on every device once here (the batches then carry only
    indices); None: the batches carry the stored images themselves (cache in host memory).
    """

    def finish(images: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        if pipeline.augment:
            images = crop_resize_flip(images, batch["box"], batch["flip"], pipeline.image_size)
        # Padding rows (weight 0) are zeros, as the PIL loader's: the batch is the same, bit for bit.
        images = jnp.where(batch["weight"][:, None, None, None] > 0, images, jnp.zeros((), images.dtype))
        return {"image": images, "label": batch["label"], "weight": batch["weight"], "index": batch["index"]}

    data = par.batch_sharding
    if stored is None:
        if not pipeline.augment:
            return par.shard  # the stored images are the batch
        host = jax.jit(lambda batch: finish(batch["image"], batch), in_shardings=(data,), out_shardings=data)
        return lambda batch: host(par.shard(batch))
    on_device = par.replicate(stored)
    gather = jax.jit(
        lambda cache, batch: finish(cache[batch["index"]], batch),
        in_shardings=(par.replicated, data),
        out_shardings=data,
    )
    return lambda batch: gather(on_device, par.shard(batch))
