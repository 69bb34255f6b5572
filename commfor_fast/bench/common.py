"""Shared benchmark helpers: machine description, repeated timing, result tables, progress, warnings.

Every figure is the median of several repetitions after a warm-up, measured as wall
time and as CPU time of this process and its children (DataLoader workers), so the
tables can give images/s, images/s per core and host CPU milliseconds per image.

The benchmarks run for minutes: each stage says what it does on stderr (`say`). A
figure that should not be trusted gets a warning (`warn`), printed at once and
collected for BENCH.md (`warnings_markdown`): repeats that spread over more than
`SPREAD_LIMIT` of their median (`check_spread`), or a result that contradicts its
bound (a real pipeline faster than synthetic batches, `train_bench`).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# (slowest - fastest) / median of one figure's repeats above this: the machine was busy.
SPREAD_LIMIT = 0.25
_WARNINGS: list[str] = []


def machine() -> str:
    """CPU model, cores, memory and GPU, as one line for the tables."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch  # here, not at the top: convert_bench's worker processes import this module

    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB, {gpu}"


def _live_children_seconds() -> float:
    """CPU time of running child processes (e.g. persistent DataLoader workers), from /proc."""
    me, total, tick = os.getpid(), 0.0, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # fields[1] is the parent pid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def cpu_seconds() -> float:
    """User + system CPU time of this process and its children (running or reaped)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + _live_children_seconds()


@dataclass
class Timing:
    """Median figures over repetitions of a run that processes `images` images."""

    images: int
    wall_s: float
    cpu_s: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_s / self.images


def say(text: str) -> None:
    """A progress line on stderr."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def warn(text: str) -> None:
    """A figure not to trust: printed now and kept for BENCH.md."""
    _WARNINGS.append(text)
    say(f"warning: {text}")


def check_spread(label: str, samples: Sequence[float], unit: str) -> None:
    """Warn when the repeats of one figure spread over more than `SPREAD_LIMIT` of their median."""
    middle = statistics.median(samples)
    spread = (max(samples) - min(samples)) / middle if middle > 0 else 0.0
    if len(samples) > 1 and spread > SPREAD_LIMIT:
        warn(f"{label}: its {len(samples)} repeats spread over {spread:.0%} of their median "
             f"({min(samples):.3g} to {max(samples):.3g} {unit}); the machine was busy: rerun before trusting it")


def warnings_markdown() -> str:
    """The warnings of this run as a Markdown section ("" when there were none)."""
    if not _WARNINGS:
        return ""
    return "## Warnings: figures not to trust\n\n" + "\n".join(f"- {w}" for w in _WARNINGS)


def measure(run: Callable[[], int], repeats: int, warmup: int = 1, label: str = "timed run") -> Timing:
    """Call `run` (which returns the number of images it processed) `warmup + repeats`
    times; report the median wall and CPU time of the timed repetitions. `label` names
    the figure in the progress line and in a warning about its spread."""
    for _ in range(warmup):
        run()
    walls, cpus, images = [], [], 0
    for _ in range(repeats):
        c0, t0 = cpu_seconds(), time.perf_counter()
        images = run()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    timing = Timing(images, statistics.median(walls), statistics.median(cpus))
    say(f"{label}: {timing.images_per_s:.1f} img/s (median of {repeats})")
    check_spread(label, walls, "s")
    return timing


def markdown_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A Markdown table of `rows` (dicts) with the given columns, numbers rounded."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
