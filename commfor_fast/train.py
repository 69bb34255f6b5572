"""Training: a lean DDP loop over the converter's shards.

Single process:   commfor-fast train --data SHARDS --out RUN [--device cpu] ...
torchrun:         torchrun --nproc_per_node=8 -m commfor_fast train --data SHARDS --out RUN ...

The file reads top to bottom: settings, distributed set-up, data, model, optimizer
and schedule, resume, the loop, teardown. The defaults are the reference recipe
(SPEC section 5): AdamW (lr 2e-5, weight decay 1e-2), BCE-with-logits, gradient
clipping at 1.0, linear warmup then cosine annealing towards lr * 1e-3 stepped as the
original steps it (`LRSchedule`; `--lr-schedule per-iteration` ends exactly at the
floor instead), mixed precision with a grad scaler for fp16, per-rank batch size, a
checkpoint every epoch keeping the newest N.

Resume is exact: a checkpoint holds the model, optimizer, grad scaler, iteration (the
schedule is a function of it), the schedule's shape and every rank's data-stream
position, so a run killed mid-epoch and resumed sees the same batches as one that
never stopped. Settings that shape the schedule or the stream (and the process count)
may not change on resume without `--allow-changed-settings`, which prints each change
(the streams then restart from their seeds when the stream changed). Rank 0 picks the
checkpoint and tells the others, so every rank resumes from the same one. `--ckpt`
with the original's checkpoints or a plain state dict, and `--hf-model` (a released
detector), start from their weights with a new optimizer and schedule.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from commfor_fast import __version__
from commfor_fast.distributed import (Dist, all_gather, amp_dtype, broadcast, resolve_device, setup_distributed,
                                      teardown_distributed)
from commfor_fast.errors import UserError
from commfor_fast.fileio import atomic_write, check_writable, output_errors
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.progress import Progress
from commfor_fast.settings import TrainSettings
from commfor_fast.shards import Manifest

CKPT_PATTERN = re.compile(r"^ckpt-(\d{9})\.pt$")


# ----------------------------------------------------------------- small helpers

# Settings that shape the data stream: a checkpoint's stream position only replays
# the same batches when these (and the process count) are unchanged.
STREAM_SETTINGS = ("data", "loader", "batch_size", "seed", "batches_per_run", "rsa_ops", "rsa_min_num_ops",
                   "rsa_max_num_ops", "fix_padding_quirk")
# Settings that shape the optimisation schedule. Neither kind may change on resume
# without --allow-changed-settings.
SCHEDULE_SETTINGS = ("epochs", "train_itrs", "lr", "weight_decay", "warmup_epochs", "warmup_frac", "no_lr_schedule",
                     "lr_schedule")


def check_settings(s: TrainSettings) -> None:
    """Reject impossible values before any work starts (one clear line each)."""
    from commfor_fast.pipelines.loader import ENGINES

    positive = {"--batch-size": s.batch_size, "--epochs": s.epochs, "--log-every": s.log_every,
                "--num-threads": s.num_threads, "--batches-per-run": s.batches_per_run}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    if s.ckpt_every < 0:
        raise UserError(f"--ckpt-every {s.ckpt_every}: use 0 (epoch ends only) or a positive number")
    if s.ckpt_keep_count < -1:
        raise UserError(f"--ckpt-keep-count {s.ckpt_keep_count}: use -1 (keep all), 0 (write none) or N >= 1")
    if not s.lr > 0 or s.weight_decay < 0 or not s.grad_clip > 0:
        raise UserError(f"--lr {s.lr} / --weight-decay {s.weight_decay} / --grad-clip {s.grad_clip}: "
                        "lr and grad clip must be > 0, weight decay >= 0")
    if s.warmup_frac >= 1 or s.warmup_epochs < 0:
        raise UserError(f"--warmup-frac {s.warmup_frac} / --warmup-epochs {s.warmup_epochs}: the fraction must "
                        "be below 1 (-1 disables it), the epochs >= 0")
    if s.lr_schedule not in LR_SCHEDULES:
        raise UserError(f"--lr-schedule {s.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if s.loader not in ENGINES:
        raise UserError(f"--loader {s.loader!r}: choose one of {', '.join(ENGINES)}")
    if s.hf_model is not None and (s.ckpt is not None or s.pretrained_path is not None):
        raise UserError(f"--hf-model {s.hf_model}: give it alone, without --ckpt or --pretrained-path "
                        "(each names the weights to start from)")
    amp_dtype(s.amp_dtype)


def _verify_hashes(data: Path) -> None:
    """`--verify-hashes`: every shard against the manifest (sha256 and more, see `verify`), before training."""
    from commfor_fast.verify import verify_shards

    checked, damaged = verify_shards(data)
    if damaged:
        raise UserError(f"--verify-hashes: {len(damaged)} of {checked} shards in {data} are damaged, e.g. "
                        f"{damaged[0].shard}: {damaged[0].problem}; `commfor-fast verify {data}` lists them all. "
                        "Re-run the convert command recorded in its manifest.json to redo them")


LR_SCHEDULES = ("original", "per-iteration")


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    """The lr multiplier of every iteration, a pure function of the (0-based) iteration.

    Being a pure function makes resume exact: the lr after a resume is the
    uninterrupted run's. `warmup` is `round(warmup_frac * total)` or
    `round(warmup_epochs * per_epoch)`, as the original rounds it.

    "original" (the default) gives the lr the original's loop gives (SPEC section 5):
    it counts iterations from k = 1, sets `lr * (k + 1) / warmup` before iteration k
    while `k < warmup`, and runs torch's `CosineAnnealingLR(T_max = epochs * per_epoch
    - warmup, eta_min = lr * final_ratio)`, stepped after every iteration with
    `k > warmup` and once more at every epoch end (with `--train-itrs`, epochs =
    ceil(total / per_epoch)). Before iteration k the scheduler has thus stepped
    `t = max(k - 1 - warmup, 0) + (k - 1) // per_epoch` times. torch's step is
    recursive (it rescales the distance of the current lr from eta_min), so the
    epoch-end steps taken during the warmup leave a scale `c(t_peak)` behind, where
    `t_peak` is the step count when the lr was last set to the peak and
    `c(u) = 1 + cos(pi u / T_max)`: the lr is `eta_min + (lr - eta_min) c(t) / c(t_peak)`
    until torch's first additive step (the step to `T_max + 1 (mod 2 T_max)`, past
    the floor), after which it is the plain `eta_min + (lr - eta_min) c(t) / 2`. So
    the original need not end at the floor: its scheduler takes T_max + epochs steps,
    so without `--train-itrs` the last iteration runs `epochs - 2` steps past the floor
    (the cosine rises again; negligible with thousands of iterations per epoch), and
    with a `--train-itrs` that is not a multiple of the epoch it stops short of it.
    T_max below 1 (a warmup as long as the run, where the original divides by zero)
    counts as 1.

    "per-iteration": warmup `(itr + 1) / warmup` for `itr < warmup`, then one cosine
    step per iteration from 1 down to `final_ratio`, which it reaches at the end of
    the run. `constant` (`--no-lr-schedule`) keeps 1 after the warmup in both.
    """

    kind: str  # one of LR_SCHEDULES
    total: int  # iterations the run trains
    per_epoch: int  # iterations per epoch
    warmup: int  # warmup iterations
    constant: bool
    final_ratio: float = 1e-3

    @classmethod
    def from_settings(cls, settings: TrainSettings, per_epoch: int) -> LRSchedule:
        use_itrs = settings.train_itrs is not None and settings.train_itrs > 0
        total = settings.train_itrs if use_itrs else settings.epochs * per_epoch
        warmup = round(settings.warmup_frac * total if settings.warmup_frac > 0 else settings.warmup_epochs * per_epoch)
        return cls(settings.lr_schedule, total, per_epoch, warmup, settings.no_lr_schedule)

    def factor(self, itr: int) -> float:
        """Multiplier of the base lr at iteration `itr` (0-based)."""
        if self.kind == "original":
            if itr + 1 < self.warmup:
                return (itr + 2) / self.warmup
            return 1.0 if self.constant else self._original_cosine(itr + 1)
        if itr < self.warmup:
            return (itr + 1) / self.warmup
        if self.constant:
            return 1.0
        progress = min((itr - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _original_cosine(self, k: int) -> float:
        """The original's lr factor at its iteration k >= warmup (1-based)."""
        t_max = max(math.ceil(self.total / self.per_epoch) * self.per_epoch - self.warmup, 1)

        def c(u: int) -> float:
            return 1 + math.cos(math.pi * u / t_max)

        t = max(k - 1 - self.warmup, 0) + (k - 1) // self.per_epoch
        # the step count when the lr was last the peak: set at k = warmup - 1, or at construction
        peak, scale = max(self.warmup - 2, 0) // self.per_epoch, 1.0
        if t == peak:
            return 1.0
        if (peak - t_max) % (2 * t_max) == 0:  # c(peak) = 0: torch's next step adds instead of rescaling
            peak, scale = peak + 1, 1 + (1 - math.cos(math.pi / t_max)) / 2
        first_add = peak + 1 + (t_max - peak) % (2 * t_max)
        d = c(t) / 2 if t >= first_add else scale * c(t) / c(peak)
        return self.final_ratio + (1 - self.final_ratio) * d


def checkpoints_in(folder: Path) -> list[Path]:
    """Checkpoint files in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CKPT_PATTERN.match(p.name))


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through `fileio.atomic_write`: a kill never leaves half a checkpoint."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def settings_dict(settings: TrainSettings) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()}


def resume_changes(ckpt: dict[str, Any], settings: TrainSettings, shape: dict[str, int]) -> tuple[list[str], bool]:
    """What changed since our checkpoint `ckpt` among the settings that shape the schedule
    or the data stream, and the schedule they give (`shape`: process count, iterations
    in all, warmup iterations), one `what: old -> new` line each; and whether the
    checkpoint's data-stream positions still apply."""
    before, now = ckpt.get("settings", {}), settings_dict(settings)
    was = {"world_size": len(ckpt.get("data") or []), **(ckpt.get("schedule") or {})}
    changes = [f"--{k.replace('_', '-')}: {before.get(k)} -> {now[k]}"
               for k in (*SCHEDULE_SETTINGS, *STREAM_SETTINGS) if str(before.get(k)) != str(now[k])]
    names = {"world_size": "processes", "total_itrs": "iterations in all", "warmup": "warmup iterations",
             "data": "the shards at --data (converted again; fingerprint)"}
    changes += [f"{name}: {was[k]} -> {shape[k]}" for k, name in names.items()
                if k in was and was[k] != shape[k]]
    same_stream = was["world_size"] == shape["world_size"] and all(
        str(before.get(k)) == str(now[k]) for k in STREAM_SETTINGS)
    return changes, same_stream


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


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
            self.print(line)

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


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files that checkpoint writes killed midway left in `out`
    (`fileio.atomic_write` names them `.ckpt-*.tmp`, `.model.pt.*.tmp`)."""
    for path in [*out.glob(".ckpt-*.tmp"), *out.glob(".model.pt.*.tmp")]:
        path.unlink(missing_ok=True)


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


class SyntheticStream:
    """The same random batch, already on the device, forever: the loop's upper bound
    (`--synthetic-data`), to measure how close the real pipeline gets to it."""

    def __init__(self, batch_size: int, crop: int, device: torch.device) -> None:
        from commfor_fast.pipelines.loader import Batch

        g = torch.Generator().manual_seed(0)
        self.batch = Batch(torch.randn(batch_size, 3, crop, crop, generator=g).to(device),
                           (torch.arange(batch_size) % 2).float(), torch.zeros(batch_size, dtype=torch.int64),
                           torch.arange(batch_size))

    def __next__(self) -> Any:
        return self.batch

    def state_dict(self) -> dict[str, Any]:
        return {"engine": "synthetic"}

    def close(self) -> None:
        self.batch = None


# ----------------------------------------------------------------------- the run


def train(settings: TrainSettings) -> Path:
    """Train a detector; returns the path of the final model (a plain state dict)."""
    # -- settings and distributed set-up
    check_settings(settings)
    rsa = RSAConfig.from_flags(settings.rsa_ops, settings.rsa_min_num_ops, settings.rsa_max_num_ops,
                               settings.fix_padding_quirk)
    env = Dist.from_env()
    device = resolve_device(settings.device, env.local_rank)
    settings = dataclasses.replace(settings, device=device.type)
    env = setup_distributed(device)
    manifest = Manifest.load(settings.data)
    out = Path(settings.out)
    if env.is_main:
        check_writable(out, "--out")  # before any work: checkpoints and the model must be writable
        if settings.verify_hashes:
            _verify_hashes(settings.data)
        remove_stale_temporaries(out)
    torch.manual_seed(settings.seed + env.rank)
    np.random.seed(settings.seed + env.rank)
    log = MetricsLog(settings, env)

    # -- data sizes and schedule
    from commfor_fast.pipelines.loader import create_eval_loader, create_train_stream, iters_per_epoch

    train_set, val_set = manifest.training_sets()
    if val_set is not None and manifest.sets[val_set].num_samples == 0:
        val_set = None
    if settings.validate and val_set is None:
        log.print(f"note: {settings.data} has no validation images (convert with --val-frac > 0); "
                  "no validation will run")
    itrs_per_epoch = iters_per_epoch(manifest.sets[train_set].num_samples, settings.batch_size, env.world_size)
    schedule = LRSchedule.from_settings(settings, itrs_per_epoch)
    total_itrs = schedule.total
    if schedule.warmup > total_itrs:
        log.print(f"warning: the warmup ({schedule.warmup} iterations, --warmup-epochs {settings.warmup_epochs}) is "
                  f"longer than the whole run ({total_itrs}): the lr never reaches --lr {settings.lr}; shorten "
                  "--warmup-epochs or give --warmup-frac")
    # what a resume compares besides the settings: the process count, the schedule they
    # give and the data (its shards' hashes: converted again at the same path, they differ)
    shape = {"world_size": env.world_size, "total_itrs": total_itrs, "warmup": schedule.warmup,
             "data": manifest.fingerprint()}

    # -- model: from rank 0's choice of checkpoint (never needs the ImageNet download)
    from commfor_fast.model import clean_state_dict, create_detector, detector_from_checkpoint, load_detector, \
        read_checkpoint

    newest = checkpoints_in(out)[-1] if env.is_main and checkpoints_in(out) else None
    start, resuming = broadcast((newest or settings.ckpt, newest is not None), env)
    if settings.resume and not resuming:
        raise UserError(f"--resume: no checkpoint (ckpt-*.pt) in {out} to resume from")
    ckpt: Any = None
    if start is not None:
        ckpt = read_checkpoint(Path(start), trust=settings.trust_checkpoint,
                               older=checkpoints_in(out)[:-1] if resuming else None)
        model, ckpt_format = detector_from_checkpoint(ckpt, Path(start))
        if settings.freeze_backbone and not resuming:
            model.set_freeze_backbone(True)
    elif settings.hf_model is not None:  # fine-tuning a released detector
        model, _ = load_detector(hf_model=settings.hf_model)
        model.set_freeze_backbone(settings.freeze_backbone)
        start = settings.hf_model
        log.print(f"fine-tuning {settings.hf_model}: its weights, a new optimizer and schedule")
    else:
        model = create_detector(model_size=settings.model_size, input_size=settings.input_size,
                                patch_size=settings.patch_size, freeze_backbone=settings.freeze_backbone,
                                pretrained=settings.pretrained, pretrained_path=settings.pretrained_path)
    if start is not None and (model.model_size, model.input_size, model.patch_size) != \
            (settings.model_size, settings.input_size, settings.patch_size):
        log.print(f"note: model shape taken from {start}: {model.model_args}")
    model.train().to(device)
    crop = model.input_size

    # -- optimizer, mixed precision
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    autocast_dtype = amp_dtype(settings.amp_dtype)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.use_amp and autocast_dtype == torch.float16)

    # -- resume: everything from our own checkpoints (unless settings that shape the
    # schedule or the stream changed without --allow-changed-settings); only weights otherwise
    itr, data_state = 0, None
    full_resume = ckpt is not None and ckpt_format == "commfor-fast" and (
        resuming or not settings.only_load_model_weights)
    if full_resume:
        changes, same_stream = resume_changes(ckpt, settings, shape)
        if changes and not settings.allow_changed_settings:
            raise UserError(
                f"{start} was written with other settings ({'; '.join(changes)}); rerun with the same ones, "
                "or add --allow-changed-settings to go on with these"
                + ("" if resuming else ", or --only-load-model-weights to start a new schedule from its weights"))
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        itr = int(ckpt["itr"])
        for change in changes:
            log.print(f"note: changed since {start}: {change}")
        states = ckpt.get("data") or []
        if same_stream:
            data_state = states[env.rank]
        else:
            log.print(f"note: the data streams restart from their seeds (the stream settings changed since {start})")
        if resuming:
            log.drop_after(itr)
        log.print(f"resumed from {start} at iteration {itr}")
    elif ckpt is not None:
        log.print(f"starting from the weights of {start} ({ckpt_format} format): new optimizer and schedule")
    del ckpt
    # The schedule is a function of the iteration: on resume it continues at `itr`, with
    # the lr and weight decay of these settings.
    for group in optimizer.param_groups:
        group["initial_lr"], group["weight_decay"] = settings.lr, settings.weight_decay
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor, last_epoch=itr - 1)

    if settings.synthetic_data:
        stream = SyntheticStream(settings.batch_size, crop, device)
    else:
        stream = create_train_stream(
            settings.loader, settings.data, manifest, train_set, device=device, batch_size=settings.batch_size,
            crop=crop, rsa=rsa, seed=settings.seed, rank=env.rank, world_size=env.world_size,
            num_threads=settings.num_threads, batches_per_run=settings.batches_per_run, state=data_state,
        )

    # -- compile and DDP
    net: torch.nn.Module = model
    if settings.compile:
        net = torch.compile(net)
    if env.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[env.local_rank] if device.type == "cuda" else None)

    # -- helpers used by the loop
    def save_checkpoint() -> None:
        if settings.ckpt_keep_count == 0:
            return
        states = all_gather(stream.state_dict(), env)
        if not env.is_main:
            return
        path = out / f"ckpt-{itr:09d}.pt"
        save_atomic({
            "model": clean_state_dict(model), "model_args": model.model_args,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "epoch": itr // itrs_per_epoch, "itr": itr, "schedule": shape,
            "data": states, "settings": settings_dict(settings), "version": __version__,
        }, path)
        kept = checkpoints_in(out)
        if settings.ckpt_keep_count >= 0:
            for old in kept[: max(len(kept) - settings.ckpt_keep_count, 0)]:
                old.unlink()
        log.print(f"saved {path}")

    def validate(epoch: int) -> None:
        from commfor_fast.metrics import accuracy, average_precision

        started = time.perf_counter()
        loader = create_eval_loader(settings.loader, settings.data, manifest, val_set, device=device,
                                    batch_size=settings.batch_size, crop=crop, rank=env.rank,
                                    world_size=env.world_size, num_threads=settings.num_threads)
        model.eval()
        labels, logits = [], []
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype, enabled=settings.use_amp):
            for batch in loader:
                labels.append(batch.labels)
                logits.append(model(batch.images).float().squeeze(1).cpu())
        loader.close()
        model.train()
        parts = all_gather((torch.cat(labels) if labels else torch.zeros(0),
                            torch.cat(logits) if logits else torch.zeros(0)), env)
        y = torch.cat([p[0] for p in parts])
        z = torch.cat([p[1] for p in parts])
        loss = F.binary_cross_entropy_with_logits(z, y).item()
        scores = torch.sigmoid(z).numpy()
        record = {"itr": itr, "epoch": epoch, "val_loss": loss, "val_acc": accuracy(y.numpy(), scores),
                  "val_ap": average_precision(y.numpy(), scores), "val_n": int(y.numel())}
        log.log(record)
        log.print(f"epoch {epoch} validation: loss {fmt(loss)}, acc {fmt(record['val_acc'])}, "
                  f"AP {fmt(record['val_ap'])} on {record['val_n']} images "
                  f"({time.perf_counter() - started:.0f} s)")

    # -- the loop
    log.print(f"training {model.model_args} on {manifest.sets[train_set].num_samples} images ({train_set}), "
              f"{env.world_size} process(es) x batch {settings.batch_size}, {itrs_per_epoch} iterations per epoch, "
              f"{total_itrs} in all (warmup {schedule.warmup}, {schedule.kind} lr schedule), "
              f"loader {settings.loader}, device {device}")
    window_start, data_wait, window_images = time.perf_counter(), 0.0, 0
    log.start_progress(total_itrs, itr)
    while itr < total_itrs:
        t0 = time.perf_counter()
        batch = next(stream)
        data_wait += time.perf_counter() - t0

        with torch.autocast(device.type, dtype=autocast_dtype, enabled=settings.use_amp):
            logits = net(batch.images).float().squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        lr = scheduler.get_last_lr()[0]  # the lr this iteration used
        scheduler.step()
        itr += 1
        window_images += batch.images.shape[0] * env.world_size
        log.step()

        if itr % settings.log_every == 0 or itr == total_itrs:
            elapsed = time.perf_counter() - window_start
            record = {"itr": itr, "epoch": (itr - 1) // itrs_per_epoch, "loss": loss.item(),
                      "lr": lr, "images_per_s": window_images / elapsed,
                      "data_wait": data_wait / elapsed, "host_peak_mb": host_peak_mb()}
            if device.type == "cuda":
                record["gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            log.log(record)
            figures = (f"loss {record['loss']:.4f} | lr {record['lr']:.2e} | {record['images_per_s']:.1f} img/s | "
                       f"data wait {100 * record['data_wait']:.0f}%")
            log.status(f"itr {itr}/{total_itrs} | epoch {record['epoch']} | {figures}", figures)
            window_start, data_wait, window_images = time.perf_counter(), 0.0, 0

        epoch_end = itr % itrs_per_epoch == 0
        if epoch_end and settings.validate and val_set is not None:
            validate(itr // itrs_per_epoch - 1)
        if epoch_end or itr == total_itrs or (settings.ckpt_every and itr % settings.ckpt_every == 0):
            save_checkpoint()
        if epoch_end:  # the throughput window starts after validation and saving
            window_start, data_wait, window_images = time.perf_counter(), 0.0, 0

    # -- teardown: the final model as a plain state dict (the original's format) and
    # as a `save_pretrained` folder with a model card, that `--hf-model` and
    # `from_pretrained` accept
    final = out / "model.pt"
    if env.is_main:
        from commfor_fast.modelcard import write_model_card

        save_atomic(clean_state_dict(model), final)
        with output_errors(out / "final"):  # a full disk: one line (safetensors raises no OSError)
            model.save_pretrained(out / "final")
        validations = [r for r in log.records() if "val_loss" in r]  # this run's, across resumes
        write_model_card(out / "final", model_args=model.model_args, timm_name=model.timm_name, settings=settings,
                         manifest=manifest, train_set=train_set, schedule=shape,
                         validation=validations[-1] if validations else None)
        log.print(f"final model: {final} (and {out / 'final'} for from_pretrained)")
    stream.close()
    log.close()
    teardown_distributed(env)
    return final
