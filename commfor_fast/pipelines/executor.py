"""How a DALI pipeline runs: its share of the CPU threads, the worker processes that
prepare its batches, its queues and DALI's executor options.

The host side of a run (reading the samples, planning, packing: `source.BatchSource`)
costs about as much CPU as the GPU's whole graph asks of the host. Run in the
training thread it stalls the model every few steps, so the loaders hand it to
DALI's parallel external source: `source_workers` processes (started with spawn, so
no CUDA state or open files are inherited) each prepare whole runs, `source_prefetch`
runs ahead, into shared memory that DALI reads without a copy. The training thread
then only waits for finished runs.

A loader's `num_threads` is a budget, not a count per kind: the workers take
`source_workers` of it (by default half, when it has room for both), DALI's own
threads the rest.

Options left at None keep DALI's defaults; they are here for the GPU check's
ablations (the CPU backend cannot tell their effect on the GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from commfor_fast.errors import UserError


@dataclass(frozen=True)
class ExecutorOptions:
    """DALI pipeline options beyond the graph itself (see the module docstring)."""

    source_workers: int | None = None  # batch-preparing processes; None: half of num_threads (0 when it is 1)
    source_prefetch: int = 2  # runs each worker prepares ahead (external source prefetch_queue_depth)
    prefetch_queue_depth: int = 2  # runs DALI computes ahead of the training loop
    stream_policy: str | None = None  # DALI's StreamPolicy by name: single, per_backend, per_operator
    concurrency: str | None = None  # DALI's OperatorConcurrency by name: none, backend, full
    resize_minibatch_size: int | None = None  # every fn.resize's minibatch_size (images per kernel call)
    hw_decoder_load: float | None = None  # share of JPEG decoding for the hardware decoder (A100/H100)

    @classmethod
    def from_flags(cls, flags: list[str] | None) -> ExecutorOptions:
        """Options from `--executor NAME=VALUE` flags (field names of this class; `default`
        for DALI's default: `none` is a value, that of `concurrency=none`)."""
        values: dict[str, Any] = {}
        kinds = {f.name: f.type for f in fields(cls)}
        for flag in flags or ():
            name, _, text = flag.partition("=")
            if name not in kinds or not text:
                raise UserError(f"--executor {flag!r}: use NAME=VALUE with NAME one of {', '.join(kinds)}")
            kind = kinds[name]
            try:
                values[name] = None if text.lower() == "default" else (
                    int(text) if "int" in kind else float(text) if "float" in kind else text)
            except ValueError:
                raise UserError(f"--executor {flag!r}: {name} takes {kind.replace(' | None', '')} or default") \
                    from None
        return cls(**values)

    def split(self, num_threads: int) -> tuple[int, int]:
        """(DALI threads, worker processes) out of a budget of `num_threads`."""
        if num_threads < 1:
            raise UserError(f"--num-threads {num_threads}: the DALI loader needs at least 1")
        workers = num_threads // 2 if self.source_workers is None else self.source_workers
        if not 0 <= workers < num_threads:
            raise UserError(f"--executor source_workers={workers}: choose 0 to {num_threads - 1} "
                            f"(--num-threads {num_threads} also holds DALI's own threads)")
        return num_threads - workers, workers

    def pipeline_kwargs(self) -> dict[str, Any]:
        """The executor's keyword arguments of DALI's Pipeline, those set only."""
        from nvidia.dali.pipeline import OperatorConcurrency, StreamPolicy

        kwargs: dict[str, Any] = {}
        if self.stream_policy is not None:
            kwargs["stream_policy"] = _enum(StreamPolicy, self.stream_policy, "stream_policy")
        if self.concurrency is not None:
            kwargs["concurrency"] = _enum(OperatorConcurrency, self.concurrency, "concurrency")
        return kwargs

    def resize_kwargs(self) -> dict[str, Any]:
        return {} if self.resize_minibatch_size is None else {"minibatch_size": self.resize_minibatch_size}


def _enum(kind: Any, name: str, option: str) -> Any:
    try:
        return kind[name.upper()]
    except KeyError:
        raise UserError(f"--executor {option}={name}: choose one of {', '.join(m.name.lower() for m in kind)}") from None
