"""Training benchmark: the real loop fed by the data pipeline vs by synthetic batches.

Each configuration runs `commfor-fast train` in its own process on the same shards:
the DALI loader from pre-resized and from JPEG shards, the reference loader, and
`--synthetic-data` (one fixed batch already on the device: the loop's upper bound),
and DALI from pre-resized shards with its batches prepared by the training thread
(`--executor source_workers=0`: before the source workers), all in one run.
Images/s is the median over logging windows after the first (warm-up, compile);
data wait is the share of step time spent waiting for the next batch.

    python -m commfor_fast.bench.train_bench [--quick] [--shards DIR ...]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from commfor_fast.bench.common import check_spread, say, warn
from commfor_fast.bench.script import bench_main

COLUMNS = ["model", "data", "loader", "compile", "img/s", "% of bound", "data wait %", "peak RSS MB",
           "GPU peak MB"]


def model_args_for(gpu: bool, quick: bool) -> tuple[str, list[str], int, int]:
    """(label, train flags, iterations, log window) for this machine."""
    if gpu:
        itrs = 60 if quick else 300
        return "ViT-S/16 384 bf16 b128", ["--model-size", "small", "--patch-size", "16", "--batch-size", "128",
                                          "--use-amp", "--amp-dtype", "bf16"], itrs, 20
    itrs = 8 if quick else 24
    return "ViT-Ti/16 384 fp32 b4", ["--model-size", "tiny", "--patch-size", "16", "--batch-size", "4"], itrs, 2


def train_once(data: Path, flags: list[str], itrs: int, window: int, device: str, threads: int,
                label: str) -> dict[str, float]:
    """One training run of `commfor-fast train` in a child process; its throughput figures.
    Public: the GPU check's training step runs the same."""
    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, "-m", "commfor_fast", "train", "--data", str(data), "--out", run, "--device", device,
               "--input-size", "384", "--no-pretrained", "--train-itrs", str(itrs), "--log-every", str(window),
               "--no-validate", "--num-threads", str(threads), "--ckpt-keep-count", "0", *flags]
        with open(Path(run) / "stderr.log", "w+") as err:  # a file, not a pipe: a chatty child never blocks
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            if proc.wait() != 0:
                err.seek(0)
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.read()[-2000:]}")
        records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "images_per_s" in r][1:]  # the first window holds the warm-up
    check_spread(label, [r["images_per_s"] for r in windows], "img/s")
    return {
        "img/s": statistics.median(r["images_per_s"] for r in windows),
        "data wait %": 100 * statistics.median(r["data_wait"] for r in windows),
        "peak RSS MB": max(r["host_peak_mb"] for r in windows),
        "GPU peak MB": max((r.get("gpu_memory_mb", 0.0) for r in windows), default=0.0) or None,
    }


def run(shards: dict[str, Path], quick: bool, threads: int = 2, reference: bool = True) -> list[dict[str, Any]]:
    """Synthetic bound, then the DALI (and, with `reference`, the reference) loaders on
    the given shard folders."""
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    label, flags, itrs, window = model_args_for(gpu, quick)
    any_shards = next(iter(shards.values()))
    configs = [("synthetic (bound)", any_shards, ["--synthetic-data"])]
    for name, folder in shards.items():
        if "preresized" in name or "jpeg" in name:
            configs.append((name, folder, ["--loader", "dali"]))
        if "preresized" in name:  # before the source workers: the training thread prepares the batches
            configs.append((f"{name}, no source workers", folder, ["--loader", "dali", "--executor",
                                                                    "source_workers=0"]))
    if reference:
        preresized = next(n for n in shards if "preresized" in n)
        configs.append((preresized, shards[preresized], ["--loader", "reference"]))
    compile_options = [False, True] if gpu else [False]
    rows = []
    for use_compile in compile_options:
        bound = None
        for data_label, folder, extra in configs:
            extra = extra + (["--compile"] if use_compile else [])
            loader = "-" if "--synthetic-data" in extra else extra[extra.index("--loader") + 1]
            what = f"training {label} on {data_label}, loader {loader}{', compiled' if use_compile else ''}"
            say(f"{what}: {itrs} iterations")
            figures = train_once(folder, flags + extra, itrs, window, device, threads, what)
            say(f"{what}: {figures['img/s']:.2f} img/s")
            bound = bound or figures["img/s"]
            if figures["img/s"] > bound:
                warn(f"{what}: {figures['img/s']:.3g} img/s is faster than its synthetic bound ({bound:.3g}); "
                     "the bound was measured on a busier machine: rerun before trusting the % of bound")
            rows.append({"model": label, "data": data_label, "loader": loader, "compile": use_compile,
                         **figures, "% of bound": 100 * figures["img/s"] / bound})
    return rows


if __name__ == "__main__":
    bench_main(__doc__, "Training benchmark", run, COLUMNS)
