"""The GPU check script runs end to end on the CPU (`--dry-run`), so it cannot rot
before a GPU machine runs it for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu-check.json").read_text())
    assert result["dry_run"] is True and result["gpu"] is None
    for key in ("torch", "dali", "cpu_threads", "machine", "plan_us_per_image", "graph_ops_per_iteration",
                "graph_fixed_ms_per_image", "source_us_per_image", "train_pipeline_images_per_s",
                "training_vs_synthetic"):
        assert result[key] is not None, key
    modes = {(row["mode"], row["engine"]) for row in result["steps"]["pipelines"]}
    assert {("train", "dali-cpu"), ("eval", "dali-cpu")} <= modes
    assert {row["data"].split()[0] for row in result["steps"]["training"]} >= {"synthetic"}
    assert "skipped" in (out / "gpu-tests.log").read_text()  # the GPU tests ran and skipped without CUDA
