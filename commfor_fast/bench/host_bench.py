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
  work, not reading or pixels).

    python -m commfor_fast.bench.host_bench [--quick] [--shards DIR ...]
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from commfor_fast.bench.common import measure
from commfor_fast.bench.script import bench_main
from commfor_fast.pipelines.dali import create_pipeline, create_train_pipeline, operator_census
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.pipelines.slots import Slots, graph_stages
from commfor_fast.pipelines.source import BatchSource, ShardSource, train_planner
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
    plan = train_planner(rsa, CROP, preresized, seed=0, rank=0, stages=graph_stages(rsa))
    ids = np.array([[i % 2, 0, i, 440, 586] for i in range(batch)], np.int32)
    calls = iter(range(10**9))

    def run() -> int:
        plan(ids, next(calls))
        return batch

    return 1e6 * measure(run, repeats).cpu_s / batch


def source_us_per_image(source: ShardSource, batch: int, repeats: int) -> float:
    """CPU time of one training run's host side (read, plan, argument arrays) per image,
    over samples drawn with replacement, so a small benchmark set still makes pipeline
    batches of the GPU configuration."""
    rng = np.random.default_rng(0)
    batches = (rng.integers(0, source.num_samples, batch) for _ in itertools.count())
    rsa = RSAConfig()
    plan = train_planner(rsa, CROP, source.preresize is not None, seed=0, rank=0, stages=graph_stages(rsa))
    host = BatchSource(source, batches, plan, graph_stages(rsa))
    try:
        return 1e6 * measure(lambda: len(host()[1]), repeats).cpu_s / batch
    finally:
        host.close()


def graph_ops(source: ShardSource) -> int:
    pipe = create_train_pipeline(source, device="gpu", device_id=0, batch_size=1, crop=CROP, rsa=RSAConfig(), seed=0)
    try:
        return sum(operator_census(pipe).values())
    finally:
        pipe.source.close()


class _NoOpBatches:
    """A stand-in host side: the same batch of tiny raw images with all-no-op plans on
    every call, so a run costs only DALI's scheduling of the graph (no reading, no
    pixels to speak of): what every run pays whatever the images."""

    raw = True
    head = ("images", "ids", "crop_start", "crop_shape")

    def __init__(self, batch: int, stages: int) -> None:
        side = 8
        ids = np.array([[i % 2, 0, i, side, side] for i in range(batch)], np.int32)
        slots = Slots.empty(stages, batch)
        self.outputs = ([np.zeros((side, side, 3), np.uint8)] * batch, ids, np.zeros((batch, 2), np.int32),
                        np.full((batch, 2), side, np.int32),
                        *(a for k in range(stages) for a in slots.stage(k)))

    def __call__(self) -> tuple:
        return self.outputs

    def close(self) -> None:
        pass


def graph_fixed_ms_per_image(batch: int, repeats: int) -> float:
    """(CPU per run, every stage present but no-op) - (CPU per run, RSA off), per
    image: the fixed cost of the RSA stages, on the CPU backend, one thread."""

    def cpu_per_run(stages: int) -> float:
        pipe = create_pipeline(_NoOpBatches(batch, stages), stages=stages, device="cpu", batch_size=batch,
                               num_threads=1, normalise=False)
        pipe.build()
        return measure(lambda: len(pipe.run()[1]), repeats).cpu_s

    return 1e3 * (cpu_per_run(graph_stages(RSAConfig())) - cpu_per_run(0)) / batch



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
        "pipeline_batch": PIPELINE_BATCH,
    }


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
    }
    return [{"figure": k, "value": figures[k], "unit": u, "what": w} for k, (u, w) in what.items()]


if __name__ == "__main__":
    bench_main(__doc__, "Host cost of the GPU configuration", lambda s, q, t: rows(run(s, q)), COLUMNS)
