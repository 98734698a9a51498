"""Two training steps of torch DDP (gloo) in this process, for tests/test_parallel.py to compare.

python tests/ddp_worker.py OUT.npz [--coordinator H:P --num-processes P --process-id I]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import torchref
from jaxvgg.core.config import TrainConfig
from torchref.data import EpochSampler
from torchref.distributed import init_distributed
from torchref.train import make_optimizer

GLOBAL_BATCH, SIZE, IMAGES = 8, 16, 16


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    args = p.parse_args()
    ddp = init_distributed(args.coordinator, args.num_processes, args.process_id)
    torch.manual_seed(0)  # the same initial weights and data in every process
    model = torchref.create_model("student_cnn", 3, image_size=SIZE)
    data = TensorDataset(torch.randn(IMAGES, 3, SIZE, SIZE), torch.randint(0, 3, (IMAGES,)))
    sampler = EpochSampler(IMAGES, seed=0, batch_size=GLOBAL_BATCH, num_replicas=ddp.world, rank=ddp.rank)
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // ddp.world, sampler=sampler, drop_last=True)
    net = ddp.wrap(model, torch.device("cpu"))
    opt = make_optimizer(TrainConfig(model="student_cnn", lr=1e-2, weight_decay=1e-5), model.parameters())
    sampler.set_epoch(0)
    rows = 0
    for x, y in loader:  # 2 steps
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        rows += len(y)
    np.savez(args.out, rows=rows, **{k: v.numpy() for k, v in model.state_dict().items()})


if __name__ == "__main__":
    main()
