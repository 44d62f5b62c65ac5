"""Multi-GPU / multi-machine training with torchrun: DistributedDataParallel when WORLD_SIZE > 1.

    torchrun --nproc_per_node 4 -m XrayToDRRLib translate train -i DATA -o RUN          # one machine, 4 GPUs
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 4 -m XrayToDRRLib translate train ...

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; the backend is NCCL on CUDA, else gloo
(CPU, e.g. for tests). Each process trains on its DistributedSampler shard with `--batch-size` images per step (the
effective batch is world_size x batch size); gradients are averaged across processes. Only rank 0 validates and
writes files (checkpoints, logs, samples); the others wait for it at the end of each epoch.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.render import pick_device


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
    """Read torchrun's WORLD_SIZE / RANK / LOCAL_RANK (defaults: a single process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError("WORLD_SIZE, RANK and LOCAL_RANK must be integers", None,
                         "launch with torchrun (it sets them)") from None
    return DistInfo(world, rank, local)


def setup(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; return (info, this process's device)."""
    info = from_env()
    if not info.enabled:
        return info, pick_device(device)
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
        here = torch.device("cuda", info.local_rank)
    else:
        if str(device).startswith("cuda"):
            pick_device(device)  # raises the usual "no CUDA" InputError
        here = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info, here


def wrap(module: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
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
