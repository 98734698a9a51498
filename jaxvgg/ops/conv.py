"""The one 2-D convolution every model calls, by one of several routes.

The route is a field of each convolution layer, chosen when the model is built
(:func:`jaxvgg.models.create_model`'s ``conv_route``; by default :func:`route_for_platform`),
so it is part of what ``jax.jit`` traces and caches. Under ``cpu`` one more choice is made when a
stride-1 convolution is traced: among XLA's convolution, im2col's and Winograd's (a forward not
differentiated), or im2col's and Winograd's (a train step), by what was measured faster for the
shape on this CPU (:mod:`jaxvgg.ops.conv_choice`); a function already traced keeps the choice it
was traced with. Where the C++ kernels are built (:mod:`jaxvgg.ops.native`), im2col's
patches and the depthwise convolution under differentiation are theirs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxvgg.ops import conv_choice, native, winograd

# "cpu": tuned for XLA:CPU (docs/performance.md): im2col + one GEMM for dense convolutions, and for
# stride-1 ones whichever route was measured fastest for the shape on this CPU (XLA's own forward
# and Winograd's F(2x2, 3x3) when not differentiated, Winograd's in train steps: jaxvgg.ops.winograd);
# shifted products for depthwise ones. "xla": lax.conv_general_dilated for everything, which is
# cuDNN on a GPU. "im2col": im2col for dense convolutions, XLA for grouped ones.
ROUTES = ("cpu", "xla", "im2col")
# With measuring off (JAXVGG_CONV_TUNING=0), output maps of at least this many pixels (height x
# width) take the XLA-forward route under "cpu": the cut measured on an AVX2 EPYC.
XLA_FORWARD_MIN_PIXELS = 56 * 56


def route_for_platform(platform: str) -> str:
    """The route for a JAX backend: the CPU-tuned one on ``cpu``, XLA's own (cuDNN, TPU) elsewhere.

    im2col materialises every patch: on a GPU its temporaries cost ~3x the memory of XLA's route
    (vgg16_manual train step, batch 32, 224 px: 13.7 GB against 4.4 GB) for no speed gain.
    """
    return "cpu" if platform == "cpu" else "xla"


def resolve_route(route: str | None = None) -> str:
    """``route``, or the route for the backend JAX runs on when it is None (or ``auto``)."""
    return check_route(route if route not in (None, "auto") else route_for_platform(jax.default_backend()))


def check_route(route: str) -> str:
    if route not in ROUTES:
        raise ValueError(f"convolution route {route!r}: choose one of {', '.join(ROUTES)}")
    return route


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    route: str = "cpu",
) -> jax.Array:
    """NHWC x HWIO -> NHWC, torch ``Conv2d`` semantics (symmetric zero padding, groups), by ``route``."""
    kernel = kernel.astype(x.dtype)
    check_route(route)
    if groups == 1 and route == "cpu" and stride == 1 and kernel.shape[0] * kernel.shape[1] > 1:
        return _measured_forward_conv(x, kernel, padding)
    if groups == 1 and route in ("cpu", "im2col"):
        return _im2col_conv(x, kernel, stride, padding)
    if route == "cpu" and groups == x.shape[-1] == kernel.shape[-1]:
        return _depthwise_conv(x, kernel, stride, padding)
    return _xla_conv(x, kernel, stride, padding, groups)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int = 1) -> jax.Array:
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def _patches(x: jax.Array, kh: int, kw: int, stride: int, padding: int) -> jax.Array:
    """(N, OH, OW, KH*KW*C) patches, ordered like an HWIO kernel reshaped to (KH*KW*C, O): by the
    hand-written kernel where it applies (one pass, where XLA writes KH*KW slices and then copies
    them into their concatenation), else by those slices."""
    if kh == kw and native.im2col_supported(x):
        return _native_patches(x, kh, stride, padding)
    return _sliced_patches(x, kh, kw, stride, padding)


# Patches are linear in x, so their VJP is their transpose: the sum of the shifted patch gradients
# that autodiff of the slices gives (the fold-back).
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _native_patches(x: jax.Array, k: int, stride: int, padding: int) -> jax.Array:
    return native.im2col(x, k, stride, padding, fallback=functools.partial(_sliced_patches, x, k, k, stride, padding))


def _native_patches_fwd(x, k, stride, padding):
    # The transpose needs x's shape and dtype only: a zero-sized residual carries them, not x.
    return _native_patches(x, k, stride, padding), jnp.zeros((0, *x.shape), x.dtype)


def _native_patches_bwd(k, stride, padding, like, g):
    fold = jax.linear_transpose(
        lambda a: _sliced_patches(a, k, k, stride, padding), jax.ShapeDtypeStruct(like.shape[1:], like.dtype)
    )
    return fold(g)


_native_patches.defvjp(_native_patches_fwd, _native_patches_bwd)


def _sliced_patches(x: jax.Array, kh: int, kw: int, stride: int, padding: int) -> jax.Array:
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    _, hp, wp, _ = xp.shape
    oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    cols = [
        xp[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.concatenate(cols, axis=-1)


def _depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Depthwise convolution (one filter per channel) as a sum of KH*KW shifted products: plain
    elementwise work that XLA fuses, where its grouped convolution is slow on CPU."""
    if x.dtype == jnp.bfloat16:
        # XLA:CPU computes bfloat16 elementwise work through float32 anyway; in float32 the
        # hand-written kernels apply, and the sum is rounded to bfloat16 once
        return _depthwise_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), stride, padding).astype(x.dtype)
    kh, kw = kernel.shape[:2]
    if stride == 1 and kh == kw and padding <= kh - 1:
        return _depthwise_stride1(x, kernel, padding)
    return _shifted_products(x, kernel, stride, padding)


def _shifted_products(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    kh, kw, _, _ = kernel.shape
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    _, hp, wp, _ = xp.shape
    oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride, :]
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


# Autodiff of the shifted products pads and adds KH*KW partial input gradients one by one;
# the input gradient of a stride-1 depthwise convolution is itself one (a full correlation with
# the flipped filters). Under differentiation the forward and both gradients are the hand-written
# kernels where they apply; not differentiated (the primal, which a train step never traces), the
# forward stays XLA's fused shifted products, which were faster in eval steps (vgg16_dsconv at 64
# px: 59 against 68 ms, in-process A/B, docs/performance.md).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_stride1(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    return _shifted_products(x, kernel, 1, padding)


def _depthwise_stride1_forward(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """The hand-written kernel where it applies (one pass: inside a train step XLA splits the
    shifted products into several fusions), else the shifted products."""
    shifted = functools.partial(_shifted_products, x, kernel, 1, padding)
    if native.depthwise_supported(x, kernel, padding):
        return native.depthwise_forward(x, kernel, padding, fallback=shifted)
    return shifted()


def _depthwise_stride1_fwd(x, kernel, padding):
    return _depthwise_stride1_forward(x, kernel, padding), (x, kernel)


def _depthwise_stride1_bwd(padding, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    q = kh - 1 - padding
    dx = _depthwise_stride1_forward(g, jnp.flip(kernel, (0, 1)), q)
    taps = functools.partial(_depthwise_weight_grad, x, g, kh, kw, q)
    if native.depthwise_supported(x, kernel, padding):
        # One pass over x and g by hand, where XLA:CPU makes KH*KW column reductions of them.
        return dx, native.depthwise_weight_grad(x, g, kh, padding, fallback=taps)[:, :, None, :]
    return dx, taps()[:, :, None, :]


def _depthwise_weight_grad(x: jax.Array, g: jax.Array, kh: int, kw: int, q: int) -> jax.Array:
    """(KH, KW, C): dW[i, j] = sum over positions of x times g shifted by (i, j). Shifting g, not x,
    reuses the padded slices of g that the input gradient reads, and leaves x's forward slices to the
    forward fusion."""
    gq = jnp.pad(g, ((0, 0), (q, q), (q, q), (0, 0)))
    _, h, w, _ = x.shape
    taps = [
        [(x * gq[:, kh - 1 - i : kh - 1 - i + h, kw - 1 - j : kw - 1 - j + w]).sum((0, 1, 2)) for j in range(kw)]
        for i in range(kh)
    ]
    return jnp.stack([jnp.stack(row) for row in taps])


_depthwise_stride1.defvjp(_depthwise_stride1_fwd, _depthwise_stride1_bwd)


def _im2col_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The patches of every output position side by side, then one GEMM; gradients by autodiff
    (two more GEMMs and a sum of shifted slices).

    Measured on a 2-core x86 CPU (jax 0.10.2), fwd+bwd of single layers: faster than XLA:CPU's
    own convolution at every VGG/ResNet shape measured (2x2 to 112x112 maps, and the 224 px
    stem), by 1.3-50x (XLA's weight gradients are the slow part; a 3x3 512->512 conv on 2x2 maps
    took 1.1 s against 22 ms), once
    the patch buffers no longer page-fault on every step (see jaxvgg.core.hostmem). A custom VJP that
    takes the input gradient from XLA's convolution was no faster and was dropped. Both compute
    the same float32 sums in a different order (1e-6 of a float64 reference).
    """
    kh, kw, cin, cout = kernel.shape
    if kh == kw == 1 and stride == 1 and padding == 0:
        n, h, w, _ = x.shape
        return _matmul(x.reshape(-1, cin), kernel[0, 0]).reshape(n, h, w, cout)
    patches = _patches(x, kh, kw, stride, padding)
    n, oh, ow, _ = patches.shape
    rows, kmat = patches.reshape(-1, kh * kw * cin), kernel.reshape(kh * kw * cin, cout)
    return _matmul(rows, kmat).reshape(n, oh, ow, cout)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b``; in bfloat16 by the hand-written GEMM where it runs (XLA:CPU multiplies bfloat16
    through float32 copies of both operands, slower than float32 itself)."""
    return _bf16_matmul(a, b) if native.matmul_bf16_supported(a, b) else a @ b


@jax.custom_vjp
def _bf16_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return native.matmul_bf16(a, b, fallback=lambda: a @ b)


def _bf16_matmul_fwd(a, b):
    return _bf16_matmul(a, b), (a, b)


def _bf16_matmul_bwd(residuals, g):
    a, b = residuals
    # b's gradient as (g.T @ a).T: the GEMM reads its left operand's rows, and g.T is the smaller
    # array to transpose (output channels x positions, where a is positions x K*K*C_in)
    return _matmul(g, b.T), _matmul(g.T, a).T


_bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def _forward_route(x: jax.Array, kernel: jax.Array, padding: int) -> str:
    """The route of a stride-1 convolution that is not being differentiated: the fastest forward as
    measured on this CPU for this shape (:mod:`jaxvgg.ops.conv_choice`) among XLA's, im2col's and,
    for 3x3 float32 ones, Winograd's; where nothing is measured, XLA's for output maps of at least
    ``XLA_FORWARD_MIN_PIXELS``, else im2col's."""
    kh, kw = kernel.shape[:2]
    if not conv_choice.measuring_allowed():
        oh, ow = x.shape[1] + 2 * padding - kh + 1, x.shape[2] + 2 * padding - kw + 1
        return "xla" if oh * ow >= XLA_FORWARD_MIN_PIXELS else "im2col"
    candidates = {name: _stride1_conv(name, padding) for name in ("xla", "im2col")}
    if winograd.supported(x, kernel, 1, 1):
        candidates["winograd"] = _stride1_conv("winograd", padding)
    key = f"forward {_shape_key(x, kernel, padding)}" + (" +winograd" if "winograd" in candidates else "")
    return conv_choice.fastest(key, candidates, _shapes(x, kernel))


def _train_route(x: jax.Array, kernel: jax.Array, padding: int) -> str:
    """The route of a stride-1 convolution in a train step: im2col's, or Winograd's where it applies
    and its forward and both gradients were measured faster on this CPU for this shape (compiled as
    train steps are). Where nothing is measured, im2col's: Winograd's gain depends on the CPU, and
    its graph lengthens the train step's compile (vgg19_bn at 64 px, batch 8: 2.3 -> 4.1 s), which
    a measured choice repays within an epoch and a rule might not (docs/performance.md)."""
    # Not measured below 16 input channels: on 3 (a stem) Winograd's transforms cost more than the
    # multiplications they save (8 x 224 x 224 x 3 -> 64: 115 against im2col's 52 ms).
    if not winograd.supported(x, kernel, 1, 1) or x.shape[-1] < 16 or not conv_choice.measuring_allowed():
        return "im2col"

    def forward_and_gradients(name: str):
        conv = _stride1_conv(name, padding)

        # the output, as the next layer reads it, and both gradients of a cotangent that is not the
        # output (a function of it would let XLA fuse the two passes as no train step can)
        def run(a, b, g):
            y, vjp = jax.vjp(conv, a, b)
            return y, vjp(g)

        return run

    candidates = {name: forward_and_gradients(name) for name in ("im2col", "winograd")}
    out_shape = (x.shape[0], x.shape[1] + 2 * padding - 2, x.shape[2] + 2 * padding - 2, kernel.shape[-1])
    shapes = [*_shapes(x, kernel), (out_shape, str(x.dtype))]
    key = f"train {_shape_key(x, kernel, padding)}"
    return conv_choice.fastest(key, candidates, shapes, compiler_options={})


def _stride1_conv(route: str, padding: int):
    if route == "xla":
        return lambda a, b: _xla_conv(a, b, 1, padding)
    if route == "winograd":
        return lambda a, b: winograd.conv3x3(a, b, padding)
    return lambda a, b: _im2col_conv(a, b, 1, padding)


def _shape_key(x: jax.Array, kernel: jax.Array, padding: int) -> str:
    return f"{'x'.join(map(str, x.shape))} {'x'.join(map(str, kernel.shape))} p{padding} {x.dtype}"


def _shapes(x: jax.Array, kernel: jax.Array) -> list:
    return [(x.shape, str(x.dtype)), (kernel.shape, str(kernel.dtype))]


# Inference: XLA:CPU's own forward convolution can beat im2col (no 9x patch buffer to write and
# read back), on which shapes depends on the CPU, so it is measured (_forward_route). On an AVX2
# EPYC, 1.3-1.7x per layer on 112 and 224 px maps, mixed below (whole eval steps with a 56x56
# cut: vgg16 at 224 px 2.83 -> 3.23 img/s, at 64 px 22.1 -> 24.9); on an AVX-512 EPYC it also won
# from 8x8 maps up and lost 4x on 2x2 and 4x4 ones, and Winograd's forward beat both, about 2x
# against im2col on 14x14 to 224x224 maps (docs/performance.md).
# Training: an XLA forward and input gradient with an im2col weight gradient won per layer but lost
# in whole train steps (vgg16 at 224 px 0.78 -> 0.69 img/s, student_cnn at 112 px 77 -> 68,
# in-process A/B), so under differentiation the route is im2col's or Winograd's (_train_route),
# primal and VJP alike.
# The forward choice is made in the primal's body, which JAX traces only where the forward is not
# differentiated (a train step traces the forward rule alone, which makes the training choice).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _measured_forward_conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    return _stride1_conv(_forward_route(x, kernel, padding), padding)(x, kernel)


def _measured_forward_conv_fwd(x, kernel, padding):
    return jax.vjp(_stride1_conv(_train_route(x, kernel, padding), padding), x, kernel)


def _measured_forward_conv_bwd(padding, route_vjp, g):
    return route_vjp(g)


_measured_forward_conv.defvjp(_measured_forward_conv_fwd, _measured_forward_conv_bwd)


def max_pool2d(x: jax.Array, kernel_size: int, stride: int, padding: int = 0) -> jax.Array:
    """torch ``MaxPool2d`` on NHWC input (floor mode).

    Non-overlapping windows (VGG's 2x2, stride 2) are a reshape and a max: its gradient is an
    equality mask, much faster on XLA:CPU than the select-and-scatter of a windowed max. They
    differ only for exactly tied maxima (torch and reduce_window pick one, the mask shares), which
    after a ReLU happens only among zeros, where the ReLU's gradient is zero anyway.
    """
    k, s, p = kernel_size, stride, padding
    if k == s and p == 0:
        n, h, w, c = x.shape
        x = x[:, : h // k * k, : w // k * k]
        return x.reshape(n, h // k, k, w // k, k, c).max(axis=(2, 4))
    # A Python -inf (not a traced array) lets JAX recognise the max monoid and differentiate it.
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, k, k, 1), (1, s, s, 1), ((0, 0), (p, p), (p, p), (0, 0)))


def adaptive_avg_pool2d(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """torch ``AdaptiveAvgPool2d`` on NHWC input, exact for any input size.

    Output cell i averages input rows floor(i*H/oh) .. ceil((i+1)*H/oh) - 1, so a 1x1 map
    is replicated to 7x7 and a 14x14 map averaged in 2x2 cells, as torch does.
    """
    _, h, w, _ = x.shape
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    if (oh, ow) == (1, 1):
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    rows = _pool_matrix(h, oh, x.dtype)
    cols = _pool_matrix(w, ow, x.dtype)
    return jnp.einsum("nhwc,ph,qw->npqc", x, rows, cols)


def fold_pool_into_kernel(kernel: jax.Array, map_size: tuple[int, int], output_size: tuple[int, int]) -> jax.Array:
    """A linear layer's (C*oh*ow, O) kernel, in torch's CHW flatten order, with the adaptive average
    pool from ``map_size`` to ``output_size`` before it folded in: a (H*W*C, O) kernel that takes the
    NHWC map itself, flattened. Both are linear, so ``flatten(pool(x)) @ kernel`` is
    ``x.reshape(N, -1) @ fold_pool_into_kernel(kernel, ...)``."""
    (h, w), (oh, ow) = map_size, output_size
    k = kernel.reshape(-1, oh, ow, kernel.shape[-1])
    if (h, w) == (1, 1):
        # Every pooled cell copies the one pixel: the sum of each channel's oh*ow rows, as a batched
        # dot with ones (vgg16's 25088 x 4096 kernel: 15 ms, where the einsum below took 72 and a
        # plain sum over the axis 18, in one process).
        rows = k.reshape(k.shape[0], oh * ow, k.shape[-1])
        ones = jnp.ones((k.shape[0], oh * ow), k.dtype)
        return lax.dot_general(ones, rows, (((1,), (1,)), ((0,), (0,))))
    folded = jnp.einsum("cpqo,ph,qw->hwco", k, _pool_matrix(h, oh, k.dtype), _pool_matrix(w, ow, k.dtype))
    return folded.reshape(-1, kernel.shape[-1])


def _pool_matrix(size: int, out: int, dtype) -> jax.Array:
    i = jnp.arange(out)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)  # ceil((i + 1) * size / out)
    j = jnp.arange(size)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)
