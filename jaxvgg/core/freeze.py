"""Which layers ``--freeze`` freezes, named the way torch names modules (``features.0``, ``layer4.2.conv1``, ``fc``).

Both frameworks ask the same rule about their own layers; the names come from the model table
(:func:`module_names`), so a bad ``--freeze`` is refused before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxvgg.core.errors import UserError
from jaxvgg.core.specs import CFGS, HEADS, RESNET_BLOCKS, get_spec

IsFrozen = Callable[[str], bool]


def module_names(name: str) -> list[str]:
    """torch names of the model's modules that hold parameters, in order."""
    spec = get_spec(name)
    if spec.family == "resnet":
        names = ["conv1", "bn1"]
        for stage, blocks in enumerate(RESNET_BLOCKS, start=1):
            for b in range(blocks):
                block = f"layer{stage}.{b}"
                names += [f"{block}.{m}" for m in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
                names += [f"{block}.downsample.0", f"{block}.downsample.1"] if b == 0 else []
        return [*names, "fc"]
    names, index = [], 0
    for v in CFGS[spec.cfg]:
        if v == "M":
            index += 1
            continue
        conv = f"features.{index}"
        names += [f"{conv}.depthwise", f"{conv}.pointwise"] if spec.separable else [conv]
        names += [f"features.{index + 1}"] if spec.batch_norm else []
        index += 3 if spec.batch_norm else 2
    head = HEADS[spec.head]
    per_hidden = 3 if head.dropout else 2  # Linear, ReLU(, Dropout)
    names += [f"classifier.{per_hidden * i}" for i in range(len(head.hidden) + 1)]
    return names


def head_module(name: str) -> str:
    """The torch name of the model's classification layer (the one a new dataset replaces)."""
    return module_names(name)[-1]


def under(name: str, prefix: str) -> bool:
    """Whether module ``name`` is ``prefix`` or inside it."""
    return name == prefix or name.startswith(prefix + ".")


def freeze_rule(name: str, freeze: str) -> IsFrozen | None:
    """``module_name -> frozen?`` for ``--freeze``: ``none``, ``backbone`` (all but the
    classification layer) or comma-separated torch module prefixes (``features,classifier.0``).
    """
    if freeze in ("", "none"):
        return None
    if freeze == "backbone":
        head = head_module(name)
        return lambda module: not under(module, head)
    prefixes = tuple(p.strip() for p in freeze.split(",") if p.strip())
    return lambda module: any(under(module, p) for p in prefixes)


def check_freeze(name: str, freeze: str) -> None:
    """Every prefix must name something in the model, and something must stay trainable."""
    rule = freeze_rule(name, freeze)
    if rule is None:
        return
    modules = module_names(name)
    if freeze != "backbone":
        for prefix in freeze.split(","):
            prefix = prefix.strip()
            if prefix and not any(under(m, prefix) for m in modules):
                tops = ", ".join(dict.fromkeys(m.split(".")[0] for m in modules))
                raise UserError(f"--freeze {prefix!r}: {name} has no such layer (its top-level layers: {tops})")
    if all(rule(m) for m in modules):
        raise UserError(f"--freeze {freeze!r} freezes every layer of {name}: nothing would train")
