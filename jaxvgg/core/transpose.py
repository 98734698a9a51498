"""A C-ordered copy of a transposed array, fast for the big weights the framework exchange moves.

Every weight that crosses between PyTorch's layout and Flax's is transposed (a linear layer's
(out, in) becomes (in, out), a convolution's OIHW becomes HWIO). numpy's own copy of a transposed
view walks one of the two arrays a whole row apart per element, which for VGG-16's first linear
layer (411 MB) is most of the time a checkpoint takes to convert. Copying it in strips of a few
input rows keeps each output cache line written whole, and the strips go to a few threads (numpy
releases the GIL while it copies). Figures: docs/performance.md, "The optimizer's state and the
weight exchange".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

STRIP = 16  # input rows per strip: one 64-byte cache line of float32 output per row of the result
SMALL = 1 << 20  # elements: below this numpy's own copy is as fast and starts no thread
THREADS = 4  # at most; the copy is memory-bound, more than a few threads only contend


def transposed_copy(arr: np.ndarray, axes: Sequence[int], dtype: np.dtype | None = None) -> np.ndarray:
    """``np.ascontiguousarray(arr.transpose(axes), dtype)``, always a new array, copied in strips."""
    arr = np.asarray(arr)
    axes = tuple(axes)
    view = arr.transpose(axes)
    dtype = np.dtype(dtype or arr.dtype)
    if arr.size < SMALL or view.flags.c_contiguous:
        return np.array(view, dtype=dtype, order="C", copy=True)
    out = np.empty(view.shape, dtype)
    # The result's last axis is the input's axis `source`: a strip of that axis is a contiguous run
    # of every output row, and a set of whole rows of the input when `source` is its first axis.
    source = axes[-1]
    n = arr.shape[source]

    def copy(start: int) -> None:
        part = [slice(None)] * arr.ndim
        part[source] = slice(start, start + STRIP)
        out[..., start : start + STRIP] = arr[tuple(part)].transpose(axes)

    starts = range(0, n, STRIP)
    threads = min(THREADS, os.cpu_count() or 1, len(starts))
    if threads == 1:
        for start in starts:
            copy(start)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(copy, starts))
    return out
