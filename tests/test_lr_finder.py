"""The learning-rate range test (--find-lr): the sweep, the suggestion, and a real sweep in both
frameworks whose loss falls and then blows up as the rate rises."""

import json
import math

import numpy as np
import pytest

from jaxvgg.core.config import TrainConfig
from jaxvgg.core.errors import UserError
from jaxvgg.core.lr_finder import LrSweep, smooth, suggest
from jaxvgg.train import loop as jax_loop

torch = pytest.importorskip("torch")

from torchref import train as torch_loop  # noqa: E402


def test_the_sweep_is_log_spaced_from_start_to_end():
    sweep = LrSweep(1e-6, 1e-1, 11)
    lrs = [sweep.lr(i) for i in range(11)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1e-1)
    assert np.allclose(np.diff(np.log10(lrs)), 0.5)


def test_the_suggestion_is_where_the_loss_falls_fastest_before_its_minimum():
    lrs = np.logspace(-7, 0, 100)
    x = np.log10(lrs)
    # Flat, then a fall centred on 1e-3, then a blow-up past 1e-1 that is steeper than the fall.
    loss = 2.0 - 1.5 / (1 + np.exp(-(x + 3) * 4)) + np.where(x > -1, (x + 1) * 40, 0)
    lr = suggest(list(lrs), list(loss))
    assert 10**-3.3 < lr < 10**-2.7, lr
    assert suggest(list(lrs[:12]), list(loss[:12])) is None, "too short a curve says nothing"


def test_smoothing_is_debiased():
    assert smooth([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])


def test_it_does_not_take_resume(tmp_path):
    from jaxvgg.core.config import validate_values

    with pytest.raises(UserError, match="--find-lr"):
        validate_values(TrainConfig(find_lr=True, resume=str(tmp_path)))


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_a_real_sweep_falls_then_blows_up_and_suggests_a_rate(textures, tmp_path, framework):
    out = tmp_path / "run"
    cfg = TrainConfig(
        model="student_cnn", data_dir=str(textures), image_size=32, batch_size=8, out_dir=str(out), find_lr=True
    )
    result = jax_loop.fit(cfg) if framework == "jax" else torch_loop.fit(cfg, "cpu")
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["lrs"] == pytest.approx(result["lrs"]) and (out / "lr_find.png").stat().st_size > 10_000
    assert not (out / "best.msgpack").exists() and not (out / "best.pth").exists(), "nothing is trained for real"
    losses = result["losses"]
    # The rate really rose: tiny rates leave the loss at chance, the largest ones wreck it.
    assert abs(np.mean(losses[:5]) - math.log(4)) < 0.3
    smoothed = result["smoothed"]
    low = int(np.argmin(smoothed))
    assert smoothed[low] < 0.95 * smoothed[0] and 1e-4 < result["lrs"][low] < 1e-1, "it falls at moderate rates"
    assert max(losses[low:]) > 3 * min(losses), "and is wrecked at the largest"
    assert 1e-5 < result["suggested_lr"] < 1e-1
