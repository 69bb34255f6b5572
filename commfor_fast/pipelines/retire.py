"""Retired DALI runs are kept until torch's GPU work that reads them has finished.

With the dynamic executor, torch receives DALI's output buffers through DLPack without
a copy. When the training stream drops a run, DALI frees that memory in the order of
DALI's CUDA stream, while kernels queued on torch's stream (the last training step's
backward pass reads the images) may not have run yet; DALI's next run may then reuse
the block under them. So a run that is dropped is retired instead: a CUDA event is
recorded on torch's current stream after its last use, and the run's tensors are kept
until that event has completed. On the CPU nothing is queued and nothing is kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import torch


class Event(Protocol):
    """What is needed of a `torch.cuda.Event` recorded after a run's last use."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...


def _record_on_current_stream(device: torch.device) -> Event:
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return event


class RetiredRuns:
    """Runs handed back by the stream, each held until its event has completed.

    Args:
        record: makes an event recorded after everything queued so far that may use a
            run; None where no work is queued asynchronously (CPU), so nothing is kept.
    """

    def __init__(self, record: Callable[[], Event] | None) -> None:
        self._record = record
        self._held: deque[tuple[Event, Any]] = deque()

    @classmethod
    def for_device(cls, device: torch.device) -> RetiredRuns:
        """Events on torch's current stream of `device` when it is a CUDA device."""
        return cls((lambda: _record_on_current_stream(device)) if device.type == "cuda" else None)

    def __len__(self) -> int:
        return len(self._held)

    def retire(self, run: Any) -> None:
        """Keep `run` (None: nothing to keep) until the work queued so far has finished;
        let go of earlier runs whose work has."""
        if run is not None and self._record is not None:
            self._held.append((self._record(), run))
        while self._held and self._held[0][0].query():  # events complete in the order they were recorded
            self._held.popleft()

    def release_all(self) -> None:
        """Wait for the work on every held run, then let go of them (closing the stream)."""
        while self._held:
            event, _ = self._held.popleft()
            event.synchronize()
