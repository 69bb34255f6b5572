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
- `copy_us_per_image`: CPU time of copying one output image (3 x 384 x 384 float32)
  in one thread: the copy DALI's torch iterator still makes per image in the
  consuming thread on the CPU backend (gathering a run's images into one tensor; on
  the GPU a device copy the thread only enqueues).
- `eval_pass_start_s`: seconds from the start of an evaluation pass to its first
  batch with the loader's pipeline kept from the pass before (validation's later
  epochs), and `..._new_pipeline` with a new pipeline each pass, its workers spawned
  (what every validation paid before).
- `eval_thread_us_per_image`, `eval_thread_cpu_us_per_image`,
  `eval_host_cpu_ms_per_image`: the training figures' equivalents for evaluation
  passes (clean, pre-resized shards, a pass per repeat), and `robustness_...` for
  robustness evaluation (`ROBUSTNESS_LEVELS`, every level from one decode, JPEG
  shards), with the host CPU also per level.
- `executor_ablation`: free-running training batches with one executor option
  changed at a time (`ABLATION`): images/s and host CPU per image, a table of its own.

    python -m commfor_fast.bench.host_bench [--quick] [--shards DIR ...]
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from commfor_fast.bench.common import check_spread, cpu_seconds, markdown_table, measure
from commfor_fast.bench.script import bench_main
from commfor_fast.pipelines.batch import EvalLoader
from commfor_fast.pipelines.dali import create_pipeline, create_train_pipeline, operator_census
from commfor_fast.pipelines.dali_loader import DaliTrainStream
from commfor_fast.pipelines.executor import ExecutorOptions
from commfor_fast.pipelines.loader import create_eval_loader
from commfor_fast.pipelines.perturb import Level, parse_perturbations
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
STANDIN = RSAConfig(box_filter="standin")  # the single-resize graph, measured beside the default


def _source(shards: dict[str, Path], preresized: bool, jpeg: bool = False) -> ShardSource:
    label = next(k for k in shards if ("preresized" in k) == preresized and ("jpeg" in k or not jpeg))
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


def graph_ops(source: ShardSource, rsa: RSAConfig = RSAConfig()) -> int:
    pipe = create_train_pipeline(source, device="gpu", device_id=0, batch_size=1, crop=CROP, rsa=rsa, seed=0)
    try:
        return sum(operator_census(pipe).values())
    finally:
        pipe.source.close()


class _SameBatch:
    """A stand-in host side: the same prepared batch on every call, so a run costs only
    DALI's work on it (no reading, no planning)."""

    def __init__(self, raw: bool, head: tuple[str, ...], outputs: tuple, built_box: bool) -> None:
        self.raw, self.head, self.outputs, self.built_box = raw, head, outputs, built_box

    def prepare(self, read_threads: int, keep: int) -> None:
        """Nothing to read, and the one batch lives as long as this object."""

    def __call__(self, info: object) -> tuple:
        return self.outputs

    def close(self) -> None:
        pass


def _noop_batch(batch: int, stages: int, built_box: bool) -> _SameBatch:
    """Tiny raw images with all-no-op plans: a run is DALI's scheduling of the graph
    (with the built box filter's branches where `built_box`), what every run pays
    whatever the images."""
    side = 8
    ids = np.array([[i % 2, 0, i, side, side] for i in range(batch)], np.int32)
    slots = Slots.empty(stages, batch, built_box)
    return _SameBatch(True, ("images", "ids", "crop_start", "crop_shape"),
                      ([np.zeros((side, side, 3), np.uint8)] * batch, ids, np.zeros((batch, 2), np.int32),
                       np.full((batch, 2), side, np.int32), *(a for k in range(stages) for a in slots.stage(k))),
                      slots.built_box)


def _graph_cpu_per_run(host: _SameBatch, stages: int, batch: int, repeats: int) -> float:
    """CPU seconds per run of the training graph over `host`'s batch, CPU backend, one thread."""
    pipe = create_pipeline(host, stages=stages, device="cpu", batch_size=batch, num_threads=1, normalise=False)
    pipe.build()
    return measure(lambda: len(pipe.run()[1]), repeats, label=f"graph, {stages} stages, batch {batch}").cpu_s


def graph_fixed_ms_per_image(batch: int, repeats: int, rsa: RSAConfig = RSAConfig()) -> float:
    """(CPU per run, every stage present but no-op) - (CPU per run, RSA off), per
    image: the fixed cost of the RSA stages of `rsa`'s graph, on the CPU backend, one thread."""
    stages = graph_stages(rsa)
    return 1e3 * (_graph_cpu_per_run(_noop_batch(batch, stages, rsa.built_box), stages, batch, repeats) -
                  _graph_cpu_per_run(_noop_batch(batch, 0, False), 0, batch, repeats)) / batch


def graph_real_plans_us_per_image(batch: int, repeats: int, side: int = 24, rsa: RSAConfig = RSAConfig()) -> float:
    """CPU per run of the training graph with real plans of `rsa` (default RSA), per
    image, CPU backend, one thread: `batch` random `side` x `side` images planned as in
    training (so the figure is the graph's host cost per image, not its pixel work,
    which the GPU does)."""
    stages = graph_stages(rsa)
    ids = np.array([[i % 2, 0, i, side, side] for i in range(batch)], np.int32)
    crop = side * CROP // 440  # the final crop's share of the stored side, as in training
    first, crops, slots = TrainPlanner(rsa, crop, True, seed=0, rank=0, stages=stages)(ids, 0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(batch)]
    host = _SameBatch(True, ("images", "ids", "crop_start", "crop_shape"),
                      (images, ids, crops[:, :2].copy(), crops[:, 2:].copy(),
                       *(np.ascontiguousarray(a) for k in range(stages) for a in slots.stage(k))), slots.built_box)
    return 1e6 * _graph_cpu_per_run(host, stages, batch, repeats) / batch


def paced_cost(batches: Iterator[Any], calls: int, repeats: int, images: int, label: str) -> dict[str, float]:
    """What the consuming thread pays per image to get batches from `batches`, `calls`
    batches (`images` images) per repeat: after a warm-up repeat and a free-running one,
    each call follows a stand-in model step (a sleep of twice a free-running call's
    time) that leaves the pipeline time to prepare the next batches. The thread's wall
    time and its own CPU time inside `next` per image (medians of `repeats`), and the
    host CPU per image of every thread and worker over all repeats."""
    for _ in range(calls):  # warm-up: the first run, the pipeline built
        next(batches)
    t0 = time.perf_counter()
    for _ in range(calls):
        next(batches)
    step = 2 * (time.perf_counter() - t0) / calls
    walls, own, c0 = [], [], cpu_seconds()
    for _ in range(repeats):
        wall = thread = 0.0
        for _ in range(calls):
            time.sleep(step)
            t, c = time.perf_counter(), time.thread_time()
            next(batches)
            wall, thread = wall + time.perf_counter() - t, thread + time.thread_time() - c
        walls.append(wall)
        own.append(thread)
    cpu = cpu_seconds() - c0
    check_spread(f"{label}: the consuming thread's wall time per repeat", walls, "s")
    return {"wall_us": 1e6 * statistics.median(walls) / images, "own_us": 1e6 * statistics.median(own) / images,
            "host_cpu_ms": 1e3 * cpu / (repeats * images)}


def copy_us_per_image(batch: int, repeats: int) -> float:
    """CPU time per image of copying a batch of normalised 3 x 384 x 384 float32 images
    into new memory, in one thread: what DALI's torch iterator still costs the
    consuming thread per image on the CPU backend, where it gathers a run's output
    images into one tensor (`TensorList.as_tensor`, a copy; torch then takes the
    tensor without one). On the GPU that copy is a device copy the thread only enqueues."""
    images = np.random.default_rng(0).random((batch, 3, CROP, CROP), dtype=np.float32)

    def run() -> int:
        images.copy()
        return batch

    return 1e6 * measure(run, repeats, label="copy of the output images").cpu_s / batch


def _train_stream(source: ShardSource, batch: int, per_run: int, threads: int,
                  options: ExecutorOptions) -> DaliTrainStream:
    """The DALI training stream over `source` on the CPU backend, default RSA."""
    manifest = Manifest.load(source.root)
    return DaliTrainStream(source.root, manifest, manifest.training_sets()[0], device=torch.device("cpu"),
                           batch_size=batch, crop=CROP, rsa=RSAConfig(), seed=0, rank=0, world_size=1,
                           num_threads=threads, batches_per_run=per_run, options=options)


def training_thread(source: ShardSource, batch: int, per_run: int, runs: int, workers: int,
                    threads: int) -> dict[str, float]:
    """`paced_cost` of the DALI training stream (pre-resized shards, default RSA, CPU
    backend), with `workers` source workers out of `threads`: one pipeline run per repeat."""
    stream = _train_stream(source, batch, per_run, threads, ExecutorOptions(source_workers=workers))
    try:
        return paced_cost(stream, per_run, runs, per_run * batch, f"training stream, {workers} workers")
    finally:
        stream.close()


def _passes(loader: EvalLoader) -> Iterator[Any]:
    """Batches of pass after pass of `loader`, as validation reads it every epoch."""
    while True:
        yield from loader


def _eval_loader(source: ShardSource, batch: int, threads: int, workers: int,
                 levels: tuple[Level, ...] = ()) -> EvalLoader:
    manifest = Manifest.load(source.root)
    return create_eval_loader("dali", source.root, manifest, manifest.training_sets()[0], device=torch.device("cpu"),
                              batch_size=batch, crop=CROP, rank=0, world_size=1, num_threads=threads, levels=levels,
                              executor=ExecutorOptions(source_workers=workers))


def eval_thread(source: ShardSource, batch: int, passes: int, workers: int, threads: int,
                levels: tuple[Level, ...] = ()) -> dict[str, float]:
    """`paced_cost` of evaluation passes (one pass per repeat, the pipeline kept between
    passes as in validation), CPU backend; with `levels`, every image at each level from
    one decode (robustness evaluation)."""
    loader = _eval_loader(source, batch, threads, workers, levels)
    try:
        return paced_cost(_passes(loader), -(-len(loader) // batch), passes, len(loader),
                          f"evaluation, {max(len(levels), 1)} level(s), {workers} workers")
    finally:
        loader.close()


def pass_start_s(source: ShardSource, batch: int, passes: int, workers: int, threads: int) -> dict[str, float]:
    """Seconds from the start of an evaluation pass to its first batch (medians of
    `passes`): with the loader's pipeline kept between passes (the pass after the
    first), and with a new loader each pass (the first pass of each: the pipeline
    built and its workers spawned, as every validation paid before)."""
    def first_batch(loader: EvalLoader) -> float:
        t0 = time.perf_counter()
        pass_ = iter(loader)
        next(pass_)
        seconds = time.perf_counter() - t0
        for _ in pass_:  # finish the pass: the kept pipeline is reset only at its end
            pass
        return seconds

    kept = _eval_loader(source, batch, threads, workers)
    try:
        first_batch(kept)
        later = [first_batch(kept) for _ in range(passes)]
    finally:
        kept.close()
    new = []
    for _ in range(passes):
        loader = _eval_loader(source, batch, threads, workers)
        try:
            new.append(first_batch(loader))
        finally:
            loader.close()
    check_spread("evaluation pass start, a new pipeline each pass", new, "s")
    return {"kept": statistics.median(later), "new": statistics.median(new)}


# Robustness levels of the host figures: clean and eight perturbations (the README's example's families).
ROBUSTNESS_LEVELS = ("jpeg=95,75,50", "blur=1,2", "resize=0.5", "noise=5,10")
# The executor ablation: (option, value) changed one at a time from the defaults (`executor.py`),
# the options the CPU backend can tell apart; the quick set takes the first QUICK_ABLATION rows.
# stream_policy (CUDA streams) and hw_decoder_load (the hardware JPEG decoder) are the GPU check's.
ABLATION = [("defaults", ""), ("source_workers", "0"), ("concurrency", "none"), ("concurrency", "full"),
            ("prefetch_queue_depth", "1"), ("prefetch_queue_depth", "3"), ("source_prefetch", "1"),
            ("source_workers", "1"), ("source_workers", "3"), ("source_prefetch", "3"),
            ("resize_minibatch_size", "4")]
QUICK_ABLATION = 7
ABLATION_COLUMNS = ["option", "value", "img/s", "x defaults", "host CPU ms/img"]


def executor_ablation(source: ShardSource, batch: int, per_run: int, repeats: int,
                      quick: bool) -> list[dict[str, Any]]:
    """Free-running training batches (pre-resized shards, default RSA, CPU backend, 4
    threads) with one executor option changed at a time: images/s and host CPU per
    image, medians of `repeats` pipeline runs after a warm-up run."""
    rows: list[dict[str, Any]] = []
    for option, value in ABLATION[:QUICK_ABLATION] if quick else ABLATION:
        options = ExecutorOptions.from_flags([f"{option}={value}"] if value else [])
        stream = _train_stream(source, batch, per_run, 4, options)
        label = f"executor ablation, {option}{'=' + value if value else ''}"
        try:
            timing = measure(lambda: sum(len(next(stream).labels) for _ in range(per_run)), repeats, label=label)
        finally:
            stream.close()
        rows.append({"option": option, "value": value or "-", "img/s": timing.images_per_s,
                     "x defaults": timing.images_per_s / (rows[0]["img/s"] if rows else timing.images_per_s),
                     "host CPU ms/img": timing.cpu_ms_per_image})
    return rows


def run(shards: dict[str, Path], quick: bool) -> dict[str, Any]:
    """Every figure of the module docstring, at the GPU configuration's pipeline batch."""
    repeats = 5 if quick else 15
    preresized = _source(shards, preresized=True)
    return {
        "plan_us_per_image": plan_us_per_image(PIPELINE_BATCH, repeats),
        "plan_us_per_image_batch_128": plan_us_per_image(GPU_BATCH, repeats),
        "source_us_per_image": source_us_per_image(preresized, PIPELINE_BATCH, max(repeats // 3, 3)),
        "graph_ops_per_iteration": graph_ops(_source(shards, preresized=False)),
        "graph_ops_per_iteration_standin": graph_ops(_source(shards, preresized=False), STANDIN),
        "graph_fixed_ms_per_image": graph_fixed_ms_per_image(PIPELINE_BATCH, repeats),
        "graph_fixed_ms_per_image_standin": graph_fixed_ms_per_image(PIPELINE_BATCH, repeats, STANDIN),
        "graph_fixed_ms_per_image_batch_128": graph_fixed_ms_per_image(GPU_BATCH, repeats),
        "graph_real_plans_us_per_image": graph_real_plans_us_per_image(PIPELINE_BATCH, repeats),
        "graph_real_plans_us_per_image_standin": graph_real_plans_us_per_image(PIPELINE_BATCH, repeats,
                                                                               rsa=STANDIN),
        **_thread_figures(preresized, quick),
        "copy_us_per_image": copy_us_per_image(16, repeats),
        **_eval_figures(preresized, _source(shards, preresized=False, jpeg=True), quick),
        "pipeline_batch": PIPELINE_BATCH,
        "executor_ablation": executor_ablation(preresized, *((16, 2, 3) if quick else (32, 2, 5)), quick=quick),
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


def _eval_figures(preresized: ShardSource, jpeg: ShardSource, quick: bool) -> dict[str, float]:
    """Evaluation's figures, each with the default split of 4 threads (2 source workers):
    the start of a pass, the consuming thread and host CPU per image of clean
    evaluation on the pre-resized shards, and of robustness evaluation (`ROBUSTNESS_LEVELS`,
    one decode per image) on the JPEG shards."""
    batch, passes = (16, 3) if quick else (32, 5)
    levels = parse_perturbations(list(ROBUSTNESS_LEVELS))
    start = pass_start_s(preresized, batch, passes, workers=2, threads=4)
    clean = eval_thread(preresized, batch, passes, workers=2, threads=4)
    robust = eval_thread(jpeg, batch, passes, workers=2, threads=4, levels=levels)
    return {"eval_bench_batch": batch, "robustness_levels": len(levels),
            "eval_pass_start_s": start["kept"], "eval_pass_start_s_new_pipeline": start["new"],
            "eval_thread_us_per_image": clean["wall_us"], "eval_thread_cpu_us_per_image": clean["own_us"],
            "eval_host_cpu_ms_per_image": clean["host_cpu_ms"],
            "robustness_thread_us_per_image": robust["wall_us"],
            "robustness_host_cpu_ms_per_image": robust["host_cpu_ms"],
            "robustness_host_cpu_ms_per_level": robust["host_cpu_ms"] / len(levels)}


def rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures as table rows."""
    what = {
        "plan_us_per_image": ("us", f"plan step per image, pipeline batch {figures['pipeline_batch']}"),
        "plan_us_per_image_batch_128": ("us", "plan step per image, pipeline batch 128"),
        "source_us_per_image": ("us", "host side of a pipeline run per image (read, plan, arguments)"),
        "graph_ops_per_iteration": ("", "operator instances, traced GPU training graph, default RSA (PIL's box "
                                        "filter built, the default)"),
        "graph_ops_per_iteration_standin": ("", "the same with --box-filter standin"),
        "graph_fixed_ms_per_image": ("ms", f"DALI's fixed cost of the RSA stages per image, pipeline batch "
                                           f"{figures['pipeline_batch']} (CPU backend)"),
        "graph_fixed_ms_per_image_standin": ("ms", "the same with --box-filter standin"),
        "graph_fixed_ms_per_image_batch_128": ("ms", "graph_fixed_ms_per_image at pipeline batch 128"),
        "graph_real_plans_us_per_image": ("us", f"CPU per run of the graph with real default-RSA plans per image, "
                                                f"24-px images, pipeline batch {figures['pipeline_batch']} "
                                                "(CPU backend, one thread)"),
        "graph_real_plans_us_per_image_standin": ("us", "the same with --box-filter standin"),
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
        "copy_us_per_image": ("us", "CPU time of copying one normalised 3 x 384 x 384 float32 image, one thread "
                                    "(batch 16): the copy DALI's torch iterator makes per image in the consuming "
                                    "thread on the CPU backend"),
        "eval_pass_start_s": ("s", "evaluation: start of a pass to its first batch, the loader's pipeline kept "
                                   "from the pass before (validation's later epochs), 2 source workers + 2 DALI "
                                   "threads, pre-resized shards"),
        "eval_pass_start_s_new_pipeline": ("s", "the same with a new pipeline each pass (its workers spawned): what "
                                                "every validation paid before"),
        "eval_thread_us_per_image": ("us", f"evaluation thread's wall time in next(pass) per image, clean, batch "
                                           f"{figures['eval_bench_batch']}, 2 source workers + 2 DALI threads, "
                                           "pre-resized shards, CPU backend, paced by a stand-in step"),
        "eval_thread_cpu_us_per_image": ("us", "its own CPU time in next(pass) per image"),
        "eval_host_cpu_ms_per_image": ("ms", "all host CPU per image (every thread and worker) in that run"),
        "robustness_thread_us_per_image": ("us", f"the same as eval_thread_us_per_image, robustness evaluation: "
                                                 f"{figures['robustness_levels']} levels per image from one decode "
                                                 f"({', '.join(ROBUSTNESS_LEVELS)}), JPEG-1024 shards"),
        "robustness_host_cpu_ms_per_image": ("ms", "all host CPU per image in that run, every level"),
        "robustness_host_cpu_ms_per_level": ("ms", "the same per image and level"),
    }
    return [{"figure": k, "value": figures[k], "unit": u, "what": w} for k, (u, w) in what.items()]


def _figures_and_ablation(shards: dict[str, Path], quick: bool, threads: int) -> list[dict[str, Any]]:
    """Run alone: the ablation's table printed first, then the figures' rows."""
    figures = run(shards, quick)
    print(markdown_table(figures["executor_ablation"], ABLATION_COLUMNS) + "\n")
    return rows(figures)


if __name__ == "__main__":
    bench_main(__doc__, "Host cost of the GPU configuration", _figures_and_ablation, COLUMNS)
