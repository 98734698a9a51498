"""The model table shared by both frameworks.

Everything here is plain Python so that `jaxvgg` (Flax) and `torchref` (PyTorch) build each
model from the same description, in the spirit of torchvision's single `cfgs` table: one
`make_layers` per framework turns a config into layers with identical indices, so a torch
key such as ``features.10.weight`` names the same layer as Flax's ``features_10/kernel``.
"""

from __future__ import annotations

import dataclasses
import itertools

# torchvision's VGG configurations: numbers are conv widths, "M" is a 2x2 max-pool.
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    # The tutorial's knowledge-distillation student: two conv blocks.
    "student": [32, "M", 64, "M"],
}


@dataclasses.dataclass(frozen=True)
class Head:
    """What follows the conv features: an optional adaptive pool, then the FC stack."""

    pool: tuple[int, int] | None  # AdaptiveAvgPool2d output size; None flattens the features as they are
    hidden: tuple[int, ...]  # widths of the hidden Linear layers (each followed by ReLU)
    dropout: bool  # Dropout(0.5) after each hidden ReLU, as in torchvision


HEADS: dict[str, Head] = {
    "torchvision": Head(pool=(7, 7), hidden=(4096, 4096), dropout=True),
    "manual": Head(pool=None, hidden=(4096, 4096), dropout=False),
    "slim": Head(pool=(7, 7), hidden=(1024, 256), dropout=True),
    "gap": Head(pool=(1, 1), hidden=(), dropout=False),
    "student": Head(pool=None, hidden=(256,), dropout=False),
}

DROPOUT_RATE = 0.5

# ResNet-50's bottleneck blocks per stage (torchvision's resnet50).
RESNET_BLOCKS: tuple[int, int, int, int] = (3, 4, 6, 3)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One row of the model zoo."""

    family: str  # "vgg" or "resnet"
    cfg: str = "D"
    batch_norm: bool = False
    separable: bool = False  # depthwise-separable convolutions instead of plain 3x3 ones
    head: str = "torchvision"
    # "torchvision" (kaiming fan-out), "fan_in" (the same but kaiming fan-in for the dense
    # convolutions: VGGs without BatchNorm, whose forward signal fan-out shrinks about tenfold before
    # the head, docs/recipes.md) or "torch" (nn.Module defaults)
    init: str = "torchvision"
    # ResNet: each block's last BatchNorm starts at scale 0, so every block starts as the identity
    # (torchvision's zero_init_residual; docs/recipes.md)
    zero_init_residual: bool = False
    lr: float | None = None  # Adam's rate from scratch where the family's rule (default_lr) is not the best
    description: str = ""

    @property
    def default_lr(self) -> float:
        """Adam's learning rate for training the model from scratch with the defaults.

        VGGs sit at the majority class at 1e-3 without BatchNorm (every such row of lighten.py)
        and learn at the tutorial's 1e-4; BatchNorm with the 4096-wide head still blew up at 5e-4
        (vgg16_bn: first-epoch loss 30), so only the GAP head with BatchNorm and the
        depthwise-separable VGGs get 5e-4; ResNet-50 and the two-conv student 1e-3. A spec's own
        ``lr`` wins (VGG-19: 2e-4; vgg16_dsconv: 1e-3). Measurements and what is not yet shown: docs/recipes.md.
        """
        if self.lr is not None:
            return self.lr
        if self.family == "resnet" or self.cfg == "student":
            return 1e-3
        return 5e-4 if (self.batch_norm and self.head == "gap") or self.separable else 1e-4

    @property
    def sized(self) -> bool:
        """Whether the first FC layer's width depends on the image size (no adaptive pool)."""
        return self.family == "vgg" and HEADS[self.head].pool is None


def _torchvision_vggs() -> dict[str, ModelSpec]:
    out = {}
    for depth, cfg in (("11", "A"), ("13", "B"), ("16", "D"), ("19", "E")):
        # VGG-19 falls too slowly at 1e-4 (0.91x in 30 steps); at 2e-4 like the others (docs/recipes.md)
        lr = 2e-4 if depth == "19" else None
        out[f"vgg{depth}"] = ModelSpec("vgg", cfg, init="fan_in", lr=lr, description=f"torchvision VGG-{depth}")
        out[f"vgg{depth}_bn"] = ModelSpec(
            "vgg", cfg, batch_norm=True, description=f"torchvision VGG-{depth} with BatchNorm"
        )
    return out


MODELS: dict[str, ModelSpec] = {
    **_torchvision_vggs(),
    "vgg16_manual": ModelSpec(
        "vgg",
        "D",
        head="manual",
        # the tutorial's own layers start at torch's defaults, where the loss sat at ln C for 30 steps
        init="fan_in",
        description="the tutorial's hand-built VGG-16: no average pool, no dropout",
    ),
    "vgg16_slim": ModelSpec("vgg", "D", head="slim", init="fan_in", description="VGG-16, FC head 1024-256"),
    "vgg16_slim_bn": ModelSpec("vgg", "D", batch_norm=True, head="slim", description="vgg16_slim with BatchNorm"),
    "vgg16_gap": ModelSpec("vgg", "D", head="gap", init="fan_in", description="VGG-16, global-average-pool head"),
    "vgg16_gap_bn": ModelSpec(
        "vgg", "D", batch_norm=True, head="gap", description="VGG-16 with BatchNorm and the global-average-pool head"
    ),
    "vgg16_dsconv": ModelSpec(
        "vgg",
        "D",
        separable=True,
        head="slim",
        # pointwise convolutions at Kaiming fan-in and 1e-3: at 5e-4 from fan-out it fell 0.82x in 30 steps
        init="fan_in",
        lr=1e-3,
        description="VGG-16 with depthwise-separable convolutions and the slim head",
    ),
    "vgg16_dsconv_bn": ModelSpec(
        "vgg", "D", batch_norm=True, separable=True, head="slim", description="vgg16_dsconv with BatchNorm"
    ),
    "resnet50": ModelSpec(
        "resnet",
        head="gap",
        zero_init_residual=True,
        description="torchvision ResNet-50 (v1.5: stride on the 3x3 conv)",
    ),
    "student_cnn": ModelSpec(
        "vgg",
        "student",
        head="student",
        init="torch",
        description="the tutorial's small distillation student",
    ),
}


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def size_options(name: str, image_size: int) -> dict[str, int]:
    """``{"image_size": image_size}`` for models whose first FC layer depends on it, else ``{}``."""
    return {"image_size": image_size} if get_spec(name).sized else {}


def conv_widths(cfg: str) -> list[int]:
    return [v for v in CFGS[cfg] if v != "M"]


def flatten_shape(spec: ModelSpec, image_size: int) -> tuple[int, int, int]:
    """(channels, height, width) of the tensor the first FC layer flattens."""
    channels = conv_widths(spec.cfg)[-1]
    pool = HEADS[spec.head].pool
    if pool is not None:
        return channels, pool[0], pool[1]
    n_pools = CFGS[spec.cfg].count("M")
    side = image_size // 2**n_pools
    if side < 1:
        raise ValueError(f"image size {image_size} is too small for {spec.cfg!r}: it needs at least {2**n_pools}")
    return channels, side, side


def classifier_widths(spec: ModelSpec, num_classes: int, image_size: int) -> list[tuple[int, int]]:
    """(in, out) of every Linear layer of the head, in order."""
    c, h, w = flatten_shape(spec, image_size)
    widths = [c * h * w, *HEADS[spec.head].hidden, num_classes]
    return list(itertools.pairwise(widths))
