"""The host side of the DALI pipelines: which samples make each batch, their bytes, their plans.

The DALI graph gets everything per batch from one external source, as dense arrays:
the encoded images (or pre-resized pixels), the `.ids` records, the first resize's
size, the final crop and the RSA slots (`slots.py`). Because the host picks the
samples, it knows every image's size before the batch exists, plans the whole batch
in a few numpy calls and hands the operators their arguments, one packed tensor per
RSA stage; there is no Python function inside the graph.

Order (the same as the reference loader's, so both loaders see one stream):
training is an endless series of epochs, each a seeded permutation of the set cut
into `iters_per_epoch` batches per rank, so every rank gets the same number of
batches and batch k is a pure function of (seed, k): resuming at batch k is exact.
Evaluation reads this rank's contiguous part once, the last batch short.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from commfor_fast.errors import UserError
from commfor_fast.imageio import decode_raw, resized_shapes
from commfor_fast.pipelines.batch_plan import draw_train_slots
from commfor_fast.pipelines.plan import Plan, RSAConfig
from commfor_fast.pipelines.preprocess import resize_size
from commfor_fast.pipelines.slots import Slots, lower_plans
from commfor_fast.shards import IDS_EXT, IMAGE_EXTS, RAW_EXT, Manifest, SampleIds, SetInfo, ShardReader, \
    shard_range, unpack_ids

PlanFn = Callable[[SampleIds, int, int], Plan]
# (ids of a batch, batch number) -> (first-resize sizes, final crops, RSA slots)
Planner = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, Slots]]


def iters_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Batches per rank per epoch: floor(N / (world * B)), identical on every rank."""
    n = num_samples // (batch_size * world_size)
    if n < 1:
        raise UserError(
            f"--batch-size {batch_size} x {world_size} processes = {batch_size * world_size} images per step, "
            f"but the training set has only {num_samples}; use a smaller --batch-size"
        )
    return n


def train_batch_indices(num_samples: int, batch_size: int, rank: int, world_size: int, seed: int,
                        start: int = 0) -> Iterator[np.ndarray]:
    """Sample indices of this rank's training batches, from batch `start` of the stream on."""
    iters = iters_per_epoch(num_samples, batch_size, world_size)
    epoch, first = divmod(start, iters)
    while True:
        perm = np.random.default_rng([seed, epoch]).permutation(num_samples)
        mine = perm[: iters * world_size * batch_size].reshape(iters, world_size, batch_size)[:, rank]
        yield from mine[first:]
        epoch, first = epoch + 1, 0


def runs_of(batches: Iterator[np.ndarray], per_run: int) -> Iterator[np.ndarray]:
    """Consecutive training batches joined `per_run` at a time: one pipeline run each."""
    while True:
        yield np.concatenate([next(batches) for _ in range(per_run)])


@dataclass(frozen=True)
class ShardSource:
    """One shard set on disk, and how its images are stored."""

    root: Path
    info: SetInfo
    preresize: int | None  # shorter side of raw stored pixels, or None (encoded images)

    @classmethod
    def from_manifest(cls, root: Path | str, manifest: Manifest, set_name: str) -> ShardSource:
        if set_name not in manifest.sets:
            raise UserError(f"set {set_name!r} is not in {root}; it has {', '.join(manifest.sets)}")
        return cls(Path(root), manifest.sets[set_name], manifest.preresize)

    @property
    def num_samples(self) -> int:
        return self.info.num_samples


class BatchSource:
    """The external-source callback: one call, one batch of samples with their plans.

    `batches` yields each batch's sample indices; `plan` turns the batch's ids (and
    the batch number, for seeding) into (first sizes, crops, slots). `recent` holds
    the sample numbers of the last few batches, where to look when decoding fails.
    """

    def __init__(self, source: ShardSource, batches: Iterator[np.ndarray], plan: Planner, stages: int,
                 read_threads: int = 1, first_batch: int = 0) -> None:
        self.reader = ShardReader(source.root, source.info)
        # pread releases the GIL: several threads read a batch's samples at once.
        self._pool = ThreadPoolExecutor(read_threads) if read_threads > 1 else None
        self.raw = source.preresize is not None
        # What each batch starts with; pre-resized pixels need no first resize.
        self.head = ("images", "ids", "crop_start", "crop_shape") + (() if self.raw else ("first_size",))
        self.batches, self.plan, self.stages = batches, plan, stages
        self.batch_no = first_batch  # the number `plan` seeds the next batch with
        self.recent: deque[tuple[int, ...]] = deque(maxlen=8)

    def __call__(self) -> tuple[list[np.ndarray] | np.ndarray, ...]:
        indices = next(self.batches)  # StopIteration ends an evaluation pass
        wanted = (IDS_EXT, RAW_EXT) if self.raw else (IDS_EXT, *IMAGE_EXTS)
        read = partial(self._read, wanted=wanted)
        samples = list(self._pool.map(read, indices) if self._pool else map(read, indices))
        ids = np.array([unpack_ids(s[IDS_EXT]) for s in samples], np.int32).reshape(len(samples), 5)
        self.recent.append(tuple(int(n) for n in ids[:, 2]))
        images = [self._image(s, row) for s, row in zip(samples, ids)]
        first_size, crop, slots = self.plan(ids, self.batch_no)
        self.batch_no += 1
        head = {"images": images, "ids": ids, "crop_start": crop[:, :2].copy(), "crop_shape": crop[:, 2:].copy(),
                "first_size": first_size.astype(np.float32)}
        stage_arrays = tuple(a for k in range(self.stages) for a in slots.stage(k))
        return tuple(head[name] for name in self.head) + stage_arrays

    def _read(self, index: np.integer, wanted: tuple[str, ...]) -> dict[str, bytes]:
        return self.reader.read(int(index), wanted)

    def _image(self, sample: dict[str, bytes], ids: np.ndarray) -> np.ndarray:
        if self.raw:
            return decode_raw(sample.get(RAW_EXT, b""), int(ids[3]), int(ids[4]))
        data = next((sample[e] for e in IMAGE_EXTS if e in sample), b"")
        return np.frombuffer(data, np.uint8)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        self.reader.close()


def _per_sample(ids: np.ndarray, plan_of: PlanFn, stages: int) -> tuple[np.ndarray, np.ndarray, Slots]:
    """First sizes, crops and slots from one `Plan` per sample."""
    plans = [plan_of(SampleIds(*(int(v) for v in row)), int(row[3]), int(row[4])) for row in ids]
    first = [p.resize.out_size(p.height, p.width) if p.resize else (p.height, p.width) for p in plans]
    crops = [(p.crop.top, p.crop.left, p.crop.height, p.crop.width) for p in plans]
    return np.array(first, np.int32), np.array(crops, np.int32), lower_plans(plans, stages)


def train_planner(rsa: RSAConfig, crop: int, preresized: bool, seed: int, rank: int, stages: int,
                  plans: PlanFn | None = None) -> Planner:
    """The plan step of a training batch: vectorised draws (`batch_plan`) seeded by
    (seed, rank, batch number), or the injected per-sample `plans`."""

    def plan(ids: np.ndarray, batch_no: int) -> tuple[np.ndarray, np.ndarray, Slots]:
        if plans is not None:
            return _per_sample(ids, plans, stages)
        rng = np.random.default_rng([seed, rank, batch_no])
        draw = draw_train_slots(rng, rsa, ids[:, 3], ids[:, 4], crop, preresized, stages)
        return draw.first_size, draw.crop, draw.slots

    return plan


def eval_planner(crop: int, preresized: bool) -> Planner:
    """The plan step of an evaluation batch (SPEC section 2): first resize, centre crop
    at `round((H - C) / 2)` (half to even, as Python's round); no RSA."""

    def plan(ids: np.ndarray, batch_no: int) -> tuple[np.ndarray, np.ndarray, Slots]:
        h, w = ids[:, 3].astype(np.int64), ids[:, 4].astype(np.int64)
        if not preresized:
            h, w = resized_shapes(h, w, resize_size(crop))
        top, left = np.rint((h - crop) / 2.0), np.rint((w - crop) / 2.0)
        crops = np.stack([top, left, np.full_like(h, crop), np.full_like(w, crop)], 1).astype(np.int32)
        return np.stack([h, w], 1).astype(np.int32), crops, Slots.empty(0, len(ids))

    return plan


def eval_batch_indices(num_samples: int, batch_size: int, rank: int, world_size: int) -> Iterator[np.ndarray]:
    """This rank's contiguous part of the set, in batches (the last one short)."""
    start, end = shard_range(num_samples, rank, world_size)
    for lo in range(start, end, batch_size):
        yield np.arange(lo, min(lo + batch_size, end))


