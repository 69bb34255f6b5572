"""The GPU check survives failures and runs end to end on the CPU (`--dry-run`), so it
cannot rot before a GPU machine runs it; the carry pack's unpacking names a missing or
damaged part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from commfor_fast.bench import gpu_check
from commfor_fast.bench.gpu_check import Outcome, run_process, run_steps
from commfor_fast.bench.gpu_steps import STEPS, Step

REPO = Path(__file__).resolve().parents[1]


def _step(name: str, optional: bool = False, timeout_s: float = 10) -> Step:
    return Step(name, lambda ctx: {}, timeout_s, optional, f"the {name} step")


def test_each_step_is_a_line_the_moment_it_ends(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)) + "\nValueError: the step broke\n")
    lines_seen = []

    def start(step: Step, timeout: float) -> Outcome:
        lines_seen.append(len((tmp_path / "results.jsonl").read_text().splitlines())
                          if (tmp_path / "results.jsonl").exists() else 0)
        return {"good": Outcome("ok", {"img/s": 1.5}, log), "bad": Outcome("failed", None, log),
                "slow": Outcome("timeout", None, log)}[step.name]

    records = run_steps([_step("good"), _step("bad"), _step("slow")], tmp_path, 100, lambda s: s.timeout_s, start)
    assert lines_seen == [0, 1, 2]  # each step found the lines of every step before it on disk
    written = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert written == json.loads(json.dumps(records))
    assert [r["status"] for r in written] == ["ok", "failed", "timeout"]
    assert written[0]["figures"] == {"img/s": 1.5}
    assert written[1]["error"] == "ValueError: the step broke"
    assert len(written[1]["log_tail"]) == gpu_check.LOG_TAIL_LINES and written[1]["log_tail"][-1].startswith("Value")
    assert written[2]["error"] == "no result within 10 s"


def test_the_deadline_skips_optional_steps_only(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    started = []

    def start(step: Step, timeout: float) -> Outcome:
        started.append((step.name, timeout))
        if step.name == "required":
            time.sleep(0.3)
        return Outcome("ok", {}, log)

    steps = [_step("required"), _step("long", optional=True, timeout_s=10), _step("short", optional=True, timeout_s=0.2),
             _step("last-required")]
    records = run_steps(steps, tmp_path, 1.0, lambda s: s.timeout_s, start)
    assert [r["status"] for r in records] == ["ok", "skipped", "ok", "ok"]
    assert "deadline" in records[1]["reason"]
    short_timeout = dict(started)["short"]
    assert short_timeout <= 0.2  # an optional step gets what is left at most


def test_a_timed_out_step_is_killed_with_its_children(tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(child_pid)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)")
    t0 = time.monotonic()
    assert run_process([sys.executable, "-c", code], tmp_path / "log", timeout_s=3) == "timeout"
    assert time.monotonic() - t0 < 30
    time.sleep(0.2)
    stat = Path(f"/proc/{int(child_pid.read_text())}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # gone, or dead and unreaped
    assert "started" in (tmp_path / "log").read_text()
    assert run_process([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "log", 30) == "failed"


def test_steps_are_unique_and_required_ones_come_first() -> None:
    names = [s.name for s in STEPS]
    assert len(names) == len(set(names))
    optional = [s.optional for s in STEPS]
    assert optional == sorted(optional)  # the deadline can only skip the tail


def _pack(tmp_path: Path) -> Path:
    site = tmp_path / "site-src"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("VALUE = 42\n")
    (site / "pkg" / "blob.bin").write_bytes(os.urandom(20000))  # incompressible: several parts
    subprocess.run(["bash", str(REPO / "benchmarks" / "pack_parts.sh"), str(site), str(tmp_path / "pack"), "8K"],
                   check=True, capture_output=True)
    return tmp_path / "pack"


def _unpack(pack: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "benchmarks" / "unpack_on_device.sh"), str(pack), str(site)],
                          capture_output=True, text=True)


def test_the_pack_unpacks_only_when_every_part_is_there_and_intact(tmp_path: Path) -> None:
    pack = _pack(tmp_path)
    parts = sorted(p.name for p in pack.iterdir())
    assert parts == ["part-00", "part-01", "part-02"]
    (pack / "part-01" / "site.tar.xz.01").rename(tmp_path / "aside")
    missing = _unpack(pack, tmp_path / "site")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "part-01" in missing.stderr and "missing" in missing.stderr and not (tmp_path / "site").exists()
    (tmp_path / "aside").rename(pack / "part-01" / "site.tar.xz.01")
    piece = pack / "part-02" / "site.tar.xz.02"
    good = piece.read_bytes()
    piece.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    damaged = _unpack(pack, tmp_path / "site")
    assert damaged.returncode == 2 and "part-02" in damaged.stderr and "damaged" in damaged.stderr
    piece.write_bytes(good)
    done = _unpack(pack, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "pkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert "already unpacked" in _unpack(pack, tmp_path / "site").stdout


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                           "--work", str(work)], env=env, capture_output=True, text=True, timeout=1500)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [s.name for s in STEPS]
    assert all(r["status"] == "ok" for r in records), [(r["step"], r.get("error")) for r in records]
    assert proc.returncode == 0, proc.stdout[-3000:]
    figures = {r["step"]: r["figures"] for r in records}
    assert figures["environment"]["gpu"] is None and figures["environment"]["dali"]
    assert figures["build-train-raw"]["operators"] > 100 and figures["build-eval"]["first_run_s"] > 0
    split = figures["headline"]["host_ms_per_run"]
    assert all(split[k] >= 0 for k in ("source", "feed", "wait")) and figures["headline"]["images_per_s"] > 0
    assert any("DALI" in name for name in figures["headline"]["thread_cpu_s"])
    jpeg = figures["jpeg-hw"]["rows"]
    assert set(jpeg) == {"0.0", "0.65", "1.0"} and jpeg["0.0"]["parity_p99_9"] <= 4
    assert figures["gpu-tests"]["tests"] > 0 and figures["gpu-tests"]["failures"] == 0
    assert figures["training"]["real_vs_synthetic"] > 0
    # what comes back from the device: at most 8 files, none in sub-folders, no work data
    returned = list(out.iterdir())
    assert len(returned) <= 8 and all(p.is_file() and p.stat().st_size < 16 * 2**20 for p in returned)
    assert {"results.jsonl", "kernels.txt", "trace.json.gz", "gpu-tests.xml", "logs.tar.gz",
            "check.log"} <= {p.name for p in returned}
    assert any((work / "data").glob("shards-*"))
