"""The forward a convolution takes when not differentiated is measured per shape on this CPU,
once, and kept on disk under this machine's key (jaxvgg.ops.conv_choice)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvgg
from jaxvgg.ops import conv_choice


@pytest.fixture
def measuring(tmp_path, monkeypatch):
    """Measuring on, into a cache folder of the test's own; the process's table forgotten."""
    monkeypatch.setenv("JAXVGG_CONV_TUNING", "1")
    monkeypatch.setenv("JAXVGG_CACHE", str(tmp_path))
    conv_choice.forget()
    yield tmp_path / conv_choice.FILE_NAME
    conv_choice.forget()


def slow(x):
    for _ in range(40):
        x = jnp.tanh(x @ x) / 2
    return x


def test_the_faster_candidate_is_chosen_and_kept_under_this_machines_key(measuring):
    shapes = [((192, 192), "float32")]
    assert conv_choice.fastest("case", {"slow": slow, "fast": jnp.negative}, shapes) == "fast"
    assert conv_choice.fastest("case 2", {"fast": jnp.negative, "slow": slow}, shapes) == "fast"
    table = json.loads(measuring.read_text())
    entry = table[conv_choice.machine_key()]["case"]
    assert entry["route"] == "fast" and entry["ms"]["slow"] > entry["ms"]["fast"]
    assert f"; jax {jax.__version__}" in conv_choice.machine_key()


def test_a_bfloat16_convolution_is_measured_too(measuring):
    """--precision bf16 traces its convolutions in bfloat16: they are measured, and kept, as such."""
    from jaxvgg.ops.conv import conv2d

    x, k = jnp.ones((2, 8, 8, 4), jnp.bfloat16), jnp.ones((3, 3, 4, 8), jnp.bfloat16)
    y = jax.jit(lambda x, k: conv2d(x, k, padding=1))(x, k)
    assert y.dtype == jnp.bfloat16 and float(y[0, 4, 4, 0]) == 36.0
    (key,) = json.loads(measuring.read_text())[conv_choice.machine_key()]
    assert key.endswith("bfloat16")


def test_a_shape_is_measured_once_then_read_back_by_a_new_process(measuring, monkeypatch):
    model = jaxvgg.create_model("student_cnn", 3, image_size=32)
    variables = jaxvgg.init_variables(model, 32)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    forward = jax.jit(lambda v, x: model.apply(v, x))
    measured = np.asarray(forward(variables, x))
    keys = set(json.loads(measuring.read_text())[conv_choice.machine_key()])
    assert keys and all(k.startswith("forward 2x") for k in keys), keys

    conv_choice.forget()  # as a new process would start: from the file alone

    def refuse(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(conv_choice, "_measure", refuse)
    again = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))
    np.testing.assert_allclose(again, measured, rtol=0, atol=0)

    monkeypatch.setenv("JAXVGG_CONV_TUNING", "0")  # the fixed rule: the same logits to rounding
    ruled = np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))
    np.testing.assert_allclose(ruled, measured, rtol=1e-5, atol=1e-5)


def test_another_machines_choices_are_neither_used_nor_lost(measuring):
    other = {"Some other CPU, 64 cores; jax 0.0": {"case": {"route": "slow", "ms": {"slow": 1.0, "fast": 2.0}}}}
    measuring.write_text(json.dumps(other))
    shapes = [((192, 192), "float32")]
    assert conv_choice.fastest("case", {"slow": slow, "fast": jnp.negative}, shapes) == "fast"
    table = json.loads(measuring.read_text())
    assert table["Some other CPU, 64 cores; jax 0.0"] == other["Some other CPU, 64 cores; jax 0.0"]
    assert table[conv_choice.machine_key()]["case"]["route"] == "fast"


def test_an_unwritable_cache_folder_still_chooses(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("JAXVGG_CONV_TUNING", "1")
    monkeypatch.setenv("JAXVGG_CACHE", str(blocker / "cache"))
    conv_choice.forget()
    try:
        assert conv_choice.fastest("case", {"slow": slow, "fast": jnp.negative}, [((192, 192), "float32")]) == "fast"
        assert not (blocker / "cache").exists()
    finally:
        conv_choice.forget()


def test_initialising_measures_nothing(measuring):
    jaxvgg.init_variables(jaxvgg.create_model("vgg16_gap", 3), 32)
    assert not measuring.exists()


def _route_traced(text: str) -> str:
    """Which route a lowered program took: XLA's convolution, Winograd's 16 batched GEMMs, or
    im2col's one GEMM."""
    if "stablehlo.convolution" in text:
        return "xla"
    return "winograd" if "batching_dims" in text else "im2col"


@pytest.mark.parametrize("route", ["xla", "im2col", "winograd"])
def test_the_program_traced_takes_the_route_on_file(measuring, route):
    from jaxvgg.ops.conv import conv2d

    x, k = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8))
    key = "forward 2x8x8x4 3x3x4x8 p1 float32 +winograd"
    measuring.write_text(json.dumps({conv_choice.machine_key(): {key: {"route": route, "ms": {}}}}))
    text = jax.jit(lambda x, k: conv2d(x, k, padding=1)).lower(x, k).as_text()
    assert _route_traced(text) == route


@pytest.mark.parametrize("route", ["im2col", "winograd"])
def test_a_train_step_takes_the_route_on_file_for_its_forward_and_gradients(measuring, route):
    from jaxvgg.ops.conv import conv2d

    x, k = jnp.ones((2, 8, 8, 64)), jnp.ones((3, 3, 64, 8))
    key = "train 2x8x8x64 3x3x64x8 p1 float32"
    measuring.write_text(json.dumps({conv_choice.machine_key(): {key: {"route": route, "ms": {}}}}))
    text = jax.jit(jax.grad(lambda x, k: jnp.sum(conv2d(x, k, padding=1) ** 2), (0, 1))).lower(x, k).as_text()
    assert _route_traced(text) == route
    assert list(json.loads(measuring.read_text())[conv_choice.machine_key()]) == [key]  # nothing else measured


def test_a_train_step_measures_its_winograd_shapes_once(measuring):
    from jaxvgg.ops.conv import conv2d

    x, k = jnp.ones((2, 8, 8, 64)), jnp.ones((3, 3, 64, 8))

    def grads():
        return jax.jit(jax.grad(lambda x, k: jnp.sum(conv2d(x, k, padding=1) ** 2), (0, 1)))(x, k)

    grads()
    measured = measuring.read_text()
    entry = json.loads(measured)[conv_choice.machine_key()]["train 2x8x8x64 3x3x64x8 p1 float32"]
    assert set(entry["ms"]) == {"im2col", "winograd"} and entry["route"] in entry["ms"]
    grads()  # traced again: the shape's choice is read, not timed again
    assert measuring.read_text() == measured


def test_training_measures_its_own_routes_only(measuring):
    """A train step traces only the forward rule it differentiates, which measures training's
    candidates (im2col's and Winograd's forward and VJP), never the inference forwards; the
    3-channel stem is not measured at all."""
    model = jaxvgg.create_model("student_cnn", 3, image_size=32)
    variables = jaxvgg.init_variables(model, 32)
    x = jnp.ones((2, 32, 32, 3))
    grads = jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x, train=True) ** 2)))(variables)
    assert jax.tree.leaves(grads)
    measured = json.loads(measuring.read_text())[conv_choice.machine_key()]
    assert list(measured) == ["train 2x16x16x32 3x3x32x64 p1 float32"]


def test_a_parameter_table_measures_nothing(measuring):
    from jaxvgg.summary import model_macs

    assert model_macs("vgg16_gap", 32) > 0
    assert not measuring.exists()


def test_malformed_entries_are_measured_again_and_replaced(measuring):
    shapes = [((192, 192), "float32")]
    key = conv_choice.machine_key()
    for bad in ({key: {"case": {"ms": {}}}}, {key: ["not", "a", "table"]}, {key: {"case": "xla"}}):
        measuring.write_text(json.dumps(bad))
        conv_choice.forget()
        assert conv_choice.fastest("case", {"slow": slow, "fast": jnp.negative}, shapes) == "fast"
        assert json.loads(measuring.read_text())[key]["case"]["route"] == "fast"
