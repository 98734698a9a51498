"""The hand-written CPU kernels (csrc/, jaxvgg.ops.native): built by the README's install, equal to the
pure-JAX code they stand in for, the same bits on every call, and left aside cleanly where absent."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvgg.ops import conv as ops
from jaxvgg.ops import native
from jaxvgg.ops.csrc_fingerprint import csrc_fingerprint
from jaxvgg.parallel import native_disabled
from jaxvgg.train.optim import AdamWithStep, apply_gradients, make_optimizer, make_schedule

pytestmark = pytest.mark.skipif(
    os.environ.get("JAXVGG_NATIVE") == "0", reason="JAXVGG_NATIVE=0: the kernels are switched off"
)

# (batch, height, width, channels, kernel): odd and tiny maps, 3 channels, a 5x5 and a 1x1 filter,
# and more rows than the kernel's 64 chunks
SHAPES = [(2, 8, 8, 12, 3), (1, 5, 7, 3, 3), (3, 9, 6, 16, 5), (2, 4, 4, 8, 1), (4, 20, 20, 24, 3)]


def test_the_kernels_are_built_by_the_install():
    assert native.available(), (
        f"no loadable {native.LIBRARY} library ({native.library_path()}): `pip install -e .` builds it from csrc/"
    )


def by_hand(x, g, k=3):
    """The kernel's weight gradient, with the pure-JAX one as its fallback (as conv.py calls it)."""
    p = (k - 1) // 2
    return native.depthwise_weight_grad(x, g, k, p, fallback=lambda: pure_jax(x, g, k))


def pure_jax(x, g, k=3):
    return ops._depthwise_weight_grad(x, g, k, k, k - 1 - (k - 1) // 2)


def pure_and_native(x, g, k):
    kernel = np.zeros((k, k, 1, x.shape[-1]), x.dtype)
    assert native.depthwise_supported(x, kernel, (k - 1) // 2)
    pure = jax.jit(pure_jax, static_argnums=2)(x, g, k)
    fast = jax.jit(by_hand, static_argnums=2)(x, g, k)
    return np.asarray(pure), np.asarray(fast)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_depthwise_weight_grad_equals_the_pure_jax_one(shape):
    n, h, w, c, k = shape
    rng = np.random.default_rng(sum(shape))
    x, g = rng.standard_normal((2, n, h, w, c))
    with jax.enable_x64(True):
        pure, fast = pure_and_native(x, g, k)
    np.testing.assert_allclose(fast, pure, rtol=1e-12, atol=1e-12)
    pure, fast = pure_and_native(x.astype(np.float32), g.astype(np.float32), k)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, pure, rtol=1e-5, atol=1e-5 * np.abs(pure).max())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_depthwise_forward_equals_the_shifted_products(shape):
    n, h, w, c, k = shape
    rng = np.random.default_rng(sum(shape) + 1)
    x, kernel = rng.standard_normal((n, h, w, c)), rng.standard_normal((k, k, 1, c))
    p = (k - 1) // 2

    def both(x, kernel):
        pure = jax.jit(lambda a, b: ops._shifted_products(a, b, 1, p))(x, kernel)
        fast = jax.jit(lambda a, b: native.depthwise_forward(a, b, p, fallback=lambda: a))(x, kernel)
        return np.asarray(pure), np.asarray(fast)

    with jax.enable_x64(True):
        pure, fast = both(x, kernel)
    np.testing.assert_allclose(fast, pure, rtol=1e-12, atol=1e-12)
    pure, fast = both(x.astype(np.float32), kernel.astype(np.float32))
    np.testing.assert_allclose(fast, pure, rtol=1e-5, atol=1e-5 * np.abs(pure).max())


# (batch, height, width, channels, kernel, stride, padding): VGG's 3x3, ResNet's 7x7 stem and its
# stride-2 3x3, no padding, odd maps, padding wider than the filter's reach of some rows
IM2COL_CASES = [
    (2, 8, 8, 5, 3, 1, 1),
    (1, 13, 11, 3, 7, 2, 3),
    (2, 9, 9, 8, 3, 2, 1),
    (2, 6, 7, 4, 3, 1, 0),
    (1, 5, 5, 2, 3, 3, 2),
    (3, 4, 4, 16, 1, 1, 0),
]


@pytest.mark.parametrize("case", IM2COL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_im2col_is_the_sliced_patches_exactly(case):
    n, h, w, c, k, s, p = case
    rng = np.random.default_rng(sum(case))
    for dtype in (np.float32, np.float64, jnp.bfloat16):
        x = rng.standard_normal((n, h, w, c)).astype(dtype)
        with jax.enable_x64(dtype == np.float64):
            sliced = np.asarray(jax.jit(lambda a: ops._sliced_patches(a, k, k, s, p))(x))
            fast = jax.jit(lambda a: native.im2col(a, k, s, p, fallback=lambda: ops._sliced_patches(a, k, k, s, p)))
            fast = np.asarray(fast(x))
        assert fast.dtype == dtype and fast.shape == sliced.shape
        assert np.array_equal(fast, sliced)


def test_im2col_gradient_is_the_fold_back_of_the_slices():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 9, 4)).astype(np.float32)
    weights = rng.standard_normal((2, 5, 5, 36)).astype(np.float32)

    def grad(patches):
        return np.asarray(jax.jit(jax.grad(lambda a: (patches(a) * weights).sum()))(x))

    by_kernel = grad(lambda a: ops._patches(a, 3, 3, 2, 1))
    assert np.array_equal(by_kernel, grad(lambda a: ops._sliced_patches(a, 3, 3, 2, 1)))


# (batch, height, width, channels, padding): odd sizes (the last tiles cut), paddings 0-2, a 1x1 map,
# and more tile rows than the kernels' 64 chunks
WINOGRAD_CASES = [(2, 9, 7, 5, 1), (1, 8, 8, 3, 0), (2, 5, 6, 4, 2), (1, 1, 1, 4, 1), (3, 45, 12, 16, 1)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=lambda c: "x".join(map(str, c)))
def test_winograds_transforms_and_their_transposes_are_the_slices_ones(case, dtype):
    """Each kernel against the pure-JAX transform or its jax.linear_transpose: in float64 to rounding,
    in float32 to a few units in the last place (the same sums, ordered differently)."""
    from jaxvgg.ops import winograd

    assert native.enabled()  # else every call below would be its pure-JAX fallback
    n, h, w, c, p = case
    oh, ow = h + 2 * p - 2, w + 2 * p - 2
    y_shape, tiles = (n, oh, ow, c), n * -(-oh // 2) * -(-ow // 2)
    rng = np.random.default_rng(sum(case))
    tol = 1e-13 if dtype == np.float64 else 1e-5
    with jax.enable_x64(dtype == np.float64):
        x = jnp.asarray(rng.standard_normal((n, h, w, c)), dtype)
        m = jnp.asarray(rng.standard_normal((16, tiles, c)), dtype)
        dy = jnp.asarray(rng.standard_normal(y_shape), dtype)

        def tiles_of(a):
            return winograd._tiles_by_slices(a, p)

        def untiled(a):
            return winograd._untile_by_slices(a, y_shape)

        cases = {  # kind: (its argument, the result's shape, padding, the pure-JAX result)
            "input": (x, m.shape, p, lambda a: tiles_of(a)),
            "input_grad": (m, x.shape, p, lambda a: jax.linear_transpose(tiles_of, x)(a)[0]),
            "output": (m, y_shape, None, lambda a: untiled(a)),
            "output_grad": (dy, m.shape, None, lambda a: jax.linear_transpose(untiled, m)(a)[0]),
        }
        for kind, (arg, shape, padding, pure) in cases.items():
            want = np.asarray(jax.jit(pure)(arg))
            by_kernel = functools.partial(native.winograd_transform, kind, out_shape=shape, padding=padding)
            got = np.asarray(jax.jit(lambda a, k=by_kernel, f=pure: k(a, fallback=lambda: f(a)))(arg))
            assert got.dtype == dtype and got.shape == want.shape, kind
            np.testing.assert_allclose(got, want, rtol=0, atol=tol * max(1.0, np.abs(want).max()), err_msg=kind)


def test_winograds_kernels_refuse_shapes_that_are_not_each_others_transform():
    assert native.enabled()
    x = jnp.ones((1, 6, 6, 4), jnp.float32)  # 3 x 3 tiles at padding 1
    for kind, arg, shape in (
        ("input", x, (16, 8, 4)),
        ("input_grad", jnp.ones((16, 9, 4), jnp.float32), (1, 6, 6, 5)),
        ("output", jnp.ones((16, 9, 4), jnp.float32), (1, 6, 6)),
    ):
        padding = None if kind == "output" else 1
        call = jax.jit(lambda a, k=kind, s=shape, p=padding: native.winograd_transform(k, a, s, p, fallback=None))
        with pytest.raises(Exception, match=f"winograd_{kind}: "):
            call(arg).block_until_ready()


def test_the_winograd_convolution_and_its_gradients_call_the_kernels():
    from jaxvgg.ops import winograd

    grad = jax.jit(jax.grad(lambda x, w: (winograd.conv3x3(x, w, 1) ** 2).sum(), argnums=(0, 1)))
    compiled = grad.lower(np.ones((2, 6, 6, 4), np.float32), np.ones((3, 3, 4, 8), np.float32)).compile().as_text()
    for kind in ("input", "input_grad", "output", "output_grad"):
        assert native.WINOGRAD[kind][np.dtype(np.float32)] in compiled, kind


def test_depthwise_weight_grad_is_the_same_bits_every_call():
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((2, 4, 32, 32, 64)).astype(np.float32)
    kernel = np.zeros((3, 3, 1, 64), np.float32)
    f = jax.jit(by_hand)
    first = np.asarray(f(x, g))
    assert native.depthwise_supported(x, kernel, 1)
    for _ in range(5):
        assert np.array_equal(np.asarray(f(x, g)), first)


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("rate", ["constant", "schedule"])
def test_adams_one_pass_step_is_optax_update_and_apply(name, rate):
    """Same weights and the same state, leaf for leaf (what checkpoints hold), over steps whose bias
    corrections and rates change."""
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        params = {"conv": {"kernel": rng.standard_normal((3, 3, 4, 8))}, "bias": rng.standard_normal(70_000)}
        lr = 1e-2 if rate == "constant" else make_schedule("cosine", 1e-2, epochs=3, steps_per_epoch=2)
        tx = make_optimizer(name, lr, weight_decay=0.1)
        assert isinstance(tx, AdamWithStep)
        fused = optax_way = tx.init(params)
        ours = theirs = params
        step = jax.jit(lambda g, s, p: apply_gradients(tx, g, s, p))
        for _ in range(5):
            grads = jax.tree.map(lambda p: rng.standard_normal(p.shape), params)
            ours, fused = step(grads, fused, ours)
            updates, optax_way = tx.update(grads, optax_way, theirs)
            theirs = optax.apply_updates(theirs, updates)
        assert jax.tree.structure(fused) == jax.tree.structure(optax_way)
        for got, want in zip(jax.tree.leaves((ours, fused)), jax.tree.leaves((theirs, optax_way)), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-15)
        hlo = step.lower(grads, fused, ours).compile().as_text()
        assert hlo.count(native.ADAM[np.dtype(np.float64)]) == 2  # one call per weight


def test_adams_step_without_the_kernel_is_the_same_arithmetic():
    """Where the kernel does not run (steps for several devices, no library, another backend), the step
    computes the same in jnp: one run trains alike on one device and on several."""
    rng = np.random.default_rng(5)
    tx = make_optimizer("adam", make_schedule("cosine", 1e-2, epochs=3, steps_per_epoch=2), weight_decay=0.1)
    params = {"w": rng.standard_normal((40, 30)).astype(np.float32)}
    step = jax.jit(lambda g, s, p: apply_gradients(tx, g, s, p))
    by_ops = jax.jit(native_disabled(lambda g, s, p: apply_gradients(tx, g, s, p)))
    fused = plain = tx.init(params)
    ours = theirs = params
    for _ in range(4):
        grads = {"w": rng.standard_normal((40, 30)).astype(np.float32)}
        ours, fused = step(grads, fused, ours)
        theirs, plain = by_ops(grads, plain, theirs)
    assert "jaxvgg_adam" not in by_ops.lower(grads, plain, theirs).compile().as_text()
    for got, want in zip(jax.tree.leaves((ours, fused)), jax.tree.leaves((theirs, plain)), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_the_dense_convolutions_patches_come_from_the_kernel():
    grad = jax.jit(jax.grad(lambda x, w: (ops._im2col_conv(x, w, 1, 1) ** 2).sum(), argnums=(0, 1)))
    compiled = grad.lower(np.ones((2, 6, 6, 4), np.float32), np.ones((3, 3, 4, 8), np.float32)).compile().as_text()
    assert native.IM2COL[np.dtype(np.float32)] in compiled


def test_the_depthwise_convolution_and_its_gradients_call_the_kernels():
    grad = jax.jit(jax.grad(lambda x, w: (ops.conv2d(x, w, padding=1, groups=4) ** 2).sum(), argnums=(0, 1)))
    compiled = grad.lower(np.ones((2, 6, 6, 4), np.float32), np.ones((3, 3, 1, 4), np.float32)).compile().as_text()
    assert native.DEPTHWISE_WEIGHT_GRAD[np.dtype(np.float32)] in compiled
    assert compiled.count(native.DEPTHWISE_FORWARD[np.dtype(np.float32)]) >= 2  # forward and input gradient


bf16_here = pytest.mark.skipif(
    not native.matmul_bf16_runs_here(), reason="the bfloat16 GEMM needs AVX-512 BF16, which this CPU lacks"
)


def bf16_ulps_apart(got, want) -> int:
    """The most bfloat16 steps between two arrays: their bits as integers in the numbers' order
    (sign and magnitude: a negative number's magnitude negated, so -0 and +0 are one)."""

    def ordered(a):
        bits = np.asarray(jax.lax.bitcast_convert_type(a, jnp.int16)).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFF), bits)

    return int(np.abs(ordered(got) - ordered(want)).max())


# (M, K, N): fewer rows than a tile, rows that are not a multiple of 8 nor of a 64-row block, the
# smallest even K, several column panels, and K as in VGG's 512-channel layers
BF16_SHAPES = [(1, 2, 32), (7, 64, 32), (13, 576, 64), (70, 30, 96), (200, 1152, 256), (129, 4608, 32)]


@bf16_here
@pytest.mark.parametrize("shape", BF16_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_the_bf16_gemm_is_xlas_bf16_dot_to_one_rounding(shape):
    """Both sum float32 products of the bfloat16 operands and round once, in orders of their own: at
    these shapes and seeds at most one bfloat16 step apart, and both within a rounding of the exact
    product."""
    m, k, n = shape
    rng = np.random.default_rng(sum(shape))
    a, b = (jnp.asarray(rng.standard_normal(s)).astype(jnp.bfloat16) for s in ((m, k), (k, n)))
    assert native.matmul_bf16_supported(a, b)
    got = jax.jit(lambda a, b: native.matmul_bf16(a, b, fallback=lambda: a @ b))(a, b)
    xla = jax.jit(lambda a, b: a @ b)(a, b)
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    assert got.dtype == jnp.bfloat16 and got.shape == (m, n)
    assert bf16_ulps_apart(got, xla) <= 1
    np.testing.assert_allclose(np.asarray(got, np.float64), exact, rtol=2**-8, atol=1e-5 * np.abs(exact).max())


def bf16_conv_grads(x, w, padding):
    """The loss's gradients through one bfloat16 convolution, and the compiled step's text."""
    loss = lambda a, b: (ops._im2col_conv(a, b, 1, padding).astype(jnp.float32) ** 2).sum()
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return step(x, w), step.lower(x, w).compile().as_text()


# (x's shape, filter, calls of the kernel: the forward and both gradients): VGG's 3x3; a 1x1
# convolution (no patches); 1152 output positions, so
# the weight gradient's sums are carried across K blocks of 1024; 25 positions, an odd K for the weight
# gradient, which then stays XLA's
BF16_CONV_CASES = [
    ((2, 8, 8, 64), (3, 3, 64, 64), 3),
    ((2, 6, 6, 64), (1, 1, 64, 96), 3),
    ((2, 24, 24, 32), (3, 3, 32, 64), 3),
    ((1, 5, 5, 64), (3, 3, 64, 32), 2),
]


@bf16_here
@pytest.mark.parametrize("case", BF16_CONV_CASES, ids=["3x3", "1x1", "k-blocks", "odd-positions"])
def test_bf16_convolution_gradients_where_the_gemm_takes_part_or_not(case):
    shape, kshape, calls = case
    rng = np.random.default_rng(len(shape) + kshape[0])
    x = jnp.asarray(rng.standard_normal(shape)).astype(jnp.bfloat16)
    w = jnp.asarray(0.05 * rng.standard_normal(kshape)).astype(jnp.bfloat16)
    padding = (kshape[0] - 1) // 2
    grads, compiled = bf16_conv_grads(x, w, padding)
    assert compiled.count(native.MATMUL_BF16) == calls
    with native.disabled():
        plain, _ = bf16_conv_grads(x, w, padding)
    for got, want in zip(grads, plain, strict=True):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        np.testing.assert_allclose(got, want, rtol=2**-7, atol=2**-8 * np.abs(want).max())


def test_bf16_depthwise_convolutions_are_computed_in_float32_by_the_kernels():
    """bfloat16 in and out, float32 inside (what XLA:CPU does for bfloat16 anyway), so the float32
    kernels apply: vgg16_dsconv's bf16 train step 310 -> 217 ms (docs/performance.md)."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 16))).astype(jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((3, 3, 1, 16)) / 3).astype(jnp.bfloat16)
    loss = lambda a, b: (ops.conv2d(a, b, padding=1, groups=16).astype(jnp.float32) ** 2).sum()
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    dx, dw = step(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    assert native.DEPTHWISE_WEIGHT_GRAD[np.dtype(np.float32)] in step.lower(x, w).compile().as_text()
    in_float32 = jax.grad(loss, argnums=(0, 1))(x.astype(jnp.float32), w.astype(jnp.float32))
    for got, want in zip((dx, dw), in_float32, strict=True):
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2**-7, atol=2**-8 * np.abs(want).max())


def test_the_bf16_gemm_is_used_only_where_it_applies():
    bf = lambda *s: jnp.zeros(s, jnp.bfloat16)
    assert native.matmul_bf16_supported(bf(5, 6), bf(6, 64)) == native.matmul_bf16_runs_here()
    assert not native.matmul_bf16_supported(bf(5, 27), bf(27, 64)), "K odd: the stem's 3x3x3 patches"
    assert not native.matmul_bf16_supported(bf(5, 6), bf(6, 3)), "N not a multiple of 32"
    assert not native.matmul_bf16_supported(bf(5, 0), bf(0, 64)), "K zero: nothing to sum"
    assert not native.matmul_bf16_supported(jnp.zeros((5, 6)), jnp.zeros((6, 64))), "float32"


def test_the_kernel_is_used_only_where_it_applies():
    x = np.zeros((1, 6, 6, 4), np.float32)
    assert native.depthwise_supported(x, np.zeros((3, 3, 1, 4), np.float32), 1)
    assert not native.depthwise_supported(x, np.zeros((3, 3, 1, 4), np.float32), 0)  # not "same"
    assert not native.depthwise_supported(x.astype(np.float16), np.zeros((3, 3, 1, 4)), 1)


def test_under_vmap_each_example_gets_its_own_gradient():
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((2, 3, 2, 6, 6, 8)).astype(np.float32)
    batched = jax.jit(jax.vmap(by_hand))(x, g)
    for i in range(3):
        _, one = pure_and_native(x[i], g[i], 3)
        np.testing.assert_allclose(np.asarray(batched[i]), one, rtol=1e-6, atol=1e-6)


def test_without_the_kernels_the_models_use_pure_jax():
    code = (
        "import jax, numpy as np; from jaxvgg.ops import conv, native; assert not native.available(); "
        "x = np.ones((1, 6, 6, 4), np.float32); k = np.ones((3, 3, 1, 4), np.float32); "
        "gw = jax.grad(lambda w: conv.conv2d(x, w, padding=1, groups=4).sum())(k); "
        "assert float(gw[1, 1, 0, 0]) == 36.0 and float(gw[0, 0, 0, 0]) == 25.0, gw[:, :, 0, 0]; "
        "k2 = np.ones((3, 3, 4, 2), np.float32); "
        "gd = jax.grad(lambda w: conv.conv2d(x, w, padding=1, route='im2col').sum())(k2); "
        "assert float(gd[1, 1, 0, 0]) == 36.0 and float(gd[0, 0, 0, 0]) == 25.0, gd[:, :, 0, 0]"
    )
    env = {**os.environ, "JAXVGG_NATIVE": "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_steps_compiled_for_several_devices_leave_the_kernels_aside():
    """An FFI call has no rule for splitting a sharded batch: traced for several devices, the steps take
    the pure-JAX code (what DataParallel.compile_steps does for a mesh of more than one device)."""

    def grad(x, w):
        return jax.grad(lambda w: (ops.conv2d(x, w, padding=1, groups=4) ** 2).sum())(w)

    args = np.ones((2, 6, 6, 4), np.float32), np.ones((3, 3, 1, 4), np.float32)
    assert native.enabled()
    plain = jax.jit(grad).lower(*args).compile().as_text()
    off = jax.jit(native_disabled(grad)).lower(*args).compile().as_text()
    assert "jaxvgg_depthwise" in plain and "jaxvgg_" not in off
    assert native.enabled()


def test_a_library_that_cannot_be_loaded_leaves_pure_jax_with_a_warning(tmp_path, monkeypatch):
    bad = tmp_path / "_native.so"
    bad.write_bytes(b"not a shared library")
    monkeypatch.setattr(native, "library_path", lambda: str(bad))
    with pytest.warns(UserWarning, match="CPU kernels .* not used"):
        assert native.loaded.__wrapped__() is None


def test_a_library_built_from_other_sources_is_not_used(monkeypatch):
    """An editable install is not rebuilt when csrc/ changes: the stale library must not stand in."""
    assert native.loaded.__wrapped__() is not None
    monkeypatch.setattr(native, "csrc_fingerprint", lambda: "0123456789abcdef")
    with pytest.warns(UserWarning, match="built from other sources than csrc/'s"):
        assert native.loaded.__wrapped__() is None


def test_a_library_older_than_the_fingerprint_is_not_used_in_a_checkout(monkeypatch):
    monkeypatch.setattr(native, "_built_from", lambda lib: None)
    with pytest.warns(UserWarning, match="built from other sources"):
        assert native.loaded.__wrapped__() is None


def test_an_install_without_the_sources_uses_the_library_it_has(monkeypatch):
    monkeypatch.setattr(native, "csrc_fingerprint", lambda: None)
    assert native.loaded.__wrapped__() is not None


def test_the_fingerprint_follows_every_source_file(tmp_path):
    (tmp_path / "csrc").mkdir()
    (tmp_path / "setup.py").write_text("setup()")
    (tmp_path / "csrc" / "a.cc").write_text("int a;")
    first = csrc_fingerprint(tmp_path)
    (tmp_path / "csrc" / "common.h").write_text("#pragma once")
    second = csrc_fingerprint(tmp_path)
    (tmp_path / "setup.py").write_text("setup(ext_modules=[])")
    assert len({first, second, csrc_fingerprint(tmp_path)}) == 3
    assert csrc_fingerprint(tmp_path / "elsewhere") is None


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to compare one thread with several")
def test_depthwise_weight_grad_is_the_same_bits_on_one_core_and_on_all():
    """Its per-chunk sums are added in chunk order, and the chunks do not depend on the thread count."""
    code = (
        "import os, sys, hashlib; os.sched_setaffinity(0, {int(c) for c in sys.argv[1].split(',')}); "
        "import jax, numpy as np; from jaxvgg.ops import native; from jaxvgg.ops.conv import _depthwise_weight_grad; "
        "x, g = np.random.default_rng(7).standard_normal((2, 4, 48, 48, 32)).astype(np.float32); "
        "pure = lambda a, b: _depthwise_weight_grad(a, b, 3, 3, 1); "
        "f = jax.jit(lambda a, b: native.depthwise_weight_grad(a, b, 3, 1, lambda: pure(a, b))); "
        "print(hashlib.sha256(np.asarray(f(x, g)).tobytes()).hexdigest())"
    )
    every = ",".join(str(c) for c in range(os.cpu_count()))
    digests = []
    for cores in ("0", every):
        done = subprocess.run([sys.executable, "-c", code, cores], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        digests.append(done.stdout.strip())
    assert digests[0] == digests[1]
