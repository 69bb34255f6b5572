"""The GPU check: one command of about 8 minutes that brings back every figure it got.

Each step of `gpu_steps.STEPS` (most valuable first: environment, data, build and first
run of each graph, the headline training pipeline, a profile, ablations, the hardware
JPEG decoder, the GPU tests, training real vs synthetic) runs in its own process under
its own timeout. The moment a step ends, one JSON line is appended to
`OUT/results.jsonl`: its figures, or the error with the last 40 lines of its log, or
"timeout", or "skipped" when the global deadline leaves too little time for an optional
step. A crash, a hang or an out-of-memory kill costs one step, never the figures
already written.

Results go to `--out` (default `$OUT` when set, as on the device machine, else
`gpu-check`): results.jsonl, the step logs as logs.tar.gz, and what steps write there
(kernels.txt, trace.json.gz, gpu-tests.xml): at most 8 files, none in sub-folders. Work
data (the rendered images and shards) goes to `--work`, outside the results.

`--dry-run` runs the same steps on the CPU at tiny sizes; CI runs it
(tests/test_gpu_check.py).

    python -m commfor_fast.bench.gpu_check [--dry-run] [--out DIR] [--work DIR] [--deadline-s S]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commfor_fast.bench.gpu_steps import STEPS, Step

LOG_TAIL_LINES = 40
DEADLINE_S = 480  # the device runs one command for at most 600 s; the pack's unpacking comes first
DRY_RUN_DEADLINE_S = 1200  # a dry run checks every step, whatever the CPU's load
DRY_RUN_TIMEOUT_S = 200  # per step on a CPU: tiny sizes, but every step imports torch and DALI


@dataclass
class Outcome:
    """How one step's process ended."""

    status: str  # "ok", "failed" or "timeout"
    figures: dict[str, Any] | None
    log: Path


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of a step's log."""
    return log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []


def run_process(command: list[str], log: Path, timeout_s: float) -> str:
    """Run `command` with its output into `log`; "ok", "failed" or "timeout". A timed-out
    step is killed with its whole process group (DALI threads, DataLoader workers, a
    training child), so nothing of it runs on into the next step."""
    with open(log, "w") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"
    return "ok" if code == 0 else "failed"


def launch(step: Step, work: Path, out: Path, dry_run: bool, timeout_s: float) -> Outcome:
    """Run `step` in its own process (`gpu_steps.main`)."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log, result = work / "logs" / f"{step.name}.log", work / "results" / f"{step.name}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "commfor_fast.bench.gpu_steps", step.name, "--work", str(work),
               "--out", str(out), "--result", str(result)] + (["--dry-run"] if dry_run else [])
    status = run_process(command, log, timeout_s)
    figures = json.loads(result.read_text()) if status == "ok" and result.exists() else None
    return Outcome(status, figures, log)


def _error_line(tail: list[str]) -> str:
    """The exception's own line: the last line that names an error, else the last line."""
    named = [line for line in tail if "Error" in line or "Exception" in line or line.startswith("error")]
    return (named or tail or ["(no output)"])[-1].strip()


def run_steps(steps: list[Step], out: Path, deadline_s: float, timeout_of: Callable[[Step], float],
              start: Callable[[Step, float], Outcome]) -> list[dict[str, Any]]:
    """Every step in order, each line appended to OUT/results.jsonl as the step ends.

    An optional step is skipped when less than half its timeout is left before the
    deadline, and otherwise gets what is left at most; required steps always run.
    """
    t0 = time.monotonic()
    results_path = out / "results.jsonl"
    records = []
    for step in steps:
        left = deadline_s - (time.monotonic() - t0)
        timeout = timeout_of(step) if not step.optional else min(timeout_of(step), left)
        record: dict[str, Any] = {"step": step.name, "what": step.what}
        if step.optional and left < timeout_of(step) / 2:
            record.update(status="skipped", reason=f"{left:.0f} s left before the deadline, the step may take "
                                                   f"{timeout_of(step):.0f} s")
        else:
            t = time.monotonic()
            outcome = start(step, timeout)
            record.update(status=outcome.status, seconds=round(time.monotonic() - t, 1))
            if outcome.status == "ok":
                record["figures"] = outcome.figures
            else:
                tail = log_tail(outcome.log)
                record.update(error=(f"no result within {timeout:.0f} s" if outcome.status == "timeout"
                                     else _error_line(tail)), log_tail=tail)
        with open(results_path, "a") as f:  # one line the moment the step ends, on disk before the next
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(f"gpu-check: {step.name}: {record['status']}"
              + (f" in {record['seconds']} s" if "seconds" in record else f" ({record.get('reason')})")
              + (f": {record['error']}" if "error" in record else ""), flush=True)
        records.append(record)
    return records


def default_out() -> Path:
    """$OUT on the device machine (what comes back from it), else ./gpu-check."""
    return Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("gpu-check")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: $OUT, else gpu-check)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/commfor-gpu-check"),
                        help="work data: rendered images, shards, logs (never under --out)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes (CI)")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help=f"after this, optional steps are skipped (default {DEADLINE_S}, "
                             f"{DRY_RUN_DEADLINE_S} for a dry run)")
    args = parser.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device visible: run with --dry-run to check the script on the CPU", file=sys.stderr)
        sys.exit(2)
    out = args.out or default_out()
    if out.resolve() == args.work.resolve() or args.work.resolve().is_relative_to(out.resolve()):
        print(f"error: --work {args.work} lies inside --out {out}: the device returns at most 8 files from "
              "--out, so give a work folder outside it", file=sys.stderr)
        sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").unlink(missing_ok=True)
    started = time.monotonic()

    def timeout_of(step: Step) -> float:
        return DRY_RUN_TIMEOUT_S if args.dry_run else step.timeout_s

    deadline = args.deadline_s or (DRY_RUN_DEADLINE_S if args.dry_run else DEADLINE_S)
    records = run_steps(STEPS, out, deadline, timeout_of,
                        lambda step, timeout: launch(step, args.work, out, args.dry_run, timeout))
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(args.work / "logs", arcname="logs")
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "failed", "timeout", "skipped")}
    print(f"gpu-check: {counts} in {time.monotonic() - started:.0f} s; results in {out / 'results.jsonl'}")
    sys.exit(0 if counts["ok"] == len(records) else 1)


if __name__ == "__main__":
    main()
