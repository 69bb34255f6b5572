"""Host cost of the GPU configuration, measured on the CPU: what a GPU run pays per image
outside the GPU's own work.

- `plan_us_per_image`: the plan step of a training run (drawing every sample's RSA and
  filling the graph's packed arguments) at the default pipeline batch, CPU time.
- `source_us_per_image`: the whole host side of one pipeline run (reading the
  samples, the plan step and the argument arrays DALI receives).
- `graph_ops_per_iteration`: operator instances in the traced GPU training graph,
  default RSA, verbatim shards (tracing needs no GPU).
- `graph_fixed_ms_per_image`: DALI's fixed cost of the RSA stages: CPU time per
  run of the graph with all-no-op plans minus the graph with RSA off, per image, on
  the CPU backend with one thread (tiny in-memory images, so a run is the scheduler's
  work, not reading or pixels). With no-op plans every operator inside the branches
  is skipped: this is the cost of the splits and merges, not of the graph.
- `graph_real_plans_us_per_image`: the graph's host cost with real default-RSA plans:
  CPU time per run per image, CPU backend, one thread, 24-px images (so the pixel
  work, which the GPU does, is small).
- `training_thread_us_per_image`: the training thread's wall time per image getting
  training batches from the DALI stream (pre-resized shards, default RSA, CPU
  backend) while a stand-in model step leaves the pipeline time to work; with the
  default split of 4 threads (2 source workers), and `..._no_workers` with the
  batches prepared by the training thread, as before the workers.
- `host_cpu_ms_per_image`: all host CPU per image in that run, every thread and
  worker (on the CPU backend this includes the pixel work a GPU would do).

    python -m commfor_fast.bench.host_bench [--quick] [--shards DIR ...]
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from commfor_fast.bench.common import check_spread, cpu_seconds, measure
from commfor_fast.bench.script import bench_main
from commfor_fast.pipelines.dali import create_pipeline, create_train_pipeline, operator_census
from commfor_fast.pipelines.dali_loader import DaliTrainStream
from commfor_fast.pipelines.executor import ExecutorOptions
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.pipelines.slots import Slots, graph_stages
from commfor_fast.pipelines.source import BatchSource, ShardSource, TrainPlanner
from commfor_fast.settings import TrainSettings
from commfor_fast.shards import Manifest

COLUMNS = ["figure", "value", "unit", "what"]
CROP = 384
# The GPU configuration: the paper's batch of 128 per GPU, TrainSettings' runs per pipeline batch.
GPU_BATCH = 128
PIPELINE_BATCH = GPU_BATCH * TrainSettings.batches_per_run


def _source(shards: dict[str, Path], preresized: bool) -> ShardSource:
    label = next(k for k in shards if ("preresized" in k) == preresized)
    manifest = Manifest.load(shards[label])
    return ShardSource.from_manifest(shards[label], manifest, manifest.training_sets()[0])


def plan_us_per_image(batch: int, repeats: int, preresized: bool = True) -> float:
    """CPU time of the vectorised training plan step per image, for 440 x 586 inputs."""
    rsa = RSAConfig()
    plan = TrainPlanner(rsa, CROP, preresized, seed=0, rank=0, stages=graph_stages(rsa))
    ids = np.array([[i % 2, 0, i, 440, 586] for i in range(batch)], np.int32)
    calls = iter(range(10**9))

    def run() -> int:
        plan(ids, next(calls))
        return batch

    return 1e6 * measure(run, repeats).cpu_s / batch


@dataclass(frozen=True)
class _Drawn:
    """A stand-in order: run n is `batch` samples drawn with replacement, seeded by n,
    so a small benchmark set still makes pipeline batches of the GPU configuration."""

    num_samples: int
    batch: int

    def __call__(self, n: int) -> np.ndarray:
        return np.random.default_rng(n).integers(0, self.num_samples, self.batch)

    def plan_number(self, n: int) -> int:
        return n


def source_us_per_image(source: ShardSource, batch: int, repeats: int) -> float:
    """CPU time of one training run's host side (read, plan, argument arrays) per image,
    over samples drawn with replacement, so a small benchmark set still makes pipeline
    batches of the GPU configuration."""
    rsa = RSAConfig()
    plan = TrainPlanner(rsa, CROP, source.preresize is not None, seed=0, rank=0, stages=graph_stages(rsa))
    host = BatchSource(source, _Drawn(source.num_samples, batch), plan, graph_stages(rsa))
    calls = itertools.count()
    try:
        return 1e6 * measure(lambda: len(host(next(calls))[1]), repeats).cpu_s / batch
    finally:
        host.close()


def graph_ops(source: ShardSource) -> int:
    pipe = create_train_pipeline(source, device="gpu", device_id=0, batch_size=1, crop=CROP, rsa=RSAConfig(), seed=0)
    try:
        return sum(operator_census(pipe).values())
    finally:
        pipe.source.close()


class _SameBatch:
    """A stand-in host side: the same prepared batch on every call, so a run costs only
    DALI's work on it (no reading, no planning)."""

    def __init__(self, raw: bool, head: tuple[str, ...], outputs: tuple) -> None:
        self.raw, self.head, self.outputs = raw, head, outputs

    def prepare(self, read_threads: int, keep: int) -> None:
        """Nothing to read, and the one batch lives as long as this object."""

    def __call__(self, info: object) -> tuple:
        return self.outputs

    def close(self) -> None:
        pass


def _noop_batch(batch: int, stages: int) -> _SameBatch:
    """Tiny raw images with all-no-op plans: a run is DALI's scheduling of the graph,
    what every run pays whatever the images."""
    side = 8
    ids = np.array([[i % 2, 0, i, side, side] for i in range(batch)], np.int32)
    slots = Slots.empty(stages, batch)
    return _SameBatch(True, ("images", "ids", "crop_start", "crop_shape"),
                      ([np.zeros((side, side, 3), np.uint8)] * batch, ids, np.zeros((batch, 2), np.int32),
                       np.full((batch, 2), side, np.int32), *(a for k in range(stages) for a in slots.stage(k))))


def _graph_cpu_per_run(host: _SameBatch, stages: int, batch: int, repeats: int) -> float:
    """CPU seconds per run of the training graph over `host`'s batch, CPU backend, one thread."""
    pipe = create_pipeline(host, stages=stages, device="cpu", batch_size=batch, num_threads=1, normalise=False)
    pipe.build()
    return measure(lambda: len(pipe.run()[1]), repeats, label=f"graph, {stages} stages, batch {batch}").cpu_s


def graph_fixed_ms_per_image(batch: int, repeats: int) -> float:
    """(CPU per run, every stage present but no-op) - (CPU per run, RSA off), per
    image: the fixed cost of the RSA stages, on the CPU backend, one thread."""
    stages = graph_stages(RSAConfig())
    return 1e3 * (_graph_cpu_per_run(_noop_batch(batch, stages), stages, batch, repeats) -
                  _graph_cpu_per_run(_noop_batch(batch, 0), 0, batch, repeats)) / batch


def graph_real_plans_us_per_image(batch: int, repeats: int, side: int = 24) -> float:
    """CPU per run of the training graph with real default-RSA plans, per image, CPU
    backend, one thread: `batch` random `side` x `side` images planned as in training (so the figure is the graph's host
    cost per image, not its pixel work, which the GPU does)."""
    rsa, stages = RSAConfig(), graph_stages(RSAConfig())
    ids = np.array([[i % 2, 0, i, side, side] for i in range(batch)], np.int32)
    crop = side * CROP // 440  # the final crop's share of the stored side, as in training
    first, crops, slots = TrainPlanner(rsa, crop, True, seed=0, rank=0, stages=stages)(ids, 0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(batch)]
    host = _SameBatch(True, ("images", "ids", "crop_start", "crop_shape"),
                      (images, ids, crops[:, :2].copy(), crops[:, 2:].copy(),
                       *(np.ascontiguousarray(a) for k in range(stages) for a in slots.stage(k))))
    return 1e6 * _graph_cpu_per_run(host, stages, batch, repeats) / batch


def training_thread(source: ShardSource, batch: int, per_run: int, runs: int, workers: int,
                    threads: int) -> dict[str, float]:
    """What the training thread pays per image to get training batches from the DALI
    stream (pre-resized shards, default RSA, CPU backend), with `workers` source
    workers out of `threads`, while a stand-in model step (a sleep of twice a
    free-running batch's time) leaves the pipeline time to finish the next run: the
    thread's wall time and its own CPU time inside `next(stream)` per image, and the
    host CPU per image of every thread and worker."""
    manifest = Manifest.load(source.root)
    stream = DaliTrainStream(source.root, manifest, manifest.training_sets()[0], device=torch.device("cpu"),
                             batch_size=batch, crop=CROP, rsa=RSAConfig(), seed=0, rank=0, world_size=1,
                             num_threads=threads, batches_per_run=per_run,
                             options=ExecutorOptions(source_workers=workers))
    try:
        for _ in range(per_run):  # warm-up: the first run
            next(stream)
        t0 = time.perf_counter()
        for _ in range(per_run):
            next(stream)
        step = 2 * (time.perf_counter() - t0) / per_run
        walls, own, c0 = [], [], cpu_seconds()
        for _ in range(runs):
            wall = thread = 0.0
            for _ in range(per_run):
                time.sleep(step)
                t, c = time.perf_counter(), time.thread_time()
                next(stream)
                wall, thread = wall + time.perf_counter() - t, thread + time.thread_time() - c
            walls.append(wall)
            own.append(thread)
        cpu = cpu_seconds() - c0
    finally:
        stream.close()
    check_spread(f"training thread's wall time per run, {workers} workers", walls, "s")
    images = per_run * batch
    return {"wall_us": 1e6 * statistics.median(walls) / images, "own_us": 1e6 * statistics.median(own) / images,
            "host_cpu_ms": 1e3 * cpu / (runs * images)}


def run(shards: dict[str, Path], quick: bool) -> dict[str, Any]:
    """Every figure of the module docstring, at the GPU configuration's pipeline batch."""
    repeats = 5 if quick else 15
    preresized = _source(shards, preresized=True)
    return {
        "plan_us_per_image": plan_us_per_image(PIPELINE_BATCH, repeats),
        "plan_us_per_image_batch_128": plan_us_per_image(GPU_BATCH, repeats),
        "source_us_per_image": source_us_per_image(preresized, PIPELINE_BATCH, max(repeats // 3, 3)),
        "graph_ops_per_iteration": graph_ops(_source(shards, preresized=False)),
        "graph_fixed_ms_per_image": graph_fixed_ms_per_image(PIPELINE_BATCH, repeats),
        "graph_fixed_ms_per_image_batch_128": graph_fixed_ms_per_image(GPU_BATCH, repeats),
        "graph_real_plans_us_per_image": graph_real_plans_us_per_image(PIPELINE_BATCH, repeats),
        **_thread_figures(preresized, quick),
        "pipeline_batch": PIPELINE_BATCH,
    }


def _thread_figures(source: ShardSource, quick: bool) -> dict[str, float]:
    """The training thread and host CPU figures, with the source workers (the default
    split of 4 threads) and without (the training thread prepares the batches), in one run."""
    batch, per_run, runs = (16, 2, 3) if quick else (32, TrainSettings.batches_per_run, 5)
    figures: dict[str, float] = {"thread_bench_batch": batch, "thread_bench_batches_per_run": per_run}
    for suffix, workers in (("", 2), ("_no_workers", 0)):
        f = training_thread(source, batch, per_run, runs, workers=workers, threads=4)
        figures.update({f"training_thread_us_per_image{suffix}": f["wall_us"],
                        f"training_thread_cpu_us_per_image{suffix}": f["own_us"],
                        f"host_cpu_ms_per_image{suffix}": f["host_cpu_ms"]})
    return figures


def rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures as table rows."""
    what = {
        "plan_us_per_image": ("us", f"plan step per image, pipeline batch {figures['pipeline_batch']}"),
        "plan_us_per_image_batch_128": ("us", "plan step per image, pipeline batch 128"),
        "source_us_per_image": ("us", "host side of a pipeline run per image (read, plan, arguments)"),
        "graph_ops_per_iteration": ("", "operator instances, traced GPU training graph, default RSA"),
        "graph_fixed_ms_per_image": ("ms", f"DALI's fixed cost of the RSA stages per image, pipeline batch "
                                           f"{figures['pipeline_batch']} (CPU backend)"),
        "graph_fixed_ms_per_image_batch_128": ("ms", "the same, pipeline batch 128"),
        "graph_real_plans_us_per_image": ("us", f"CPU per run of the graph with real default-RSA plans per image, "
                                                f"24-px images, pipeline batch {figures['pipeline_batch']} "
                                                "(CPU backend, one thread)"),
        "training_thread_us_per_image": ("us", f"training thread's wall time in next(stream) per image, 2 source "
                                               f"workers + 2 DALI threads, batch {figures['thread_bench_batch']} x "
                                               f"{figures['thread_bench_batches_per_run']} per run, pre-resized "
                                               "shards, default RSA, CPU backend, paced by a stand-in step"),
        "training_thread_us_per_image_no_workers": ("us", "the same, batches prepared by the training thread"),
        "training_thread_cpu_us_per_image": ("us", "the training thread's own CPU time in next(stream) per image, "
                                                   "2 source workers"),
        "training_thread_cpu_us_per_image_no_workers": ("us", "the same, batches prepared by the training thread"),
        "host_cpu_ms_per_image": ("ms", "all host CPU per image (every thread and worker) in that run; CPU backend: "
                                        "includes the pixel work a GPU does"),
        "host_cpu_ms_per_image_no_workers": ("ms", "the same, batches prepared by the training thread"),
    }
    return [{"figure": k, "value": figures[k], "unit": u, "what": w} for k, (u, w) in what.items()]


if __name__ == "__main__":
    bench_main(__doc__, "Host cost of the GPU configuration", lambda s, q, t: rows(run(s, q)), COLUMNS)
