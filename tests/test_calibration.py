"""Temperature scaling and the "unsure" flag (jaxvgg/core/calibration.py): the numbers on made-up
logits, then real tiny runs of the built-in (drawn-leaf) dataset in both frameworks."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_command
from PIL import Image

from jaxvgg.core import calibration as cal
from jaxvgg.core.config import TrainConfig
from jaxvgg.core.errors import UserError
from jaxvgg.core.images import format_predictions, load_batch, prediction_rows, predictions_csv
from jaxvgg.core.split import load_split
from jaxvgg.core.synthetic import make_dataset

SIZE = 32
CLASSES = ["Early_blight", "Late_blight", "healthy"]


def draw_labels(rng, probs):
    """One label drawn from each row of ``probs``."""
    return np.minimum((rng.random(len(probs))[:, None] > probs.cumsum(1)).sum(1), probs.shape[1] - 1)


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    for true_t in (0.5, 2.5):
        logits = rng.normal(0, 3, (20_000, 3))
        labels = draw_labels(rng, cal.softmax(logits, true_t))  # labels as a model at temperature T would see them
        assert cal.fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)
        fitted = cal.fit_temperature(logits, labels)
        assert cal.nll(logits, labels, fitted) <= min(cal.nll(logits, labels, fitted * f) for f in (0.9, 1.1))


def test_expected_calibration_error_on_a_hand_made_case():
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # bin (13/15, 14/15]: right
            [0.90, 0.10, 0.00],  # same bin: wrong -> the bin is 50% right at 90% confidence
            [0.60, 0.40, 0.00],  # bin (8/15, 9/15]: right at 60%
            [0.35, 0.33, 0.32],  # bin (5/15, 6/15]: wrong at 35%
        ]
    )
    labels = np.array([0, 1, 0, 2])
    # (2 * |0.5 - 0.9| + |1 - 0.6| + |0 - 0.35|) / 4
    assert cal.expected_calibration_error(probs, labels) == pytest.approx(0.3875)
    assert cal.expected_calibration_error(np.eye(3), np.arange(3)) == 0.0  # sure and right
    assert cal.ECE_BINS == 15


def test_threshold_flags_the_stated_share_and_scores_are_the_formulas():
    scores = np.arange(100.0)
    threshold = cal.threshold_at(scores, 0.05)
    assert (scores < threshold).sum() == 5
    logits = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    np.testing.assert_allclose(cal.familiarity(logits, 1.0, "energy"), [np.log(3), np.log(np.exp(4) + 2)])
    np.testing.assert_allclose(cal.familiarity(logits, 2.0, "energy"), 2 * np.log(np.exp(logits / 2).sum(1)))
    np.testing.assert_allclose(cal.familiarity(logits, 1.0, "msp"), [1 / 3, np.exp(4) / (np.exp(4) + 2)])


def test_logit_distance_is_the_mahalanobis_distance_to_the_nearest_class():
    rng = np.random.default_rng(2)
    centres = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])
    labels = np.repeat(np.arange(3), 400)
    logits = centres[labels] + rng.normal(0, 1, (1200, 3)) * [0.5, 1.0, 0.25]  # one shared covariance, skewed
    g = cal.LogitGaussians.fit(logits, labels)
    np.testing.assert_allclose(g.means, centres, atol=0.1)
    # One unit of each axis's spread away from a centre is distance 1, whichever axis.
    probe = centres[[0, 0, 2]] + [[0.5, 0, 0], [0, 1.0, 0], [0, 0, 0.25]]
    np.testing.assert_allclose(g.distance(probe), [1.0, 1.0, 1.0], rtol=0.1)
    assert g.distance(np.array([[40.0, 40.0, 40.0], [0.0, 0.0, 0.0]])).min() > 3  # sure of all, of none


def test_the_report_says_when_the_test_split_fitted_it():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, (200, 3))
    labels = draw_labels(rng, cal.softmax(logits, 3.0))
    record = cal.fit_calibration((logits, labels), (logits, labels), fitted_on="test")
    lines = cal.report_lines(record)
    assert "fitted on the test split (200 images; --val-fraction 0" in lines[0]
    assert lines[1].startswith("expected calibration error (15 bins): test ")
    assert record["val"]["ece_after"] < record["val"]["ece_before"] and record["ood"]["false_alarm"] == 0.05
    assert record["val"]["flagged"] <= 0.05


def test_old_runs_without_calibration_work_as_before(tmp_path):
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]], np.float32)
    predict = cal.CalibratedPredictor(lambda images: logits, cal.load_calibration(tmp_path))
    probs, unsure = predict.judge(np.zeros((2, SIZE, SIZE, 3), np.uint8))
    assert unsure is None
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rtol=1e-6)
    paths = ["a.jpg", "b.jpg"]
    rows = prediction_rows(paths, probs, CLASSES, unsure)
    assert "unsure" not in rows[0] and predictions_csv(rows, CLASSES).startswith("image,prediction,Early_blight,")
    assert "unsure" not in format_predictions(paths, probs, CLASSES, unsure)
    (tmp_path / cal.CALIBRATION_FILE).write_text('{"temperature": "warm"}')
    with pytest.raises(UserError, match=r"calibration\.json: not a calibration record"):
        cal.load_calibration(tmp_path)


def unlike_any_leaf(n: int = 24, seed: int = 0, size: int = 48) -> dict[str, np.ndarray]:
    """Images a grower might photograph by mistake, drawn here (uint8, ``size`` px, as the data
    set's files are): noise, flat colour, stripes, and a smooth sky-over-ground gradient "scene"."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / (size - 1)
    stripes = []
    for _ in range(n):
        period, a, b = rng.integers(2, 9), rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        along = [y, x, (x + y) / 2][rng.integers(3)] * (size - 1)
        stripes.append(np.where(((along // period) % 2)[..., None] > 0, a, b))
    scenes = []
    for _ in range(n):
        horizon = rng.uniform(0.35, 0.7)
        sky = np.array([70, 130, 220]) + (y[..., None] / horizon) * np.array([120, 90, 30])
        ground = np.array([150, 110, 60]) - ((y[..., None] - horizon) / (1 - horizon)) * np.array([90, 70, 40])
        scenes.append(np.where(y[..., None] < horizon, sky, ground) + rng.uniform(-20, 20, 3))
    made = {
        "noise": rng.integers(0, 256, (n, size, size, 3)),
        "flat colour": np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 3)), (n, size, size, 3)),
        "stripes": np.stack(stripes),
        "gradient scene": np.stack(scenes),
    }
    return {k: np.clip(v, 0, 255).astype(np.uint8) for k, v in made.items()}


# The flat colour the predict tests give: magenta, flagged by every tiny run measured (3 JAX seeds,
# 1 torch); not every flat colour is (a quarter of random ones, for the JAX run here).
FLAT = (255, 0, 255)


@pytest.fixture(scope="module")
def leaves(tmp_path_factory):
    """The built-in dataset, small: 60 drawn leaves per class at 48 px."""
    root = tmp_path_factory.mktemp("data") / "potato"
    return make_dataset(root, seed=5, counts=(60, 60, 60), size=48, progress=False)


def tiny_config(data, out, **kw):
    base = dict(
        model="student_cnn",
        data_dir=str(data),
        image_size=SIZE,
        batch_size=16,
        epochs=15,  # about 12 s: test accuracy 78% (seed 0), enough to know what a leaf gives
        lr=1e-3,
        val_fraction=0.3,  # 42 validation images (36 test): enough for a temperature and a 5% threshold
        out_dir=str(out),
        workers=2,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def jax_run(leaves, tmp_path_factory):
    from jaxvgg.train.loop import fit

    run = tmp_path_factory.mktemp("runs") / "jax"
    fit(tiny_config(leaves, run))
    return run


def held_out_images(run):
    """The run's own test images, as predict.py reads them, and their labels."""
    split = load_split(run / "split.json")
    paths = [split_root(run) / p for p in split.subsets["test"]]
    images, ok, bad = load_batch(paths, SIZE)
    assert not bad and len(ok) == len(paths)
    return images, np.array([label for _, label in split.samples("test")])


def split_root(run):
    return Path(json.loads((run / "split.json").read_text())["root"])


def test_calibration_lowers_the_error_on_held_out_images(jax_run):
    from jaxvgg.tools.predict import predictor

    record = json.loads((jax_run / cal.CALIBRATION_FILE).read_text())
    assert record["fitted_on"] == "val" and record["val"]["images"] == 42
    assert record["ood"]["score"] == cal.DEFAULT_SCORE
    test = record["test"]
    print("temperature", record["temperature"], "test", test)
    assert test["nll_after"] < test["nll_before"]
    assert test["ece_after"] < test["ece_before"]
    # The predictor gives the calibrated probabilities: their NLL on the test images is the record's.
    images, labels = held_out_images(jax_run)
    predict, classes = predictor(jax_run)
    probs, _ = predict.judge(images)
    assert classes == CLASSES
    nll = -np.log(probs[np.arange(len(labels)), labels]).mean()
    assert nll == pytest.approx(test["nll_after"], rel=1e-3)


def as_predict_reads(folder: Path, images: np.ndarray) -> np.ndarray:
    """``images`` saved as PNG files and read back as predict.py reads them (resized, cropped)."""
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    read, _, bad = load_batch(sorted(folder.iterdir()), SIZE)
    assert not bad
    return read


def flagged_rates(predict, run, folder: Path) -> dict[str, float]:
    made = {kind: as_predict_reads(folder / kind, images) for kind, images in unlike_any_leaf().items()}
    rates = {kind: float(predict.judge(images)[1].mean()) for kind, images in made.items()}
    rates["the run's test images"] = float(predict.judge(held_out_images(run)[0])[1].mean())
    return rates


def test_images_unlike_any_leaf_are_flagged_far_more_often_than_the_runs_own(jax_run, tmp_path):
    from jaxvgg.tools.predict import predictor

    predict, _ = predictor(jax_run)
    rates = flagged_rates(predict, jax_run, tmp_path)
    print(rates)
    # Measured (seed 0): noise 1.00, flat colour 0.25, stripes 0.71, gradient scene 0.92; test 0.11.
    own = rates.pop("the run's test images")
    assert own <= 0.15, rates
    assert np.mean(list(rates.values())) >= max(0.5, 3 * own), rates
    assert all(rate > own for rate in rates.values()), rates


def test_predict_says_unsure_for_a_flat_colour_image(jax_run, tmp_path):
    flat = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), FLAT).save(flat)
    csv_out, json_out, shown = tmp_path / "p.csv", tmp_path / "p.json", tmp_path / "shown.png"
    single = run_command("predict.py", str(flat), "--run", str(jax_run)).stdout
    assert single.splitlines()[0].startswith(f"{flat}: unsure (unlike the training images); the model's guess: ")
    args = ("--run", str(jax_run), "--csv", str(csv_out), "--json", str(json_out), "--show", str(shown))
    leaf = split_root(jax_run) / load_split(jax_run / "split.json").subsets["test"][0]
    table = run_command("predict.py", str(flat), str(leaf), *args).stdout
    assert table.splitlines()[2].startswith(str(flat)) and table.splitlines()[2].endswith("unsure"), table
    records = json.loads(json_out.read_text())
    assert records[0]["unsure"] is True and isinstance(records[1]["unsure"], bool)
    assert csv_out.read_text().splitlines()[0] == "image,prediction,Early_blight,Late_blight,healthy,unsure"
    assert csv_out.read_text().splitlines()[1].endswith(",True")
    assert shown.stat().st_size > 10_000


def test_torch_run_writes_calibration_and_flags_a_flat_colour_image(leaves, tmp_path, capsys):
    pytest.importorskip("torch")
    from jaxvgg.tools.predict import predictor
    from torchref.train import fit

    run = tmp_path / "torch"
    fit(tiny_config(leaves, run, workers=0), "cpu")
    out = capsys.readouterr().out
    assert "calibration: temperature" in out and "expected calibration error (15 bins): val " in out, out
    record = json.loads((run / cal.CALIBRATION_FILE).read_text())
    assert record["fitted_on"] == "val" and record["test"]["nll_after"] < record["test"]["nll_before"], record
    predict, _ = predictor(run, "cpu")
    _, unsure = predict.judge(np.full((1, SIZE, SIZE, 3), FLAT, np.uint8))
    assert unsure.tolist() == [True]
