"""The last transform, on the device: uint8 images in, normalised float32 out (inside the compiled step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxvgg.core.transforms import IMAGENET_MEAN, IMAGENET_STD


def normalize(images: jax.Array) -> jax.Array:
    """uint8 NHWC -> float32, ``ToTensor`` + ``Normalize(ImageNet mean, std)``."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (images.astype(jnp.float32) / 255.0 - mean) / std
