"""The synthetic training stream of `train --synthetic-data`: the loop's upper bound.

One random batch, made once and already on the device, served forever: what the
loop reaches when data costs nothing, to measure how close the real streams get.
It follows their protocol, `batch.TrainStream`.
"""

from __future__ import annotations

from typing import Any

import torch

from commfor_fast.pipelines.batch import Batch


class SyntheticStream:
    """The same random batch (half the labels fake), already on `device`, forever."""

    def __init__(self, batch_size: int, crop: int, device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        self.batch: Batch | None = Batch(
            torch.randn(batch_size, 3, crop, crop, generator=g).to(device), (torch.arange(batch_size) % 2).float(),
            torch.zeros(batch_size, dtype=torch.int64), torch.arange(batch_size))

    def __iter__(self) -> SyntheticStream:
        return self

    def __next__(self) -> Batch:
        if self.batch is None:
            raise StopIteration
        return self.batch

    def state_dict(self) -> dict[str, Any]:
        """Its position (there is none: every batch is the same)."""
        return {"loader": "synthetic"}

    def close(self) -> None:
        """Free the batch's device memory."""
        self.batch = None
