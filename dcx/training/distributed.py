"""Multi-process runs on ``torch.distributed``: the process group from torchrun's environment, and the
few collectives the engine needs. One process (no RANK/WORLD_SIZE in the environment) is a
world of size 1 whose collectives are no-ops, so the engine has one code path.

``torchrun --nproc_per_node N -m dcx run ...`` (or ``dcx run --nproc N``) starts N processes;
gloo on CPU, NCCL on CUDA; multi-node through torchrun's rendezvous, unchanged.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dcx.core.errors import InputError


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, world size, and the local rank (GPU index on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run directory, logs, draws progress and evaluates."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (identity in one process)."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.distributed:
            dist.broadcast(t, src)
        return t

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src)
        return box[0]

    def all_gather_rows(self, local: np.ndarray, device: torch.device) -> np.ndarray:
        """Concatenate every rank's rows in rank order (each rank holds a contiguous block)."""
        if not self.distributed:
            return local
        t = torch.from_numpy(np.ascontiguousarray(local)).to(device)
        sizes = [torch.zeros((), dtype=torch.long, device=device) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor(len(local), device=device))
        biggest = int(max(s.item() for s in sizes))
        padded = torch.zeros((biggest, *t.shape[1:]), dtype=t.dtype, device=device)
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)]).cpu().numpy()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def block(self, n: int) -> slice:
        """This rank's contiguous block of ``n`` rows (dataset order is rank order)."""
        per = -(-n // self.size)
        return slice(min(n, self.rank * per), min(n, (self.rank + 1) * per))


def world_from_env() -> World:
    """The World torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), else one process."""
    if "WORLD_SIZE" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    try:
        return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError):
        raise InputError("WORLD_SIZE is set but RANK is not: start distributed runs with torchrun") from None


def init(world: World) -> None:
    """Join the process group unless it exists or the world is one process: gloo for CPU
    tensors, plus NCCL for CUDA tensors when this machine has GPUs."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                            timeout=datetime.timedelta(minutes=int(os.environ.get("DCX_DIST_TIMEOUT_MIN", "60"))))


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
