"""The convolution and pooling lowerings: every route computes torch's Conv2d/MaxPool2d, forward
and gradients, to float32 rounding of a float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxvgg
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


@pytest.mark.parametrize("route", ops.ROUTES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_every_route_matches_a_float64_convolution(route, case):
    check_against_float64(route, case)


@pytest.mark.parametrize("case", [(4, 16, 128, 16, 3, 1, 1, 1), (2, 23, 64, 8, 3, 1, 1, 1)], ids=["16px", "odd-23px"])
def test_winograd_where_measured_faster_matches_a_float64_convolution(case, monkeypatch):
    """The cpu route with Winograd's F(2x2, 3x3) chosen for training and inference (as a CPU that
    measured it faster chooses), in float32: forward and both gradients."""
    monkeypatch.setattr(ops, "_train_route", lambda *a: "winograd")
    monkeypatch.setattr(ops, "_forward_route", lambda *a: "winograd")
    check_against_float64("cpu", case)


def check_against_float64(route, case):
    n, size, cin, cout, k, stride, padding, groups = case
    rng = np.random.RandomState(0)
    x = rng.randn(n, size, size, cin).astype(np.float32)
    w = (rng.randn(k, k, cin // groups, cout) / np.sqrt(k * k * cin / groups)).astype(np.float32)

    def conv(x, w):
        return ops.conv2d(x, w, stride=stride, padding=padding, groups=groups, route=route)

    def loss(f, x, w):
        y = f(x, w)
        return jnp.sum(y * jnp.cos(y)), y  # a non-trivial output gradient

    ours = jax.jit(
        jax.grad(
            lambda x, w: loss(conv, x, w),
            argnums=(0, 1),
            has_aux=True,
        )
    )
    (gx, gw), y = ours(x, w)
    # Not differentiated, a convolution may take another route (XLA's on large maps): check it too.
    y_eval = jax.jit(conv)(x, w)
    with jax.enable_x64(True):
        (rx, rw), ry = jax.grad(
            lambda x, w: loss(lambda a, b: reference(a, b, stride, padding, groups), x, w), argnums=(0, 1), has_aux=True
        )(x.astype(np.float64), w.astype(np.float64))
        rx, rw, ry = np.asarray(rx), np.asarray(rw), np.asarray(ry)
    for got, want in ((y, ry), (y_eval, ry), (gx, rx), (gw, rw)):
        got = np.asarray(got, np.float64)
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_unknown_route_is_refused():
    with pytest.raises(ValueError, match="convolution route 'fft'"):
        ops.conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), route="fft")
    with pytest.raises(ValueError, match="convolution route 'fft'"):
        jaxvgg.create_model("student_cnn", 3, image_size=32, conv_route="fft")


@pytest.mark.parametrize(("platform", "route"), [("cpu", "cpu"), ("gpu", "xla"), ("cuda", "xla"), ("tpu", "xla")])
def test_the_route_is_chosen_for_the_platform_when_the_model_is_built(platform, route):
    assert ops.route_for_platform(platform) == route
    assert jaxvgg.create_model("vgg16_gap", 3).conv_route == ops.route_for_platform(jax.default_backend())
    forced = jaxvgg.create_model("vgg16_dsconv", 3, conv_route="im2col")
    assert forced.conv_route == "im2col"
    # The route is a field of the module, so jit traces (and caches) each route on its own.
    x = np.random.RandomState(0).randn(1, 32, 32, 3).astype(np.float32)
    model_a, model_b = (jaxvgg.create_model("student_cnn", 3, image_size=32, conv_route=r) for r in ("cpu", "xla"))
    variables = jaxvgg.init_variables(model_a, 32)
    apply = jax.jit(lambda m, v, x: m.apply(v, x), static_argnums=0)
    np.testing.assert_allclose(apply(model_a, variables, x), apply(model_b, variables, x), rtol=1e-4, atol=1e-5)


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


def test_a_forced_route_reaches_the_model_and_a_bad_one_is_a_flag_error():
    from jaxvgg.core.config import TrainConfig, validate_values
    from jaxvgg.core.errors import UserError
    from jaxvgg.train.loop import model_options

    assert "conv_route" not in model_options(TrainConfig(model="vgg16_gap"))  # auto: the backend's
    assert model_options(TrainConfig(model="vgg16_gap", conv_route="xla"))["conv_route"] == "xla"
    with pytest.raises(UserError, match="--conv-route 'fft'"):
        validate_values(TrainConfig(conv_route="fft"))


@pytest.mark.parametrize("kernel", [False, True], ids=["xla-only", "avx512-bf16-kernel"])
def test_bf16_on_a_cpu_says_what_it_costs_there(kernel, monkeypatch):
    """XLA:CPU converts bfloat16 dots to float32 ones (docs/performance.md), so the run says bf16 is
    slower there, unless jaxvgg's own bfloat16 GEMM runs on this CPU, which the note then names."""
    from jaxvgg.ops import native
    from jaxvgg.train.loop import precision_note

    monkeypatch.setattr(native, "matmul_bf16_runs_here", lambda: kernel)
    note = precision_note("bf16", "cpu")
    assert ("AVX-512 BF16 kernel" in note) == kernel and ("trains slower than fp32" in note) != kernel
    assert ("Winograd" in note) == kernel  # where bf16 training loses to fp32 even with the kernel
    # the kernel is not in XLA's route, nor in steps for several devices
    assert "trains slower than fp32" in precision_note("bf16", "cpu", route="xla")
    assert "trains slower than fp32" in precision_note("bf16", "cpu", devices=4)
    assert precision_note("fp32", "cpu") is None
    assert precision_note("bf16", "gpu") is None and precision_note("bf16", "tpu") is None


def test_inference_steps_compile_without_ynnpack_fusions_on_a_cpu():
    """The eval step that training, bench.py and predict.py run is compiled with YNNPACK's dot
    fusions off on a CPU (faster inference there: docs/performance.md) and computes the same logits;
    nothing is passed on other backends, nor by a jaxlib that does not know the option."""
    from jaxvgg.ops.compiler import NO_YNN_FUSIONS, inference_options
    from jaxvgg.train.loop import build_state
    from jaxvgg.train.steps import compile_steps
    from jaxvgg.train.steps import eval_step as plain_eval_step

    assert inference_options("gpu") == inference_options("tpu") == {}
    options = inference_options("cpu")
    assert options in ({}, NO_YNN_FUSIONS)
    if not options:
        pytest.skip("this jaxlib's XLA:CPU has no such option")
    from jaxvgg.core.config import TrainConfig

    state = build_state(TrainConfig(model="student_cnn", image_size=32, lr=1e-4), 3, steps_per_epoch=1)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(4, 32, 32, 3)).astype(np.float32)),
        "label": jnp.asarray(np.arange(4) % 3),
        "weight": jnp.ones(4),
    }
    _, eval_step = compile_steps()
    default = jax.jit(plain_eval_step)
    assert "__ynn_fusion" in default.lower(state, batch).compile().as_text(), "the default compile fuses"
    assert "__ynn_fusion" not in eval_step.lower(state, batch).compile().as_text()
    want = jax.tree.map(np.asarray, default(state, batch))
    got = jax.tree.map(np.asarray, eval_step(state, batch))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


def test_an_int8_forward_keeps_ynnpack_fusions():
    """Integer convolutions need YNNPACK's fusions: an int8 vgg16_bn forward ran 11x slower without
    them (docs/performance.md), so predict.py and lighten.py compile an int8 model with the defaults."""
    from jaxvgg.compress import quantize
    from jaxvgg.models import create_model
    from jaxvgg.ops.compiler import inference_options

    assert inference_options("cpu", int8=True) == {}
    if not inference_options("cpu"):
        pytest.skip("this jaxlib's XLA:CPU has no such option")
    model = create_model("student_cnn", 3)
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    weights = quantize.quantize(variables, quantize.calibrate(model, variables, [x]))
    apply = quantize.quantized_apply(model)

    def hlo(options):
        forward = jax.jit(lambda v, x: apply(v, x, train=False), compiler_options=options)
        return forward.lower(weights, x).compile().as_text()

    assert "__ynn_fusion" in hlo(inference_options("cpu", int8=True))
    assert "__ynn_fusion" not in hlo(inference_options("cpu")), "the float route turns them off"


@pytest.mark.parametrize("map_size", [(1, 1), (2, 2), (3, 3), (2, 3)])
def test_a_pool_folded_into_the_kernel_after_it_is_the_pool_then_the_kernel(map_size):
    """flatten(adaptive_avg_pool2d(x, 7x7)) @ kernel == x.reshape(N, -1) @ fold(kernel), and so are
    both gradients (float64)."""
    h, w = map_size
    rng = np.random.RandomState(0)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.randn(3, h, w, 5))
        kernel = jnp.asarray(rng.randn(5 * 7 * 7, 4))

        def pooled(x, k):
            chw = ops.adaptive_avg_pool2d(x, (7, 7)).transpose(0, 3, 1, 2).reshape(3, -1)
            return chw @ k

        def folded(x, k):
            return x.reshape(3, -1) @ ops.fold_pool_into_kernel(k, (h, w), (7, 7))

        def loss(f, x, k):
            y = f(x, k)
            return jnp.sum(y * jnp.cos(y))

        np.testing.assert_allclose(folded(x, kernel), pooled(x, kernel), rtol=1e-12, atol=1e-12)
        for got, want in zip(
            jax.grad(lambda a, b: loss(folded, a, b), (0, 1))(x, kernel),
            jax.grad(lambda a, b: loss(pooled, a, b), (0, 1))(x, kernel),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "padding"), [((2, 9, 7, 5), 1), ((1, 8, 8, 3), 0), ((2, 5, 6, 4), 2), ((1, 1, 1, 4), 1)]
)
def test_winograd_is_the_convolution_exactly_in_float64(shape, padding):
    """In float64 the forward and both gradients agree with XLA's convolution to rounding (the
    transforms add and halve, nothing more), on odd sizes (the last tiles cut) and paddings 0-2."""
    from jaxvgg.ops import winograd

    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal(shape))
        w = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 6)))
        want = reference(x, w, 1, padding, 1)
        got = winograd.conv3x3(x, w, padding)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        probe = jnp.cos(want)
        for a, b in zip(
            jax.grad(lambda x, w: jnp.sum(winograd.conv3x3(x, w, padding) * probe), (0, 1))(x, w),
            jax.grad(lambda x, w: jnp.sum(reference(x, w, 1, padding, 1) * probe), (0, 1))(x, w),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-11)
