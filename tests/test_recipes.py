"""Models learn from their own defaults, in both frameworks, on a data set the test draws (six
classes of coloured shapes, fixture ``shapes``, not the built-in leaves): a user who names only
--model and --data-dir gets a training loss that falls within a few dozen steps. Every model of
the zoo in JAX, and in PyTorch all but vgg16's other depths (OTHER_DEPTHS); a new model of the zoo
joins the test by itself."""

import json
from collections.abc import Callable

import numpy as np
import pytest

from jaxvgg.core.config import TrainConfig
from jaxvgg.core.run import prepare_run
from jaxvgg.core.specs import MODELS

torch = pytest.importorskip("torch")

# The batch each model is shown at: its default, 32, except where 8 is shown to do (a quarter of the
# step's cost). Not so for the BatchNorm VGGs with the 4096-wide head, the slim heads and the
# depthwise VGGs: BatchNorm statistics of 8 images and dropout on a batch of 8 made their losses
# jump, or they learned too slowly (docs/recipes.md, "Defaults for any model").
BATCH_8 = {"student_cnn", "vgg16_gap_bn", "vgg16", "vgg16_gap", "resnet50", "vgg16_manual", "vgg11", "vgg13", "vgg19"}

STEPS = 50  # a few dozen: the runs meet the bar in 10-41 steps, most by 25 (docs/recipes.md)
WINDOW = 5  # steps whose median is taken at each end: a batch-8 loss is noisy
FALL = 0.8  # the last window's median below this share of the first's
BELOW_CHANCE = 0.95  # ... and below this share of ln C


def shown_to_learn(losses: list[float], chance: float) -> bool:
    """The test's bar: the median loss of the last WINDOW steps below FALL times the first WINDOW's
    median and below BELOW_CHANCE ln C, the windows apart. Shedding the first steps' large logits
    alone falls to ln C (a model that has learned only the classes' shares sits there on this
    balanced set), so the margin below it is what shows the images were learned from; medians, so
    that one lucky step does not pass. A run stops as soon as the bar is met: most meet it within
    25 steps, and the suite's time then pays for every model."""
    if len(losses) < 2 * WINDOW:
        return False
    first, last = np.median(losses[:WINDOW]), np.median(losses[-WINDOW:])
    return bool(last < FALL * first and last < BELOW_CHANCE * chance)


def test_the_bar_needs_two_windows_a_clear_fall_and_a_loss_below_chance():
    chance = np.log(6)
    falling = list(np.linspace(2.4, 1.0, 12))
    assert not shown_to_learn(falling[:9], chance), "the two windows must not overlap"
    assert shown_to_learn(falling[:10], chance)
    assert not shown_to_learn([2.0] * 5 + [1.65] * 7, chance), "below 0.95 ln 6, but 0.825x"
    assert not shown_to_learn([4.0] * 5 + [1.75] * 7, chance), "0.44x, below ln 6, but not 0.95 ln 6"
    assert not shown_to_learn([2.4] * 5 + [1.8] * 4 + [0.2], chance), "one lucky step"
    assert shown_to_learn([2.4] * 5 + [1.8] * 2 + [1.6] * 3, chance)


def test_a_model_that_does_not_learn_fails_the_bar(shapes, tmp_path):
    """At a rate of 1e-7 nothing is learned in 50 steps: the bar is never met and the run goes the
    whole way (PyTorch, `student_cnn`: a few seconds)."""
    run = str(tmp_path / "run")
    cfg = TrainConfig(model="student_cnn", data_dir=str(shapes), image_size=32, batch_size=8, lr=1e-7, out_dir=run)
    chance = np.log(len(list(shapes.iterdir())))
    losses = first_losses("torch", cfg, STEPS, lambda losses: shown_to_learn(losses, chance))
    assert len(losses) == STEPS and not shown_to_learn(losses, chance)


def test_every_model_has_its_batch():
    assert set(MODELS) >= BATCH_8


def test_every_model_has_a_default_rate_that_the_config_records():
    for name, spec in MODELS.items():
        assert TrainConfig(model=name).lr == spec.default_lr
    assert TrainConfig(model="vgg16").lr == 1e-4 and TrainConfig(model="vgg16_gap_bn").lr == 5e-4
    assert TrainConfig(model="vgg16", lr=3e-4).lr == 3e-4, "an explicit --lr wins"


def test_depthwise_filters_start_at_unit_gain_in_both_frameworks():
    """Kaiming fan-out counted a depthwise 3x3's fan-out as 9 x channels, so its taps started
    sqrt(channels) times too small and vgg16_dsconv passed no signal on (its loss sat at ln C)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxvgg.models.layers import Conv2d
    from torchref.models.vgg import DSConv, init_torchvision

    c = 256
    conv = Conv2d(c, 3, padding=1, groups=c, init="torchvision")
    # Module.init by name: the layer's own `init` field ("torchvision") hides the method
    flax_kernel = nn.Module.init(conv, jax.random.key(0), jnp.zeros((1, 4, 4, c)))["params"]["kernel"]
    torch_conv = DSConv(c, c)
    init_torchvision(torch_conv)
    for kernel in (np.asarray(flax_kernel), torch_conv.depthwise.weight.detach().numpy()):
        assert abs(kernel.std() - 1 / 3) < 0.02, kernel.std()
    assert abs(torch_conv.pointwise.weight.std().item() - np.sqrt(2 / c)) < 0.01, "pointwise: Kaiming fan-out"


def test_vggs_without_batchnorm_start_their_convolutions_at_kaiming_fan_in_in_both_frameworks():
    """At torchvision's fan-out the 3 -> 64 stem passes on 27 * 2 / 576 of the signal's variance and
    each width doubling half of it, so the plain VGGs' first steps sit at ln C; BatchNorm VGGs keep
    torchvision's initialisation."""
    import jaxvgg
    import torchref

    stem = {"fan_in": np.sqrt(2 / 27), "fan_out": np.sqrt(2 / 576)}
    kernel = jaxvgg.init_variables(jaxvgg.create_model("vgg16_gap", 6), 32)["params"]["features_0"]["kernel"]
    assert abs(np.asarray(kernel).std() / stem["fan_in"] - 1) < 0.1
    for name, mode in (("vgg16_gap", "fan_in"), ("vgg16_gap_bn", "fan_out")):
        model = torchref.create_model(name, 6)
        first, second = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)][:2]
        assert abs(first.std().item() / stem[mode] - 1) < 0.1, name
        assert abs(second.std().item() / np.sqrt(2 / 576) - 1) < 0.05, "64 -> 64: fan-in and fan-out are one"
    plain = ("vgg11", "vgg13", "vgg16", "vgg19", "vgg16_slim", "vgg16_gap", "vgg16_manual", "vgg16_dsconv")
    assert {MODELS[m].init for m in plain} == {"fan_in"}


def test_resnet50_blocks_start_as_the_identity_in_both_frameworks():
    """torchvision's zero_init_residual: each bottleneck's last BatchNorm starts at scale 0, so its
    output is the shortcut's alone; from torchvision's ones, 16 blocks of batch-8 statistics made
    resnet50's first steps jump between losses 0.5 and 5.7."""
    import jax
    import jax.numpy as jnp

    import jaxvgg
    import torchref

    # One block (layer1's second) of the model create_model builds, initialised alone: the whole
    # model's jitted init costs ~10 s of compilation
    model = jaxvgg.create_model("resnet50", 6)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 256)), method=lambda m, x: m.layer1[1](x))
    block = params["params"]["layer1_1"]
    flax_scales = {name: np.asarray(bn["scale"]) for name, bn in block.items() if name.startswith("bn")}
    assert sorted(flax_scales) == ["bn1", "bn2", "bn3"]
    torch_scales = {
        name: m.weight.detach().numpy()
        for name, m in torchref.create_model("resnet50", 6).named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    }
    for scales, blocks in ((flax_scales, 1), (torch_scales, 16)):
        last = {k: v for k, v in scales.items() if "bn3" in k}
        assert len(last) == blocks and all((v == 0).all() for v in last.values())
        assert all((v == 1).all() for k, v in scales.items() if k not in last)


def first_losses(
    framework: str, cfg: TrainConfig, steps: int, enough: Callable[[list[float]], bool] = lambda _: False
) -> list[float]:
    """The training loss of each of the first ``steps`` steps of the run ``fit`` would make of
    ``cfg``: its run folder, trainer, loader and optimizer, without the evaluation and checkpoints.
    Stops sooner once ``enough(losses)``."""
    if framework == "jax":
        from jaxvgg.parallel import DataParallel
        from jaxvgg.train.checkpoint import read_jax_weights
        from jaxvgg.train.loop import JaxTrainer

        par = DataParallel.create(cfg.devices)
        trainer = JaxTrainer(prepare_run(cfg, "jax"), par, read_jax_weights)
    else:
        from torchref.checkpoint import read_torch_weights
        from torchref.distributed import init_distributed
        from torchref.train import TorchTrainer

        ddp = init_distributed(cfg.coordinator, cfg.num_processes, cfg.process_id)
        trainer = TorchTrainer(prepare_run(cfg, "torch"), ddp, "cpu", read_torch_weights)
    losses: list[float] = []
    epoch = 0
    while len(losses) < steps and not enough(losses):
        trainer.start_epoch(epoch)
        for batch in trainer.batches(epoch, 0):
            ((loss_sum, _, count),) = trainer.fetch([trainer.train_step(batch)])
            losses.append(loss_sum / count)
            if len(losses) == steps or enough(losses):
                break
        trainer.end_epoch()
        epoch += 1
    return losses


# vgg11, vgg13 and vgg19, with and without BatchNorm, are vgg16's table rows with other depths: the
# same layers, initialisation and head in both frameworks, parity-tested (test_parity_models.py). In
# PyTorch their runs would add ~2 min of the suite's worker time and show nothing that vgg16's and
# vgg16_bn's do not, so PyTorch trains the rest of the zoo and JAX all of it.
OTHER_DEPTHS = {"vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg19", "vgg19_bn"}
RUNS = [
    pytest.param(name, framework, id=f"{name}-{framework}")
    for name in sorted(MODELS)
    for framework in ("jax", "torch")
    if framework == "jax" or name not in OTHER_DEPTHS
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "framework"), RUNS)
def test_every_model_learns_from_its_defaults(shapes, tmp_path, name, framework):
    out = tmp_path / "run"
    batch = 8 if name in BATCH_8 else TrainConfig(model=name).batch_size
    cfg = TrainConfig(model=name, data_dir=str(shapes), image_size=32, batch_size=batch, out_dir=str(out))
    chance = np.log(len(list(shapes.iterdir())))
    losses = first_losses(framework, cfg, STEPS, lambda losses: shown_to_learn(losses, chance))
    assert json.loads((out / "config.json").read_text())["lr"] == MODELS[name].default_lr
    first, last = np.median(losses[:WINDOW]), np.median(losses[-WINDOW:])
    shown = f"{name} ({framework}, lr {cfg.lr:g}, batch {batch}): loss {first:.3f} -> {last:.3f} in {len(losses)} steps"
    print(shown)
    assert shown_to_learn(losses, chance), shown
