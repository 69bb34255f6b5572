"""The run log: console lines or a live bar, `metrics.jsonl`, optional wandb; rank 0 only.

One record per `--log-every` iterations (loss, lr, throughput, data wait, peak
memory) and one per validation; a resumed run drops the records of the iterations
it repeats, so `metrics.jsonl` holds each iteration once across resumes.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from commfor_fast.distributed import Dist
from commfor_fast.fileio import atomic_write
from commfor_fast.progress import Progress
from commfor_fast.settings import TrainSettings, settings_dict


class Throughput:
    """The loop's figures since the window started: images trained (all ranks) and time
    spent waiting for the data stream."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """A new window: after each log record, and after an epoch end's validation and saving."""
        self.started, self.data_wait, self.images = time.perf_counter(), 0.0, 0

    def figures(self) -> dict[str, float]:
        """Images per second and the fraction of the time spent waiting for data."""
        elapsed = time.perf_counter() - self.started
        return {"images_per_s": self.images / elapsed, "data_wait": self.data_wait / elapsed}


class MetricsLog:
    """Rank 0's log: console lines, `metrics.jsonl` in the run folder, optional wandb.

    On a terminal the loop's progress is a live bar (iteration, ETA, and the figures
    of the latest log record); elsewhere one line per `--log-every` iterations.
    """

    def __init__(self, settings: TrainSettings, env: Dist) -> None:
        self.enabled = env.is_main
        self.wandb = None
        self.progress: Progress | None = None
        if not self.enabled:
            return
        self.file = open(settings.out / "metrics.jsonl", "a")
        if settings.wandb_project:
            import wandb

            # One wandb run per training run: a resumed run continues the same one.
            id_file = settings.out / "wandb-run-id"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
            id_file.write_text(run_id)
            self.wandb = wandb.init(project=settings.wandb_project, name=settings.wandb_run_name, id=run_id,
                                    resume="allow", config=settings_dict(settings), dir=str(settings.out))

    def drop_after(self, itr: int) -> None:
        """Resuming at `itr`: drop the records of later iterations, which the run now repeats,
        so metrics.jsonl holds each iteration once."""
        if not self.enabled:
            return
        self.file.close()
        path = Path(self.file.name)
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if _record_itr(line) <= itr]
        if len(kept) != len(lines):
            with atomic_write(path, "w") as f:
                f.writelines(kept)
        self.file = open(path, "a")

    def print(self, line: str) -> None:
        if self.progress is not None:
            self.progress.write(line)
        elif self.enabled:
            print(line, flush=True)

    def start_progress(self, total_itrs: int, done: int) -> None:
        """The bar of the loop, from iteration `done` (a resumed run) to `total_itrs`."""
        self.progress = Progress(total_itrs, "train", unit="itr", every_s=None, enabled=self.enabled,
                                 initial=done)

    def step(self) -> None:
        """One iteration done."""
        if self.progress is not None:
            self.progress.update()

    def status(self, line: str, short: str) -> None:
        """The figures of a log record: `short` after a live bar, else `line` printed."""
        if self.progress is not None and self.progress.live:
            self.progress.postfix(short)
        else:
            self.print(self.progress.with_eta(line) if self.progress is not None else line)

    def iteration(self, itr: int, epoch: int, total_itrs: int, loss: torch.Tensor, lr: float, window: Throughput,
                  device: torch.device) -> None:
        """The record of iteration `itr`: logged, and shown as a status line (or the bar's figures)."""
        figures = window.figures()  # before loss.item(), which waits for the device
        record: dict[str, Any] = {"itr": itr, "epoch": epoch, "loss": loss.item(), "lr": lr, **figures,
                                  "host_peak_mb": host_peak_mb()}
        if device.type == "cuda":
            record["gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        self.log(record)
        short = (f"loss {record['loss']:.4f} | lr {record['lr']:.2e} | {record['images_per_s']:.1f} img/s | "
                 f"data wait {100 * record['data_wait']:.0f}%")
        self.status(f"itr {itr}/{total_itrs} | epoch {epoch} | {short}", short)

    def validation(self, itr: int, epoch: int, figures: dict[str, Any], seconds: float) -> None:
        """The record of the validation after `epoch` (`val_loss`, `val_acc`, `val_ap`, `val_n`), and its line."""
        self.log({"itr": itr, "epoch": epoch, **figures})
        self.print(f"epoch {epoch} validation: loss {_fmt(figures['val_loss'])}, acc {_fmt(figures['val_acc'])}, "
                   f"AP {_fmt(figures['val_ap'])} on {figures['val_n']} images ({seconds:.0f} s)")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "itr"}, step=record["itr"])

    def records(self) -> list[dict[str, Any]]:
        """Every record in `metrics.jsonl`, including those of the runs this one resumed
        (a line cut short by a kill is skipped)."""
        records = []
        for line in Path(self.file.name).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.enabled:
            self.file.close()
            if self.wandb is not None:
                self.wandb.finish()


def _record_itr(line: str) -> int:
    """The iteration of one metrics.jsonl line; a line cut short by a kill counts as the last."""
    try:
        return int(json.loads(line)["itr"])
    except (ValueError, KeyError, TypeError):
        return 2**62


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def host_peak_mb() -> float:
    """This process's peak resident memory in MiB, for the log.

    Read from /proc (VmHWM) where it exists: `getrusage` also counts the memory of
    the process this one was forked from before `exec`, which inflates it for any
    process started by a large parent (a benchmark driver, a launcher).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
