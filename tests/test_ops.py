"""The convolution and pooling lowerings: every route computes torch's Conv2d/MaxPool2d, forward
and gradients, to float32 rounding of a float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxvgg.ops import conv as ops

CASES = [  # (batch, size, in, out, kernel, stride, padding, groups)
    (2, 2, 64, 32, 3, 1, 1, 1),  # tiny maps: the im2col route
    (2, 64, 3, 8, 3, 1, 1, 1),  # a stem on a large map
    (1, 112, 4, 8, 3, 1, 1, 1),  # 112x112: inference takes XLA's convolution, training im2col
    (2, 9, 8, 16, 3, 2, 1, 1),  # stride 2, odd size
    (2, 8, 16, 24, 1, 1, 0, 1),  # pointwise
    (2, 7, 24, 24, 7, 2, 3, 1),  # a ResNet-like stem
    (2, 8, 12, 12, 3, 1, 1, 12),  # depthwise (custom VJP)
    (2, 9, 12, 12, 3, 2, 1, 12),  # depthwise, stride 2 (autodiff of the shifted products)
]


def reference(x, k, stride, padding, groups):
    dn = ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(
        x,
        k,
        (stride, stride),
        ((padding, padding),) * 2,
        dimension_numbers=dn,
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )


@pytest.mark.parametrize("lowering", ops.LOWERINGS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_every_lowering_matches_a_float64_convolution(monkeypatch, lowering, case):
    n, size, cin, cout, k, stride, padding, groups = case
    monkeypatch.setenv("JAXVGG_CONV", lowering)
    rng = np.random.RandomState(0)
    x = rng.randn(n, size, size, cin).astype(np.float32)
    w = (rng.randn(k, k, cin // groups, cout) / np.sqrt(k * k * cin / groups)).astype(np.float32)

    def loss(f, x, w):
        y = f(x, w)
        return jnp.sum(y * jnp.cos(y)), y  # a non-trivial output gradient

    ours = jax.jit(
        jax.grad(
            lambda x, w: loss(lambda a, b: ops.conv2d(a, b, stride=stride, padding=padding, groups=groups), x, w),
            argnums=(0, 1),
            has_aux=True,
        )
    )
    (gx, gw), y = ours(x, w)
    # Not differentiated, a convolution may take another route (XLA's on large maps): check it too.
    y_eval = jax.jit(lambda x, w: ops.conv2d(x, w, stride=stride, padding=padding, groups=groups))(x, w)
    with jax.enable_x64(True):
        (rx, rw), ry = jax.grad(
            lambda x, w: loss(lambda a, b: reference(a, b, stride, padding, groups), x, w), argnums=(0, 1), has_aux=True
        )(x.astype(np.float64), w.astype(np.float64))
        rx, rw, ry = np.asarray(rx), np.asarray(rw), np.asarray(ry)
    for got, want in ((y, ry), (y_eval, ry), (gx, rx), (gw, rw)):
        got = np.asarray(got, np.float64)
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_unknown_lowering_is_refused(monkeypatch):
    monkeypatch.setenv("JAXVGG_CONV", "fft")
    with pytest.raises(ValueError, match="JAXVGG_CONV='fft'"):
        ops.conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)))


@pytest.mark.parametrize(("size", "k", "s", "p"), [(8, 2, 2, 0), (7, 2, 2, 0), (9, 3, 2, 1)])
def test_max_pool_matches_a_windowed_max_and_its_gradient(size, k, s, p):
    x = np.random.RandomState(1).randn(2, size, size, 5).astype(np.float32)
    want = lax.reduce_window(x, -np.inf, lax.max, (1, k, k, 1), (1, s, s, 1), ((0, 0), (p, p), (p, p), (0, 0)))
    np.testing.assert_array_equal(ops.max_pool2d(jnp.asarray(x), k, s, p), want)
    g = jax.jit(jax.grad(lambda x: jnp.sum(ops.max_pool2d(x, k, s, p) ** 2)))(jnp.asarray(x))  # jit: as in training
    gw = jax.grad(
        lambda x: jnp.sum(
            lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), ((0, 0), (p, p), (p, p), (0, 0))) ** 2
        )
    )(jnp.asarray(x))
    np.testing.assert_allclose(g, gw, rtol=1e-6)  # random values: no ties
