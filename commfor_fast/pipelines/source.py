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
batches and batch k is a pure function of (seed, rank, k): resuming at batch k is
exact. Evaluation reads this rank's contiguous part once, the last batch short.
`TrainOrder` and `EvalOrder` give pipeline run n from n alone, so DALI's worker
processes can prepare runs in parallel (`executor.py`).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from commfor_fast.errors import UserError
from commfor_fast.imageio import decode_raw, resized_shapes
from commfor_fast.pipelines.batch_plan import draw_train_slots
from commfor_fast.pipelines.plan import Plan, RSAConfig
from commfor_fast.pipelines.preprocess import resize_size
from commfor_fast.pipelines.slots import Slots, lower_plans
from commfor_fast.shards import IDS_EXT, IMAGE_EXT, Manifest, SampleIds, SetInfo, ShardReader, \
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
        yield from _epoch_batches(num_samples, batch_size, rank, world_size, seed, epoch)[first:]
        epoch, first = epoch + 1, 0


def _epoch_batches(num_samples: int, batch_size: int, rank: int, world_size: int, seed: int,
                   epoch: int) -> np.ndarray:
    """(iters, batch_size) sample indices of this rank's batches in `epoch`: a seeded
    permutation of the set, cut into equal batches per rank."""
    iters = iters_per_epoch(num_samples, batch_size, world_size)
    perm = np.random.default_rng([seed, epoch]).permutation(num_samples)
    return perm[: iters * world_size * batch_size].reshape(iters, world_size, batch_size)[:, rank]


@dataclass
class TrainOrder:
    """Which samples make pipeline run n (counted from `start_run`): `per_run` consecutive
    batches of this rank's stream (`train_batch_indices`), computed from n alone, so any
    process can make any run, in any order. Picklable: DALI's workers receive a copy."""

    num_samples: int
    batch_size: int
    rank: int
    world_size: int
    seed: int
    per_run: int = 1
    start_run: int = 0
    _epoch: tuple[int, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __call__(self, n: int) -> np.ndarray:
        iters = iters_per_epoch(self.num_samples, self.batch_size, self.world_size)
        first = (self.start_run + n) * self.per_run
        return np.concatenate([self._batches(b // iters)[b % iters] for b in range(first, first + self.per_run)])

    def _batches(self, epoch: int) -> np.ndarray:
        if self._epoch is None or self._epoch[0] != epoch:  # runs are asked for in order: one permutation per epoch
            self._epoch = (epoch, _epoch_batches(self.num_samples, self.batch_size, self.rank, self.world_size,
                                                 self.seed, epoch))
        return self._epoch[1]

    def plan_number(self, n: int) -> int:
        """The number that seeds run n's plans: its run number in the whole stream."""
        return self.start_run + n

    @property
    def part(self) -> None:
        """The samples this order reads: any of the set."""
        return None


@dataclass(frozen=True)
class EvalOrder:
    """Batch n of this rank's contiguous part of the set (the last one short); StopIteration past the end."""

    num_samples: int
    batch_size: int
    rank: int
    world_size: int

    def __call__(self, n: int) -> np.ndarray:
        start, end = self.part
        lo = start + n * self.batch_size
        if lo >= end:
            raise StopIteration
        return np.arange(lo, min(lo + self.batch_size, end))

    def plan_number(self, n: int) -> int:
        return n

    @property
    def part(self) -> tuple[int, int]:
        """The samples this order reads: [start, end) of the set, this rank's part."""
        return shard_range(self.num_samples, self.rank, self.world_size)


Order = TrainOrder | EvalOrder


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
    """The external-source callback: batch n of `order`, with its samples' bytes and plans.

    DALI calls it with each run's `BatchInfo`; the batch depends on the iteration
    number alone (`order(n)`: which samples; `plan(ids, order.plan_number(n))`: their
    plans), so DALI may call it in its worker processes, several runs at once, out of
    order (`parallel=True`). It is picklable: the shard files and the read threads
    are opened in the process that first calls it.

    DALI takes its arrays without a copy (`no_copy`): called in this process, it holds
    on to the arrays of its last `keep` batches, as long as DALI may read them
    (`prepare`); in DALI's workers, DALI owns the shared memory they are written to.
    """

    def __init__(self, source: ShardSource, order: Order, plan: Planner, stages: int) -> None:
        self.source, self.order, self.plan, self.stages = source, order, plan, stages
        self.raw = source.preresize is not None
        # What each batch starts with; pre-resized pixels need no first resize.
        self.head = ("images", "ids", "crop_start", "crop_shape") + (() if self.raw else ("first_size",))
        # Whether the plans mark PIL's box resizes for the built filter: the graph then splits them off.
        self.built_box = isinstance(plan, TrainPlanner) and plan.rsa.built_box
        self.consumed = 0  # runs the loader has taken from the pipeline: where to look when decoding fails
        self.read_threads = 1
        self._kept: deque[tuple] = deque(maxlen=0)
        self._reader: ShardReader | None = None
        self._pool: ThreadPoolExecutor | None = None

    def prepare(self, read_threads: int, keep: int) -> None:
        """Read each batch with `read_threads` threads; keep the last `keep` batches alive."""
        self.read_threads, self._kept = read_threads, deque(maxlen=keep)

    def __getstate__(self) -> dict[str, Any]:
        # A copy for a worker process: no open files, threads or kept batches.
        return {**self.__dict__, "_reader": None, "_pool": None, "_kept": deque(maxlen=0)}

    @property
    def reader(self) -> ShardReader:
        if self._reader is None:
            self._reader = ShardReader(self.source.root, self.source.info, self.order.part)
            # pread releases the GIL: several threads read a batch's samples at once.
            self._pool = ThreadPoolExecutor(self.read_threads) if self.read_threads > 1 else None
        return self._reader

    def __call__(self, info: Any) -> tuple[list[np.ndarray] | np.ndarray, ...]:
        n = info if isinstance(info, int) else info.iteration  # a DALI BatchInfo, or the number itself
        indices = self.order(n)  # StopIteration ends an evaluation pass
        reader = self.reader
        read = partial(reader.read, exts=(IDS_EXT, IMAGE_EXT))
        positions = [int(i) for i in indices]
        samples = list(self._pool.map(read, positions) if self._pool else map(read, positions))
        ids = np.array([unpack_ids(s[IDS_EXT]) for s in samples], np.int32).reshape(len(samples), 5)
        images = [self._image(s, row) for s, row in zip(samples, ids)]
        first_size, crop, slots = self.plan(ids, self.order.plan_number(n))
        head = {"images": images, "ids": ids, "crop_start": crop[:, :2].copy(), "crop_shape": crop[:, 2:].copy(),
                "first_size": first_size.astype(np.float32)}
        stage_arrays = tuple(np.ascontiguousarray(a) for k in range(self.stages) for a in slots.stage(k))
        out = tuple(head[name] for name in self.head) + stage_arrays
        self._kept.append(out)
        return out

    @property
    def recent(self) -> list[tuple[int, ...]]:
        """Sample numbers of the runs DALI may have been working on: the last one the
        loader took and the next few (the pipeline's and the workers' queues)."""
        runs = []
        for n in range(max(self.consumed - 1, 0), self.consumed + 8):
            try:
                indices = self.order(n)
            except StopIteration:
                break
            runs.append(tuple(self.reader.index.number(int(i)) for i in indices))
        return runs

    def _image(self, sample: dict[str, bytes], ids: np.ndarray) -> np.ndarray:
        data = sample.get(IMAGE_EXT, b"")
        return decode_raw(data, int(ids[3]), int(ids[4])) if self.raw else np.frombuffer(data, np.uint8)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        if self._reader is not None:
            self._reader.close()
        self._reader = self._pool = None
        self._kept.clear()


def _per_sample(ids: np.ndarray, plan_of: PlanFn, stages: int, built_box: bool) -> tuple[np.ndarray, np.ndarray, Slots]:
    """First sizes, crops and slots from one `Plan` per sample."""
    plans = [plan_of(SampleIds(*(int(v) for v in row)), int(row[3]), int(row[4])) for row in ids]
    first = [p.resize.out_size(p.height, p.width) if p.resize else (p.height, p.width) for p in plans]
    crops = [(p.crop.top, p.crop.left, p.crop.height, p.crop.width) for p in plans]
    return np.array(first, np.int32), np.array(crops, np.int32), lower_plans(plans, stages, built_box)


@dataclass(frozen=True)
class TrainPlanner:
    """The plan step of a training batch: vectorised draws (`batch_plan`) seeded by
    (seed, rank, batch number), or the injected per-sample `plans`."""

    rsa: RSAConfig
    crop: int
    preresized: bool
    seed: int
    rank: int
    stages: int
    plans: PlanFn | None = None

    def __call__(self, ids: np.ndarray, batch_no: int) -> tuple[np.ndarray, np.ndarray, Slots]:
        if self.plans is not None:
            return _per_sample(ids, self.plans, self.stages, self.rsa.built_box)
        rng = np.random.default_rng([self.seed, self.rank, batch_no])
        draw = draw_train_slots(rng, self.rsa, ids[:, 3], ids[:, 4], self.crop, self.preresized, self.stages)
        return draw.first_size, draw.crop, draw.slots


@dataclass(frozen=True)
class EvalPlanner:
    """The plan step of an evaluation batch (SPEC section 2): first resize, centre crop
    at `round((H - C) / 2)` (half to even, as Python's round); no RSA."""

    crop: int
    preresized: bool

    def __call__(self, ids: np.ndarray, batch_no: int) -> tuple[np.ndarray, np.ndarray, Slots]:
        crop = self.crop
        h, w = ids[:, 3].astype(np.int64), ids[:, 4].astype(np.int64)
        if not self.preresized:
            h, w = resized_shapes(h, w, resize_size(crop))
        top, left = np.rint((h - crop) / 2.0), np.rint((w - crop) / 2.0)
        crops = np.stack([top, left, np.full_like(h, crop), np.full_like(w, crop)], 1).astype(np.int32)
        return np.stack([h, w], 1).astype(np.int32), crops, Slots.empty(0, len(ids))
