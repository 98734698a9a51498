"""Parity of the model zoo: shapes, parameter counts, logits and weight round-trips, JAX vs PyTorch."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jaxvgg  # noqa: E402
import torchref  # noqa: E402
from jaxvgg.convert import flax_to_torch, torch_to_flax  # noqa: E402
from jaxvgg.core.errors import WeightMismatchError  # noqa: E402
from jaxvgg.core.specs import size_options  # noqa: E402
from jaxvgg.models import variable_shapes  # noqa: E402
from jaxvgg.ops.conv import adaptive_avg_pool2d  # noqa: E402
from jaxvgg.summary import flax_summary  # noqa: E402
from torchref.summary import torch_summary  # noqa: E402

pytestmark = pytest.mark.parity

# Full size where the FC input depends on it; small images elsewhere (the adaptive pool makes them valid).
SIZES = {"vgg16_manual": 224, "student_cnn": 224, "resnet50": 64}
TORCHVISION = [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]


def size_of(name):
    return SIZES.get(name, 32)


def options(name):
    return size_options(name, size_of(name))


def randomise_bn_stats(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def torch_source(name):
    """A randomly initialised torch model with non-trivial BatchNorm statistics.

    For torchvision's names the source is ``torchvision.models.<name>`` itself, and our
    ``torchref`` model must load its state_dict strictly and compute the same logits.
    """
    torch.manual_seed(0)
    if name in TORCHVISION:
        return randomise_bn_stats(getattr(torchvision.models, name)(num_classes=3).eval())
    return randomise_bn_stats(torchref.create_model(name, 3, **options(name)).eval())


def logits_both(name, model, state_dict, batch=2):
    size = size_of(name)
    x = np.random.RandomState(1).randn(batch, 3, size, size).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    flax_model = jaxvgg.create_model(name, 3, **options(name))
    variables = torch_to_flax(name, state_dict, **options(name))
    got = np.asarray(jax.jit(flax_model.apply)(variables, x.transpose(0, 2, 3, 1)))
    return expected, got, variables


def assert_logits_close(expected, got):
    assert got.shape == expected.shape
    assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected)), np.max(np.abs(got - expected))


@pytest.mark.parametrize("name", jaxvgg.list_models())
def test_model_parity(name):
    source = torch_source(name)
    state_dict = source.state_dict()
    size = size_of(name)

    # 1. per-layer output shapes, parameter counts and multiply-adds, row by row
    ours = jaxvgg.create_model(name, 3, **options(name))
    with torch.device("meta"):  # no initialisation: every tensor comes from the state_dict
        torch_model = torchref.create_model(name, 3, **options(name)).eval()
    torch_model.load_state_dict(state_dict, strict=True, assign=True)
    flax_rows = flax_summary(ours, variable_shapes(ours), size)
    torch_rows = torch_summary(torch_model, size)
    assert flax_rows.rows == torch_rows.rows
    assert flax_rows.format() == torch_rows.format()

    # 2. converted weights give the same logits (BatchNorm with random running statistics included)
    expected, got, variables = logits_both(name, source, state_dict)
    assert_logits_close(expected, got)
    if name in TORCHVISION:  # 4. torchref computes what torchvision computes
        x = torch.from_numpy(np.random.RandomState(1).randn(2, 3, size, size).astype(np.float32))
        with torch.no_grad():
            np.testing.assert_array_equal(torch_model(x).numpy(), expected)

    # 3. flax_to_torch(torch_to_flax(sd)) == sd exactly, and the reverse
    back = flax_to_torch(name, variables, **options(name))
    assert list(back) == list(state_dict)
    for key, value in state_dict.items():
        assert back[key].dtype == value.numpy().dtype and np.array_equal(back[key], value.numpy()), key
    again = torch_to_flax(name, back, **options(name))
    assert jax.tree.structure(again) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables), strict=True):
        assert np.array_equal(a, b)


def test_torchvision_vgg16_with_imagenet_head_loads():
    reference = torchvision.models.vgg16().eval()
    variables = torch_to_flax("vgg16", reference.state_dict())
    assert jaxvgg.count_params(variables) == 138_357_544


def test_mismatched_state_dict_lists_what_is_wrong():
    bad = dict(torchref.create_model("vgg16_gap").state_dict())
    del bad["features.0.bias"]
    bad["features.99.weight"] = torch.zeros(3)
    bad["features.2.weight"] = torch.zeros(64, 64, 5, 5)
    with pytest.raises(WeightMismatchError) as e:
        torch_to_flax("vgg16_gap", bad)
    message = str(e.value)
    assert "missing (1): features.0.bias" in message
    assert "unexpected (1): features.99.weight" in message
    assert "features.2.weight: got (64, 64, 5, 5), model wants (64, 64, 3, 3)" in message


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 9, 14, 15])
def test_adaptive_avg_pool_equals_torch_for_any_size(size):
    x = np.random.RandomState(size).randn(2, 4, size, size + 1).astype(np.float32)
    expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), (7, 7)).numpy()
    got = np.asarray(adaptive_avg_pool2d(x.transpose(0, 2, 3, 1), (7, 7))).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_converted_weights_do_not_alias_torch_tensors():
    model = torchref.create_model("vgg11_bn", 3).train()
    variables = torch_to_flax("vgg11_bn", model.state_dict())
    before = np.array(variables["batch_stats"]["features_1"]["mean"])
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))  # updates running statistics in place
    np.testing.assert_array_equal(variables["batch_stats"]["features_1"]["mean"], before)


def test_summary_script_prints_the_same_table_in_both_frameworks():
    from helpers import run_script

    args = ["--model", "vgg16_bn", "--image-size", "32", "--num-classes", "3"]
    jax_out = run_script("summary.py", *args, "--framework", "jax").stdout.splitlines()
    torch_out = run_script("summary.py", *args, "--framework", "torch").stdout.splitlines()
    header, route = jax_out[0].replace("(jax)", "(torch)").split(", convolutions by the ")
    assert header == torch_out[0] and route in ("cpu route", "xla route")  # the route is JAX's alone
    assert jax_out[1:] == torch_out[1:]
    # vgg16 with 3 classes plus 8,448 BatchNorm parameters
    assert "Total params: 134,281,283" in jax_out
    assert any(line.startswith("Forward multiply-adds") for line in jax_out)


@pytest.mark.parametrize("name", jaxvgg.list_models())
def test_module_names_from_the_table_are_what_both_frameworks_build(name):
    """--freeze is checked against these names before any model is built, so they must be exact."""
    from jaxvgg.convert import flax_path_to_torch
    from jaxvgg.core.freeze import module_names

    torch_model = torchref.create_model(name, 3, **options(name))
    torch_names = [n for n, m in torch_model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    params = variable_shapes(jaxvgg.create_model(name, 3, **options(name)), size_of(name))["params"]
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    flax_names = list(dict.fromkeys(flax_path_to_torch(tuple(k.key for k in p[:-1])) for p, _ in paths))
    assert module_names(name) == torch_names
    assert sorted(module_names(name)) == sorted(flax_names)
