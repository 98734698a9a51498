"""``bench.py --checkpoints``: how long saving the resumable state holds training up, per framework.

The same model's state each way: JAX's orbax ``last/`` (the pause is the copy off the devices;
the write goes on in the background, timed to its commit too), the one msgpack file that held it
before orbax (serialised in memory, then written), and PyTorch's ``last.pth`` (``torch.save``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxvgg.core.config import TrainConfig
from jaxvgg.parallel import local_copy
from jaxvgg.train import checkpoint
from jaxvgg.train.last_state import LastStates, train_state_tree
from jaxvgg.train.loop import build_state


def _noisy(tree, seed: int = 0):
    """Adam's moments after training are dense floats, not the zeros they start at (which compress);
    device arrays, as in training (orbax copies host arrays before it returns)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: (
            jnp.asarray(rng.standard_normal(x.shape, np.float32) * 1e-3) if x.dtype == np.float32 and x.ndim else x
        ),
        tree,
    )


def jax_pauses(model: str, folder: Path, repeats: int) -> list[dict[str, float]]:
    state = build_state(TrainConfig(model=model, image_size=32, batch_size=8), 3, 100, False)
    state = state.replace(opt_state=_noisy(state.opt_state))
    meta = {"model": model, "epoch": 1, "batch": 0}
    last = LastStates(folder / "last", keep=1)
    rows = []
    for r in range(repeats):
        t = time.perf_counter()
        checkpoint.save(folder / "last.msgpack", train_state_tree(local_copy(state)), meta)
        msgpack_s = time.perf_counter() - t
        state = state.replace(step=state.step + 1)
        t = time.perf_counter()
        last.save(state, {**meta, "epoch": r})
        pause_s = time.perf_counter() - t
        last.wait()
        rows.append({"msgpack_s": msgpack_s, "orbax_pause_s": pause_s, "orbax_commit_s": time.perf_counter() - t})
    last.close()
    rows[-1]["state_bytes"] = sum(x.nbytes for x in jax.tree.leaves(train_state_tree(state)))
    rows[-1]["msgpack_bytes"] = (folder / "last.msgpack").stat().st_size
    rows[-1]["orbax_bytes"] = sum(p.stat().st_size for p in (folder / "last").rglob("*") if p.is_file())
    return rows


def torch_pauses(model: str, folder: Path, repeats: int) -> list[dict[str, float]]:
    import torch

    import torchref
    from torchref.checkpoint import save_last_state
    from torchref.train import make_optimizer

    net = torchref.create_model(model, 3, image_size=32)
    optimizer = make_optimizer(TrainConfig(model=model, lr=1e-4, weight_decay=1e-5), net.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)
    net(torch.zeros(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # Adam's moments exist (and are dense) after a step
    rows = []
    for r in range(repeats):
        t = time.perf_counter()
        save_last_state(folder / "last.pth", net, optimizer, scheduler, {"model": model, "epoch": r})
        rows.append({"torch_save_s": time.perf_counter() - t})
    rows[-1]["torch_bytes"] = (folder / "last.pth").stat().st_size
    return rows


def checkpoint_pauses(model: str = "vgg16", repeats: int = 3, frameworks: tuple[str, ...] = ("jax", "torch")) -> str:
    """The table ``bench.py --checkpoints`` prints (medians of ``repeats``, ranges beside them)."""
    with tempfile.TemporaryDirectory(prefix="jaxvgg-ckpt-") as tmp:
        rows: dict[str, list[dict[str, float]]] = {}
        if "jax" in frameworks:
            rows["jax"] = jax_pauses(model, Path(tmp), repeats)
        if "torch" in frameworks:
            rows["torch"] = torch_pauses(model, Path(tmp), repeats)
    lines = [f"saving the resumable state of {model}, {repeats} repeats (median, min-max):"]

    def stat(framework: str, key: str) -> str:
        values = [r[key] for r in rows[framework]]
        return f"{np.median(values):6.2f} s ({min(values):.2f}-{max(values):.2f})"

    if "jax" in rows:
        last = rows["jax"][-1]
        lines.append(f"  JAX state: {last['state_bytes'] / 1e9:.2f} GB")
        lines.append(
            f"  JAX, one msgpack file (before orbax): {stat('jax', 'msgpack_s')} pause, "
            f"{last['msgpack_bytes'] / 1e9:.2f} GB"
        )
        lines.append(
            f"  JAX, orbax last/ (async):             {stat('jax', 'orbax_pause_s')} pause, "
            f"committed after {stat('jax', 'orbax_commit_s')}, {last['orbax_bytes'] / 1e9:.2f} GB"
        )
    if "torch" in rows:
        lines.append(
            f"  PyTorch, last.pth (torch.save):       {stat('torch', 'torch_save_s')} pause, "
            f"{rows['torch'][-1]['torch_bytes'] / 1e9:.2f} GB"
        )
    return "\n".join(lines)
