"""The process's place in a torchrun job, its device, and the few collectives we use.

Read once from the environment: `RANK`, `LOCAL_RANK` and `WORLD_SIZE` (torchrun sets
them; a plain process is rank 0 of 1). NCCL on GPUs, gloo on CPUs. Only rank 0
prints, logs and saves; the others gather to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from commfor_fast.errors import UserError

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# How long a collective may wait for the slowest rank before the job is stopped. NCCL's
# default (10 minutes) is shorter than work one rank may do alone between collectives:
# its share of `--verify-hashes` (about 1.1 TB / ranks / hashing rate) or rank 0's
# writes. A rank that fails exits and torchrun stops the others at once; this only
# bounds a silent hang.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("WORLD_SIZE", 1)))


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """`auto`/None -> this rank's GPU if one is visible, else the CPU; `cuda` (or `gpu`,
    DALI's word) -> this rank's GPU; `cuda:N` -> GPU N; `cpu`. Errors name the flag
    and the fix."""
    if name in (None, "auto"):
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device("cuda" if name == "gpu" else name)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {name!r}: use auto, cpu, cuda (or gpu) or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: use auto, cpu, cuda (or gpu) or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is visible here; use --device cpu")
    index = local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", index)


def amp_dtype(name: str) -> torch.dtype:
    """The autocast dtype of `--amp-dtype`."""
    if name not in AMP_DTYPES:
        raise UserError(f"--amp-dtype {name!r}: use {' or '.join(AMP_DTYPES)}")
    return AMP_DTYPES[name]


def setup_distributed(device: torch.device, env: Dist | None = None) -> Dist:
    """Initialise the process group under torchrun (NCCL on GPU, gloo on CPU).

    `env` is the caller's `Dist.from_env()` (read once, before the device was
    chosen); without it the environment is read here.
    """
    env = Dist.from_env() if env is None else env
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return env


def teardown_distributed(env: Dist, wait: bool = True) -> None:
    """Leave the process group; with `wait`, after every rank got here.

    After a failure pass `wait=False`: the other ranks may never reach the barrier,
    and this rank must exit for torchrun to stop them.
    """
    if env.world_size > 1 and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def data_parallel(model: torch.nn.Module, env: Dist, device: torch.device) -> torch.nn.Module:
    """`model` wrapped in DistributedDataParallel under torchrun (as it is in a single process)."""
    if env.world_size == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[env.local_rank] if device.type == "cuda" else None)


def all_gather(obj: Any, env: Dist) -> list[Any]:
    """Every rank's `obj`, in rank order (just [obj] without DDP)."""
    if env.world_size == 1:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, env: Dist) -> Any:
    """Rank 0's `obj` on every rank: decisions taken once (which checkpoint to resume)."""
    if env.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(value: torch.Tensor, env: Dist) -> torch.Tensor:
    """The mean of the tensor `value` over every rank (one all-reduce; `value` itself without
    DDP): what the run logs as its loss, not rank 0's share of it."""
    if env.world_size == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / env.world_size
