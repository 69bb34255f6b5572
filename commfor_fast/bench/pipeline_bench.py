"""Pipeline benchmark: the reference executor vs DALI CPU (vs DALI GPU), same shards.

For training (full RandomStateAugmentation) and evaluation preprocessing, on shards
converted from 1024-px PNG and JPEG sources, verbatim and pre-resized (`--preresize
440`), it measures images/s, images per CPU-second (images/s per core: CPU time of
this process and its loader workers), and host CPU ms per image; ratios are against
the reference executor reading the same source verbatim (the original pipeline).

    python -m commfor_fast.bench.pipeline_bench [--quick] [--shards DIR ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from commfor_fast.bench.common import Timing, measure
from commfor_fast.bench.script import bench_main
from commfor_fast.pipelines.loader import create_eval_loader, create_train_stream
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.settings import TrainSettings
from commfor_fast.shards import Manifest

COLUMNS = ["shards", "mode", "engine", "threads", "img/s", "img/s per core", "x reference per core",
           "host CPU ms/img"]


def _engines() -> list[tuple[str, str]]:
    """(loader engine, torch device) pairs available here."""
    engines = [("reference", "cpu"), ("dali", "cpu")]
    if torch.cuda.is_available():
        engines.append(("dali", "cuda"))
    return engines


def _time_train(root: Path, manifest: Manifest, engine: str, device: str, threads: int, batch: int,
                batches: int, repeats: int, crop: int) -> Timing:
    set_name = manifest.training_sets()[0]
    stream = create_train_stream(engine, root, manifest, set_name, device=torch.device(device), batch_size=batch,
                                 crop=crop, rsa=RSAConfig(), seed=0, rank=0, world_size=1, num_threads=threads,
                                 batches_per_run=TrainSettings.batches_per_run)

    def run() -> int:
        for _ in range(batches):
            images = next(stream).images
        if images.is_cuda:
            torch.cuda.synchronize()
        return batches * batch

    try:
        return measure(run, repeats)
    finally:
        stream.close()  # no workers left running into the next measurement


def _time_eval(root: Path, manifest: Manifest, engine: str, device: str, threads: int, batch: int,
               repeats: int, crop: int) -> Timing:
    set_name = manifest.training_sets()[0]

    def run() -> int:
        loader = create_eval_loader(engine, root, manifest, set_name, device=torch.device(device),
                                    batch_size=batch, crop=crop, rank=0, world_size=1, num_threads=threads)
        n = 0
        for b in loader:
            n += len(b.labels)
        loader.close()
        if device == "cuda":
            torch.cuda.synchronize()
        return n

    return measure(run, repeats)


def run(shards: dict[str, Path], quick: bool, threads: int = 2, crop: int = 384) -> list[dict[str, Any]]:
    """Benchmark every engine on every shard folder; `shards` maps a label (e.g.
    "png-1024", "png-1024 preresized") to a `convert` output folder."""
    repeats = 2 if quick else 3
    rows: list[dict[str, Any]] = []
    for label, root in shards.items():
        manifest = Manifest.load(root)
        for mode in ("train", "eval"):
            for engine, device in _engines():
                # a GPU pipeline at the paper's batch; CPU engines at batches that fit two cores
                batch, batches = (128, 16 if quick else 48) if device == "cuda" else (8 if quick else 16, 4 if quick else 12)
                if mode == "train":
                    t = _time_train(root, manifest, engine, device, threads, batch, batches, repeats, crop)
                else:
                    t = _time_eval(root, manifest, engine, device, threads, batch, repeats, crop)
                rows.append({"shards": label, "mode": mode, "engine": f"{engine}-{device}", "threads": threads,
                             "img/s": t.images_per_s, "img/s per core": t.images / t.cpu_s,
                             "host CPU ms/img": t.cpu_ms_per_image})
    for row in rows:
        source = row["shards"].split()[0]
        base = next((r for r in rows if r["shards"] == source and r["mode"] == row["mode"]
                     and r["engine"] == "reference-cpu"), None)
        if base:
            row["x reference per core"] = row["img/s per core"] / base["img/s per core"]
    return rows


if __name__ == "__main__":
    bench_main(__doc__, "Pipeline benchmark", run, COLUMNS)
