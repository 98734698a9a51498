"""The strip-wise transposed copy the weight exchange uses equals numpy's own, on either path."""

import numpy as np
import pytest

from jaxvgg.core.transpose import SMALL, STRIP, transposed_copy


@pytest.mark.parametrize(
    ("shape", "axes"),
    [
        ((1000, STRIP * 70 + 5), (1, 0)),  # a linear layer's weight, strips not a multiple of STRIP
        ((STRIP * 20 + 3, 400, 3, 3), (2, 3, 1, 0)),  # torch OIHW -> Flax HWIO
        ((3, 3, 400, STRIP * 20 + 3), (3, 2, 0, 1)),  # and back: the result's last axis is only 3 long
        ((7, 5), (1, 0)),  # small: numpy's own copy
        ((SMALL + 1,), (0,)),  # already in order: a plain copy
    ],
)
def test_transposed_copy_is_numpys_transpose_copied(shape, axes):
    arr = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    got = transposed_copy(arr, axes)
    assert got.flags.c_contiguous and not np.shares_memory(got, arr)
    np.testing.assert_array_equal(got, np.ascontiguousarray(arr.transpose(axes)))
    as64 = transposed_copy(arr, axes, np.float64)
    assert as64.dtype == np.float64
    np.testing.assert_array_equal(as64, arr.transpose(axes).astype(np.float64))
