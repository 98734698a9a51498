"""A fingerprint of the C++ sources and the build script, compiled into the kernels' library by setup.py
and checked by native.py against the checkout's: an editable install is not rebuilt when csrc/ changes,
and a library built from other sources must not stand in for the code beside it. Standard library only:
setup.py loads this file by path, with neither jax nor jaxvgg importable."""

from __future__ import annotations

import hashlib
from pathlib import Path

# The checkout's root: where setup.py and csrc/ are (an installed wheel has neither).
ROOT = Path(__file__).resolve().parents[2]


def csrc_fingerprint(root: Path = ROOT) -> str | None:
    """16 hex digits over csrc/'s files and setup.py, or None where ``root`` has no csrc/."""
    csrc = root / "csrc"
    if not csrc.is_dir():
        return None
    digest = hashlib.sha256()
    for path in [*sorted(csrc.iterdir()), root / "setup.py"]:
        if path.is_file() and path.suffix in {".cc", ".h", ".py"}:  # .py: setup.py
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
