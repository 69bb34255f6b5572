"""The GPU check: every figure a first GPU run must produce, into one JSON file.

Runs the GPU pipeline benchmark (training and evaluation pipelines on 1024-px JPEG,
1024-px PNG and pre-resized shards: images/s, host CPU ms per image, CPU threads),
the GPU training benchmark (ViT-S/16 at 384, bf16, batch 128: the real pipeline vs
the synthetic bound, with and without torch.compile) and the host-cost figures of
`host_bench.py`, and writes them with the machine's description (GPU, driver, DALI
and torch versions, CPU threads). `benchmarks/gpu_check.sh` runs the GPU tests first.

`--dry-run` runs the same steps on the CPU with tiny sizes (CI runs it, so the script
cannot rot before a GPU is available).

    python -m commfor_fast.bench.gpu_check --out gpu-check [--dry-run]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from commfor_fast.bench import host_bench, pipeline_bench, train_bench
from commfor_fast.bench.common import machine
from commfor_fast.bench.data import bench_shards


def describe() -> dict[str, Any]:
    """The machine and software versions, as the results file records them."""
    import nvidia.dali

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "python": platform.python_version(), "torch": torch.__version__,
        "dali": nvidia.dali.__version__, "cpu_threads": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["driver"] = smi.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["driver"] = None
    return info


def _summary(pipeline: list[dict[str, Any]], training: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline figures: training pipeline from pre-resized shards, real vs bound."""
    engine = "dali-cuda" if torch.cuda.is_available() else "dali-cpu"
    pre = next((r for r in pipeline if r["mode"] == "train" and r["engine"] == engine
                and "preresized" in r["shards"]), None)
    bound = next((r["img/s"] for r in training if r["data"].startswith("synthetic") and not r["compile"]), None)
    real = next((r["img/s"] for r in training if "preresized" in r["data"] and not r["compile"]), None)
    return {
        "train_pipeline_images_per_s": pre["img/s"] if pre else None,
        "train_pipeline_host_ms_per_image": pre["host CPU ms/img"] if pre else None,
        "training_vs_synthetic": real / bound if real and bound else None,
    }


def run(out: Path, dry_run: bool, threads: int) -> Path:
    """Every benchmark of the check; returns the path of the JSON file."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    shards = bench_shards(out / "data", quick=True, tiny=dry_run)
    steps: dict[str, Any] = {}
    t = time.perf_counter()
    steps["pipelines"] = pipeline_bench.run(shards, quick=True, threads=threads)
    steps["pipelines_s"] = time.perf_counter() - t
    t = time.perf_counter()
    steps["training"] = train_bench.run(shards, quick=True, threads=threads, reference=False)
    steps["training_s"] = time.perf_counter() - t
    steps["host"] = host_bench.run(shards, quick=True)
    result = {**describe(), "dry_run": dry_run, **_summary(steps["pipelines"], steps["training"]),
              **steps["host"], "steps": steps,
              "total_s": time.perf_counter() - started}
    path = out / "gpu-check.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="folder for data and gpu-check.json")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (what CI runs)")
    parser.add_argument("--threads", type=int, default=4, help="CPU threads per pipeline (the goal: at most 4)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("error: no CUDA device visible; run with --dry-run to check the script on the CPU")
    path = run(args.out, args.dry_run, args.threads)
    result = json.loads(path.read_text())
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
