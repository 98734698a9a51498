"""torchsummary-style tables. The formatter is shared; each framework only collects rows."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Row:
    kind: str  # the layer's class name, as torch spells it
    path: str  # torch-style module path, e.g. "features.0"
    shape: tuple[int, ...]  # output shape in torch (NCHW) order, batch dimension as -1
    params: int  # trainable parameters
    frozen: int = 0  # parameters that do not train
    macs: int = 0  # multiply-adds per image


@dataclasses.dataclass(frozen=True)
class Summary:
    rows: list[Row]
    input_shape: tuple[int, ...]  # (C, H, W)

    @property
    def trainable(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def frozen(self) -> int:
        return sum(r.frozen for r in self.rows)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    def format(self) -> str:
        mb = 4 / 1024**2
        line, double = "-" * 88, "=" * 88
        out = [line, f"{'Layer (type)':>25}  {'Module':<22}{'Output Shape':>22}{'Param #':>17}", double]
        for i, r in enumerate(self.rows, 1):
            shape = str([-1, *r.shape[1:]])
            out.append(f"{f'{r.kind}-{i}':>25}  {r.path:<22}{shape:>22}{r.params + r.frozen:>17,}")
        activations = sum(math.prod(r.shape[1:]) for r in self.rows)
        input_mb = math.prod(self.input_shape) * mb
        fwd_bwd_mb = 2 * activations * mb
        params_mb = self.total * mb
        out += [
            double,
            f"Total params: {self.total:,}",
            f"Trainable params: {self.trainable:,}",
            f"Non-trainable params: {self.frozen:,}",
            line,
            f"Input size (MB): {input_mb:.2f}",
            f"Forward/backward pass size (MB): {fwd_bwd_mb:.2f}",
            f"Params size (MB): {params_mb:.2f}",
            f"Estimated Total Size (MB): {input_mb + fwd_bwd_mb + params_mb:.2f}",
            f"Forward multiply-adds (G): {self.macs / 1e9:.2f}",
            line,
        ]
        return "\n".join(out)


def layer_macs(kind: str, weight_size: int, out_shape: Sequence[int]) -> int:
    """Multiply-adds per image: every weight once per output position (conv) or once (linear)."""
    if kind == "Conv2d":
        return weight_size * out_shape[-2] * out_shape[-1]
    if kind == "Linear":
        return weight_size
    return 0
