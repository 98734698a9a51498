"""Training-level parity, JAX vs PyTorch on CPU in fp32: gradients, schedules, optimizer steps,
ten training steps, preprocessing and train-mode BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

import jaxvgg  # noqa: E402
import torchref  # noqa: E402
from jaxvgg.convert import flax_to_torch, torch_to_flax  # noqa: E402
from jaxvgg.core.config import TrainConfig  # noqa: E402
from jaxvgg.core.metrics import balanced_class_weights  # noqa: E402
from jaxvgg.data import Pipeline, load_rgb, scan_image_folder  # noqa: E402
from jaxvgg.data.normalize import normalize  # noqa: E402
from jaxvgg.models.layers import BatchNorm2d  # noqa: E402
from jaxvgg.train.optim import apply_gradients, epoch_lr, make_optimizer, make_schedule  # noqa: E402
from jaxvgg.train.state import create_train_state  # noqa: E402
from jaxvgg.train.steps import compile_steps, cross_entropy  # noqa: E402
from torchref.data import eval_transform  # noqa: E402
from torchref.train import make_optimizer as torch_optimizer  # noqa: E402
from torchref.train import make_scheduler  # noqa: E402

pytestmark = pytest.mark.parity


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def torch_and_flax(name, size, seed=0):
    torch.manual_seed(seed)
    model = torchref.create_model(name, 3, image_size=size) if name == "student_cnn" else torchref.create_model(name)
    opts = {"image_size": size} if name == "student_cnn" else {}
    return model, jaxvgg.create_model(name, 3, **opts), torch_to_flax(name, model.state_dict(), **opts), opts


def test_class_weighted_loss_and_its_gradient_equal_torchs():
    """``--class-weights``: torch's CrossEntropyLoss(weight=w), padding rows left out, in float64."""
    rng = np.random.RandomState(1)
    logits = rng.randn(7, 3)
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    pad = np.array([1, 1, 1, 1, 1, 1, 0.0])  # the last row is padding
    w = np.array(balanced_class_weights(labels[:6].tolist(), 3))
    assert w == pytest.approx([6 / (3 * 4), 6 / (3 * 1), 6 / (3 * 1)])
    t_logits = torch.tensor(logits[:6], requires_grad=True)
    loss = torch.nn.CrossEntropyLoss(weight=torch.tensor(w))(t_logits, torch.tensor(labels[:6]))
    loss.backward()
    with jax.enable_x64(True):
        fn = lambda z: cross_entropy(z, jnp.asarray(labels), jnp.asarray(pad), jnp.asarray(w))
        mean, summed = fn(jnp.asarray(logits))
        grad = jax.grad(lambda z: fn(z)[0])(jnp.asarray(logits))
    assert float(mean) == pytest.approx(loss.item(), rel=1e-12)
    assert float(summed) == pytest.approx(loss.item() * 6, rel=1e-12)  # what the epoch sums add
    assert np.asarray(grad)[:6] == pytest.approx(t_logits.grad.numpy(), rel=1e-10, abs=1e-14)
    assert np.all(np.asarray(grad)[6] == 0)


def gradients_in_float64(name, size, x, y, torch_model, flax_model, variables, opts):
    """(torch's loss, its gradients by parameter name, JAX's loss, JAX's gradients in torch's names)
    of one train-mode cross-entropy step on ``x`` (NCHW), both frameworks in float64."""
    torch_model = torch_model.double().train()
    loss = torch.nn.functional.cross_entropy(torch_model(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    expected = {k: p.grad.numpy() for k, p in torch_model.named_parameters()}
    with jax.enable_x64(True):

        def loss_fn(params):
            logits = flax_model.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)), train=True)
            return cross_entropy(logits, jnp.asarray(y), jnp.ones(len(y), jnp.float64))[0]

        params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), variables["params"])
        # jitted: op by op, vgg16_gap's float64 gradient took ~30 s of dispatch
        jax_loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params64)
        got = flax_to_torch(name, {"params": jax.tree.map(np.asarray, grads)}, **opts)
    return loss.item(), expected, float(jax_loss), got


@pytest.mark.parametrize("name", ["student_cnn", "vgg16_gap"])
def test_gradients_agree(name):
    """In float64 on both sides, so the test sees the maths and not a float32 near-tie: rounding in
    float32 can flip a max-pool decision between two equal-looking values (measured: with
    conv_route xla vs im2col, 1 of the 8,192 windows of vgg16_gap's 4th pool flips at 32 px,
    which moves the first layer's float32 gradient by 1%), whichever framework computes it."""
    size = 32
    x = np.random.RandomState(0).randn(4, 3, size, size)
    y = np.array([0, 1, 2, 1])
    torch_loss, expected, jax_loss, got = gradients_in_float64(name, size, x, y, *torch_and_flax(name, size))
    assert jax_loss == pytest.approx(torch_loss, rel=1e-12)
    assert set(got) == set(expected)
    for key in expected:
        assert rel_err(got[key], expected[key]) <= 1e-9, key


@pytest.mark.parametrize(("schedule", "kw"), [("cosine", {}), ("step", {"step_size": 3, "gamma": 0.5})])
def test_learning_rate_of_every_step_matches_torch_schedulers(schedule, kw):
    epochs, spe, base = 12, 4, 0.01
    cfg = TrainConfig(schedule=schedule, epochs=epochs, lr=base, **kw)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = make_scheduler(cfg, opt)
    ours = make_schedule(schedule, base, epochs, spe, **kw)
    for epoch in range(epochs):
        torch_lr = opt.param_groups[0]["lr"]
        assert epoch_lr(schedule, base, epoch, epochs, **kw) == pytest.approx(torch_lr, rel=1e-6, abs=1e-12)
        for step in range(epoch * spe, (epoch + 1) * spe):
            assert float(ours(step)) == pytest.approx(torch_lr, rel=1e-5, abs=1e-9)
        opt.step()
        sched.step()


def test_cosine_rebuilt_is_the_tutorials_new_scheduler_every_epoch():
    """The tutorial's optimized loop, as it is written: a new CosineAnnealingLR at the top of every
    epoch, stepped once at its end. Ours (both frameworks) gives the same rate every epoch."""
    from torchref.train import TorchTrainer

    epochs, spe, base = 100, 3, 3e-4
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base)
    cfg = TrainConfig(schedule="cosine_rebuilt", epochs=epochs, lr=base)
    trainer = TorchTrainer.__new__(TorchTrainer)  # only its scheduler handling, without a run
    trainer.cfg, trainer.optimizer, trainer.net, trainer.frozen_bn = cfg, opt, torch.nn.Identity(), []
    ours = make_schedule("cosine_rebuilt", base, epochs, spe)
    for epoch in range(epochs):
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)  # the tutorial's line
        tutorial_lr = opt.param_groups[0]["lr"]
        assert epoch_lr("cosine_rebuilt", base, epoch, epochs) == pytest.approx(tutorial_lr, rel=1e-9)
        assert float(ours(epoch * spe + 1)) == pytest.approx(tutorial_lr, rel=1e-5)
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.927e-4, rel=1e-3), "almost flat: the tutorial's bug"
    # torchref's trainer does what the tutorial does.
    opt.param_groups[0]["lr"] = base
    for epoch in range(epochs):
        assert trainer.start_epoch(epoch) == pytest.approx(epoch_lr("cosine_rebuilt", base, epoch, epochs), rel=1e-9)
        opt.step()
        trainer.end_epoch()


@pytest.mark.parametrize("one_pass", [False, True], ids=["optax update and apply", "one-pass step"])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizer_steps_agree(name, one_pass):
    rng = np.random.RandomState(1)
    params = {"w": rng.randn(6, 5).astype(np.float32), "b": rng.randn(5).astype(np.float32)}
    grads = [{k: rng.randn(*v.shape).astype(np.float32) for k, v in params.items()} for _ in range(3)]
    cfg = TrainConfig(optimizer=name, lr=0.05, weight_decay=0.1, momentum=0.9)
    torch_params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = torch_optimizer(cfg, list(torch_params.values()))
    assert all(g["fused"] for g in opt.param_groups), "on a CPU the reference takes torch's fused kernels"
    tx = make_optimizer(name, cfg.lr, cfg.weight_decay, cfg.momentum)
    jp = jax.tree.map(jnp.asarray, params)
    state = tx.init(jp)
    for g in grads:
        for k, p in torch_params.items():
            p.grad = torch.from_numpy(g[k])
        opt.step()
        if one_pass:  # what train_step runs: Adam's kernel where built (SGD has no other way)
            jp, state = apply_gradients(tx, jax.tree.map(jnp.asarray, g), state, jp)
        else:
            updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, jp)
            jp = optax.apply_updates(jp, updates)
    for k, p in torch_params.items():
        np.testing.assert_allclose(np.asarray(jp[k]), p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a_resumed_optimizer_keeps_the_fused_kernels_it_was_built_with():
    """A checkpoint of a run on torch's default kernels carries ``fused=None`` in its param groups,
    which ``load_state_dict`` would pour over the fused optimizer a resumed run builds."""
    import copy

    from torchref.checkpoint import load_optimizer_state

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 4))

    def step(opt):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()

    old = torch.optim.Adam([w], lr=0.1, weight_decay=0.1)  # the default kernels, as runs had before
    step(old)
    saved, start = copy.deepcopy(old.state_dict()), w.detach().clone()
    step(old)
    expected = w.detach().clone()
    with torch.no_grad():
        w.copy_(start)
    resumed = torch_optimizer(TrainConfig(optimizer="adam", lr=0.1, weight_decay=0.1), [w])
    load_optimizer_state(resumed, saved)
    assert all(g["fused"] for g in resumed.param_groups)
    step(resumed)
    np.testing.assert_allclose(w.detach().numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


def test_ten_training_steps_end_with_the_same_parameters():
    size, bs, spe, epochs = 32, 8, 5, 2
    model, flax_model, variables, opts = torch_and_flax("student_cnn", size, seed=3)
    cfg = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=1e-5, epochs=epochs, schedule="cosine")
    opt = torch_optimizer(cfg, model.parameters())
    sched = make_scheduler(cfg, opt)
    tx = make_optimizer("adam", make_schedule("cosine", cfg.lr, epochs, spe), cfg.weight_decay)
    state = create_train_state(flax_model, variables, tx)
    train_step, _ = compile_steps()
    rng = np.random.RandomState(4)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    model.train()
    for step in range(spe * epochs):
        images = rng.randint(0, 256, (bs, size, size, 3)).astype(np.uint8)
        labels = rng.randint(0, 3, bs).astype(np.int32)
        state, _ = train_step(state, {"image": images, "label": labels, "weight": np.ones(bs, np.float32)})
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels).long()).backward()
        opt.step()
        if (step + 1) % spe == 0:
            sched.step()
    got = flax_to_torch("student_cnn", {"params": state.params}, **opts)
    for key, value in model.state_dict().items():
        assert rel_err(got[key], value.numpy()) <= 1e-4, key


@pytest.mark.parametrize("resize", ["crop", "squash"])
def test_eval_preprocessing_matches_torchvision(tiny_data, tmp_path, resize):
    """crop: Resize + CenterCrop; squash: the tutorial's transforms.Resize([224, 224])."""
    from PIL import Image

    data = scan_image_folder(tiny_data)
    odd = tmp_path / "odd.jpg"
    Image.open(tiny_data / data.samples[0][0]).resize((300, 171)).save(odd, quality=90)
    for path in (tiny_data / data.samples[0][0], odd):
        img = load_rgb(path)
        for size in (224, 32):
            ours = Pipeline(size, resize=resize)(img)
            theirs = eval_transform(size, resize)(img)
            tensor = (
                (
                    theirs * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
                    + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
                )
                .permute(1, 2, 0)
                .numpy()
            )
            assert ours.shape == tensor.shape
            assert np.abs(ours / 255.0 - tensor).max() <= 1 / 255
            np.testing.assert_allclose(np.asarray(normalize(ours[None]))[0], theirs.permute(1, 2, 0).numpy(), atol=1e-5)


def test_the_tutorial_preset_squashes_splits_at_random_and_keeps_a_constant_rate():
    import argparse

    from jaxvgg.core.config import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--preset", "tutorial"]))
    assert (cfg.resize, cfg.split, cfg.schedule, cfg.val_fraction) == ("squash", "random", "constant", 0.0)
    cfg = config_from_args(parser.parse_args(["--preset", "optimized"]))
    assert (cfg.resize, cfg.split, cfg.schedule) == ("crop", "stratified", "cosine"), "the corrected version"
    odd = Image.new("RGB", (300, 171), (10, 200, 30))
    assert Pipeline(224, resize="squash")(odd).shape == (224, 224, 3)


def test_train_mode_batchnorm_matches_torch_including_unbiased_running_var():
    rng = np.random.RandomState(5)
    x = (rng.randn(4, 6, 5, 3) * 2 + 1).astype(np.float32)  # NHWC, 3 channels
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    bn.train()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_()
    yt = bn(xt)
    (yt**2).sum().backward()
    variables = {
        "params": {"scale": jnp.array([0.5, 1.5, 2.0]), "bias": jnp.array([0.1, -0.2, 0.3])},
        "batch_stats": {"mean": jnp.zeros(3), "var": jnp.ones(3)},
    }

    def f(xj):
        y, upd = BatchNorm2d().apply(variables, xj, train=True, mutable=["batch_stats"])
        return (y**2).sum(), (y, upd)

    (_, (y, upd)), gx = jax.value_and_grad(f, has_aux=True)(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gx), xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["mean"]), bn.running_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["var"]), bn.running_var.numpy(), rtol=1e-6)


def test_resnet50_train_mode_batchnorm_statistics_match_torch():
    """One train-mode forward: every BatchNorm's running mean and (unbiased) running var as torch's."""
    torch.manual_seed(6)
    model = torchref.create_model("resnet50", 3).train()
    with torch.no_grad():  # every block's last scale starts at 0 (zero_init_residual): make both paths count
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    variables = torch_to_flax("resnet50", model.state_dict())
    x = np.random.RandomState(6).randn(4, 3, 64, 64).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    flax_model = jaxvgg.create_model("resnet50", 3)
    logits, updates = jax.jit(lambda v, x: flax_model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x.transpose(0, 2, 3, 1)
    )
    assert np.abs(np.asarray(logits) - expected).max() <= 1e-4 * np.abs(expected).max()
    got = flax_to_torch("resnet50", {"params": variables["params"], **updates})
    stats = [k for k in model.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * 53
    for key in stats:
        assert rel_err(got[key], model.state_dict()[key].numpy()) <= 1e-4, key


def test_training_through_the_pool_folded_into_the_first_fc_layer_gives_torchs_gradients(monkeypatch):
    """Below 64 px, training folds VGG's adaptive pool (a 1x1 map copied to 7x7) into the first FC
    layer's kernel; the gradients are torch's unfolded ones, in float64. Dropout is off on both
    sides so that the two compute one function."""
    import flax.linen as nn

    import jaxvgg.models.vgg

    monkeypatch.setattr(jaxvgg.models.vgg, "DROPOUT_RATE", 0.0)
    name, size = "vgg16_slim", 32
    x = np.random.RandomState(0).randn(2, 3, size, size)
    y = np.array([0, 2])
    model, flax_model, variables, opts = torch_and_flax(name, size)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    folded_calls = []

    def record(next_fun, args, kwargs, context):
        if kwargs.get("pool"):
            folded_calls.append(context.module.name)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        torch_loss, expected, jax_loss, got = gradients_in_float64(name, size, x, y, model, flax_model, variables, opts)
    assert jax_loss == pytest.approx(torch_loss, rel=1e-12)
    assert folded_calls == ["classifier_0"], "the folded route was not taken"
    for key in expected:
        assert rel_err(got[key], expected[key]) <= 1e-9, key
