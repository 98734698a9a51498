"""The built-in potato-leaf dataset, drawn by our own code (no downloads).

Three ImageFolder classes like PlantVillage's potato subset. Only the lesions tell them apart:

* ``Early_blight``: small brown spots with dark concentric rings and yellow halos;
* ``Late_blight``: large irregular dark, water-soaked patches, often spreading from the leaf edge;
* ``healthy``: none.

Everything else (leaf shape, size, pose, hue, lighting, background, blur, JPEG quality) is drawn
independently of the class, so global colour statistics do not give the class away.
Each image depends only on ``(seed, class, index)``: the set is deterministic and can be made
in parallel.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from jaxvgg.core.cache import cache_dir
from jaxvgg.core.errors import UserError
from jaxvgg.core.progress import progress_bar

CLASSES = ("Early_blight", "Late_blight", "healthy")
DEFAULT_COUNTS = (1000, 1000, 152)  # PlantVillage's potato subset
IMAGE_SIZE = 256
VERSION = 1  # bump when the drawing changes, so caches are rebuilt


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, n: int, wobble: float) -> list[tuple]:
    """An irregular closed outline around (cx, cy): radius r modulated by a few random harmonics."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = np.ones(n)
    for k in range(2, 6):
        radius += wobble / k * rng.uniform(-1, 1) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    radius = r * np.clip(radius, 0.35, None)
    return list(zip((cx + radius * np.cos(t)).tolist(), (cy + radius * np.sin(t)).tolist(), strict=True))


def _leaf_outline(rng: np.random.Generator, size: int) -> tuple[list[tuple], tuple[float, float, float, float, float]]:
    """A potato-leaflet outline (ovate with a pointed tip), scaled, rotated and placed at random."""
    length = size * rng.uniform(0.55, 0.95)
    width = length * rng.uniform(0.3, 0.5)
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    # Ovate: wider towards the base, with a tip at t = 0.
    x = np.cos(t) * length / 2
    y = np.sin(t) * width / 2 * (1 - 0.25 * np.cos(t))
    y *= 1 - 0.55 * np.exp(-(np.minimum(t, 2 * np.pi - t) ** 2) / 0.35)  # pointed tip
    y *= 1 + 0.06 * np.sin(rng.uniform(3, 7) * t + rng.uniform(0, 6))  # uneven margin
    ca, sa = math.cos(angle), math.sin(angle)
    pts = list(zip((cx + x * ca - y * sa).tolist(), (cy + x * sa + y * ca).tolist(), strict=True))
    return pts, (cx, cy, length, width, angle)


def _random_colour(rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float]) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.uniform(lo, hi))


def draw_leaf(seed: int, label: int, index: int, size: int = IMAGE_SIZE) -> Image.Image:
    """One RGB image of class ``CLASSES[label]``; the same arguments always give the same image."""
    rng = np.random.default_rng([seed, label, index, VERSION])
    # Background: soil, stone, bench or foliage, with a soft gradient; chosen independently of the class.
    bg = np.array(
        [
            _random_colour(rng, (70, 45, 25), (150, 110, 80)),  # soil
            _random_colour(rng, (110, 110, 110), (220, 220, 215)),  # stone / paper
            _random_colour(rng, (30, 55, 25), (80, 120, 60)),  # foliage
            _random_colour(rng, (150, 120, 80), (230, 200, 160)),  # bench
        ][rng.integers(4)],
        dtype=np.float32,
    )
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    grad = rng.uniform(-0.35, 0.35, 2)
    canvas = bg[None, None, :] * (1 + grad[0] * (xx - 0.5) + grad[1] * (yy - 0.5))[..., None]
    canvas += rng.normal(0, rng.uniform(3, 14), (size, size, 1))
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))

    outline, (cx, cy, length, width, angle) = _leaf_outline(rng, size)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(outline, fill=255)

    # Leaf body: a green whose hue, saturation and brightness vary widely, with veins.
    leaf = Image.new("RGB", (size, size), _random_colour(rng, (40, 90, 20), (130, 190, 90)))
    draw = ImageDraw.Draw(leaf)
    vein = tuple(min(255, c + int(rng.uniform(25, 60))) for c in leaf.getpixel((0, 0)))
    ca, sa = math.cos(angle), math.sin(angle)
    base = (cx - ca * length / 2, cy - sa * length / 2)
    tip = (cx + ca * length / 2, cy + sa * length / 2)
    draw.line([base, tip], fill=vein, width=max(1, int(size / 110)))
    for k in range(int(rng.integers(4, 8))):
        f = (k + 1) / 9
        px, py = base[0] + (tip[0] - base[0]) * f, base[1] + (tip[1] - base[1]) * f
        for side in (-1, 1):
            a = angle + side * rng.uniform(0.6, 1.0)
            reach = width * rng.uniform(0.3, 0.5)
            draw.line([(px, py), (px + math.cos(a) * reach, py + math.sin(a) * reach)], fill=vein, width=1)

    lesions = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ldraw = ImageDraw.Draw(lesions)
    scale = size / 256
    if CLASSES[label] == "Early_blight":
        for _ in range(int(rng.integers(6, 22))):
            r = rng.uniform(4.5, 10) * scale
            px, py = _point_in_leaf(rng, cx, cy, length, width, angle)
            halo = (*_random_colour(rng, (200, 190, 40), (250, 240, 110)), 200)
            ldraw.ellipse([px - 1.9 * r, py - 1.9 * r, px + 1.9 * r, py + 1.9 * r], fill=halo)
            brown = _random_colour(rng, (100, 60, 20), (150, 100, 50))
            ldraw.ellipse([px - r, py - r, px + r, py + r], fill=(*brown, 255))
            for ring in (0.72, 0.42):  # the "target board" rings of early blight
                rr = r * ring
                ldraw.ellipse([px - rr, py - rr, px + rr, py + rr], outline=(55, 30, 10, 255), width=max(1, int(r / 4)))
    elif CLASSES[label] == "Late_blight":
        for _ in range(int(rng.integers(1, 4))):
            # Start on the margin more often than not: late blight spreads in from the edge.
            if rng.random() < 0.7:
                px, py = outline[int(rng.integers(len(outline)))]
            else:
                px, py = _point_in_leaf(rng, cx, cy, length, width, angle)
            r = rng.uniform(0.16, 0.3) * length
            dark = _random_colour(rng, (35, 35, 20), (85, 75, 45))
            ring = _random_colour(rng, (95, 120, 60), (150, 165, 95))  # pale water-soaked border
            ldraw.polygon(_blob(rng, px, py, r * 1.15, 40, 0.8), fill=(*ring, 170))
            ldraw.polygon(_blob(rng, px, py, r, 40, 0.8), fill=(*dark, 240))
        lesions = lesions.filter(ImageFilter.GaussianBlur(1.2 * scale))
    leaf = Image.alpha_composite(leaf.convert("RGBA"), lesions).convert("RGB")
    image.paste(leaf, (0, 0), mask.filter(ImageFilter.GaussianBlur(0.8)))

    # Lighting, blur and sensor noise, independent of the class.
    arr = np.asarray(image, dtype=np.float32)
    light = rng.uniform(0.65, 1.3) * (1 + rng.uniform(-0.25, 0.25) * (xx - 0.5) + rng.uniform(-0.25, 0.25) * (yy - 0.5))
    tint = rng.uniform(0.88, 1.12, 3)
    arr = arr * light[..., None] * tint[None, None, :] + rng.normal(0, rng.uniform(1, 6), arr.shape)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    blur = rng.uniform(0, 1.3)
    if blur > 0.3:
        image = image.filter(ImageFilter.GaussianBlur(blur * scale))
    return image


def _point_in_leaf(rng, cx, cy, length, width, angle) -> tuple[float, float]:
    u, v = rng.uniform(-0.32, 0.32) * length, rng.uniform(-0.28, 0.28) * width
    return cx + u * math.cos(angle) - v * math.sin(angle), cy + u * math.sin(angle) + v * math.cos(angle)


def _write_one(job: tuple[str, int, int, int, int]) -> None:
    out, seed, label, index, size = job
    rng = np.random.default_rng([seed, label, index, VERSION, 1])
    path = Path(out) / CLASSES[label] / f"{CLASSES[label].lower()}_{index:05d}.jpg"
    draw_leaf(seed, label, index, size).save(path, quality=int(rng.integers(60, 96)))


MANIFEST = "dataset.json"
GENERATOR = "jaxvgg make_dataset"  # the manifest's "generator": marks a folder this module wrote


def _manifest(seed: int, counts: Sequence[int], size: int) -> dict:
    return {
        "generator": GENERATOR,
        "version": VERSION,
        "seed": seed,
        "counts": list(counts),
        "size": size,
        "classes": list(CLASSES),
    }


def generated_by_us(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a dataset this module wrote and nothing else: replacing it loses nothing.

    Manifests from before the ``generator`` key count too (they have the same other keys).
    """
    path = Path(path)
    try:
        raw = json.loads((path / MANIFEST).read_text())
        entries = {e.name: e for e in os.scandir(path)}
    except (OSError, ValueError):
        return False
    if not isinstance(raw, dict) or raw.get("classes") != list(CLASSES):
        return False
    if raw.get("generator", GENERATOR) != GENERATOR or not {"version", "seed", "counts"} <= raw.keys():
        return False
    # A file the user added to a generated set (notes, extra images) is theirs too.
    if set(entries) - {MANIFEST, *CLASSES}:
        return False
    for name in CLASSES:
        if name in entries:
            if entries[name].is_symlink() or not entries[name].is_dir():
                return False
            prefix = f"{name.lower()}_"
            if any(not (f.startswith(prefix) and f.endswith(".jpg")) for f in os.listdir(path / name)):
                return False
    return True


def make_dataset(
    out: str | os.PathLike,
    seed: int = 0,
    counts: Sequence[int] = DEFAULT_COUNTS,
    size: int = IMAGE_SIZE,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Write the dataset to ``out`` and return its path.

    ``out`` may be missing, empty, or an earlier dataset of this module (it is replaced); any other
    folder is refused unless ``force``, so a mistyped ``--out`` cannot delete someone's files.
    The images are drawn into a temporary folder next to ``out`` that is renamed into place when
    complete, so a crash midway leaves ``out`` as it was; ``dataset.json`` marks a finished set.
    """
    if len(counts) != len(CLASSES) or any(c < 0 for c in counts):
        raise ValueError(f"counts must be {len(CLASSES)} non-negative numbers, one per class {CLASSES}")
    given = out = Path(out)
    if out.is_symlink():
        out = Path(os.path.realpath(out))  # replace the folder it points to, keep the link
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: not a folder")
    if out.is_dir() and any(out.iterdir()) and not force and not generated_by_us(out):
        raise UserError(f"{out}: not empty and not a dataset written by make_dataset.py; use --force to replace it")
    target = Path(os.path.abspath(out))  # a name to derive the temporary folder's from, even for "."
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        for name in CLASSES:
            (tmp / name).mkdir(parents=True)
        jobs = [(str(tmp), seed, label, i, size) for label, n in enumerate(counts) for i in range(n)]
        workers = workers or min(len(jobs), os.cpu_count() or 1) or 1

        # forkserver: forking a process that already runs JAX's threads can deadlock.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
            done = pool.map(_write_one, jobs, chunksize=32)
            for _ in progress_bar(
                done, total=len(jobs), desc="drawing the built-in dataset", unit="img", disable=not progress
            ):
                pass
        (tmp / MANIFEST).write_text(json.dumps(_manifest(seed, counts, size), indent=2))
        _swap_in(tmp, target)
    except OSError as e:
        raise UserError(f"{out}: could not write the dataset ({e.strerror or e})") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return given


def _swap_in(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out``; the old ``out`` is removed only once ``new`` is there."""
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    try:
        new.rename(out)
    except OSError:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def ensure_dataset(
    seed: int = 0, counts: Sequence[int] = DEFAULT_COUNTS, size: int = IMAGE_SIZE, root: str | os.PathLike | None = None
) -> Path:
    """The cached built-in dataset for these settings, drawn on first use."""
    name = f"potato-synthetic-v{VERSION}-s{seed}-" + "-".join(map(str, counts)) + f"-{size}px"
    path = Path(root) if root is not None else cache_dir() / name
    try:
        found = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        found = None
    if isinstance(found, dict) and {**found, "generator": GENERATOR} == _manifest(seed, counts, size):
        return path
    print(f"drawing the built-in potato-leaf dataset into {path} (once; later runs reuse it)")
    # Our cache folder is ours to replace; a folder the caller names is checked like --out.
    return make_dataset(path, seed, counts, size, force=root is None)
