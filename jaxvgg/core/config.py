"""Every training setting in one place, the presets, and the command-line flags built from them.

Both ``scripts/train_jax.py`` and ``scripts/train_torch.py`` take exactly these flags. Each
setting is described once, in its field's metadata (:func:`setting`): group, help, choices and
the default as ``--help`` shows it; the flags, their help and the checks of :func:`validate_values`
are built from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxvgg.core.errors import UserError
from jaxvgg.core.freeze import check_freeze
from jaxvgg.core.metrics import SELECTION_SCORES
from jaxvgg.core.settings_file import read_mapping
from jaxvgg.core.specs import MODELS, get_spec
from jaxvgg.core.synthetic import CLASSES, DEFAULT_COUNTS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant", "cosine_rebuilt")
CONV_ROUTES = ("auto", "cpu", "xla", "im2col")  # auto: jaxvgg.ops.conv.route_for_platform
RESIZES = ("crop", "squash")
DATA_CACHES = ("auto", "device", "host", "none")  # auto: jaxvgg.data.cache.placement
CLASS_WEIGHTS = ("none", "balanced")
SPLITS = ("stratified", "random")
PRECISIONS = ("fp32", "bf16")
PRUNE_SCOPES = ("layer", "global")

# The groups of --help, in order: key -> (title, description).
GROUPS = {
    "settings": ("where settings come from", "defaults < --preset < --config file < flags given, whatever their order"),
    "data": ("data", None),
    "model": ("model", None),
    "optimisation": ("optimisation", None),
    "schedule": ("epochs, schedule and early stopping", None),
    "run": ("run folder", None),
    "transfer": ("transfer: starting weights", None),
    "compression": ("compression: pruning and distillation", None),
    "devices": ("devices and invocation", "settings of this invocation: --resume takes them from its command line"),
}


def setting(
    default: Any,
    group: str,
    help: str,
    *,
    choices: Sequence[str] = (),
    shown: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A :class:`TrainConfig` field and all its flag says: ``group`` (a key of :data:`GROUPS`),
    ``help``, the ``choices`` a value must be one of, and ``shown``, the default as ``--help``
    prints it where the field's own default (None, or filled in later) would not say it."""
    metadata = {"group": group, "help": help, "choices": tuple(choices), "shown": shown, "metavar": metavar}
    return dataclasses.field(default=default, metadata=metadata)


def _model_learning_rates() -> str:
    """Each model's own learning rate, from the model table: the default of ``--lr``."""
    by_lr: dict[float, list[str]] = {}
    for name, spec in MODELS.items():
        by_lr.setdefault(spec.default_lr, []).append(name)
    common = max(by_lr, key=lambda lr: len(by_lr[lr]))
    parts = [f"{lr:g} for {', '.join(names)}" for lr, names in by_lr.items() if lr != common]
    return f"the model's own: {'; '.join(parts)}; {common:g} for the other models"


@dataclasses.dataclass
class TrainConfig:
    # The main job: a VGG-16 that learns the built-in set in minutes on two CPU cores (docs/recipes.md).
    model: str = setting(
        "vgg16_gap_bn", "model", "the network (scripts/summary.py --model NAME prints it)", choices=sorted(MODELS)
    )
    data_dir: str | None = setting(
        None,
        "data",
        "ImageFolder root: one sub-folder of images per class",
        shown="the built-in dataset",
        metavar="DIR",
    )
    image_size: int = setting(32, "data", "square input size in pixels")
    resize: str = setting(
        "crop",
        "data",
        "without --augment: crop (Resize(size * 256/224) + CenterCrop(size), torchvision's evaluation) or squash "
        "(Resize([size, size]), the tutorial's: the whole image, its aspect ratio changed)",
        choices=RESIZES,
    )
    batch_size: int = setting(32, "optimisation", "images per optimizer step (over all devices together)")
    epochs: int = setting(6, "schedule", "maximum epochs (also T_max of the cosine schedule)")
    lr: float | None = setting(
        None, "optimisation", "base learning rate; config.json records the rate used", shown=_model_learning_rates()
    )
    weight_decay: float = setting(
        1e-5, "optimisation", "weight decay (coupled L2 for adam and sgd, decoupled for adamw)"
    )
    optimizer: str = setting("adam", "optimisation", "the optimizer", choices=OPTIMIZERS)
    class_weights: str = setting(
        "balanced",
        "optimisation",
        "balanced: each class's training loss weighted by n / (classes x n_class), as torch's "
        "CrossEntropyLoss(weight=...), for imbalanced data such as PlantVillage's 1000/1000/152 potatoes; "
        "none: the plain loss",
        choices=CLASS_WEIGHTS,
    )
    schedule: str = setting(
        "cosine",
        "schedule",
        "cosine (CosineAnnealingLR), step (StepLR) or constant, per epoch; cosine_rebuilt: the tutorial's "
        "optimized version, a new CosineAnnealingLR every epoch (its bug: the rate stays almost flat)",
        choices=SCHEDULES,
    )
    step_size: int = setting(30, "schedule", "step schedule: epochs between decays (StepLR step_size)")
    gamma: float = setting(0.1, "schedule", "step schedule: factor of each decay (StepLR gamma)")
    momentum: float = setting(0.9, "optimisation", "momentum of sgd")
    patience: int = setting(10, "schedule", "early stopping: epochs without a better validation score (--select-by)")
    select_by: str = setting(
        "accuracy",
        "schedule",
        "the validation figure that picks the best epoch and drives early stopping; macro_f1 weighs a rare class "
        "as much as a common one",
        choices=SELECTION_SCORES,
    )
    seed: int = setting(0, "data", "seed of the split, the initial weights and the batch order")
    augment: bool = setting(False, "data", "RandomResizedCrop + RandomHorizontalFlip for training")
    split: str = setting("stratified", "data", "how the images are split into train, val and test", choices=SPLITS)
    split_file: str | None = setting(
        None,
        "data",
        "re-use a split.json (e.g. another run's, of either framework) so both runs see the same images",
        shown="a new split (--split, --seed)",
        metavar="FILE",
    )
    test_fraction: float = setting(0.2, "data", "fraction of the images held out as the test split")
    val_fraction: float = setting(
        0.1,
        "data",
        "fraction of the training split held out for validation (best model, early stopping); the test split "
        "is then used once, at the end. 0: validate on the test split, as the tutorial",
    )
    out_dir: str | None = setting(
        None,
        "run",
        "run folder; it must be new or empty",
        shown="runs/<YYYYmmdd-HHMMSS>-<model>-jax, or -torch from PyTorch; -2, -3 ... if taken",
        metavar="DIR",
    )
    overwrite: bool = setting(
        False, "run", "replace the run files of an existing --out-dir (other files in it are kept)"
    )
    keep_last: int = setting(
        1,
        "run",
        "JAX: resumable states kept in last/ (each commits before the one before it goes); PyTorch keeps one last.pth; "
        "0: none saved at the end of an epoch (no time or disk spent on them: the finished run cannot be resumed, "
        "an interrupted one still saves its state)",
        metavar="N",
    )
    tensorboard: bool = setting(
        False,
        "run",
        "also write the per-epoch scalars as TensorBoard event files into the run folder "
        "(needs tensorboardX: pip install 'jaxvgg[tensorboard]')",
    )
    workers: int | None = setting(
        None,
        "devices",
        "image-loading workers: the JAX loader's threads (0: the default), PyTorch's DataLoader processes "
        "(at most 4; 0: in the main process)",
        shown="JAX: the cores this process may use, at most 8; PyTorch: 2",
    )
    strict: bool = setting(False, "data", "stop on unreadable images instead of skipping them")
    resume: str | None = setting(
        None,
        "run",
        "continue the run in this folder from its last checkpoint; of its settings only --epochs, --patience, "
        "--tensorboard and those of the invocation may change",
        shown="a new run",
        metavar="RUN_DIR",
    )
    pretrained: str | None = setting(
        None,
        "transfer",
        "start from these weights: a torchvision-format .pth state_dict or a run folder; a classification "
        "layer of the wrong shape is replaced for this dataset's classes",
        shown="random initialisation",
        metavar="PATH",
    )
    init_from: str | None = setting(
        None,
        "transfer",
        "start a new run from another run's weights (run folder or .pth); everything must fit",
        shown="random initialisation",
        metavar="PATH",
    )
    freeze: str = setting(
        "none",
        "transfer",
        "none, backbone (all but the classification layer) or comma-separated torch module prefixes "
        "such as features,classifier.0",
        metavar="LAYERS",
    )
    prune_amount: float = setting(
        0.0,
        "compression",
        "L1-prune this fraction of every conv/linear weight of the starting model (with --init-from or "
        "--pretrained) and fine-tune with the pruned weights held at 0",
    )
    prune_scope: str = setting(
        "layer",
        "compression",
        "layer: torch's l1_unstructured per layer; global: global_unstructured",
        choices=PRUNE_SCOPES,
    )
    teacher: str | None = setting(
        None,
        "compression",
        "knowledge distillation: a trained run folder (JAX or PyTorch) whose model teaches this one",
        shown="no distillation",
        metavar="RUN_DIR",
    )
    temperature: float = setting(4.0, "compression", "distillation softmax temperature T")
    alpha: float = setting(0.7, "compression", "distillation: weight of the teacher term (1 - alpha weighs the labels)")
    dataset_seed: int = setting(0, "data", "built-in dataset: seed of the drawing")
    dataset_counts: tuple[int, int, int] = setting(
        DEFAULT_COUNTS, "data", f"built-in dataset: images per class ({', '.join(CLASSES)})", metavar="N"
    )
    find_lr: bool = setting(
        False,
        "optimisation",
        "instead of training, run a learning-rate range test (100 steps, lr 1e-7 -> 1) and suggest an --lr; "
        "writes lr_find.png and lr_find.json into the run folder",
    )
    max_steps: int | None = setting(
        None, "devices", "stop after this many optimizer steps (smoke tests, benchmarks)", shown="no limit"
    )
    log_every: int = setting(
        10,
        "devices",
        "read the training loss back (progress, NaN check) every N steps, so no step waits for the one "
        "before; the sums stay exact",
    )
    precision: str = setting(
        "fp32",
        "devices",
        "bf16: mixed precision, bfloat16 compute with float32 weights, optimizer and loss (torch: autocast)",
        choices=PRECISIONS,
    )
    conv_route: str = setting(
        "auto",
        "devices",
        "how JAX computes convolutions: auto (cpu on a CPU, XLA's own, i.e. cuDNN, on a GPU or TPU), cpu "
        "(im2col GEMMs tuned for XLA:CPU), xla or im2col; PyTorch ignores it",
        choices=CONV_ROUTES,
    )
    data_cache: str = setting(
        "auto",
        "devices",
        "JAX: decode every image once into uint8 memory and crop, flip and normalise on the device: device, "
        "host (memory), none (decode each epoch with PIL), auto (device or host on a GPU/TPU when it fits, none "
        "on a CPU)",
        choices=DATA_CACHES,
    )
    torch_compile: bool = setting(False, "devices", "PyTorch: wrap the model in torch.compile (JAX ignores it)")
    devices: int | None = setting(
        None, "devices", "data-parallel over the first N devices (--batch-size is the global batch)", shown="all"
    )
    coordinator: str | None = setting(
        None,
        "devices",
        "multi-host: HOST:PORT of process 0 (jax.distributed.initialize; PyTorch: the DDP rendezvous)",
        shown="one process",
        metavar="HOST:PORT",
    )
    num_processes: int = setting(1, "devices", "multi-host: number of processes")
    process_id: int = setting(0, "devices", "multi-host: this process's index, 0 .. N-1")

    def __post_init__(self) -> None:
        if self.lr is None:  # resolved here, so config.json records the rate the run used
            self.lr = MODELS[self.model].default_lr if self.model in MODELS else 1e-3

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any, source: str | Path = "config") -> TrainConfig:
        """Settings from JSON, each checked against its field's type; unknown keys are ignored."""
        if not isinstance(raw, dict):
            raise UserError(f"{source}: expected a JSON object of settings, got {type(raw).__name__}")
        values = {k: v for k, v in LEGACY_SETTINGS.items() if k not in raw}
        for f in dataclasses.fields(cls):
            if f.name in raw:
                values[f.name] = _typed(f.name, f.type, raw[f.name], source)
        return cls(**values)


def _typed(name: str, kind: str, value: Any, source: str | Path) -> Any:
    """``value`` as field ``name`` of type ``kind`` (the annotation's text) wants it, or a one-line error."""
    optional = kind.endswith(" | None")
    base = kind.removesuffix(" | None")
    if value is None and optional:
        return None
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "tuple[int, int, int]": isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value),
    }[base]
    if not ok:
        raise UserError(
            f"{source}: {name} must be {kind.replace('tuple[int, int, int]', 'three integers')}, got {value!r}"
        )
    if base == "tuple[int, int, int]":
        return tuple(value)
    return float(value) if base == "float" else value


# Settings of one invocation rather than of the run: --resume takes these from the command line.
INVOCATION_SETTINGS = (
    "find_lr",
    "max_steps",
    "conv_route",
    "data_cache",
    "torch_compile",
    "log_every",
    "workers",
    "devices",
    "coordinator",
    "num_processes",
    "process_id",
    "precision",
    "overwrite",
)
# What a config.json written before a setting existed meant by leaving it out.
LEGACY_SETTINGS = {"class_weights": "none"}
# Settings a resumed run may change: they apply from the next epoch on, and the run says so.
RESUMABLE_CHANGES = ("epochs", "patience", "tensorboard", "keep_last")
# Where a run was written, not how it trains: a run's config.json read by --config leaves them to
# the command line, so repeating a run never continues or overwrites the original.
FOLDER_SETTINGS = ("out_dir", "overwrite", "resume")
# What config.json records beside the settings; --config takes the file as it is and skips them.
RUN_RECORDS = ("framework", "classes", "quantization", "quantized_from")

PRESETS: dict[str, dict[str, Any]] = {
    # The built-in default: finishes in minutes on a 2-core laptop CPU (see README for why this model).
    "quick": {},
    # The tutorial as written: hand-built VGG-16, 224 px, Adam 1e-4, 40 epochs, no augmentation.
    "tutorial": dict(
        model="vgg16_manual",
        image_size=224,
        batch_size=32,
        lr=1e-4,
        epochs=40,
        augment=False,
        weight_decay=0.0,
        schedule="constant",
        patience=40,
        val_fraction=0.0,  # the tutorial picks its best model on the test split
        split="random",  # torch.utils.data.random_split, not stratified
        resize="squash",  # transforms.Resize([224, 224]), no crop
        class_weights="none",
    ),
    # The tutorial's optimised version: torchvision VGG-16, augmentation, AdamW-free Adam + cosine.
    "optimized": dict(
        model="vgg16",
        image_size=224,
        batch_size=32,
        lr=3e-4,
        weight_decay=1e-5,
        epochs=100,
        schedule="cosine",
        patience=10,
        augment=True,
        class_weights="none",
    ),
}


def _as_flag(name: str, value: Any) -> str:
    """``name = value`` as the command line says it (``--no-augment``, ``--lr 0.0001``)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def _one_of(choices: Sequence[str]) -> str:
    return " or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}"


def _shown_default(f: dataclasses.Field) -> str:
    if f.metadata["shown"]:
        return f.metadata["shown"]
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if isinstance(f.default, tuple):
        return " ".join(map(str, f.default))
    return str(f.default)


def _metavar(f: dataclasses.Field) -> str | None:
    """``{a,b,c}`` for a short list of choices (argparse's own look); a name for a long one."""
    choices = f.metadata["choices"]
    if choices and len(",".join(choices)) <= 24:
        return "{" + ",".join(choices) + "}"
    return f.metadata["metavar"] or (f.name.upper() if choices else None)


def _help(f: dataclasses.Field) -> str:
    """The field's help, its choices where the metavar does not list them, and one default."""
    text = f.metadata["help"]
    if f.metadata["choices"] and not (_metavar(f) or "").startswith("{"):
        text += f"; one of: {', '.join(f.metadata['choices'])}"
    return f"{text} (default: {_shown_default(f)})".replace("%", "%%")  # argparse formats help with %


def add_arguments(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One flag per setting, named like the tutorial's variables (``--lr``, ``--batch-size`` …), in
    the groups of :data:`GROUPS`, plus ``--preset`` and ``--config``; returns the groups by key,
    for a script's own flags."""
    groups = {key: parser.add_argument_group(title, text) for key, (title, text) in GROUPS.items()}
    presets = "; ".join(
        f"{name}: {' '.join(_as_flag(*kv) for kv in values.items()) or 'the defaults'}"
        for name, values in PRESETS.items()
    )
    groups["settings"].add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help=f"start from a group of settings ({presets}) (default: none)",
    )
    groups["settings"].add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="settings from a JSON or YAML file (names as in config.json), or from a run folder (its "
        "config.json: to repeat that run); the flags given override it (default: none)",
    )
    for f in dataclasses.fields(TrainConfig):
        if "help" not in f.metadata:
            raise TypeError(
                f"TrainConfig.{f.name}: declare it with setting(...), which gives its flag a group and help"
            )
        if f.default is None and not f.metadata["shown"]:
            raise TypeError(f"TrainConfig.{f.name}: a default of None needs shown=..., what None means")
        group, flag, help_text = groups[f.metadata["group"]], "--" + f.name.replace("_", "-"), _help(f)
        if f.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.type == "tuple[int, int, int]":
            group.add_argument(flag, type=int, nargs=3, default=None, metavar=_metavar(f), help=help_text)
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(f.type, str)
            metavar = _metavar(f) or ("N" if kind is int else None)  # --log-every N: "every N steps"
            group.add_argument(flag, type=kind, default=None, metavar=metavar, help=help_text)
    return groups


def read_config_file(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """The preset and the settings of a ``--config`` file, each checked as a ``config.json``'s is.

    The file (JSON or YAML; a folder means its ``config.json``) maps setting names to values as
    ``config.json`` does, with an optional ``preset``. A run's own ``config.json`` (it records
    the ``framework``) gives everything but its folder: :data:`FOLDER_SETTINGS`.
    """
    source, raw = read_mapping(path)
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in raw:
        if key not in (*names, "preset", *RUN_RECORDS):
            close = difflib.get_close_matches(str(key), names, n=1)
            raise UserError(f"{source}: unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    preset = raw.get("preset")
    if preset is not None and preset not in PRESETS:
        raise UserError(f"{source}: preset {preset!r}: choose {_one_of(sorted(PRESETS))}")
    record = "framework" in raw
    settings = {k: v for k, v in LEGACY_SETTINGS.items() if k not in raw} if record else {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in raw and not (record and f.name in FOLDER_SETTINGS):
            settings[f.name] = _typed(f.name, f.type, raw[f.name], source)
    try:  # the file's values on their own: a bad one is the file's, whatever the command line adds
        validate_values(TrainConfig(**{**PRESETS.get(preset or "quick", {}), **settings}))
    except UserError as e:
        raise UserError(f"{source}: {e}") from e
    return preset, settings


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What was asked for, each over the one before: the preset (``--preset``, else the file's),
    the ``--config`` file's settings, then every flag given on the command line."""
    preset, from_file = read_config_file(args.config) if getattr(args, "config", None) else (None, {})
    preset = getattr(args, "preset", None) or preset
    values: dict[str, Any] = dict(PRESETS[preset]) if preset else {}
    values.update(from_file)
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = tuple(given) if f.name == "dataset_counts" else given
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the preset, the ``--config`` file and every flag given explicitly; with
    ``--resume``, the run's saved settings, which the rest may change only as :func:`resume_config` allows."""
    values = explicit_settings(args)
    if values.get("resume"):
        cfg, _ = resume_config(values["resume"], values)
    else:
        cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def resume_config(run_dir: str | Path, requested: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The saved settings of ``run_dir`` with ``requested`` applied, and notes on what changed.

    Settings of the invocation (``--max-steps``, ``--workers`` …) are taken as given; ``--epochs``
    and ``--patience`` may change with a note; any other difference from the saved run is an error
    that lists them all, so a resumed run is never silently something else.
    """
    saved = load_run_config(run_dir)
    notes, conflicts = [], []
    # Settings of this invocation come from it alone, given or default; a run's --max-steps does not persist.
    default = TrainConfig()
    changes: dict[str, Any] = {k: requested.get(k, getattr(default, k)) for k in INVOCATION_SETTINGS}
    changes["resume"] = str(run_dir)
    for name, value in requested.items():
        if name == "resume" or name in INVOCATION_SETTINGS:
            continue
        old = getattr(saved, name)
        if value != old and name in RESUMABLE_CHANGES:
            changes[name] = value
            notes.append(f"--{name.replace('_', '-')} {value} applies from now on (the run had {old})")
        elif value != old:
            conflicts.append(f"--{name.replace('_', '-')} {value} (the run has {old})")
    if conflicts:
        raise UserError(
            f"--resume {run_dir}: these settings differ from the run's: {'; '.join(conflicts)}; "
            "leave them out to continue the run as it was, or start a new run"
        )
    cfg = dataclasses.replace(saved, **changes)
    validate_values(cfg)
    return cfg, notes


def changed_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that differ from the defaults (what a caller in Python asked for)."""
    default = TrainConfig()
    out = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(default, f.name)
    }
    if cfg.model in MODELS and cfg.lr == MODELS[cfg.model].default_lr:
        out.pop("lr", None)  # filled in from the model, not asked for
    return out


def already_resumed(cfg: TrainConfig, saved: TrainConfig) -> bool:
    """Whether ``cfg`` is ``saved`` as :func:`resume_config` returns it (only invocation settings
    and the changes a resume allows differ): the command line resolved it already."""
    skip = {"resume", *INVOCATION_SETTINGS, *RESUMABLE_CHANGES}
    return all(getattr(cfg, f.name) == getattr(saved, f.name) for f in dataclasses.fields(cfg) if f.name not in skip)


def validate_values(cfg: TrainConfig) -> None:
    """Names and ranges of every setting, without touching the file system: the check for a
    command line and for a run folder's ``config.json`` alike."""
    for f in dataclasses.fields(cfg):  # the choices of each setting, from its field (model first)
        value = getattr(cfg, f.name)
        if f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise UserError(f"--{f.name.replace('_', '-')} {value!r}: choose {_one_of(f.metadata['choices'])}")
    for name in ("image_size", "batch_size", "epochs", "step_size", "log_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.image_size > 4096:
        raise UserError(f"--image-size {cfg.image_size}: at most 4096")
    if cfg.lr <= 0 or cfg.weight_decay < 0:
        raise UserError("--lr must be positive and --weight-decay non-negative")
    if cfg.patience < 1:
        raise UserError("--patience must be at least 1")
    if not (0 < cfg.test_fraction < 1 and 0 <= cfg.val_fraction < 1):
        raise UserError("--test-fraction must be in (0, 1) and --val-fraction in [0, 1)")
    if cfg.keep_last < 0:
        raise UserError(f"--keep-last {cfg.keep_last}: must be 0 or more")
    if cfg.workers is not None and cfg.workers < 0:
        raise UserError(f"--workers {cfg.workers}: must be 0 or more")
    if not 0.0 <= cfg.prune_amount < 1.0:
        raise UserError(f"--prune-amount {cfg.prune_amount}: must be in [0, 1)")
    if cfg.temperature <= 0 or not 0.0 <= cfg.alpha <= 1.0:
        raise UserError("--temperature must be positive and --alpha in [0, 1]")
    if cfg.pretrained and cfg.init_from:
        raise UserError("give --pretrained or --init-from, not both")
    if cfg.find_lr and cfg.resume:
        raise UserError("--find-lr runs in a new run folder; it does not take --resume")


def validate(cfg: TrainConfig) -> None:
    """:func:`validate_values`, then what a new run needs from the file system and the model."""
    validate_values(cfg)
    if cfg.freeze != "none":
        check_freeze(cfg.model, cfg.freeze)
    if cfg.teacher:
        teacher = load_run_config(cfg.teacher)  # a clear error if it is not a run folder
        if get_spec(teacher.model).sized and teacher.image_size != cfg.image_size:
            raise UserError(
                f"--teacher {cfg.teacher}: {teacher.model} only takes {teacher.image_size} px images, "
                f"not --image-size {cfg.image_size}"
            )
    for flag, source in (("--pretrained", cfg.pretrained), ("--init-from", cfg.init_from)):
        if source and not Path(source).exists():
            raise UserError(f"{flag} {source}: no such file or folder")


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """A run folder's settings, checked like a command line's (types, names, ranges)."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: not a run folder (no such folder)")
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.json)")
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from e
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both
        raise UserError(f"{path}: not valid JSON ({e})") from e
    cfg = TrainConfig.from_json(raw, path)
    try:
        validate_values(cfg)
    except UserError as e:
        raise UserError(f"{path}: {e}") from e
    return cfg


def run_framework(run_dir: str | Path) -> str:
    """``jax`` or ``torch``: which framework wrote the run folder (its ``config.json`` says)."""
    path = Path(run_dir) / "config.json"
    load_run_config(run_dir)
    framework = json.loads(path.read_text()).get("framework", "jax")  # not a setting, so read here
    if framework not in ("jax", "torch"):
        raise UserError(f"{path}: framework {framework!r}: expected jax or torch")
    return framework


def run_quantization(run_dir: str | Path) -> str | None:
    """``int8`` for a run folder written by ``scripts/quantize.py``, None for a float run."""
    path = Path(run_dir) / "config.json"
    load_run_config(run_dir)
    quantization = json.loads(path.read_text()).get("quantization")  # a record, not a setting
    if quantization not in (None, "int8"):
        raise UserError(f"{path}: quantization {quantization!r}: expected int8 (or none)")
    return quantization


def float_run_only(run_dir: str | Path, needs: str) -> None:
    """A one-line error when ``run_dir`` is an int8 run, for what ``needs`` its float model."""
    if run_quantization(run_dir):
        source = json.loads((Path(run_dir) / "config.json").read_text()).get("quantized_from")
        raise UserError(f"{run_dir}: an int8 run (quantized from {source}); {needs} needs the float run: use {source}")
