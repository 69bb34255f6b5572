"""PyTorch-facing loaders over the DALI pipelines or the PIL reference executor.

Training reads an endless shuffled stream, the same order for both engines
(`source.train_batch_indices`): epochs of `iters_per_epoch(...)` batches, the same
number on every rank, so DDP never waits at an epoch end for a rank that ran out.
`state_dict()` is the number of batches served; batch k is a pure function of the
seed, the rank and k, so a resumed run sees the same batches as one that was never
stopped.

Evaluation reads each rank's contiguous part of the set once (the last batch
short), so every sample is scored exactly once across ranks.

Choice for unreadable samples at training time (the converter checks every image,
but shards can be damaged later): stop with a clear error naming the sample key and
shard. Under torchrun the failing rank exits and torchrun stops the others, so no
rank hangs. Skipping silently would change what the model sees without anyone
knowing.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from commfor_fast.errors import UserError
from commfor_fast.imageio import BadImage, check_image, decode_raw, decode_rgb
from commfor_fast.pipelines.perturb import Level, apply_reference
from commfor_fast.pipelines.plan import RSAConfig, eval_plan, train_plan
from commfor_fast.pipelines.preprocess import check_preresize, normalise
from commfor_fast.pipelines.reference import run_plan
from commfor_fast.pipelines.source import iters_per_epoch, train_batch_indices
from commfor_fast.shards import (IMAGE_EXTS, RAW_EXT, DataError, Manifest, ShardReader, check_shard_files, sample_key,
                                 shard_range, unpack_ids)

ENGINES = ("dali", "reference")


@dataclass
class Batch:
    """One batch: normalised images on the loader's device, and per-sample ids (CPU)."""

    images: torch.Tensor  # (B, 3, C, C) float32
    labels: torch.Tensor  # (B,) float32, 1 = fake
    generator_ids: torch.Tensor  # (B,) int64, index into Manifest.generators
    sample_numbers: torch.Tensor  # (B,) int64, the tar key of each sample
    # Robustness evaluation: the images at every level, in the loader's level order
    # (`images` is the first, clean); empty otherwise.
    levels: tuple[torch.Tensor, ...] = ()


def _batch(images: torch.Tensor, ids: torch.Tensor, levels: tuple[torch.Tensor, ...] = ()) -> Batch:
    ids = ids.to("cpu", torch.int64)
    return Batch(images, ids[:, 0].float(), ids[:, 1], ids[:, 2], levels)


def _damaged(number: int, shard: str, reason: str) -> DataError:
    return DataError(f"cannot decode sample {sample_key(number)} in {shard}: {reason}. The shards were damaged "
                     "after conversion: compare their sha256 with manifest.json, or convert again")


def _find_damaged(reader: ShardReader, numbers: set[int]) -> DataError | None:
    """Decode the given samples with PIL and DALI; the first that fails, as an error."""
    from commfor_fast.pipelines.decode_check import DaliDecodeCheck

    dali_check = DaliDecodeCheck()
    for number in sorted(numbers):
        i = reader.position(sample_key(number))
        if i is None:
            continue
        data = reader.read(i)
        ids = unpack_ids(data["ids"])
        image = next((data[e] for e in IMAGE_EXTS if e in data), b"")
        try:
            if RAW_EXT in data:
                decode_raw(image, ids.height, ids.width)
                reason = None
            else:
                check_image(image)
                reason = dali_check.check(image)
        except BadImage as exc:
            reason = str(exc)
        if reason:
            return _damaged(number, reader.shard_of(i), reason)
    return None


def _decode_failure(exc: RuntimeError, root: Path, manifest: Manifest, set_name: str, pipe: Any) -> Exception:
    """Name the damaged sample behind a DALI failure in decoding; other failures (out
    of memory, ...) pass through unchanged."""
    text = str(exc)
    if not any(op in text for op in ("decoders", "external_source", "reshape")):
        return exc
    recent = {n for batch in pipe.source.recent for n in batch}
    reader = ShardReader(root, manifest.sets[set_name])
    try:
        return _find_damaged(reader, recent) or exc
    finally:
        reader.close()


def _unwrap_worker_error(exc: DataError) -> DataError:
    """A DataError re-raised from a DataLoader worker carries the worker's traceback in
    its message; keep only our own line."""
    marker = f"{DataError.__name__}: "
    text = str(exc)
    return DataError(text.rsplit(marker, 1)[1].strip()) if marker in text else exc


def _dali_device(device: torch.device) -> tuple[str, int | None]:
    """A torch device as DALI's (device, device_id)."""
    return ("gpu", device.index or 0) if device.type == "cuda" else ("cpu", None)


# ------------------------------------------------------------------------- DALI


class DaliTrainStream:
    """Endless stream of augmented training batches from the DALI pipeline.

    Each pipeline run yields `batches_per_run` training batches (DALI's fixed cost per
    run is shared by them). Run r is fixed by (seed, rank, r) (`source.py`), so the
    state is the number of batches served: a resumed stream restarts the pipeline at
    the run holding the next batch and skips the batches of that run already served.
    """

    def __init__(self, root: Path, manifest: Manifest, set_name: str, *, device: torch.device, batch_size: int,
                 crop: int, rsa: RSAConfig, seed: int, rank: int, world_size: int, num_threads: int,
                 batches_per_run: int = 1, state: dict[str, Any] | None = None) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        from commfor_fast.pipelines.dali import create_train_pipeline
        from commfor_fast.pipelines.source import ShardSource

        self.root, self.manifest, self.set_name = Path(root), manifest, set_name
        self.batch_size, self.per_run = batch_size, batches_per_run
        self.served = int((state or {}).get("batches", 0))
        run, self._next = divmod(self.served, batches_per_run)
        dali_device, device_id = _dali_device(device)
        self.pipe = create_train_pipeline(
            ShardSource.from_manifest(root, manifest, set_name), device=dali_device, batch_size=batch_size, crop=crop,
            rsa=rsa, seed=seed, shard_id=rank, num_shards=world_size, num_threads=num_threads, device_id=device_id,
            batches_per_run=batches_per_run, start_run=run,
        )
        self._run: dict[str, torch.Tensor] | None = None
        try:
            self._iter = DALIGenericIterator([self.pipe], ["images", "ids"], size=-1)  # runs the first batches
        except RuntimeError as exc:
            raise _decode_failure(exc, self.root, self.manifest, self.set_name, self.pipe) from None

    def __iter__(self) -> DaliTrainStream:
        return self

    def __next__(self) -> Batch:
        if self._run is None or self._next == self.per_run:
            try:
                self._run = next(self._iter)[0]
            except RuntimeError as exc:
                raise _decode_failure(exc, self.root, self.manifest, self.set_name, self.pipe) from None
            self._next = self._next % self.per_run
        part = slice(self._next * self.batch_size, (self._next + 1) * self.batch_size)
        self._next += 1
        self.served += 1
        return _batch(self._run["images"][part], self._run["ids"][part])

    def state_dict(self) -> dict[str, Any]:
        return {"engine": "dali", "batches": self.served}

    def close(self) -> None:
        """Stop the pipeline now (from this thread), not whenever garbage collection runs."""
        if self.pipe is not None:
            self.pipe.source.close()
        self._iter = self.pipe = self._run = None
        gc.collect()


class DaliEvalLoader:
    """This rank's part of a set, once, in stored order; with `levels`, every batch holds
    the images at each level, made from one decode."""

    def __init__(self, root: Path, manifest: Manifest, set_name: str, *, device: torch.device, batch_size: int,
                 crop: int, rank: int, world_size: int, num_threads: int, levels: tuple[Level, ...] = (),
                 seed: int = 0) -> None:
        from commfor_fast.pipelines.source import ShardSource

        self.root, self.manifest, self.set_name = Path(root), manifest, set_name
        self.device, self.batch_size, self.crop = device, batch_size, crop
        self.rank, self.world_size, self.num_threads = rank, world_size, num_threads
        self.levels, self.seed = tuple(levels), seed
        start, end = shard_range(manifest.sets[set_name].num_samples, rank, world_size)
        self.num_samples = end - start
        self.source = ShardSource.from_manifest(root, manifest, set_name)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[Batch]:
        if self.num_samples == 0:
            return
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        from commfor_fast.pipelines.dali import create_eval_pipeline

        dali_device, device_id = _dali_device(self.device)
        pipe = create_eval_pipeline(self.source, device=dali_device, batch_size=self.batch_size, crop=self.crop,
                                    shard_id=self.rank, num_shards=self.world_size, num_threads=self.num_threads,
                                    device_id=device_id, levels=self.levels, seed=self.seed)
        names = [f"level{i}" for i in range(len(self.levels))] or ["images"]
        try:  # the iterator runs the first batches already
            iterator = DALIGenericIterator([pipe], [*names, "ids"], size=-1,
                                           last_batch_policy=LastBatchPolicy.PARTIAL)
            for out in iterator:
                images = tuple(out[0][name] for name in names)
                yield _batch(images[0], out[0]["ids"], images if self.levels else ())
        except RuntimeError as exc:
            raise _decode_failure(exc, self.root, self.manifest, self.set_name, pipe) from None
        finally:
            pipe.source.close()
            del pipe
            gc.collect()

    def close(self) -> None:
        gc.collect()


# -------------------------------------------------------------------- reference


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
        ext = next((e for e in IMAGE_EXTS if e in data), None)
        try:
            if ext is None:
                raise BadImage("the sample has no image member")
            if ext == RAW_EXT:
                img = Image.fromarray(decode_raw(data[ext], ids.height, ids.width))
            else:
                img = decode_rgb(data[ext])
        except BadImage as exc:
            raise _damaged(ids.sample_number, self.reader.shard_of(index), str(exc)) from None
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
            raise _unwrap_worker_error(exc) from None
        self.served += 1
        return _batch(images.to(self.device, non_blocking=True), ids)

    def state_dict(self) -> dict[str, Any]:
        return {"engine": "reference", "batches": self.served}

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
        self.reader = ShardReader(root, manifest.sets[set_name])
        start, end = shard_range(len(self.reader), rank, world_size)
        self.num_samples = end - start
        self.levels = tuple(levels)
        items = _ReferenceItems(self.reader, crop, manifest.preresize is not None, None, seed, self.levels)
        self._loader = torch.utils.data.DataLoader(
            items, batch_size=batch_size, sampler=[(0, i) for i in range(start, end)], num_workers=num_threads,
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
                    yield _batch(levels[0], ids, levels)
                else:
                    yield _batch(images, ids)
        except DataError as exc:
            raise _unwrap_worker_error(exc) from None

    def close(self) -> None:
        self.reader.close()


# ---------------------------------------------------------------------- factories

TrainStream = DaliTrainStream | ReferenceTrainStream
EvalLoader = DaliEvalLoader | ReferenceEvalLoader


def create_train_stream(engine: str, root: Path, manifest: Manifest, set_name: str, *, device: torch.device,
                        batch_size: int, crop: int, rsa: RSAConfig, seed: int, rank: int, world_size: int,
                        num_threads: int, batches_per_run: int = 1,
                        state: dict[str, Any] | None = None) -> TrainStream:
    """An endless training stream of `engine` ("dali" or "reference").

    Args:
        device: where the images go (and, for DALI, which device runs the pipeline).
        rank, world_size: this process's shard of the set.
        num_threads: DALI CPU threads, or reference DataLoader workers.
        batches_per_run: DALI: training batches per pipeline run (shares DALI's fixed
            cost per run; part of the stream, like the seed).
        state: a `state_dict()` of an earlier stream with the same settings, to resume.
    """
    check_shard_files(root, manifest.sets[set_name])
    if engine == "dali":
        return DaliTrainStream(root, manifest, set_name, device=device, batch_size=batch_size, crop=crop, rsa=rsa,
                               seed=seed, rank=rank, world_size=world_size, num_threads=num_threads,
                               batches_per_run=batches_per_run, state=state)
    if engine == "reference":
        return ReferenceTrainStream(root, manifest, set_name, device=device, batch_size=batch_size, crop=crop,
                                    rsa=rsa, seed=seed, rank=rank, world_size=world_size, num_threads=num_threads,
                                    state=state)
    raise UserError(f"--loader {engine!r}: choose one of {', '.join(ENGINES)}")


def create_eval_loader(engine: str, root: Path, manifest: Manifest, set_name: str, *, device: torch.device,
                       batch_size: int, crop: int, rank: int, world_size: int, num_threads: int,
                       levels: tuple[Level, ...] = (), seed: int = 0) -> EvalLoader:
    """One pass over this rank's contiguous part of a set, with `engine` ("dali" or "reference").

    Args:
        levels: robustness evaluation: the conditions to produce (`perturb.parse_perturbations`,
            clean first); every batch then holds the images at each level (`Batch.levels`),
            all made from one read and one decode of each image.
        seed: seeds the noise perturbation (per sample number, so the same on every rank).
    """
    check_shard_files(root, manifest.sets[set_name])
    if engine == "dali":
        return DaliEvalLoader(root, manifest, set_name, device=device, batch_size=batch_size, crop=crop, rank=rank,
                              world_size=world_size, num_threads=num_threads, levels=levels, seed=seed)
    if engine == "reference":
        return ReferenceEvalLoader(root, manifest, set_name, device=device, batch_size=batch_size, crop=crop,
                                   rank=rank, world_size=world_size, num_threads=num_threads, levels=levels,
                                   seed=seed)
    raise UserError(f"--loader {engine!r}: choose one of {', '.join(ENGINES)}")
