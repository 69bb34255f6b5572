"""The batch every loader yields, and the protocols the loaders follow.

A *loader* serves batches of a converted set to PyTorch; `--loader` chooses which
(`dali` or `reference`, `loader.create_train_stream` / `loader.create_eval_loader`).
Every training stream (DALI, reference, `--synthetic-data`) follows `TrainStream`
and every evaluation loader follows `EvalLoader`, so the training loop and
evaluation never need to know which one they hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


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


def to_batch(images: torch.Tensor, ids: torch.Tensor, levels: tuple[torch.Tensor, ...] = ()) -> Batch:
    """A `Batch` from the images and the (B, 5) `shards.SampleIds` rows of their samples."""
    ids = ids.to("cpu", torch.int64)
    return Batch(images, ids[:, 0].float(), ids[:, 1], ids[:, 2], levels)


@runtime_checkable
class TrainStream(Protocol):
    """An endless stream of training batches that can be stopped and resumed.

    `state_dict()` is what a checkpoint stores for this rank; a stream made again with
    the same settings and that state continues with the batch that would have come next.
    """

    def __next__(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def close(self) -> None:
        """Release workers, pipelines and files now, not whenever garbage collection runs."""


@runtime_checkable
class EvalLoader(Protocol):
    """One pass over this rank's contiguous part of a set; `len` is its number of samples."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def close(self) -> None:
        """Release workers, pipelines and files now."""
