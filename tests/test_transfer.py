"""Transfer learning in both frameworks: torchvision weights from a .pth file, a new head, a frozen
backbone that stays bit-identical, and short transfer runs from the command line."""

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from helpers import one_line_error, randomize_batchnorm, run_command, run_script  # noqa: E402

import jaxvgg  # noqa: E402
import torchref  # noqa: E402
from jaxvgg.convert import flax_to_torch, torch_to_flax  # noqa: E402
from jaxvgg.core.config import TrainConfig  # noqa: E402
from jaxvgg.core.errors import WeightMismatchError  # noqa: E402
from jaxvgg.core.freeze import freeze_rule, head_module  # noqa: E402
from jaxvgg.tools.weights import read_weights  # noqa: E402
from jaxvgg.train.freeze import freeze_optimizer, frozen_batchnorm_apply  # noqa: E402
from jaxvgg.train.optim import make_optimizer  # noqa: E402
from jaxvgg.train.state import create_train_state  # noqa: E402
from jaxvgg.train.steps import compile_steps  # noqa: E402
from jaxvgg.transfer import starting_variables  # noqa: E402
from torchref.train import make_optimizer as torch_optimizer  # noqa: E402
from torchref.transfer import freeze, load_starting_weights, train_mode  # noqa: E402


@pytest.fixture(scope="module")
def imagenet_resnet50(tmp_path_factory):
    """A 1000-class torchvision ResNet-50 state_dict with non-trivial BatchNorm statistics, saved the
    way the ImageNet download is (a plain state_dict), without downloading anything."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    randomize_batchnorm(model)
    path = tmp_path_factory.mktemp("weights") / "resnet50-imagenet.pth"
    torch.save(model.state_dict(), path)
    return path, {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_head_module_is_the_classification_layer():
    assert head_module("resnet50") == "fc"
    assert head_module("vgg16") == "classifier.6"
    assert head_module("vgg16_manual") == "classifier.4"
    assert head_module("vgg16_gap") == "classifier.0"
    for name in ("vgg16", "vgg16_slim", "student_cnn"):
        last = [k for k in torchref.create_model(name, 3, image_size=64).state_dict() if k.endswith("weight")][-1]
        assert last == head_module(name) + ".weight"


def test_pretrained_pth_loads_everything_but_a_new_head_in_both_frameworks(imagenet_resnet50):
    path, source = imagenet_resnet50
    fresh = jaxvgg.init_variables(jaxvgg.create_model("resnet50", 3), 32)
    variables, report = starting_variables("resnet50", fresh, path, replace_head=True, read_weights=read_weights)
    assert "classification layer fc replaced" in report and "(1000, 2048)" in report
    got, fresh_sd = flax_to_torch("resnet50", variables), flax_to_torch("resnet50", fresh)
    for key, value in source.items():
        if key.startswith("fc."):
            np.testing.assert_array_equal(got[key], fresh_sd[key])
            assert got[key].shape[0] == 3
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=key)

    model = torchref.create_model("resnet50", 3)
    fresh_fc = model.fc.weight.detach().clone()
    assert "fc replaced" in load_starting_weights(model, "resnet50", path, replace_head=True)
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            assert value.shape[0] == 3
        else:
            np.testing.assert_array_equal(value.numpy(), source[key], err_msg=key)
    assert torch.equal(model.fc.weight, fresh_fc)

    # --init-from is strict: a head that does not fit is an error naming it, on both sides.
    with pytest.raises(WeightMismatchError, match=r"mis-shaped \(2\): fc\.bias"):
        starting_variables("resnet50", fresh, path, replace_head=False, read_weights=read_weights)
    with pytest.raises(WeightMismatchError, match=r"fc\.weight"):
        load_starting_weights(torchref.create_model("resnet50", 3), "resnet50", path, replace_head=False)
    # Weights of another architecture are refused with the entries that do not fit.
    with pytest.raises(WeightMismatchError, match=r"unexpected \(\d+\): conv1\.weight"):
        load_starting_weights(torchref.create_model("student_cnn", 3, image_size=32), "student_cnn", path, True)


def test_frozen_backbone_trains_only_the_head_and_both_frameworks_agree(imagenet_resnet50):
    path, _ = imagenet_resnet50
    size, bs, steps = 32, 8, 3
    cfg = TrainConfig(model="resnet50", freeze="backbone", lr=1e-2, weight_decay=1e-5)
    rule = freeze_rule("resnet50", cfg.freeze)

    torch.manual_seed(1)
    model = torchref.create_model("resnet50", 3)
    load_starting_weights(model, "resnet50", path, replace_head=True)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    frozen_bn = freeze(model, rule)
    opt = torch_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])

    flax_model = jaxvgg.create_model("resnet50", 3)
    variables = torch_to_flax("resnet50", model.state_dict())
    tx = freeze_optimizer(make_optimizer("adam", cfg.lr, cfg.weight_decay), variables["params"], rule)
    state = create_train_state(flax_model, variables, tx, apply_fn=frozen_batchnorm_apply(flax_model.apply, rule))
    jax_start = jax.tree.map(np.array, (state.params, state.batch_stats))
    # The optimizer keeps moments for the head only (2 x 6,147 numbers, plus Adam's step counter).
    assert sum(np.size(x) for x in jax.tree.leaves(state.opt_state)) == 2 * 6147 + 1

    train_step, _ = compile_steps()
    rng = np.random.RandomState(2)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for _ in range(steps):
        images = rng.randint(0, 256, (bs, size, size, 3)).astype(np.uint8)
        labels = rng.randint(0, 3, bs).astype(np.int32)
        state, _ = train_step(state, {"image": images, "label": labels, "weight": np.ones(bs, np.float32)})
        train_mode(model, frozen_bn)
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels).long()).backward()
        opt.step()

    # Torch: everything but the head is bit-identical, running statistics and counters included.
    assert len(opt.state) == 2
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            assert not torch.equal(value, start[key]), key
        else:
            assert torch.equal(value, start[key]), key
    # JAX: the same, and the head agrees with torch's.
    after = jax.tree.map(np.asarray, (state.params, state.batch_stats))
    flat_before, flat_after = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (jax_start, after))
    moved = {
        jax.tree_util.keystr(p)
        for (p, a), (_, b) in zip(flat_before, flat_after, strict=True)
        if not np.array_equal(a, b)
    }
    assert moved == {"[0]['fc']['bias']", "[0]['fc']['kernel']"}
    got = flax_to_torch("resnet50", {"params": state.params})
    for key in ("fc.weight", "fc.bias"):
        want = model.state_dict()[key].numpy()
        assert np.linalg.norm(got[key] - want) <= 1e-4 * np.linalg.norm(want), key


@pytest.mark.slow
def test_transfer_runs_from_the_command_line(tiny_data, imagenet_resnet50, tmp_path):
    path, _ = imagenet_resnet50
    common = ["--data-dir", str(tiny_data), "--model", "resnet50", "--image-size", "32", "--batch-size", "16"]
    jax_run = tmp_path / "jax"
    proc = run_script(
        "train_jax.py",
        *common,
        *["--pretrained", str(path), "--freeze", "backbone", "--epochs", "2"],
        *["--schedule", "step", "--step-size", "1", "--gamma", "0.5", "--out-dir", str(jax_run)],
    )
    assert "classification layer fc replaced" in proc.stdout
    assert "6,147 trainable + 23,508,032 frozen parameters" in proc.stdout
    history = json.loads((jax_run / "history.json").read_text())
    assert [h["lr"] for h in history] == pytest.approx([1e-3, 5e-4])

    # The torch side continues from the JAX run's weights (converted), all of them, head included.
    torch_run = tmp_path / "torch"
    proc = run_script(
        "train_torch.py", *common, "--init-from", str(jax_run), "--epochs", "1", "--out-dir", str(torch_run)
    )
    assert f"initial weights: 320 tensors from {jax_run}" in proc.stdout
    assert json.loads((torch_run / "metrics.json").read_text())["framework"] == "torch"

    # A file that does not fit is one clear line naming what is wrong.
    bad = run_command(
        "train_jax.py",
        *common,
        "--model",
        "vgg11",
        "--init-from",
        str(path),
        "--out-dir",
        str(tmp_path / "x"),
        check=False,
    )
    assert "weights do not fit vgg11" in one_line_error(bad)


def test_a_light_head_on_trained_vgg16_features_takes_the_features_and_replaces_the_head():
    """What lighten.py does with vgg16_slim_bn / vgg16_gap_bn: vgg16_bn's conv features under a new
    head. Every feature tensor is taken; the whole head, not only its last layer, starts fresh."""
    from jaxvgg.core.weights import fit_weights

    def shapes(name):
        return {k: tuple(v.shape) for k, v in torchref.create_model(name, 3).state_dict().items()}

    base = {k: np.full(s, 0.5, np.float32) for k, s in shapes("vgg16_bn").items()}
    for light in ("vgg16_slim_bn", "vgg16_gap_bn"):
        target = shapes(light)
        loaded, notes = fit_weights(base, target, light, replace_head=True)
        features = [k for k in target if k.startswith("features.")]
        assert sorted(loaded) == sorted(features), light
        assert len(notes) == 1 and notes[0].startswith("head classifier replaced"), notes
    broken = {**base, "features.0.weight": np.zeros((64, 3, 5, 5), np.float32)}
    with pytest.raises(WeightMismatchError, match=r"features\.0\.weight"):
        fit_weights(broken, shapes("vgg16_slim_bn"), "vgg16_slim_bn", replace_head=True)
    with pytest.raises(WeightMismatchError, match="classifier"):
        fit_weights(base, shapes("vgg16_slim_bn"), "vgg16_slim_bn", replace_head=False)
