"""Choosing a loader: the factories of training streams and evaluation loaders.

A loader serves batches of a converted set to PyTorch, for one process or for one
rank under torchrun; `--loader` picks one of `LOADERS`:
- `dali` (`dali_loader.py`): the DALI pipelines of `dali.py`, on the GPU or the CPU;
- `reference` (`reference_loader.py`): the PIL reference executor in DataLoader workers.
Both read the same batches in the same order and follow the protocols of `batch.py`
(`TrainStream`, `EvalLoader`), which the synthetic stream of `--synthetic-data`
follows too. Each backend is imported only when chosen, so a machine without DALI
still trains and evaluates with `--loader reference`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import torch

from commfor_fast.errors import UserError
from commfor_fast.pipelines.batch import Batch, EvalLoader, TrainStream
from commfor_fast.pipelines.executor import ExecutorOptions
from commfor_fast.pipelines.perturb import Level
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.pipelines.source import iters_per_epoch
from commfor_fast.settings import Loader
from commfor_fast.shards import Manifest, check_shard_files

LOADERS: tuple[str, ...] = get_args(Loader)
# Batch and iters_per_epoch are imported from here by train.py and the synthetic stream.
__all__ = ["LOADERS", "Batch", "EvalLoader", "TrainStream", "create_eval_loader", "create_train_stream",
           "iters_per_epoch"]


def _unknown(loader: str) -> UserError:
    return UserError(f"--loader {loader!r}: choose one of {', '.join(LOADERS)}")


def create_train_stream(loader: str, root: Path, manifest: Manifest, set_name: str, *, device: torch.device,
                        batch_size: int, crop: int, rsa: RSAConfig, seed: int, rank: int, world_size: int,
                        num_threads: int, batches_per_run: int = 1, state: dict[str, Any] | None = None,
                        executor: ExecutorOptions = ExecutorOptions()) -> TrainStream:
    """An endless training stream of `loader` ("dali" or "reference").

    Args:
        device: where the images go (and, for DALI, which device runs the pipeline).
        rank, world_size: this process's shard of the set.
        num_threads: DALI CPU threads, or reference DataLoader workers.
        batches_per_run: DALI: training batches per pipeline run (shares DALI's fixed
            cost per run; part of the stream, like the seed).
        state: a `state_dict()` of an earlier stream with the same settings, to resume.
        executor: DALI: how the pipeline runs (`executor.py`: the thread budget's split
            into DALI threads and batch-preparing workers, queues, executor options).
    """
    check_shard_files(root, manifest.sets[set_name])
    if loader == "dali":
        from commfor_fast.pipelines.dali_loader import DaliTrainStream

        return DaliTrainStream(root, manifest, set_name, device=device, batch_size=batch_size, crop=crop, rsa=rsa,
                               seed=seed, rank=rank, world_size=world_size, num_threads=num_threads,
                               batches_per_run=batches_per_run, state=state, options=executor)
    if loader == "reference":
        from commfor_fast.pipelines.reference_loader import ReferenceTrainStream

        return ReferenceTrainStream(root, manifest, set_name, device=device, batch_size=batch_size, crop=crop,
                                    rsa=rsa, seed=seed, rank=rank, world_size=world_size, num_threads=num_threads,
                                    state=state)
    raise _unknown(loader)


def create_eval_loader(loader: str, root: Path, manifest: Manifest, set_name: str, *, device: torch.device,
                       batch_size: int, crop: int, rank: int, world_size: int, num_threads: int,
                       levels: tuple[Level, ...] = (), seed: int = 0,
                       executor: ExecutorOptions = ExecutorOptions()) -> EvalLoader:
    """One pass over this rank's contiguous part of a set, with `loader` ("dali" or "reference").

    Args:
        levels: robustness evaluation: the conditions to produce (`perturb.parse_perturbations`,
            clean first); every batch then holds the images at each level (`Batch.levels`),
            all made from one read and one decode of each image.
        seed: seeds the noise perturbation (per sample number, so the same on every rank).
        executor: DALI: how the pipeline runs (as for `create_train_stream`).
    """
    check_shard_files(root, manifest.sets[set_name])
    if loader == "dali":
        from commfor_fast.pipelines.dali_loader import DaliEvalLoader

        return DaliEvalLoader(root, manifest, set_name, device=device, batch_size=batch_size, crop=crop, rank=rank,
                              world_size=world_size, num_threads=num_threads, levels=levels, seed=seed,
                              options=executor)
    if loader == "reference":
        from commfor_fast.pipelines.reference_loader import ReferenceEvalLoader

        return ReferenceEvalLoader(root, manifest, set_name, device=device, batch_size=batch_size, crop=crop,
                                   rank=rank, world_size=world_size, num_threads=num_threads, levels=levels,
                                   seed=seed)
    raise _unknown(loader)
