"""Data parallelism with ``jax.sharding``: one 1-D mesh over the devices, the batch split along it.

The train step is the same pure function as on one device. Parameters and optimizer state are
replicated, the global batch is sharded along the ``data`` axis, and ``jax.jit`` inserts the
collectives: the loss is a mean over the global batch, so gradients are averaged over it, and
BatchNorm's batch means are means over the global batch too. One process per host; with
several, each loads only its rows of every global batch
(``jax.make_array_from_process_local_data``) and process 0 alone writes files and prints.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvgg.core.cli import silence_stdout
from jaxvgg.core.errors import UserError
from jaxvgg.ops import native
from jaxvgg.ops.compiler import inference_options

AXIS = "data"


def initialize(coordinator: str | None, num_processes: int = 1, process_id: int = 0) -> None:
    """``jax.distributed.initialize`` for multi-host runs (on CPU its collectives use gloo).

    Process 0's coordinator listens on the address given, not on every interface (JAX's default);
    it has no authentication, so it belongs on a trusted network."""
    if coordinator is None:
        if num_processes > 1:
            raise UserError("--num-processes > 1 needs --coordinator HOST:PORT")
        return
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process-id {process_id} must be in [0, {num_processes})")
    jax.distributed.initialize(coordinator, num_processes, process_id, coordinator_bind_address=coordinator)
    if process_id != 0:  # process 0 alone reports (the C++ runtime's lines too); errors still reach stderr
        silence_stdout()


@dataclasses.dataclass(frozen=True)
class DataParallel:
    mesh: Mesh

    @classmethod
    def create(cls, devices: int | None = None) -> DataParallel:
        """A mesh over the first ``devices`` devices (default: all of them, on every host)."""
        available = jax.devices()
        n = len(available) if devices is None else devices
        if not 1 <= n <= len(available):
            raise UserError(f"--devices {n}: {len(available)} device(s) available")
        if jax.process_count() > 1 and n != len(available):
            raise UserError("--devices: a multi-process run uses every device of every process")
        return cls(Mesh(np.array(available[:n]), (AXIS,)))

    @property
    def size(self) -> int:
        return self.mesh.size

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise UserError(
                f"--batch-size {batch_size} does not split evenly over {self.size} devices; "
                f"use a multiple of {self.size} (the batch size is the global batch)"
            )

    def shard(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a global batch, as one global array sharded along ``data``."""
        if jax.process_count() == 1:
            return jax.device_put(batch, self.batch_sharding)
        count = jax.process_count()
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, v, (v.shape[0] * count, *v.shape[1:]))
            for k, v in batch.items()
        }

    def replicate(self, tree: Any) -> Any:
        return jax.device_put(tree, self.replicated)

    def compile_steps(self, train_step: Callable, eval_step: Callable) -> tuple[Callable, Callable]:
        """Jitted ``train_step(state, batch, aux)`` and ``eval_step(state, batch)``: the state (donated)
        and ``aux`` replicated, the batch sharded, every output replicated. Use
        :func:`jaxvgg.train.steps.compile_steps`, which binds the loss."""
        rep, data = self.replicated, self.batch_sharding
        if self.size > 1:  # each device would run the hand-written kernels on the whole batch
            train_step, eval_step = native_disabled(train_step), native_disabled(eval_step)
        train = jax.jit(train_step, in_shardings=(rep, data, rep), out_shardings=(rep, rep), donate_argnums=(0,))
        evaluate = jax.jit(eval_step, in_shardings=(rep, data), out_shardings=rep, compiler_options=inference_options())
        return train, evaluate

    def barrier(self, name: str) -> None:
        """Every process waits here (e.g. until process 0 has written a checkpoint)."""
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(name)


def native_disabled(fn: Callable) -> Callable:
    """``fn`` traced with the hand-written CPU kernels off (:func:`jaxvgg.ops.native.disabled`)."""

    @functools.wraps(fn)
    def traced(*args: Any) -> Any:
        with native.disabled():
            return fn(*args)

    return traced


def local_copy(tree: Any) -> Any:
    """Host numpy copies of replicated arrays, readable in every process of a multi-host run."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)
