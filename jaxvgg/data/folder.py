"""ImageFolder scanning with torchvision's rules, plus a check of every file.

Classes are the sorted sub-folder names; files count by torchvision's extensions (any case).
Each file is decoded once up front in a thread pool, so a bad file is reported (path and
reason) before training starts instead of failing a batch in the middle of an epoch.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from jaxvgg.errors import UserError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold: larger images are refused


@dataclasses.dataclass(frozen=True)
class ImageFolderIndex:
    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]  # (path relative to root, class index), sorted like torchvision
    skipped: list[tuple[str, str]]  # (relative path, reason)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Any PIL-readable image as 8-bit RGB (grayscale, RGBA, palette, CMYK and 16-bit included)."""
    with Image.open(path) as img:
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise ValueError(f"{w}x{h} pixels is too large to decode safely (limit {MAX_PIXELS:,})")
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: scale to 8 bits instead of clipping at 255.
            import numpy as np

            arr = np.asarray(img, dtype=np.float64)
            top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
            img = Image.fromarray((arr * (255.0 / top)).round().astype(np.uint8))
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")


def _check(path: Path) -> str | None:
    if path.stat().st_size == 0:
        return "empty file"
    try:
        load_rgb(path)
    except Image.DecompressionBombError as e:
        return f"too large to decode safely ({e})"
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "cannot identify image file" in msg:
            return "not an image PIL can read"
        if "truncated" in msg.lower():
            return f"truncated or damaged image ({msg})"
        return msg
    return None


def scan_image_folder(root: str | os.PathLike, strict: bool = False, workers: int = 8) -> ImageFolderIndex:
    """Index ``root/<class>/<image>``; unreadable files are skipped with a reason (an error if ``strict``)."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: data directory does not exist")
    if not root.is_dir():
        raise UserError(f"{root}: not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if len(classes) < 2:
        raise UserError(
            f"{root}: found {len(classes)} class folder(s) {classes}; need at least 2 (one sub-folder per class)"
        )
    candidates: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / name, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    candidates.append((os.path.relpath(os.path.join(dirpath, f), root), label))
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(lambda s: _check(root / s[0]), candidates))
    samples = [s for s, r in zip(candidates, reasons, strict=True) if r is None]
    skipped = [(s[0], r) for s, r in zip(candidates, reasons, strict=True) if r is not None]
    if skipped and strict:
        listing = "; ".join(f"{p}: {r}" for p, r in skipped[:5]) + (" …" if len(skipped) > 5 else "")
        raise UserError(f"{root}: {len(skipped)} unreadable image(s) (--strict): {listing}")
    counts = [sum(1 for _, label in samples if label == k) for k in range(len(classes))]
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise UserError(
            f"{root}: class folder(s) with no readable images: {', '.join(empty)} "
            f"(extensions: {', '.join(IMG_EXTENSIONS)})"
        )
    return ImageFolderIndex(root, classes, samples, skipped)
