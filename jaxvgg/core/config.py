"""Every training setting in one place, the presets, and the command-line flags built from them.

Both ``scripts/train_jax.py`` and ``scripts/train_torch.py`` take exactly these flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from jaxvgg.core.errors import UserError
from jaxvgg.core.freeze import check_freeze
from jaxvgg.core.specs import MODELS, get_spec

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
CONV_ROUTES = ("auto", "cpu", "xla", "im2col")  # auto: jaxvgg.ops.conv.route_for_platform


@dataclasses.dataclass
class TrainConfig:
    # The main job: a VGG-16 that learns the built-in set in minutes on two CPU cores (docs/recipes.md).
    model: str = "vgg16_gap_bn"
    data_dir: str | None = None  # None: the built-in synthetic dataset
    image_size: int = 32
    batch_size: int = 32
    epochs: int = 5
    lr: float | None = None  # None: the model's own default (ModelSpec.default_lr)
    weight_decay: float = 1e-5
    optimizer: str = "adam"
    class_weights: str = "balanced"  # rare classes weigh more in the training loss; none: plain loss
    schedule: str = "cosine"
    step_size: int = 30  # StepLR
    gamma: float = 0.1  # StepLR
    momentum: float = 0.9  # SGD
    patience: int = 10  # early stopping: epochs without a better validation accuracy
    seed: int = 0
    augment: bool = False
    split: str = "stratified"
    split_file: str | None = None  # re-use another run's split.json
    test_fraction: float = 0.2
    val_fraction: float = 0.1  # of the training split, held out for model selection; 0: validate on test (tutorial)
    out_dir: str | None = None
    overwrite: bool = False  # replace the run files of an existing --out-dir
    workers: int | None = None
    strict: bool = False  # unreadable images are an error instead of being skipped
    resume: str | None = None  # a run folder to continue
    pretrained: str | None = None  # starting weights (.pth or run folder); a head that does not fit is replaced
    init_from: str | None = None  # starting weights that must fit exactly (a run folder or .pth)
    freeze: str = "none"  # none, backbone, or comma-separated torch module prefixes
    prune_amount: float = 0.0  # L1-prune this fraction of conv/linear weights at the start, keep them 0
    prune_scope: str = "layer"  # per layer (l1_unstructured) or global (global_unstructured)
    teacher: str | None = None  # knowledge distillation from this run folder
    temperature: float = 4.0  # distillation softmax temperature T
    alpha: float = 0.7  # weight of the soft (teacher) term; 1 - alpha for the labels
    dataset_seed: int = 0  # built-in dataset
    dataset_counts: tuple[int, int, int] = (1000, 1000, 152)
    find_lr: bool = False  # run the learning-rate range test instead of training
    max_steps: int | None = None  # stop after this many steps (smoke tests, benchmarks)
    log_every: int = 10  # read the training metrics back every N steps (not every step: no wait per step)
    precision: str = "fp32"  # fp32, or bf16: bfloat16 compute, float32 weights, optimizer and loss
    conv_route: str = "auto"  # JAX convolutions: auto (the backend's), cpu, xla or im2col
    devices: int | None = None  # data-parallel over this many devices (default: all)
    coordinator: str | None = None  # HOST:PORT of process 0, for multi-host runs
    num_processes: int = 1
    process_id: int = 0

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
    "log_every",
    "workers",
    "devices",
    "coordinator",
    "num_processes",
    "process_id",
    "precision",
    "overwrite",
)
CLASS_WEIGHTS = ("none", "balanced")
# What a config.json written before a setting existed meant by leaving it out.
LEGACY_SETTINGS = {"class_weights": "none"}
# Settings a resumed run may change: they apply from the next epoch on, and the run says so.
RESUMABLE_CHANGES = ("epochs", "patience")

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

_HELP = {
    "model": "model name (see scripts/summary.py --help)",
    "data_dir": "ImageFolder root (one sub-folder per class); default: the built-in dataset",
    "image_size": "square input size in pixels",
    "epochs": "maximum epochs (also T_max of the cosine schedule)",
    "lr": "base learning rate (default: the model's own: 5e-4 for vgg16_gap_bn and vgg16_dsconv_bn, 1e-3 for "
    "resnet50 and student_cnn, 1e-4 (the tutorial's) for the other VGGs)",
    "weight_decay": "weight decay (coupled L2 for adam/sgd, decoupled for adamw)",
    "class_weights": "none, or balanced: each class's training loss weighted by n / (classes x n_class), "
    "as torch's CrossEntropyLoss(weight=...); for imbalanced data such as PlantVillage's 1000/1000/152 potatoes",
    "schedule": "cosine (CosineAnnealingLR), step (StepLR) or constant",
    "patience": "early stopping: epochs without a better validation accuracy",
    "augment": "RandomResizedCrop + RandomHorizontalFlip for training",
    "split": "stratified (default) or random",
    "split_file": "re-use a split.json (e.g. from another run) so both runs see the same images",
    "val_fraction": "hold out this stratified fraction of the training split for validation (best model, "
    "early stopping); the test split is then used once, at the end. 0: validate on the test split, as the tutorial",
    "out_dir": "run folder (default runs/<time>-<model>-<framework>); it must be new or empty",
    "overwrite": "replace the run files of an existing --out-dir (other files in it are kept)",
    "workers": "image-loading threads (default: CPU count, at most 8)",
    "strict": "stop on unreadable images instead of skipping them",
    "resume": "continue the run in this folder from its last checkpoint",
    "pretrained": "start from these weights: a torchvision-format .pth state_dict or a run folder; "
    "a classification layer of the wrong shape is replaced for this dataset's classes",
    "init_from": "start a new run from another run's weights (run folder or .pth); everything must fit",
    "freeze": "none, backbone (all but the classification layer) or comma-separated layer prefixes "
    "such as features,classifier.0",
    "find_lr": "instead of training, run a learning-rate range test (100 steps, lr 1e-7 -> 1) and suggest an --lr; "
    "writes lr_find.png and lr_find.json into the run folder",
    "max_steps": "stop after this many optimizer steps",
    "log_every": "read the training loss back (progress bar, NaN check) every N steps; sums stay exact",
    "prune_amount": "L1-prune this fraction of every conv/linear weight of the starting model "
    "(with --init-from/--pretrained) and fine-tune with the pruned weights held at 0",
    "prune_scope": "layer (torch l1_unstructured per layer) or global (global_unstructured)",
    "teacher": "knowledge distillation: a trained run folder (JAX or PyTorch) whose model teaches this one",
    "temperature": "distillation temperature T",
    "alpha": "distillation: weight of the teacher term (1 - alpha weighs the labels)",
    "conv_route": "how JAX computes convolutions: auto (cpu on a CPU, XLA's own, i.e. cuDNN, on a GPU/TPU), "
    "cpu (im2col GEMMs tuned for XLA:CPU), xla or im2col; PyTorch ignores it",
    "precision": "fp32, or bf16 (mixed: bfloat16 compute, float32 master weights, optimizer and loss; torch: autocast)",
    "devices": "data-parallel over the first N devices (default: all; --batch-size is the global batch)",
    "coordinator": "multi-host: HOST:PORT of process 0 (jax.distributed.initialize)",
    "num_processes": "multi-host: number of processes",
    "process_id": "multi-host: this process's index, 0 .. N-1",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, named like the tutorial's variables (``--lr``, ``--batch-size`` …)."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="start from these settings")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = _HELP.get(f.name, "") + ("" if f.default is None else f" (default: {f.default})")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name == "dataset_counts":
            parser.add_argument(
                flag, type=int, nargs=3, default=None, metavar="N", help="built-in dataset: images per class"
            )
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None, help=help_text)


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The preset's settings, then every flag given on the command line."""
    values: dict[str, Any] = dict(PRESETS[args.preset]) if getattr(args, "preset", None) else {}
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = tuple(given) if f.name == "dataset_counts" else given
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the preset, then every flag given explicitly; with ``--resume``, the run's
    saved settings, which the flags given may change only as :func:`resume_config` allows."""
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
    if cfg.model not in MODELS:
        raise UserError(f"--model {cfg.model!r}: choose one of {', '.join(sorted(MODELS))}")
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"--optimizer {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if cfg.class_weights not in CLASS_WEIGHTS:
        raise UserError(f"--class-weights {cfg.class_weights!r}: choose one of {', '.join(CLASS_WEIGHTS)}")
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"--schedule {cfg.schedule!r}: choose one of {', '.join(SCHEDULES)}")
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
    if cfg.split not in ("stratified", "random"):
        raise UserError(f"--split {cfg.split!r}: choose stratified or random")
    if cfg.workers is not None and cfg.workers < 0:
        raise UserError(f"--workers {cfg.workers}: must be 0 or more")
    if cfg.conv_route not in CONV_ROUTES:
        raise UserError(f"--conv-route {cfg.conv_route!r}: choose one of {', '.join(CONV_ROUTES)}")
    if cfg.precision not in ("fp32", "bf16"):
        raise UserError(f"--precision {cfg.precision!r}: choose fp32 or bf16")
    if not 0.0 <= cfg.prune_amount < 1.0:
        raise UserError(f"--prune-amount {cfg.prune_amount}: must be in [0, 1)")
    if cfg.prune_scope not in ("layer", "global"):
        raise UserError(f"--prune-scope {cfg.prune_scope!r}: choose layer or global")
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
