"""The DALI loaders: training batches and evaluation passes from the DALI pipelines (`dali.py`).

Training reads an endless shuffled stream in the order `source.train_batch_indices`
gives, the same as the reference loader's. The batches are prepared off the training
thread, in DALI's worker processes (`executor.py`), when the thread budget allows. Each DALI pipeline run yields
`batches_per_run` batches; run r is a pure function of (seed, rank, r), so a resumed
stream restarts at the run holding its next batch. Evaluation reads each rank's
contiguous part of the set once per pass, the last batch short, from a pipeline kept
between passes. A decoding failure names the damaged sample (`damaged.decode_failure`).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from commfor_fast.pipelines.batch import Batch, to_batch
from commfor_fast.pipelines.damaged import decode_failure
from commfor_fast.pipelines.executor import ExecutorOptions
from commfor_fast.pipelines.perturb import Level
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.pipelines.retire import RetiredRuns
from commfor_fast.shards import Manifest, shard_range


def _dali_device(device: torch.device) -> tuple[str, int | None]:
    """A torch device as DALI's (device, device_id)."""
    return ("gpu", device.index or 0) if device.type == "cuda" else ("cpu", None)


class DaliTrainStream:
    """Endless stream of augmented training batches from the DALI pipeline.

    Each pipeline run yields `batches_per_run` training batches (DALI's fixed cost per
    run is shared by them). Run r is fixed by (seed, rank, r) (`source.py`), so the
    state is the number of batches served: a resumed stream restarts the pipeline at
    the run holding the next batch and skips the batches of that run already served.
    """

    def __init__(self, root: Path, manifest: Manifest, set_name: str, *, device: torch.device, batch_size: int,
                 crop: int, rsa: RSAConfig, seed: int, rank: int, world_size: int, num_threads: int,
                 batches_per_run: int = 1, state: dict[str, Any] | None = None,
                 options: ExecutorOptions = ExecutorOptions()) -> None:
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
            batches_per_run=batches_per_run, start_run=run, options=options,
        )
        self._run: dict[str, torch.Tensor] | None = None
        self._retired = RetiredRuns.for_device(device)  # DALI's buffers outlive torch's use of them
        try:
            self._iter = DALIGenericIterator([self.pipe], ["images", "ids"], size=-1)  # runs the first batches
        except RuntimeError as exc:
            raise decode_failure(exc, self.root, self.manifest, self.set_name, self.pipe) from None

    def __iter__(self) -> DaliTrainStream:
        return self

    def __next__(self) -> Batch:
        if self._run is None or self._next == self.per_run:
            self._retired.retire(self._run)
            try:
                self._run = next(self._iter)[0]
                self.pipe.source.consumed += 1
            except RuntimeError as exc:
                raise decode_failure(exc, self.root, self.manifest, self.set_name, self.pipe) from None
            self._next = self._next % self.per_run
        part = slice(self._next * self.batch_size, (self._next + 1) * self.batch_size)
        self._next += 1
        self.served += 1
        return to_batch(self._run["images"][part], self._run["ids"][part])

    def state_dict(self) -> dict[str, Any]:
        return {"loader": "dali", "batches": self.served}

    def close(self) -> None:
        """Stop the pipeline now (from this thread), not whenever garbage collection runs."""
        if self.pipe is not None:
            self.pipe.source.close()
        self._retired.release_all()
        self._iter = self.pipe = self._run = None
        gc.collect()


class DaliEvalLoader:
    """This rank's part of a set, in stored order, once per pass (each iteration is a
    pass); with `levels`, every batch holds the images at each level, made from one decode.

    The pipeline and its source workers are built on the first pass and kept: each
    later pass resets the pipeline, so training's validation pays DALI's start-up
    (spawning the workers: seconds) once per run, not once per epoch. DALI resets a
    pipeline only at the end of a pass, so a pass left early or stopped by an error
    drops it, and the next pass builds a new one. `close()` releases it.
    """

    def __init__(self, root: Path, manifest: Manifest, set_name: str, *, device: torch.device, batch_size: int,
                 crop: int, rank: int, world_size: int, num_threads: int, levels: tuple[Level, ...] = (),
                 seed: int = 0, options: ExecutorOptions = ExecutorOptions()) -> None:
        from commfor_fast.pipelines.source import ShardSource

        self.root, self.manifest, self.set_name = Path(root), manifest, set_name
        self.device, self.batch_size, self.crop = device, batch_size, crop
        self.rank, self.world_size, self.num_threads = rank, world_size, num_threads
        self.levels, self.seed, self.options = tuple(levels), seed, options
        start, end = shard_range(manifest.sets[set_name].num_samples, rank, world_size)
        self.num_samples = end - start
        self.source = ShardSource.from_manifest(root, manifest, set_name)
        self.names = [f"level{i}" for i in range(len(self.levels))] or ["images"]
        self.pipe: Any = None
        self._iter: Any = None

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[Batch]:
        if self.num_samples == 0:
            return
        finished = False
        try:
            for out in self._start_pass():
                self.pipe.source.consumed += 1
                images = tuple(out[0][name] for name in self.names)
                yield to_batch(images[0], out[0]["ids"], images if self.levels else ())
            finished = True
        except RuntimeError as exc:
            raise decode_failure(exc, self.root, self.manifest, self.set_name, self.pipe) from None
        finally:
            if not finished:
                self.close()

    def _start_pass(self) -> Any:
        """The DALI iterator at the start of a pass: built now (it runs the first batches
        already), or the kept one reset to the first batch."""
        if self._iter is not None:
            self._iter.reset()
        else:
            from nvidia.dali.plugin.base_iterator import LastBatchPolicy
            from nvidia.dali.plugin.pytorch import DALIGenericIterator

            from commfor_fast.pipelines.dali import create_eval_pipeline

            dali_device, device_id = _dali_device(self.device)
            self.pipe = create_eval_pipeline(self.source, device=dali_device, batch_size=self.batch_size,
                                             crop=self.crop, shard_id=self.rank, num_shards=self.world_size,
                                             num_threads=self.num_threads, device_id=device_id, levels=self.levels,
                                             seed=self.seed, options=self.options)
            self._iter = DALIGenericIterator([self.pipe], [*self.names, "ids"], size=-1,
                                             last_batch_policy=LastBatchPolicy.PARTIAL)
        self.pipe.source.consumed = 0
        return self._iter

    def close(self) -> None:
        """Stop the pipeline and its workers now (the loader builds a new one if iterated again)."""
        if self.pipe is not None:
            self.pipe.source.close()
        self._iter = self.pipe = None
        gc.collect()
