"""Training on many GPUs or machines with torchrun: DistributedDataParallel when WORLD_SIZE > 1 (used by
`xraytodrr train`, the pose regressor, and `xraytodrr translate train`, pix2pix).

    torchrun --nproc_per_node 4 -m XrayToDRRLib translate train -i DATA -o RUN          # one machine, 4 GPUs
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 4 -m XrayToDRRLib train -i CT -o RUN ...

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the backend is NCCL on CUDA, else gloo
(CPU, e.g. for tests). Each process trains on its own `--batch-size` samples per step (the effective batch is
world_size x batch size) and DDP averages the gradients. Only rank 0 writes files (checkpoints, logs) and reports
progress.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import torch
import torch.distributed as dist

from .errors import InputError
from .render import pick_device


@dataclasses.dataclass(frozen=True)
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """torchrun's WORLD_SIZE / RANK / LOCAL_RANK (a single process when unset)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError("WORLD_SIZE, RANK and LOCAL_RANK must be integers", None,
                         "launch with torchrun, which sets them") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK {rank} is outside WORLD_SIZE {world}", None, "launch with torchrun")
    return DistInfo(world, rank, local)


def setup(device: str | torch.device = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return (info, this process's device)."""
    info = from_env()
    if not info.enabled:
        return info, pick_device(device)
    wanted = str(device)
    use_cuda = torch.cuda.is_available() and not wanted.startswith("cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        pick_device(wanted)  # raises the usual "no CUDA" InputError
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
        here = torch.device("cuda", info.local_rank)
    else:
        here = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info, here


def wrap(module: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `module` in a distributed run (it broadcasts rank 0's weights)."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def all_reduce(tensor: torch.Tensor, info: DistInfo, reduction: Literal["sum", "mean"] = "sum") -> torch.Tensor:
    """`tensor` summed (or averaged) over every rank, in place. The mean is a sum divided afterwards, not
    ReduceOp.AVG, which gloo lacks."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}")
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        if reduction == "mean":
            tensor /= info.world_size
    return tensor


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj`, in rank order (a one-element list without torchrun)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
