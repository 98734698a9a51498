"""The Flax model zoo on its own (no torch needed)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvgg
from jaxvgg.core.specs import MODELS
from jaxvgg.models import variable_shapes

KNOWN_TOTALS = [
    ("vgg16_manual", 3, 134_272_835),
    ("vgg16", 3, 134_272_835),
    ("vgg16", 1000, 138_357_544),
    ("vgg16_bn", 1000, 138_365_992),
    ("vgg16_slim", 3, 40_668_995),
    ("vgg16_slim_bn", 3, 40_677_443),  # counted by torchref
    ("vgg16_dsconv", 3, 27_630_177),
    ("vgg16_dsconv_bn", 3, 27_638_625),
    ("vgg16_gap", 3, 14_716_227),
    ("vgg16_gap_bn", 3, 14_724_675),  # vgg16_gap + 2 x 4,224 BatchNorm scales and biases
    ("resnet50", 1000, 25_557_032),
]


@pytest.mark.parametrize(("name", "classes", "total"), KNOWN_TOTALS)
def test_known_parameter_totals(name, classes, total):
    model = jaxvgg.create_model(name, classes)
    assert jaxvgg.count_params(variable_shapes(model)) == total


def test_list_models_names_every_model():
    names = jaxvgg.list_models()
    for depth in (11, 13, 16, 19):
        assert f"vgg{depth}" in names and f"vgg{depth}_bn" in names
    assert {"vgg16_manual", "vgg16_slim", "vgg16_gap", "vgg16_dsconv", "student_cnn"} <= set(names)
    assert names == sorted(MODELS)


def test_unknown_model_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg17'"):
        jaxvgg.create_model("vgg17")
    with pytest.raises(ValueError, match="unknown option"):
        jaxvgg.create_model("vgg16", colour=True)


def test_init_apply_dropout_and_batch_stats():
    model = jaxvgg.create_model("vgg11_bn", 3)
    variables = jaxvgg.init_variables(model, image_size=32, seed=0)
    assert set(variables) == {"params", "batch_stats"}
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    logits = jax.jit(model.apply)(variables, x)
    assert logits.shape == (4, 3) and logits.dtype == jnp.float32 and np.all(np.isfinite(logits))

    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"]))
    out, updates = train(variables, x, jax.random.key(2))
    before = variables["batch_stats"]["features_1"]["mean"]
    assert not np.allclose(before, updates["batch_stats"]["features_1"]["mean"])
    assert not np.allclose(out, train(variables, x, jax.random.key(3))[0]), "dropout keys must change the output"


def test_sized_models_take_image_size():
    small = jaxvgg.create_model("student_cnn", 3, image_size=32)
    convs = (27 * 32 + 32) + (9 * 32 * 64 + 64)
    fcs = (64 * 8 * 8 * 256 + 256) + (256 * 3 + 3)
    assert jaxvgg.count_params(variable_shapes(small)) == convs + fcs
    with pytest.raises(ValueError, match="too small"):
        jaxvgg.create_model("vgg16_manual", 3, image_size=16).init(jax.random.key(0), jnp.ones((1, 16, 16, 3)))


def test_jaxvgg_imports_and_runs_without_torch(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "import jax.numpy as jnp, jaxvgg, jaxvgg.convert, jaxvgg.summary\n"
        "m = jaxvgg.create_model('student_cnn', 3, image_size=32)\n"
        "v = jaxvgg.init_variables(m, 32)\n"
        "sd = jaxvgg.convert.flax_to_torch('student_cnn', v, image_size=32)\n"
        "print(m.apply(v, jnp.ones((1, 32, 32, 3))).shape, len(sd))\n"
        "import jaxvgg.tools.weights, pathlib; pathlib.Path('x.pth').write_bytes(b'')\n"
        "try:\n    jaxvgg.tools.weights.read_weights('x.pth')\nexcept Exception as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "(1, 3)" in out and "needs PyTorch" in out


@pytest.mark.parametrize("separable", [False, True])
def test_batchnorm_folded_into_the_convolutions_gives_the_same_logits(separable):
    """Eval-mode BatchNorm folded into the convolution before it (jaxvgg.models.fold): the same
    logits from the model without BatchNorm, on running statistics that are not the initial ones.
    A two-conv VGG of the zoo's layers, dense or depthwise-separable, so the test compiles in seconds."""
    from jaxvgg.core.specs import ModelSpec
    from jaxvgg.models import init_variables
    from jaxvgg.models.fold import can_fold, fold_batchnorm
    from jaxvgg.models.vgg import VGG

    model = VGG(ModelSpec("vgg", cfg="student", batch_norm=True, separable=separable, head="gap"), num_classes=4)
    variables = init_variables(model, 16)
    keys = iter(jax.random.split(jax.random.key(1), 1000))
    stats = jax.tree.map(lambda v: v + jax.random.uniform(next(keys), v.shape), variables["batch_stats"])
    params = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(next(keys), v.shape), variables["params"])
    variables = {"params": params, "batch_stats": stats}
    folded, folded_variables = fold_batchnorm(model, variables)
    assert can_fold(model) and not can_fold(folded) and "batch_stats" not in folded_variables
    assert len(jax.tree.leaves(folded_variables)) < len(jax.tree.leaves(params))
    x = jax.random.normal(jax.random.key(2), (3, 16, 16, 3))
    want, got = model.apply(variables, x), folded.apply(folded_variables, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
    with pytest.raises(ValueError, match="no BatchNorm"):
        fold_batchnorm(folded, folded_variables)


def test_init_variables_compiled_at_o1_draws_the_same_weights_as_the_default_compile():
    """init_variables compiles the initialiser with LLVM -O1 on the CPU (twice as fast to compile
    for VGG-16); the draws must be bit for bit those of XLA's default compile."""
    model = jaxvgg.create_model("vgg16_gap_bn", 6)
    default = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    fast = jaxvgg.init_variables(model, 32)
    assert jaxvgg.models.INIT_COMPILER_OPTIONS["cpu"] == {"xla_backend_optimization_level": 1}
    for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(fast), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
