"""Runs a few data-parallel train steps in a fresh process (device count and jax.distributed must be
set before JAX starts) and saves the resulting variables for tests/test_parallel.py to compare.

python tests/dp_worker.py OUT.npz --devices N --steps S [--coordinator H:P --num-processes P --process-id I]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn
import jax
import numpy as np

from jaxvgg.models import init_variables
from jaxvgg.models.layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Linear, ReLU, flatten, run
from jaxvgg.parallel import DataParallel, initialize, local_copy
from jaxvgg.train import steps
from jaxvgg.train.optim import make_optimizer
from jaxvgg.train.state import create_train_state

GLOBAL_BATCH, SIZE = 8, 16


class SmallBNNet(nn.Module):
    """Our own layers, BatchNorm included, so the global-batch statistics are exercised."""

    def setup(self) -> None:
        # No conv bias before BatchNorm: its true gradient is zero and Adam would amplify rounding noise.
        self.features = [
            Conv2d(8, 3, padding=1, bias=False),
            BatchNorm2d(),
            ReLU(),
            Conv2d(16, 3, padding=1, bias=False),
            BatchNorm2d(),
        ]
        self.pool = AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(3)

    def __call__(self, x, train: bool = False):
        return self.fc(flatten(self.pool(run(self.features, x, train))))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    args = p.parse_args()
    initialize(args.coordinator, args.num_processes, args.process_id)

    par = DataParallel.create(args.devices)
    model = SmallBNNet()
    variables = init_variables(model, SIZE)  # compiled: model.init op by op compiles ~50 programs (5 s)
    state = par.replicate(create_train_state(model, variables, make_optimizer("adam", 1e-2, 1e-5)))
    train_step, _ = steps.compile_steps(parallel=par)
    rng = np.random.RandomState(0)  # every process draws the same global batches
    index, count = jax.process_index(), jax.process_count()
    rows = slice(index * GLOBAL_BATCH // count, (index + 1) * GLOBAL_BATCH // count)
    shardings = []
    for _ in range(args.steps):
        batch = {
            "image": rng.randint(0, 256, (GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.uint8),
            "label": rng.randint(0, 3, GLOBAL_BATCH).astype(np.int32),
            "weight": np.ones(GLOBAL_BATCH, np.float32),
        }
        sharded = par.shard({k: v[rows] for k, v in batch.items()})
        shardings.append(
            [len(sharded["image"].sharding.device_set), sharded["image"].addressable_shards[0].data.shape[0]]
        )
        state, _ = train_step(state, sharded)
    flat = {
        jax.tree_util.keystr(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(local_copy(state.variables))[0]
    }
    np.savez(args.out, **flat)
    with open(args.out + ".json", "w") as f:  # not stdout: processes other than 0 print nothing
        json.dump({"devices": par.size, "processes": count, "shardings": shardings}, f)


if __name__ == "__main__":
    main()
