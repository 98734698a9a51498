"""The architecture diagram the tutorial asks for: any zoo model as blocks, drawn with matplotlib.

:func:`model_blocks` reads the model table (:mod:`jaxvgg.core.specs`) as the list of blocks the
picture is made of: the input, each conv stage with its widths, each pool, each layer of the
head, every one with its output shape; :func:`draw_blocks` draws that list. The shapes are
worked out here from the table, without building a model; the tests check them against both
frameworks' layer-by-layer summaries.
"""

from __future__ import annotations

import dataclasses
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch, Patch

from jaxvgg.core.plots import save_figure
from jaxvgg.core.specs import CFGS, DROPOUT_RATE, HEADS, RESNET_BLOCKS, classifier_widths, flatten_shape, get_spec
from jaxvgg.core.stages import head_modules, vgg_stages

FORMATS = (".png", ".svg", ".pdf")
COLOURS = {"input": "#d9d9d9", "conv": "#6baed6", "pool": "#fd8d3c", "fc": "#74c476"}
LEGEND = {"input": "input", "conv": "convolution stage", "pool": "pooling", "fc": "fully connected"}


@dataclasses.dataclass(frozen=True)
class Block:
    kind: str  # "input", "conv" (a stage of convolutions), "pool" or "fc"
    name: str  # "block1" (the tutorial's name for a VGG stage), "layer2", "max-pool", "fc3", ...
    detail: str  # what it holds, in words
    shape: tuple[int, ...]  # output shape without the batch dimension, torch order: (C, H, W) or (features,)
    modules: tuple[str, ...]  # torch names of its layers (those of a summary's rows)


def model_blocks(name: str, image_size: int = 224, num_classes: int = 3) -> list[Block]:
    """The blocks of zoo model ``name`` for ``image_size``-px inputs, input first, logits last."""
    spec = get_spec(name)
    blocks = [Block("input", "input", "RGB image", (3, image_size, image_size), ())]
    rest = _resnet(image_size, num_classes) if spec.family == "resnet" else _vgg(name, image_size, num_classes)
    return blocks + rest


def _vgg(name: str, image_size: int, num_classes: int) -> list[Block]:
    spec = get_spec(name)
    pools = CFGS[spec.cfg].count("M")
    if image_size < 2**pools:
        raise ValueError(f"image size {image_size} is too small for {name}: it needs at least {2**pools}")
    conv = "depthwise-separable conv 3×3" if spec.separable else "conv 3×3"
    norm = " + BatchNorm" if spec.batch_norm else ""
    blocks, side = [], image_size
    for k, stage in enumerate(vgg_stages(name), start=1):
        widths = ", ".join(str(w) for w in dict.fromkeys(stage.widths))
        detail = f"{len(stage.widths)} × {conv}{norm}, ReLU; {widths} channels"
        blocks.append(Block("conv", f"block{k}", detail, (stage.widths[-1], side, side), stage.modules))
        side //= 2
        blocks.append(Block("pool", "max-pool", "2×2, stride 2", (stage.widths[-1], side, side), (stage.pool,)))
    head = HEADS[spec.head]
    channels, h, w = flatten_shape(spec, image_size)
    if head.pool is not None:
        detail = "global average" if head.pool == (1, 1) else f"adaptive average to {h}×{w}"
        blocks.append(Block("pool", "avg-pool", detail, (channels, h, w), ("avgpool",)))
    widths = classifier_widths(spec, num_classes, image_size)
    hidden = ", ReLU" + (f", dropout {DROPOUT_RATE}" if head.dropout else "")
    for i, ((n_in, n_out), module) in enumerate(zip(widths, head_modules(name), strict=True), start=1):
        after = hidden if i < len(widths) else f" (logits, {num_classes} classes)"
        blocks.append(Block("fc", f"fc{i}", f"Linear {n_in}→{n_out}{after}", (n_out,), (module,)))
    return blocks


def _halve(side: int) -> int:
    """A stride-2 layer's output side (ResNet's 7×7 stem, 3×3 pool and 3×3 convs all pad to keep this)."""
    return (side - 1) // 2 + 1


def _resnet(image_size: int, num_classes: int) -> list[Block]:
    side = _halve(image_size)
    stem = "conv 7×7, stride 2 + BatchNorm, ReLU; 64 channels"
    blocks = [Block("conv", "stem", stem, (64, side, side), ("conv1", "bn1"))]
    side = _halve(side)
    blocks.append(Block("pool", "max-pool", "3×3, stride 2", (64, side, side), ("maxpool",)))
    for stage, count in enumerate(RESNET_BLOCKS, start=1):
        width = 64 * 2 ** (stage - 1)  # torchvision's ResNet-50 (jaxvgg/models/resnet.py)
        side = _halve(side) if stage > 1 else side
        stride = ", stride 2" if stage > 1 else ""
        detail = f"{count} × bottleneck 1×1 {width}, 3×3 {width}, 1×1 {4 * width}{stride}"
        blocks.append(Block("conv", f"layer{stage}", detail, (4 * width, side, side), (f"layer{stage}",)))
    blocks.append(Block("pool", "avg-pool", "global average", (2048, 1, 1), ("avgpool",)))
    logits = f"Linear 2048→{num_classes} (logits, {num_classes} classes)"
    blocks.append(Block("fc", "fc", logits, (num_classes,), ("fc",)))
    return blocks


def shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


def draw_blocks(blocks: list[Block], path: str | os.PathLike, title: str) -> None:
    """One row per block, input at the top: a bar as wide as the feature map's side (square-root
    scale, so 7×7 stays visible under 224×224) and as tall as its channels (log scale); fully
    connected layers are thin bars as wide as their outputs (log scale)."""
    n = len(blocks)
    fig, ax = plt.subplots(figsize=(12, 0.42 * n + 1.4))
    input_side = max(b.shape[-1] for b in blocks if len(b.shape) == 3)
    widest = max(b.shape[0] for b in blocks)
    for i, b in enumerate(blocks):
        y = n - 1 - i
        if len(b.shape) == 3:
            width = 0.3 + 2.7 * math.sqrt(b.shape[-1] / input_side)
            height = 0.15 + 0.55 * math.log2(b.shape[0]) / math.log2(widest)
        else:
            width, height = 0.3 + 2.7 * math.log2(max(b.shape[0], 2)) / math.log2(widest), 0.22
        ax.add_patch(
            FancyBboxPatch(
                (1.6 - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.02", fc=COLOURS[b.kind], ec="k"
            )
        )
        ax.text(3.3, y, b.name, va="center", weight="bold", fontsize=9)
        ax.text(4.5, y, shape_text(b.shape), va="center", fontsize=9, family="monospace")
        ax.text(6.1, y, b.detail, va="center", fontsize=9)
        if i:
            ax.annotate("", (1.6, y + 0.4), (1.6, y + 0.6), arrowprops={"arrowstyle": "-", "color": "0.5"})
    ax.text(4.5, n - 0.25, "output shape", fontsize=8, color="0.4")
    ax.set_xlim(0, 12)
    ax.set_ylim(-0.7, n + 0.1)
    ax.axis("off")
    kinds = list(dict.fromkeys(b.kind for b in blocks))
    handles = [Patch(fc=COLOURS[k], ec="k", label=LEGEND[k]) for k in kinds]
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8, frameon=False)
    ax.set_title(title, fontsize=11, loc="left")
    fig.tight_layout()
    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text in an SVG: searchable, and smaller
        save_figure(fig, path)


def draw_model(name: str, path: str | os.PathLike, image_size: int = 224, num_classes: int = 3) -> list[Block]:
    """Draw zoo model ``name`` to ``path`` (.png, .svg or .pdf); returns the blocks drawn."""
    blocks = model_blocks(name, image_size, num_classes)
    spec = get_spec(name)
    title = f"{name}: {spec.description}\ninput 3×{image_size}×{image_size}, {num_classes} classes"
    draw_blocks(blocks, path, title)
    return blocks
