"""The reference loaders: training batches and evaluation passes through the PIL reference executor.

Each sample is read, decoded and preprocessed in a torch DataLoader worker by
`reference.run_plan`, the executor the DALI pipelines are tested against. Training
reads an endless shuffled stream (`source.train_batch_indices`, the same order as the
DALI loader's): epochs of `iters_per_epoch(...)` batches, the same number on every
rank, so DDP never waits at an epoch end for a rank that ran out. The state is the
number of batches served, and batch k is a pure function of the seed, the rank and k,
so a resumed stream serves the batches a stream never stopped would have served.
Evaluation reads each rank's contiguous part of the set once (the last batch short),
so every sample is scored exactly once across ranks.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from commfor_fast.imageio import BadImage, decode_raw, decode_rgb
from commfor_fast.pipelines.batch import Batch, to_batch
from commfor_fast.pipelines.damaged import DataError, damaged_sample, unwrap_worker_error
from commfor_fast.pipelines.perturb import Level, apply_reference
from commfor_fast.pipelines.plan import RSAConfig, eval_plan, train_plan
from commfor_fast.pipelines.preprocess import check_preresize, normalise
from commfor_fast.pipelines.reference import run_plan
from commfor_fast.pipelines.source import iters_per_epoch, train_batch_indices
from commfor_fast.shards import IMAGE_EXT, Manifest, ShardReader, shard_range, unpack_ids


class _ReferenceItems(torch.utils.data.Dataset):
    """Reads, decodes and preprocesses one sample with the PIL reference executor; with
    `levels` (evaluation only), the image at every level stacked (L, 3, C, C), from one decode."""

    def __init__(self, reader: ShardReader, crop: int, preresized: bool, rsa: RSAConfig | None, seed: int,
                 levels: tuple[Level, ...] = ()) -> None:
        self.reader, self.crop, self.preresized, self.rsa, self.seed = reader, crop, preresized, rsa, seed
        self.levels = levels

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        data = self.reader.read(index)
        ids = unpack_ids(data["ids"])
        try:
            if IMAGE_EXT not in data:
                raise BadImage("the sample has no image member")
            if self.preresized:
                img = Image.fromarray(decode_raw(data[IMAGE_EXT], ids.height, ids.width))
            else:
                img = decode_rgb(data[IMAGE_EXT])
        except BadImage as exc:
            raise damaged_sample(ids.sample_number, self.reader.shard_of(index), str(exc)) from None
        if self.rsa is None:
            plan = eval_plan(img.height, img.width, self.crop, self.preresized)
        else:
            rng = np.random.default_rng([self.seed, epoch, ids.sample_number])
            plan = train_plan(rng, self.rsa, img.height, img.width, self.crop, self.preresized)
        if self.levels:
            decoded = np.asarray(img)
            images = [normalise(run_plan(Image.fromarray(apply_reference(level, decoded, ids.sample_number,
                                                                         self.seed)), plan))
                      for level in self.levels]
            return torch.stack(images), torch.tensor(ids, dtype=torch.int32)
        return normalise(run_plan(img, plan)), torch.tensor(ids, dtype=torch.int32)


class _StreamSampler(torch.utils.data.Sampler):
    """Endless (epoch, index) keys: every epoch a new seeded permutation, cut into
    `iters` batches per rank; starts at batch `start` of the stream."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int, start: int) -> None:
        self.n, self.b, self.rank, self.world = num_samples, batch_size, rank, world_size
        self.seed, self.start = seed, start
        self.iters = iters_per_epoch(num_samples, batch_size, world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        batches = train_batch_indices(self.n, self.b, self.rank, self.world, self.seed, self.start)
        for k, batch in enumerate(batches, self.start):
            for index in batch:
                yield k // self.iters, int(index)


class _PartSampler(torch.utils.data.Sampler):
    """(0, index) keys of samples [start, end) in order: an evaluation rank's part, with
    no list of keys (one per sample) for every worker to hold."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((0, i) for i in range(self.start, self.end))


class ReferenceTrainStream:
    """Endless stream of training batches from the PIL reference executor."""

    def __init__(self, root: Path, manifest: Manifest, set_name: str, *, device: torch.device, batch_size: int,
                 crop: int, rsa: RSAConfig, seed: int, rank: int, world_size: int, num_threads: int,
                 state: dict[str, Any] | None = None) -> None:
        check_preresize(manifest.preresize, crop)
        self.device = device
        reader = ShardReader(root, manifest.sets[set_name])
        self.served = int((state or {}).get("batches", 0))
        items = _ReferenceItems(reader, crop, manifest.preresize is not None, rsa, seed)
        sampler = _StreamSampler(len(reader), batch_size, rank, world_size, seed, self.served)
        self._iter = iter(torch.utils.data.DataLoader(
            items, batch_size=batch_size, sampler=sampler, num_workers=num_threads,
            pin_memory=device.type == "cuda", persistent_workers=num_threads > 0,
        ))

    def __iter__(self) -> ReferenceTrainStream:
        return self

    def __next__(self) -> Batch:
        try:
            images, ids = next(self._iter)
        except DataError as exc:
            raise unwrap_worker_error(exc) from None
        self.served += 1
        return to_batch(images.to(self.device, non_blocking=True), ids)

    def state_dict(self) -> dict[str, Any]:
        return {"loader": "reference", "batches": self.served}

    def close(self) -> None:
        """Stop the worker processes now."""
        self._iter = None
        gc.collect()


class ReferenceEvalLoader:
    """This rank's contiguous part of a set, once, preprocessed by the reference executor;
    with `levels`, every batch holds the images at each level, made from one decode."""

    def __init__(self, root: Path, manifest: Manifest, set_name: str, *, device: torch.device, batch_size: int,
                 crop: int, rank: int, world_size: int, num_threads: int, levels: tuple[Level, ...] = (),
                 seed: int = 0) -> None:
        check_preresize(manifest.preresize, crop)
        self.device = device
        start, end = shard_range(manifest.sets[set_name].num_samples, rank, world_size)
        self.reader = ShardReader(root, manifest.sets[set_name], (start, end))
        self.num_samples = end - start
        self.levels = tuple(levels)
        items = _ReferenceItems(self.reader, crop, manifest.preresize is not None, None, seed, self.levels)
        self._loader = torch.utils.data.DataLoader(
            items, batch_size=batch_size, sampler=_PartSampler(start, end), num_workers=num_threads,
            pin_memory=device.type == "cuda",
        )

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[Batch]:
        try:
            for images, ids in self._loader:
                images = images.to(self.device, non_blocking=True)
                if self.levels:
                    levels = tuple(images[:, i] for i in range(len(self.levels)))
                    yield to_batch(levels[0], ids, levels)
                else:
                    yield to_batch(images, ids)
        except DataError as exc:
            raise unwrap_worker_error(exc) from None

    def close(self) -> None:
        self.reader.close()
