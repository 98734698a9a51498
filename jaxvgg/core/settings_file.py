"""Read a ``--config`` file: JSON or YAML, or a run folder's ``config.json``, as one mapping.

Only the parsing lives here; :func:`jaxvgg.core.config.read_config_file` checks the settings.
PyYAML is optional: imported only for a YAML file, with a one-line error when it is missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jaxvgg.core.errors import UserError

YAML_SUFFIXES = (".yaml", ".yml")
# PyYAML follows YAML 1.1, where a float needs a dot: `lr: 1e-4` would be the string "1e-4".
# YAML 1.2 (and JSON) read it as a number, and so do we.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


def read_mapping(path: str | Path) -> tuple[Path, dict[Any, Any]]:
    """The file actually read (``PATH/config.json`` for a folder) and its top-level mapping."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"--config {path}: a folder without config.json (not a run folder)")
        path = path / "config.json"
    if path.suffix.lower() not in (".json", *YAML_SUFFIXES):
        raise UserError(f"--config {path}: expected a .json, .yaml or .yml file, or a run folder")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from e
    raw = _parse_yaml(path, text) if path.suffix.lower() in YAML_SUFFIXES else _parse_json(path, text)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of setting names to values, got {type(raw).__name__}")
    return path, raw


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from e


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise UserError(
            f"{path}: reading YAML needs PyYAML, which is not installed: pip install 'jaxvgg[yaml]' "
            "(or give the settings as JSON)"
        ) from None

    class Loader(yaml.SafeLoader):  # safe_load's loader, with YAML 1.2's floats
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))
    try:
        return yaml.load(text, Loader=Loader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(e, "problem", None) or " ".join(str(e).split())  # PyYAML's messages span lines
        raise UserError(f"{path}: not valid YAML ({where}{reason})") from e
