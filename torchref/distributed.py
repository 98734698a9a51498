"""DistributedDataParallel set-up, ``torchrun``-compatible, with the same flags as the JAX side.

``torchrun --nproc-per-node N scripts/train_torch.py ...`` (environment variables) or
``--coordinator HOST:PORT --num-processes N --process-id I`` (a TCP rendezvous, like
``jax.distributed``). gloo on CPU, NCCL on GPU. Rank 0 alone prints and writes files.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket

import torch
import torch.distributed as dist
from torch import nn

from jaxvgg.core.cli import silence_stdout
from jaxvgg.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self, name: str = "") -> None:
        if self.active:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """Sums over all processes (epoch statistics)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP around ``model``; on GPU BatchNorm becomes SyncBatchNorm (global-batch statistics, as
        in JAX). torch has no SyncBatchNorm on CPU, so there each process normalises its own rows."""
        if not self.active:
            return model
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
        return nn.parallel.DistributedDataParallel(model)


_LISTENING: list[socket.socket] = []  # the rendezvous socket lives as long as the process


def rendezvous_store(coordinator: str, world: int, rank: int) -> dist.TCPStore:
    """The TCP store of ``--coordinator HOST:PORT``. Process 0 listens on HOST only: torch's own
    ``tcp://`` rendezvous listens on every interface. The store has no authentication."""
    host, _, port_text = coordinator.rpartition(":")
    if not host or not port_text.isdigit():
        raise UserError(f"--coordinator {coordinator!r}: expected HOST:PORT")
    host, port = host.strip("[]"), int(port_text)
    timeout = datetime.timedelta(seconds=300)
    if rank != 0:
        return dist.TCPStore(host, port, world, False, timeout)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as e:
        listener.close()
        raise UserError(f"--coordinator {coordinator}: cannot listen there ({e.strerror})") from e
    listener.listen()
    _LISTENING.append(listener)
    return dist.TCPStore(host, port, world, True, timeout, master_listen_fd=listener.fileno())


def init_distributed(coordinator: str | None, num_processes: int = 1, process_id: int = 0) -> Distributed:
    if coordinator:
        world, rank, local_rank = num_processes, process_id, 0
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun
        world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    else:
        return Distributed()
    if not 0 <= rank < world:
        raise UserError(f"--process-id {rank} must be in [0, {world})")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if coordinator:
        store = rendezvous_store(coordinator, world, rank)
        dist.init_process_group(backend, store=store, world_size=world, rank=rank)
    else:
        dist.init_process_group(backend, init_method="env://", world_size=world, rank=rank)
    if rank != 0:  # rank 0 alone reports; errors still reach stderr
        silence_stdout()
    return Distributed(rank, world, local_rank)
