"""The run log: console lines or a live bar, `metrics.jsonl`, optional wandb; rank 0 only.

One record per `--log-every` iterations (loss, lr, throughput, data wait, peak
memory) and one per validation; a resumed run drops the records of the iterations
it repeats, so `metrics.jsonl` holds each iteration once across resumes. The loss
logged is the mean over every rank's batch (one all-reduce per record), not rank
0's share. Under torchrun only rank 0 prints; the other ranks' errors name their
rank (`rank_error`). `--wandb-project` is checked before any work
(`check_wandb`): credentials wandb will find, or an offline mode.
"""

from __future__ import annotations

import configparser
import json
import netrc
import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from commfor_fast.distributed import Dist, mean_over_ranks
from commfor_fast.errors import UserError
from commfor_fast.fileio import atomic_write
from commfor_fast.progress import Progress
from commfor_fast.settings import TrainSettings, settings_dict

WANDB_FIX = ("set WANDB_API_KEY, run `wandb login`, or set WANDB_MODE=offline to log to the run folder only "
             "(`wandb sync` uploads it later)")


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
        self.env = env
        self.enabled = env.is_main
        self.wandb = None
        self.progress: Progress | None = None
        if not self.enabled:
            return
        if settings.wandb_project:
            self.wandb = _start_wandb(settings)
        self.file = open(settings.out / "metrics.jsonl", "a")

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
        """`line` on stdout, on rank 0 only (above the bar when one is drawn)."""
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.write(line)
        else:
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
        """The record of iteration `itr`: logged, and shown as a status line (or the bar's figures).
        A collective (every rank calls it): the loss recorded is the mean of every rank's."""
        figures = window.figures()  # before the all-reduce and loss.item(), which wait for the device
        mean_loss = mean_over_ranks(loss.detach(), self.env)
        if not self.enabled:
            return
        record: dict[str, Any] = {"itr": itr, "epoch": epoch, "loss": mean_loss.item(), "lr": lr, **figures,
                                  "host_peak_mb": host_peak_mb()}
        if device.type == "cuda":
            record["gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        self.log(record)
        short = (f"loss {record['loss']:.4f} | lr {record['lr']:.2e} | {record['images_per_s']:.1f} img/s | "
                 f"data wait {100 * record['data_wait']:.0f}%")
        self.status(f"itr {itr}/{total_itrs} | epoch {epoch} | {short}", short)

    def validation(self, record: dict[str, Any], seconds: float) -> None:
        """The record of a validation (`itr`, `epoch`, `val_loss`, `val_acc`, `val_ap`, `val_n`), and its line."""
        self.log(record)
        self.print(f"epoch {record['epoch']} validation (itr {record['itr']}): loss {_fmt(record['val_loss'])}, "
                   f"acc {_fmt(record['val_acc'])}, AP {_fmt(record['val_ap'])} on {record['val_n']} images "
                   f"({seconds:.0f} s)")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "itr"}, step=record["itr"])

    def records(self) -> list[dict[str, Any]]:
        """Every record in `metrics.jsonl`, including those of the runs this one resumed."""
        return read_records(Path(self.file.name))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.enabled:
            self.file.close()
            if self.wandb is not None:
                self.wandb.finish()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` (a line cut short by a kill is skipped)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


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


def rank_error(exc: UserError, env: Dist) -> UserError:
    """`exc` as this rank reports it: unchanged on rank 0; named by rank on the others,
    which print nothing else, so a failure on one rank still reaches the user and says where."""
    return exc if env.is_main else UserError(f"rank {env.rank}: {exc}")


def check_wandb(settings: TrainSettings, env: Dist) -> None:
    """`--wandb-project`, on the rank that logs, before any work: an offline mode or
    credentials that wandb will find, else one line saying how to give them (wandb
    itself fails only once the run has started, with a long traceback, or waits at a
    prompt that no one may see)."""
    if settings.wandb_project and env.is_main and not _wandb_offline() and not _wandb_credentials():
        raise UserError(f"--wandb-project {settings.wandb_project}: no Weights & Biases API key found; {WANDB_FIX}")


def _wandb_settings() -> list[configparser.ConfigParser]:
    """wandb's settings files, as `wandb login` and `wandb offline` write them: the user's
    (WANDB_CONFIG_DIR, else ~/.config/wandb) and the working folder's."""
    folder = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    parsers = []
    for path in (folder / "settings", Path(os.environ.get("WANDB_DIR") or ".") / "wandb" / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except configparser.Error:
            continue
        parsers.append(parser)
    return parsers


def _wandb_offline() -> bool:
    """WANDB_MODE (or a settings file's mode) offline or disabled: no key needed."""
    modes = [os.environ.get("WANDB_MODE", "")] + [p.get("default", "mode", fallback="") for p in _wandb_settings()]
    return any(mode.lower() in ("offline", "dryrun", "disabled") for mode in modes) or \
        os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true")


def _wandb_credentials() -> bool:
    """An API key or identity token where wandb reads them: the environment, the netrc
    file (NETRC, else ~/.netrc or ~/_netrc) for WANDB_BASE_URL's host, a settings file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    if any(p.get("default", "api_key", fallback="") for p in _wandb_settings()):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    home = Path.home()
    for path in ([Path(os.environ["NETRC"]).expanduser()] if os.environ.get("NETRC") else
                 [home / ".netrc", home / "_netrc"]):
        try:
            entry = netrc.netrc(str(path)).authenticators(host) if path.is_file() else None
        except (netrc.NetrcParseError, OSError):
            continue
        if entry and entry[2]:
            return True
    return False


def _start_wandb(settings: TrainSettings) -> Any:
    """The wandb run of this training run (a resumed run continues the same one); a
    failure to start (a key of the wrong form, no network) is one line."""
    import wandb

    id_file = settings.out / "wandb-run-id"
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    try:
        return wandb.init(project=settings.wandb_project, name=settings.wandb_run_name, id=run_id, resume="allow",
                          config=settings_dict(settings), dir=str(settings.out))
    except wandb.errors.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--wandb-project {settings.wandb_project}: wandb could not start ({reason}); "
                        f"{WANDB_FIX}") from None
