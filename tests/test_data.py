"""The built-in dataset, ImageFolder reading, splits, transforms and the loader (no torch)."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxvgg.core import folder as folder_module
from jaxvgg.core.errors import UserError
from jaxvgg.core.synthetic import CLASSES, draw_leaf, make_dataset
from jaxvgg.core.transforms import center_crop, random_resized_crop_box, resize
from jaxvgg.data import Loader, Pipeline, load_split, make_split, save_split, scan_image_folder


def test_synthetic_images_are_deterministic_and_differ_by_class():
    a, b = draw_leaf(0, 0, 5), draw_leaf(0, 0, 5)
    assert a.size == (256, 256) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(draw_leaf(1, 0, 5)))


def test_mean_colour_does_not_give_the_class_away(tmp_path):
    """A nearest-centroid classifier on mean RGB scores at most 60% (balanced classes, held-out images)."""
    root = make_dataset(tmp_path / "d", seed=7, counts=(150, 150, 150), progress=False)
    data = scan_image_folder(root)
    x = np.array([np.asarray(Image.open(root / p), np.float32).mean((0, 1)) for p, _ in data.samples])
    y = np.array(data.labels)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[: len(y) * 2 // 3], order[len(y) * 2 // 3 :]
    centroids = np.stack([x[train][y[train] == k].mean(0) for k in range(3)])
    pred = np.argmin(((x[test, None] - centroids[None]) ** 2).sum(-1), 1)
    accuracy = (pred == y[test]).mean()
    assert accuracy <= 0.60, accuracy
    assert json.loads((root / "dataset.json").read_text())["counts"] == [150, 150, 150]


def test_scan_follows_torchvision_rules(tiny_data):
    data = scan_image_folder(tiny_data)
    assert data.classes == sorted(CLASSES)
    assert len(data.samples) == 72 and not data.skipped
    assert data.samples == sorted(data.samples, key=lambda s: (s[1], s[0]))


def write_bad_files(root):
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    good = Image.new("RGB", (40, 30), (10, 200, 30))
    good.save(root / "a" / "ok.JPG")
    good.convert("L").save(root / "b" / "gray.png")
    good.convert("RGBA").save(root / "b" / "rgba.png")
    good.convert("P").save(root / "b" / "palette.png")
    good.convert("CMYK").save(root / "b" / "cmyk.jpg")
    Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)).save(root / "b" / "deep.png")
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "text.png").write_text("not an image")
    (root / "a" / "notes.txt").write_text("ignored: not an image extension")
    data = (root / "a" / "ok.JPG").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(data[: len(data) // 2])


def test_bad_files_are_listed_with_a_reason_and_skipped(tmp_path):
    write_bad_files(tmp_path)
    data = scan_image_folder(tmp_path)
    assert [p for p, _ in data.samples] == [
        "a/ok.JPG",
        "b/cmyk.jpg",
        "b/deep.png",
        "b/gray.png",
        "b/palette.png",
        "b/rgba.png",
    ]
    reasons = dict(data.skipped)
    assert reasons["a/empty.jpg"] == "empty file"
    assert reasons["a/text.png"] == "not an image PIL can read"
    assert "truncated" in reasons["a/truncated.jpg"]
    for path, _ in data.samples:
        img = folder_module.load_rgb(tmp_path / path)
        assert img.mode == "RGB" and img.size == (40, 30)
    deep = np.asarray(folder_module.load_rgb(tmp_path / "b/deep.png"))
    assert deep.max() > 200, "16-bit images are scaled, not clipped"
    with pytest.raises(UserError, match=r"3 unreadable image\(s\) \(--strict\)"):
        scan_image_folder(tmp_path, strict=True)


def test_too_large_images_are_refused(tmp_path, monkeypatch):
    write_bad_files(tmp_path)
    Image.new("RGB", (100, 100)).save(tmp_path / "a" / "big.png")
    monkeypatch.setattr(folder_module, "MAX_PIXELS", 5000)
    data = scan_image_folder(tmp_path)
    assert "too large to decode safely" in dict(data.skipped)["a/big.png"]
    assert "a/ok.JPG" in dict(data.samples)


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "only").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "only" / "x.png")
    with pytest.raises(UserError, match="need at least 2"):
        scan_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no readable images: empty"):
        scan_image_folder(tmp_path)


def test_stratified_split_is_80_20_per_class_and_round_trips(tiny_data, tmp_path):
    data = scan_image_folder(tiny_data)
    split = make_split(data, seed=1)
    assert len(split.subsets["test"]) == 15 and len(split.subsets["train"]) == 57
    for k in range(3):
        assert sum(1 for _, label in split.samples("test") if label == k) == 5
    assert make_split(data, seed=1) == split and make_split(data, seed=2) != split
    assert not set(split.subsets["train"]) & set(split.subsets["test"])
    save_split(split, tiny_data, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json", data) == split
    held_out = make_split(data, val_fraction=0.25, seed=1)
    assert len(held_out.subsets["val"]) > 0 and held_out.subsets["test"] == split.subsets["test"]
    train, val, test = (set(held_out.subsets[name]) for name in ("train", "val", "test"))
    assert not (train & val or val & test or train & test), "three disjoint subsets"
    assert train | val | test == set(split.subsets["train"]) | set(split.subsets["test"]), "of every image"
    per_class = [sum(1 for _, label in held_out.samples("val") if label == k) for k in range(3)]
    assert per_class == [round(0.25 * 19)] * 3, "stratified: a quarter of each class's 19 outside the test split"
    random = make_split(data, method="random", seed=1)
    assert len(random.subsets["test"]) == 14


def test_split_file_must_fit_the_data(tiny_data, tmp_path):
    data = scan_image_folder(tiny_data)
    split = make_split(data)
    save_split(split, tiny_data, tmp_path / "split.json")
    raw = json.loads((tmp_path / "split.json").read_text())
    raw["train"].append("healthy/not_there.jpg")
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match="missing or unreadable"):
        load_split(tmp_path / "bad.json", data)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(UserError, match="not a split file"):
        load_split(tmp_path / "junk.json", data)


def test_resize_and_center_crop_follow_torchvision_rules():
    img = Image.new("RGB", (300, 200))
    assert resize(img, 100).size == (150, 100)
    assert resize(img, (50, 60)).size == (60, 50)
    assert resize(img, 200) is img  # already the right size: untouched, as torchvision does
    crop = center_crop(Image.fromarray(np.arange(25, dtype=np.uint8).reshape(5, 5)), 2)
    assert np.asarray(crop).tolist() == [[12, 13], [17, 18]]  # offset int(round(1.5)) == 2, as in torchvision


def test_random_resized_crop_box_stays_inside():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(256, 200, rng)
        assert top >= 0 and top + h <= 200 and left >= 0 and left + w <= 256 and h > 0 and w > 0


def test_loader_is_deterministic_resumable_and_pads_eval_batches(tiny_data):
    data = scan_image_folder(tiny_data)
    train = Loader(data.root, data.samples, Pipeline(32, augment=True), 10, train=True, seed=4, workers=2)
    assert len(train) == 7
    first = [b.image for b in train.epoch(3)]
    again = [b.image for b in train.epoch(3)]
    tail = [b.image for b in train.epoch(3, start_batch=4)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(first[4:], tail, strict=True))
    assert not np.array_equal(first[0], next(iter(train.epoch(4))).image)
    assert first[0].dtype == np.uint8 and first[0].shape == (10, 32, 32, 3)

    evaluation = Loader(data.root, data.samples, Pipeline(32), 10, train=False, workers=2)
    batches = list(evaluation.epoch(0))
    assert len(batches) == 8 and batches[-1].weight.tolist() == [1, 1] + [0] * 8
    assert sum(int(b.weight.sum()) for b in batches) == 72


def test_process_shards_of_the_loader_make_up_the_single_process_batches(tiny_data):
    data = scan_image_folder(tiny_data)
    for train, pipeline in ((True, Pipeline(32, augment=True)), (False, Pipeline(32))):

        def batches(shard, train=train, pipeline=pipeline):
            loader = Loader(data.root, data.samples, pipeline, 10, train=train, seed=1, workers=2, shard=shard)
            return list(loader.epoch(2))

        whole, first, second = batches((0, 1)), batches((0, 2)), batches((1, 2))
        assert len(whole) == len(first) == len(second)
        for w, a, b in zip(whole, first, second, strict=True):
            assert a.image.shape[0] == b.image.shape[0] == 5
            for field in ("image", "label", "weight", "index"):
                np.testing.assert_array_equal(getattr(w, field), np.concatenate([getattr(a, field), getattr(b, field)]))
    # The last eval batch of 72 images holds 2 real rows, both in the first process's half.
    assert second[-1].weight.tolist() == [0] * 5 and first[-1].weight.tolist() == [1, 1, 0, 0, 0]
