"""Grad-CAM (``predict.py --explain``): the explained layer, the two frameworks' maps for the same
weights, a model whose answer depends on one quadrant of the image looking at that quadrant, and
the command's picture and errors."""

import json

import jax
import numpy as np
import pytest
from helpers import one_line_error, random_flax_variables, run_command
from PIL import Image

import jaxvgg
from jaxvgg.core.config import TrainConfig
from jaxvgg.core.errors import UserError
from jaxvgg.core.gradcam import cam_layer, class_targets, grad_cam, upsample_bilinear
from jaxvgg.core.specs import size_options
from jaxvgg.data.normalize import normalize
from jaxvgg.explain import gradcam_inputs, jax_explain
from jaxvgg.models import variable_shapes
from jaxvgg.train import checkpoint

SIZE = 32
CLASSES = ["noise", "patch"]


def relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def torch_twin(name, variables, size, num_classes):
    """The torchref model with the Flax variables' weights, in eval mode."""
    torch = pytest.importorskip("torch")
    import torchref
    from jaxvgg.convert import flax_to_torch

    model = torchref.create_model(name, num_classes, **size_options(name, size))
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in flax_to_torch(name, variables).items()})
    return model.eval()


def test_the_explained_layer_is_the_last_conv_stage_in_both_frameworks():
    torch = pytest.importorskip("torch")
    import torchref

    assert [cam_layer(m) for m in ("vgg16", "vgg16_bn", "vgg16_manual", "student_cnn", "resnet50")] == [
        "features.29",
        "features.42",
        "features.29",
        "features.4",
        "layer4",
    ]
    for name in ("student_cnn", "vgg16_gap_bn"):  # the ReLU of the last convolution, just before the last pool
        features = torchref.create_model(name, 3).features
        index = int(cam_layer(name).split(".")[1])
        assert isinstance(features[index], torch.nn.ReLU) and isinstance(features[index + 1], torch.nn.MaxPool2d)
        assert index + 2 == len(features)


def test_upsampling_is_torchs_bilinear_and_maps_lie_in_0_1():
    torch = pytest.importorskip("torch")
    maps = np.random.default_rng(0).random((3, 7, 5))
    ours = upsample_bilinear(maps, (32, 20))
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[:, None], size=(32, 20), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    assert np.max(np.abs(ours - theirs)) <= 1e-12
    rng = np.random.default_rng(1)
    heat = grad_cam(rng.random((2, 4, 4, 8)), rng.standard_normal((2, 4, 4, 8)) + 0.5, (16, 16))
    assert heat.shape == (2, 16, 16) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)


def test_targets_are_the_predicted_classes_or_the_named_one():
    probs = np.array([[0.2, 0.8], [0.9, 0.1]])
    assert class_targets(probs, CLASSES, None, "run").tolist() == [1, 0]
    assert class_targets(probs, CLASSES, "noise", "run").tolist() == [0, 0]
    with pytest.raises(UserError, match=r"--class 'blight': not a class of run \(its classes: noise, patch\)"):
        class_targets(probs, CLASSES, "blight", "run")


def test_the_two_halves_are_the_whole_model():
    model = jaxvgg.create_model("student_cnn", 3, image_size=SIZE)
    variables = random_flax_variables(model, SIZE, seed=0)
    x = normalize(np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8))
    for layer in ("features.1", cam_layer("student_cnn")):
        a = model.apply(variables, x, layer, method="until")
        np.testing.assert_array_equal(model.apply(variables, a, layer, method="after"), model.apply(variables, x))
    with pytest.raises(ValueError, match="not a feature layer"):
        model.apply(variables, x, "features.6", method="until")


@pytest.mark.parity
@pytest.mark.parametrize(("name", "size"), [("student_cnn", 64), ("vgg16_gap_bn", 32), ("resnet50", 64)])
def test_both_frameworks_give_the_same_map_for_the_same_weights(name, size):
    torch = pytest.importorskip("torch")
    from torchref.data import normalize_uint8
    from torchref.explain import gradcam_inputs as torch_gradcam_inputs
    from torchref.explain import torch_explain

    model = jaxvgg.create_model(name, 3, **size_options(name, size))
    variables = random_flax_variables(model, size, seed=1)
    twin = torch_twin(name, variables, size, 3)
    # Every class for each of four images: some random-weight maps have nothing for a class (all 0).
    images = np.repeat(np.random.default_rng(2).integers(0, 256, (4, size, size, 3), dtype=np.uint8), 3, axis=0)
    targets = np.tile([0, 1, 2], 4)
    layer = cam_layer(name)
    acts, grads = map(np.asarray, gradcam_inputs(model, layer)(variables, images, targets))
    t_acts, t_grads = torch_gradcam_inputs(
        twin, layer, normalize_uint8(torch.from_numpy(images)), torch.from_numpy(targets)
    )
    assert relative(t_acts, acts) <= 1e-4
    # Where the ReLU output is 0, a 2x2 max-pool window can hold tied maxima: torch sends the
    # window's gradient to one of them, the JAX pool shares it out (jaxvgg.ops.conv.max_pool2d). The
    # window's sum, so Grad-CAM's channel weights, and the gradient at every live unit are the same.
    live = acts > 0
    assert relative(t_grads[live], grads[live]) <= 1e-4
    assert relative(t_grads.mean(axis=(1, 2)), grads.mean(axis=(1, 2))) <= 1e-4
    jax_maps = grad_cam(acts, grads, (size, size))
    torch_maps = torch_explain(twin, name, torch.device("cpu"))(images, targets)
    assert jax_maps.shape == torch_maps.shape == (12, size, size)
    real = jax_maps.max(axis=(1, 2)) == 1.0
    assert real.reshape(4, 3).any(axis=1).all(), real  # each image has a map to compare for some class
    assert np.max(np.abs(jax_maps - torch_maps)) <= 1e-4


def patch_images(rng, n, quadrant=(0, 1)):
    """Noise images; in those of class 1 a white 8x8 square somewhere inside one quadrant ((row, column)
    of the quadrant: (0, 1) is the top right, which a map transposed by mistake would miss)."""
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n)
    half = SIZE // 2
    for i in np.flatnonzero(labels):
        r, c = rng.integers(0, half - 8 + 1, 2) + np.multiply(quadrant, half)
        images[i, r : r + 8, c : c + 8] = 255
    return images, labels


def build_patch_model():
    """student_cnn built by hand to answer "patch" only for a bright square in the top-right quadrant.

    Conv 1, channel 0: the 3x3x3 mean of the normalised image, less 1.5 (white is ~2.4, a mean of
    27 noise pixels ~0.25 ± 0.25): ReLU keeps bright squares only. Conv 2, channel 0: that channel
    again (the explained layer). Hidden unit 0: the sum of it over the top-right quadrant of the
    pooled map (in torch's flatten order, C, H, W); logits: noise 1, patch = hidden unit 0. Every
    other weight is 0. (A student_cnn *trained* for this gives all-zero maps: see docs/explain.md.)
    """
    model = jaxvgg.create_model("student_cnn", 2, image_size=SIZE)
    v = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variable_shapes(model, SIZE))
    p = v["params"]
    p["features_0"]["kernel"][..., 0] = 1 / 27
    p["features_0"]["bias"][0] = -1.5
    p["features_3"]["kernel"][1, 1, 0, 0] = 1.0
    side = SIZE // 4  # the pooled map the head flattens
    rows, cols = np.mgrid[: side // 2, side // 2 : side]
    p["classifier_0"]["kernel"][(rows * side + cols).ravel(), 0] = 1.0  # channel 0 comes first
    p["classifier_2"]["kernel"][0, 1] = 1.0
    p["classifier_2"]["bias"][0] = 1.0
    return model, v


@pytest.fixture(scope="module")
def patch_model():
    return build_patch_model()


def quadrant_share(maps, quadrant=(0, 1)):
    """Each map's share of its total heat that lies in ``quadrant`` (a uniform map: 0.25)."""
    half = SIZE // 2
    r, c = np.multiply(quadrant, half)
    return maps[:, r : r + half, c : c + half].sum(axis=(1, 2)) / maps.sum(axis=(1, 2))


def test_the_map_of_a_model_that_answers_from_one_quadrant_lies_in_that_quadrant(patch_model):
    model, variables = patch_model
    predict = jax.jit(lambda x: model.apply(variables, normalize(x)).argmax(1))
    images, labels = patch_images(np.random.default_rng(1), 64)
    assert np.mean(np.asarray(predict(images)) == labels) >= 0.95
    elsewhere, placed = patch_images(np.random.default_rng(1), 64, quadrant=(1, 0))  # bottom left
    assert not np.asarray(predict(elsewhere[placed == 1])).any()  # the same squares elsewhere: "noise"
    patched = images[labels == 1]
    targets = np.ones(len(patched), int)
    jax_share = quadrant_share(jax_explain(model, variables, "student_cnn")(patched, targets))
    # Measured: mean share 0.994, lowest 0.937 over 34 images (a uniform map would give 0.25).
    assert jax_share.mean() >= 0.95 and jax_share.min() >= 0.9, jax_share
    torch = pytest.importorskip("torch")
    from torchref.explain import torch_explain

    twin = torch_twin("student_cnn", variables, SIZE, 2)
    torch_share = quadrant_share(torch_explain(twin, "student_cnn", torch.device("cpu"))(patched, targets))
    np.testing.assert_allclose(torch_share, jax_share, atol=1e-4)


def write_run(tmp_path, framework, variables):
    """A run folder of the patch model (config.json and a best checkpoint), as training writes one."""
    out = tmp_path / f"run-{framework}"
    out.mkdir()
    cfg = TrainConfig(model="student_cnn", image_size=SIZE, resize="squash", out_dir=str(out))
    (out / "config.json").write_text(json.dumps({**cfg.to_json(), "framework": framework, "classes": CLASSES}))
    meta = {"framework": framework, "model": "student_cnn", "num_classes": 2, "classes": CLASSES}
    meta |= {"image_size": SIZE, "epoch": 1}
    if framework == "jax":
        checkpoint.save(out / "best.msgpack", variables, meta)
    else:
        from torchref.checkpoint import save_best

        save_best(out / "best.pth", torch_twin("student_cnn", variables, SIZE, 2), meta)
    return out


@pytest.mark.slow
def test_predict_explain_writes_the_picture_and_refuses_an_unknown_class(patch_model, tmp_path):
    pytest.importorskip("torch")
    _, variables = patch_model
    folder = tmp_path / "images"
    folder.mkdir()
    images, labels = patch_images(np.random.default_rng(2), 6)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(image).save(folder / f"{i}-{CLASSES[label]}.png")
    for framework, extra in (("jax", ()), ("torch", ("--class", "patch", "--device", "cpu"))):
        run = write_run(tmp_path, framework, variables)
        picture = tmp_path / f"{framework}.png"
        printed = run_command("predict.py", str(folder), "--run", str(run), "--explain", str(picture), *extra).stdout
        assert f"wrote {picture}" in printed and len(printed.splitlines()) == 2 + 6 + 1
        with Image.open(picture) as drawn:  # six images: four columns, two image-and-bars rows
            assert drawn.format == "PNG" and drawn.size[0] > 1000 and drawn.size[1] > 700
    flags = ("--run", str(run), "--explain", str(picture), "--class", "blight")
    bad = run_command("predict.py", str(folder), *flags, check=False)
    assert "--class 'blight': not a class of" in one_line_error(bad) and "its classes: noise, patch" in bad.stderr
    assert not bad.stdout  # stopped before the table
    alone = run_command("predict.py", str(folder), "--run", str(run), "--class", "patch", check=False)
    assert "give --explain FILE.png too" in one_line_error(alone)
