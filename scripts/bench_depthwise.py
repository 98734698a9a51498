"""Time one depthwise 3x3 convolution (stride 1, padding 1) at vgg16_dsconv's shapes, JAX against
PyTorch: forward, forward+backward, and JAX's input and weight gradients apart (docs/performance.md,
"The depthwise convolution's weight gradient"). A benchmark: it prints milliseconds, asserts nothing.

    python scripts/bench_depthwise.py [--batch-size 8]
"""

import argparse

import jax
import numpy as np
import torch

from jaxvgg.core.machine import describe_cpu
from jaxvgg.ops.conv import conv2d
from jaxvgg.tools.commands.bench import timed

# vgg16_dsconv's depthwise layers at 112 px, and a 224 px map
SHAPES = [(112, 64), (56, 128), (28, 256), (14, 512), (7, 512), (224, 64)]


def median_ms(fn, calls: int = 10) -> float:
    return float(np.median(timed(fn, calls)[1])) * 1e3


def time_shape(n: int, hw: int, c: int) -> list[float]:
    """JAX fwd, fwd+bwd, dx, dW; torch NCHW fwd, fwd+bwd; torch channels-last fwd, fwd+bwd (ms)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, hw, hw, c), np.float32)
    k = rng.standard_normal((3, 3, 1, c), np.float32)
    jx, jk = jax.device_put(x), jax.device_put(k)

    def loss(a, b):
        return (conv2d(a, b, padding=1, groups=c) ** 2).sum() / 2

    programs = [jax.jit(lambda a, b: conv2d(a, b, padding=1, groups=c))]
    programs += [jax.jit(jax.grad(loss, arg)) for arg in ((0, 1), 0, 1)]
    times = [median_ms(lambda p=p: jax.block_until_ready(p(jx, jk))) for p in programs]
    tk = torch.from_numpy(k.transpose(3, 2, 0, 1).copy()).requires_grad_()
    for layout in (torch.contiguous_format, torch.channels_last):
        tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(memory_format=layout).requires_grad_()

        def forward(tx=tx):
            with torch.no_grad():
                torch.nn.functional.conv2d(tx, tk, padding=1, groups=c)

        def forward_backward(tx=tx):
            (torch.nn.functional.conv2d(tx, tk, padding=1, groups=c).square().sum() / 2).backward()

        times += [median_ms(forward), median_ms(forward_backward)]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    n = parser.parse_args().batch_size
    print(describe_cpu(), f"| jax {jax.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"batch {n}, ms: map x channels | JAX fwd / fwd+bwd / dx / dW | torch NCHW fwd / fwd+bwd", end="")
    print(" | torch channels-last fwd / fwd+bwd")
    for hw, c in SHAPES:
        t = [f"{v:.1f}" for v in time_shape(n, hw, c)]
        print(f"{hw}x{hw}x{c} | {' / '.join(t[:4])} | {' / '.join(t[4:6])} | {' / '.join(t[6:])}", flush=True)


if __name__ == "__main__":
    main()
