"""ImageFolder scanning with torchvision's rules, plus a check of every file.

Classes are the sorted sub-folder names; files count by torchvision's extensions (any case).
Each file is decoded once up front in a thread pool, so a bad file is reported (path and
reason) before training starts instead of failing a batch in the middle of an epoch.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from jaxvgg.core.errors import UserError
from jaxvgg.core.progress import progress_bar

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


# Image.open warns (DecompressionBombWarning) above PIL's pixel limit before load_rgb can refuse
# the image itself; the warnings filters are process-wide, so silencing it is serialised. Opening
# only reads the header, so the lock costs little next to decoding.
_OPEN_LOCK = threading.Lock()

# What a hostile or damaged file can make PIL raise while opening or decoding it.
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Any PIL-readable image as 8-bit RGB (grayscale, RGBA, palette, CMYK and 16-bit included).

    An image of more than ``MAX_PIXELS`` pixels is refused with a ValueError before it is decoded.
    """
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        # Not a ValueError: callers that catch the usual decode errors would see a traceback.
        raise ValueError(f"too large to decode safely ({e})") from e
    with img:
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


def link_problem(path: str | os.PathLike) -> str | None:
    """Why a symlink cannot be read ("broken symlink", "symlink loop"), or None if it is not a bad link."""
    try:
        os.stat(path)
    except OSError as e:
        if not os.path.islink(path):
            return None
        if e.errno == errno.ELOOP:
            return "symlink loop"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"broken symlink (points to {os.readlink(path)}, which does not exist)"
        return None
    return None


def unreadable_reason(path: str | os.PathLike, e: BaseException) -> str:
    """A one-line reason for a file that failed to load with ``e``."""
    link = link_problem(path)
    if link:
        return link
    if isinstance(e, Image.DecompressionBombError):
        return f"too large to decode safely ({e})"
    if isinstance(e, OSError) and e.strerror and not isinstance(e, Image.UnidentifiedImageError):
        return e.strerror  # the path is already named by the caller
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "cannot identify image file" in msg:
        return "not an image PIL can read"
    if "truncated" in msg.lower():
        return f"truncated or damaged image ({msg})"
    return msg


def _check(path: Path) -> str | None:
    try:
        if path.stat().st_size == 0:
            return "empty file"
        load_rgb(path)
    except UNREADABLE as e:
        return unreadable_reason(path, e)
    return None


def _walk_class(
    root: Path, name: str, visited: dict[tuple[int, int], str], class_dirs: dict[Path, str]
) -> tuple[list[tuple[str, list[str]]], list[tuple[str, str]]]:
    """(folder relative to root, its files) for ``root/name`` and below, each real folder once.

    A symlinked folder is skipped, with a reason, if it was seen already (a loop, or a second link
    to one place) or is part of the data folder itself (it is scanned by its real path): following
    it would count the same images twice, and put copies of one image on both sides of the split.
    """
    found: list[tuple[str, list[str]]] = []
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, files in os.walk(root / name, followlinks=True):
        found.append((os.path.relpath(dirpath, root), files))
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            rel = os.path.relpath(full, root)
            try:
                st = os.stat(full)
            except OSError as e:
                skipped.append((rel, e.strerror or str(e)))
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited:
                skipped.append((rel, f"symlink to a folder already scanned ({visited[key]})"))
                continue
            if os.path.islink(full):
                real = Path(os.path.realpath(full))
                owner = next((c for c in class_dirs if real == c or real.is_relative_to(c)), None)
                if owner is not None:
                    where = os.path.normpath(os.path.join(class_dirs[owner], os.path.relpath(real, owner)))
                    skipped.append((rel, f"symlink to {where}, a folder of the data set (scanned by its real path)"))
                    continue
            visited[key] = rel
            keep.append(d)
        dirnames[:] = keep
    return found, skipped


def scan_image_folder(root: str | os.PathLike, strict: bool = False, workers: int = 8) -> ImageFolderIndex:
    """Index ``root/<class>/<image>``; unreadable files are skipped with a reason (an error if ``strict``).

    Symlinks are followed (to images or folders elsewhere), but every real folder is scanned once
    and every real file kept once: a second path to one file is skipped as a duplicate.
    """
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
    # The data folder and its class folders are claimed up front, so a link from one class into
    # another (or up to the root) is recognised whichever class is walked first.
    class_dirs = {Path(os.path.realpath(root / name)): name for name in classes}
    visited: dict[tuple[int, int], str] = {}
    for rel, path in [(".", root)] + [(name, root / name) for name in classes]:
        st = os.stat(path)
        visited.setdefault((st.st_dev, st.st_ino), rel)
    candidates: list[tuple[str, int]] = []
    skipped: list[tuple[str, str]] = []
    for label, name in enumerate(classes):
        found, links = _walk_class(root, name, visited, class_dirs)
        skipped += links
        for dirpath, files in sorted(found):  # torchvision's order: folders by path, then file names
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    candidates.append((os.path.normpath(os.path.join(dirpath, f)), label))
    unique, duplicates = _dedupe(root, candidates)
    with ThreadPoolExecutor(workers) as pool:
        checked = pool.map(lambda s: _check(root / s[0]), unique)
        # Large folders take a while (every file is opened); small ones finish before a bar shows.
        reasons = list(
            progress_bar(checked, total=len(unique), desc=f"checking {root}", unit="img", leave=False, delay=2.0)
        )
    samples = [s for s, r in zip(unique, reasons, strict=True) if r is None]
    unreadable = [(s[0], r) for s, r in zip(unique, reasons, strict=True) if r is not None]
    if unreadable and strict:
        listing = "; ".join(f"{p}: {r}" for p, r in unreadable[:5]) + (" …" if len(unreadable) > 5 else "")
        raise UserError(f"{root}: {len(unreadable)} unreadable image(s) (--strict): {listing}")
    skipped = sorted(skipped + duplicates + unreadable)
    counts = [sum(1 for _, label in samples if label == k) for k in range(len(classes))]
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if empty:
        raise UserError(
            f"{root}: class folder(s) with no readable images: {', '.join(empty)} "
            f"(extensions: {', '.join(IMG_EXTENSIONS)})"
        )
    return ImageFolderIndex(root, classes, samples, skipped)


def _dedupe(root: Path, candidates: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """The candidates with each real file once (in their order), and the other paths as duplicates.

    Of several paths to one file, the one without symlinks is kept when there is one (the file
    belongs to the class folder it really is in), else the first. Files that cannot be stat'ed are
    kept here; :func:`_check` gives the reason.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (rel, _) in enumerate(candidates):
        try:
            st = os.stat(root / rel)
        except OSError:
            continue
        groups.setdefault((st.st_dev, st.st_ino), []).append(i)
    drop: dict[int, str] = {}
    real_root = os.path.realpath(root)
    for members in groups.values():
        if len(members) == 1:
            continue
        direct = [
            i for i in members if os.path.realpath(root / candidates[i][0]) == os.path.join(real_root, candidates[i][0])
        ]
        keeper = direct[0] if direct else members[0]
        for i in members:
            if i != keeper:
                how = "hard link" if i in direct else "symlink"
                drop[i] = f"duplicate of {candidates[keeper][0]} (same file through a {how})"
    unique = [c for i, c in enumerate(candidates) if i not in drop]
    return unique, [(candidates[i][0], reason) for i, reason in drop.items()]
