"""The loader's routes: the cached route (decode once, crop/resize/flip on the device) against the
PIL loader, prefetching to the device, the placement --data-cache auto picks, and training on it."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxvgg.core.config import TrainConfig, validate_values
from jaxvgg.core.errors import UserError
from jaxvgg.core.transforms import random_resized_crop_box
from jaxvgg.data import Loader, Pipeline, scan_image_folder
from jaxvgg.data.augment import crop_resize_flip, device_feed
from jaxvgg.data.cache import CachedLoader, ImageCache, placement
from jaxvgg.data.prefetch import prefetch
from jaxvgg.parallel import DataParallel
from jaxvgg.train import loop as loop_module
from jaxvgg.train.last_state import LastStates

GiB = 2**30
crop = jax.jit(crop_resize_flip, static_argnums=3)  # op by op it takes seconds to dispatch


def routes(data, pipeline, train, seed=4, batch_size=10):
    """The PIL loader's batches and the cached route's (cache on the device, then in host memory),
    the latter as the steps receive them."""
    pil = Loader(data.root, data.samples, pipeline, batch_size, train=train, seed=seed, workers=2)
    cache = ImageCache.build(data.root, data.samples, pipeline, workers=2)
    par = DataParallel.create(1)
    out = {"pil": [b.as_dict() for b in pil.epoch(1)]}
    for where in ("device", "host"):
        cached = CachedLoader(cache, pipeline, batch_size, train=train, seed=seed, on_device=where == "device")
        put = device_feed(par, pipeline, cache.images if where == "device" else None)
        batches = prefetch(cached.epoch(1), lambda b, put=put: put(b.as_dict()))
        out[where] = [jax.tree.map(np.asarray, b) for b in batches]
    return out


def test_cached_route_without_augmentation_is_the_pil_loader_bit_for_bit(tiny_data):
    data = scan_image_folder(tiny_data)
    for train in (True, False):  # shuffled and whole, padded eval batches
        got = routes(data, Pipeline(32), train)
        assert len(got["pil"]) == (7 if train else 8)
        for where in ("device", "host"):
            for ours, theirs in zip(got[where], got["pil"], strict=True):
                assert set(ours) == {"image", "label", "weight", "index"}
                for key in theirs:
                    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{where} {key}")


def test_cached_random_crops_are_the_pil_loaders_within_one_grey_level(tiny_data):
    """Same seed, same boxes and flips (drawn on the host from the PIL loader's generators); the
    device's resize differs from PIL's fixed-point arithmetic by at most 1/255 on rare pixels."""
    data = scan_image_folder(tiny_data)
    for size in (32, 96):  # downscaling and upscaling crops of the 64-px images
        got = routes(data, Pipeline(size, augment=True), train=True)
        theirs = np.concatenate([b["image"] for b in got["pil"]]).astype(int)
        for where in ("device", "host"):
            ours = np.concatenate([b["image"] for b in got[where]]).astype(int)
            assert ours.shape == theirs.shape == (70, size, size, 3)
            diff = np.abs(ours - theirs)
            assert diff.max() <= 1, (size, where)
            assert (diff > 0).mean() < 0.01, (size, where, (diff > 0).mean())
            labels = np.concatenate([b["label"] for b in got[where]])
            np.testing.assert_array_equal(labels, np.concatenate([b["label"] for b in got["pil"]]))


def test_device_resize_of_noise_matches_pil_on_any_box_and_shape():
    """Noise (the hardest case for rounding) in a non-square image, boxes of every kind."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    pil = Image.fromarray(image)
    boxes = [(0, 0, 50, 80), (10, 20, 24, 24), (3, 7, 40, 33), (49, 79, 1, 1)]
    boxes += [random_resized_crop_box(80, 50, rng) for _ in range(12)]
    for size in (24, 64):  # both down- and upscaling crops of the 50 x 80 image
        flips = np.arange(len(boxes)) % 2 == 1
        ours = np.asarray(crop(np.repeat(image[None], len(boxes), 0), np.array(boxes, np.int32), flips, size))
        ours = ours.astype(int)
        theirs = []
        for i, (top, left, h, w) in enumerate(boxes):
            resized = pil.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
            theirs.append(np.asarray(resized.transpose(Image.FLIP_LEFT_RIGHT) if flips[i] else resized))
        diff = np.abs(ours - np.array(theirs, int))
        off = (diff > 0).reshape(len(boxes), -1).mean(1)
        # At most one level; a few percent of a crop where PIL's fixed-point weights break exact
        # ties (upscaling by ratios such as 20 -> 24) the other way from float32's.
        assert diff.max() <= 1 and off.max() < 0.08 and off.mean() < 0.02, (size, off.round(4).tolist())
    # A crop the output's size is copied as it is, as PIL skips the resize.
    same = crop(image[None], np.array([[10, 20, 24, 24]], np.int32), np.array([False]), 24)
    np.testing.assert_array_equal(np.asarray(same)[0], image[10:34, 20:44])


def test_cached_random_crops_follow_random_resized_crop_and_flip_half(tiny_data):
    data = scan_image_folder(tiny_data)
    cache = ImageCache.build(data.root, data.samples, Pipeline(32, augment=True), workers=2)
    assert cache.layout.kind == "original" and cache.images.shape == (72, 64, 64, 3)
    loader = CachedLoader(cache, Pipeline(32, augment=True), 8, train=True, seed=0)
    boxes, flips = [], []
    for epoch in range(40):
        crops = loader.crops(epoch, np.arange(72))
        boxes.append(crops["box"])
        flips.append(crops["flip"])
    top, left, h, w = np.concatenate(boxes).T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
    area, aspect = h * w / 64**2, w / h
    # RandomResizedCrop's ranges, scale (0.08, 1) and ratio (3/4, 4/3), give or take the rounding of h and w.
    assert area.min() >= 0.06 and area.max() <= 1.0 and 0.4 < np.median(area) < 0.7
    assert aspect.min() >= 0.7 and aspect.max() <= 1.43 and 0.9 < np.median(aspect) < 1.1
    assert abs(np.concatenate(flips).mean() - 0.5) < 0.04  # 2,880 draws: 4.3 standard deviations
    # The flip is the unflipped crop mirrored, exactly.
    image, box = cache.images[:1], np.array([[5, 9, 40, 31]], np.int32)
    plain, mirrored = (np.asarray(crop(image, box, np.array([f]), 32)) for f in (False, True))
    np.testing.assert_array_equal(mirrored, plain[:, :, ::-1])


def test_mixed_sizes_are_stored_as_central_squares(tiny_data, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    source = Image.open(next((tiny_data / "healthy").iterdir()))
    source.resize((90, 60)).save(tmp_path / "a" / "wide.png")
    source.save(tmp_path / "b" / "square.png")
    data = scan_image_folder(tmp_path)
    cache = ImageCache.build(data.root, data.samples, Pipeline(32, augment=True), workers=1)
    assert cache.layout.kind == "square" and cache.images.shape == (2, 36, 36, 3)  # resize_size(32) == 36
    assert "central squares" in cache.describe()


def test_auto_placement_per_platform():
    assert placement("auto", 1 * GiB, "cpu", None, 64 * GiB) == "none"
    assert placement("auto", 1 * GiB, "gpu", 80 * GiB, 64 * GiB) == "device"
    assert placement("auto", 20 * GiB, "gpu", 80 * GiB, 128 * GiB) == "host"
    assert placement("auto", 40 * GiB, "tpu", 16 * GiB, 64 * GiB) == "none"
    assert placement("host", 1 * GiB, "cpu", None, None) == "host"
    with pytest.raises(UserError, match="--data-cache 'disk'"):
        validate_values(TrainConfig(data_cache="disk"))


def test_prefetch_puts_the_next_batches_ahead_in_order():
    put_log = []

    def put(x):
        put_log.append(x)
        return x * 10

    seen = []
    for y in prefetch(range(6), put, depth=2):
        seen.append(y)
        # batch k is handed out with k+1 already put; k+2 is put as the step on k runs (the next request)
        assert put_log == list(range(min(6, len(seen) + 1)))
    assert seen == [0, 10, 20, 30, 40, 50]


def test_loader_batches_do_not_depend_on_the_worker_count(tiny_data):
    data = scan_image_folder(tiny_data)
    one, two = (
        [b.image for b in Loader(data.root, data.samples, Pipeline(32, True), 10, True, seed=2, workers=w).epoch(0)]
        for w in (1, 2)
    )
    assert all(np.array_equal(a, b) for a, b in zip(one, two, strict=True))


def tiny_config(data, out, **kw):
    base = dict(model="student_cnn", data_dir=str(data), image_size=32, batch_size=8, lr=1e-3, out_dir=str(out))
    return TrainConfig(**{**base, "workers": 2, "val_fraction": 0.0, **kw})


def last_params(run):
    return jax.tree.leaves(LastStates(run / "last").read()[1])


def test_training_on_the_cached_route(tiny_data, tmp_path):
    """Without augmentation the cached route trains exactly as the PIL loader (training and
    evaluation batches alike); with it, the trainer runs the device crop (and stops and saves)."""
    for route in ("none", "device"):
        loop_module.fit(tiny_config(tiny_data, tmp_path / route, epochs=1, data_cache=route))
    for a, b in zip(last_params(tmp_path / "none"), last_params(tmp_path / "device"), strict=True):
        assert np.array_equal(a, b), "the cached route's batches are the PIL loader's"
    history = [json.loads((tmp_path / r / "history.json").read_text())[0] for r in ("none", "device")]
    assert history[0]["val_acc"] == history[1]["val_acc"] and history[0]["val_loss"] == history[1]["val_loss"]
    stopped = loop_module.fit(tiny_config(tiny_data, tmp_path / "aug", augment=True, data_cache="host", max_steps=2))
    assert stopped is None and LastStates(tmp_path / "aug" / "last").read_meta()["batch"] == 2


def test_cached_loader_resumes_mid_epoch_with_the_same_crops(tiny_data):
    data = scan_image_folder(tiny_data)
    pipeline = Pipeline(32, augment=True)
    cache = ImageCache.build(data.root, data.samples, pipeline, workers=2)
    loader = CachedLoader(cache, pipeline, 10, train=True, seed=4)
    whole, tail = list(loader.epoch(3)), list(loader.epoch(3, start_batch=4))
    for a, b in zip(whole[4:], tail, strict=True):
        for key in ("index", "box", "flip", "label", "weight"):
            np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
    assert not np.array_equal(whole[0].arrays["box"], next(iter(loader.epoch(4))).arrays["box"])


SHARDED = """
import sys
import numpy as np
from jaxvgg.data import Pipeline, scan_image_folder
from jaxvgg.data.augment import device_feed
from jaxvgg.data.cache import CachedLoader, ImageCache
from jaxvgg.parallel import DataParallel

data = scan_image_folder(sys.argv[1])
pipeline = Pipeline(32, augment=True)
cache = ImageCache.build(data.root, data.samples, pipeline, workers=2)
for on_device in (True, False):
    loader = CachedLoader(cache, pipeline, 8, train=True, seed=1, on_device=on_device)
    batch = next(iter(loader.epoch(0))).as_dict()
    stored = cache.images if on_device else None
    one, four = (device_feed(DataParallel.create(n), pipeline, stored)(batch) for n in (1, 4))
    assert len(four["image"].sharding.device_set) == 4 and four["image"].shape == (8, 32, 32, 3)
    for key in one:
        np.testing.assert_array_equal(np.asarray(one[key]), np.asarray(four[key]))
print("same batches on 1 and 4 devices")
"""


def test_cached_route_shards_the_batch_over_four_devices(tiny_data):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", SHARDED, str(tiny_data)], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same batches on 1 and 4 devices" in done.stdout
