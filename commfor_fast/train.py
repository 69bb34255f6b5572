"""Training: a lean DDP loop over the converter's shards.

Single process:   commfor-fast train --data SHARDS --out RUN [--device cpu] ...
torchrun:         torchrun --nproc_per_node=8 -m commfor_fast train --data SHARDS --out RUN ...

The file reads top to bottom: settings, distributed set-up, data, model, optimizer
and schedule, resume, the loop, teardown. The defaults are the reference recipe
(SPEC section 5): AdamW (lr 2e-5, weight decay 1e-2), BCE-with-logits, gradient
clipping at 1.0, linear warmup then cosine annealing to lr * 1e-3 (stepped exactly
once per iteration; the original steps twice), mixed precision with a grad scaler
for fp16, per-rank batch size, a checkpoint every epoch keeping the newest N.

Resume is exact: a checkpoint holds the model, optimizer, scheduler, grad scaler,
epoch, iteration and every rank's data-stream position, so a run killed mid-epoch
and resumed sees the same batches as one that never stopped (same world size; with
another world size the data streams restart, which the log says).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from commfor_fast import __version__
from commfor_fast.errors import UserError
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.settings import TrainSettings
from commfor_fast.shards import Manifest

CKPT_PATTERN = re.compile(r"^ckpt-(\d{9})\.pt$")


# ----------------------------------------------------------------- small helpers


@dataclass(frozen=True)
class Dist:
    """Where this process sits in the torchrun job (read once from the environment)."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                   int(os.environ.get("WORLD_SIZE", 1)))


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; checks the value."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise UserError(f"--device {device!r}: use cuda, cpu or auto")
    return device


def setup_distributed(device: str) -> Dist:
    """Initialise the process group under torchrun (NCCL on GPU, gloo on CPU)."""
    env = Dist.from_env()
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
        torch.cuda.set_device(env.local_rank)
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return env


def teardown_distributed(env: Dist) -> None:
    if env.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_gather(obj: Any, env: Dist) -> list[Any]:
    """Every rank's `obj`, in rank order (just [obj] without DDP)."""
    if env.world_size == 1:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def lr_factor(itr: int, total: int, warmup: int, constant: bool, final_ratio: float = 1e-3) -> float:
    """Multiplier of the base lr at iteration `itr` (0-based).

    Linear warmup `(itr + 1) / warmup` for `warmup` iterations, then cosine annealing
    from 1 to `final_ratio` over the remaining iterations (or constant 1).
    """
    if itr < warmup:
        return (itr + 1) / warmup
    if constant:
        return 1.0
    span = max(total - warmup, 1)
    progress = min((itr - warmup) / span, 1.0)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def checkpoints_in(folder: Path) -> list[Path]:
    """Checkpoint files in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CKPT_PATTERN.match(p.name))


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, rename: a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def settings_dict(settings: TrainSettings) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()}


class MetricsLog:
    """Rank 0's log: console lines, `metrics.jsonl` in the run folder, optional wandb."""

    def __init__(self, settings: TrainSettings, env: Dist) -> None:
        self.enabled = env.is_main
        self.wandb = None
        if not self.enabled:
            return
        self.file = open(settings.out / "metrics.jsonl", "a")
        if settings.wandb_project:
            import wandb

            self.wandb = wandb.init(project=settings.wandb_project, name=settings.wandb_run_name,
                                    config=settings_dict(settings), dir=str(settings.out))

    def print(self, line: str) -> None:
        if self.enabled:
            print(line, flush=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "itr"}, step=record["itr"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.wandb is not None:
                self.wandb.finish()


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


# ----------------------------------------------------------------------- the run


def train(settings: TrainSettings) -> Path:
    """Train a detector; returns the path of the final model (a plain state dict)."""
    # -- settings and distributed set-up
    settings = dataclasses.replace(settings, device=resolve_device(settings.device))
    env = setup_distributed(settings.device)
    device = torch.device("cuda", env.local_rank) if settings.device == "cuda" else torch.device("cpu")
    rsa = RSAConfig.from_flags(settings.rsa_ops, settings.rsa_min_num_ops, settings.rsa_max_num_ops,
                               settings.fix_padding_quirk)
    if settings.amp_dtype not in ("fp16", "bf16"):
        raise UserError(f"--amp-dtype {settings.amp_dtype!r}: use fp16 or bf16")
    out = Path(settings.out)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed + env.rank)
    np.random.seed(settings.seed + env.rank)
    log = MetricsLog(settings, env)

    # -- data
    from commfor_fast.pipelines.loader import create_eval_loader, create_train_stream, iters_per_epoch

    manifest = Manifest.load(settings.data)
    train_set, val_set = manifest.training_sets()
    itrs_per_epoch = iters_per_epoch(manifest.sets[train_set].num_samples, settings.batch_size, env.world_size)
    total_itrs = settings.train_itrs or settings.epochs * itrs_per_epoch
    if settings.warmup_frac > 0:
        warmup = int(settings.warmup_frac * total_itrs)
    else:
        warmup = int(settings.warmup_epochs * itrs_per_epoch)

    # -- model (a checkpoint's weights never need the ImageNet download)
    from commfor_fast.model import clean_state_dict, create_detector, load_detector

    resume_from = checkpoints_in(out)[-1] if checkpoints_in(out) else None
    if settings.resume and resume_from is None and settings.ckpt is None:
        raise UserError(f"--resume: no checkpoint (ckpt-*.pt) in {out} to resume from")
    start = resume_from or settings.ckpt
    if start is not None:
        model, _ = load_detector(ckpt=start)
        if model.input_size != settings.input_size or model.model_size != settings.model_size \
                or model.patch_size != settings.patch_size:
            log.print(f"model shape taken from {start}: {model.model_args}")
    else:
        model = create_detector(model_size=settings.model_size, input_size=settings.input_size,
                                patch_size=settings.patch_size, freeze_backbone=settings.freeze_backbone,
                                pretrained=settings.pretrained, pretrained_path=settings.pretrained_path)
    model.train().to(device)
    crop = model.input_size

    # -- optimizer, schedule, mixed precision
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda itr: lr_factor(itr, total_itrs, warmup, settings.no_lr_schedule))
    amp_dtype = torch.float16 if settings.amp_dtype == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=settings.use_amp and amp_dtype == torch.float16)

    # -- resume: everything, or only the weights
    itr, data_state = 0, None
    if start is not None and not (settings.only_load_model_weights and resume_from is None):
        ckpt = torch.load(start, map_location="cpu", weights_only=False)
        if isinstance(ckpt, dict) and "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            itr = int(ckpt["itr"])
            states = ckpt.get("data") or []
            if len(states) == env.world_size and states[0].get("engine") == settings.loader:
                data_state = states[env.rank]
            else:
                log.print(f"note: {start} was written by {len(states)} process(es) with another loader or world "
                          "size; the data streams restart from their seeds")
            log.print(f"resumed from {start} at iteration {itr}")

    if settings.synthetic_data:
        stream = SyntheticStream(settings.batch_size, crop, device)
    else:
        stream = create_train_stream(
            settings.loader, settings.data, manifest, train_set, device=settings.device,
            batch_size=settings.batch_size, crop=crop, rsa=rsa, seed=settings.seed, rank=env.rank,
            world_size=env.world_size, local_rank=env.local_rank, num_threads=settings.num_threads,
            initial_fill=settings.shuffle_buffer, state=data_state,
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
        states = all_gather(stream.state_dict(), env)
        if not env.is_main:
            return
        path = out / f"ckpt-{itr:09d}.pt"
        save_atomic({
            "model": clean_state_dict(model), "model_args": model.model_args,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": itr // itrs_per_epoch, "itr": itr,
            "data": states, "settings": settings_dict(settings), "version": __version__,
        }, path)
        kept = checkpoints_in(out)
        if settings.ckpt_keep_count >= 0:
            for old in kept[: max(len(kept) - settings.ckpt_keep_count, 0)]:
                old.unlink()
        log.print(f"saved {path}")

    def validate(epoch: int) -> None:
        from commfor_fast.metrics import accuracy, average_precision

        loader = create_eval_loader(settings.loader, settings.data, manifest, val_set, device=settings.device,
                                    batch_size=settings.batch_size, crop=crop, rank=env.rank,
                                    world_size=env.world_size, local_rank=env.local_rank,
                                    num_threads=settings.num_threads)
        model.eval()
        labels, logits = [], []
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=settings.use_amp):
            for batch in loader:
                labels.append(batch.labels)
                logits.append(model(batch.images).float().squeeze(1).cpu())
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
        log.print(f"epoch {epoch} validation: loss {loss:.4f}, acc {record['val_acc']:.4f}, "
                  f"AP {record['val_ap'] if record['val_ap'] is None else round(record['val_ap'], 4)} "
                  f"on {record['val_n']} images")

    # -- the loop
    log.print(f"training {model.model_args} on {manifest.sets[train_set].num_samples} images ({train_set}), "
              f"{env.world_size} process(es) x batch {settings.batch_size}, {itrs_per_epoch} iterations per epoch, "
              f"{total_itrs} in all (warmup {warmup}), loader {settings.loader}, device {device}")
    window_start, data_wait, window_images = time.perf_counter(), 0.0, 0
    while itr < total_itrs:
        t0 = time.perf_counter()
        batch = next(stream)
        data_wait += time.perf_counter() - t0

        with torch.autocast(device.type, dtype=amp_dtype, enabled=settings.use_amp):
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

        if itr % settings.log_every == 0 or itr == total_itrs:
            elapsed = time.perf_counter() - window_start
            record = {"itr": itr, "epoch": (itr - 1) // itrs_per_epoch, "loss": loss.item(),
                      "lr": lr, "images_per_s": window_images / elapsed,
                      "data_wait": data_wait / elapsed}
            if device.type == "cuda":
                record["gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            log.log(record)
            log.print(f"itr {itr}/{total_itrs} | epoch {record['epoch']} | loss {record['loss']:.4f} | "
                      f"lr {record['lr']:.2e} | {record['images_per_s']:.1f} img/s | "
                      f"data wait {100 * record['data_wait']:.0f}%")
            window_start, data_wait, window_images = time.perf_counter(), 0.0, 0

        epoch_end = itr % itrs_per_epoch == 0
        if epoch_end and settings.validate and val_set is not None:
            validate(itr // itrs_per_epoch - 1)
        if epoch_end or itr == total_itrs or (settings.ckpt_every and itr % settings.ckpt_every == 0):
            save_checkpoint()

    # -- teardown: the final model as a plain state dict (the original's format) and
    # as a `save_pretrained` folder that `--hf-model` and `from_pretrained` accept
    final = out / "model.pt"
    if env.is_main:
        save_atomic(clean_state_dict(model), final)
        model.save_pretrained(out / "final")
        log.print(f"final model: {final} (and {out / 'final'} for from_pretrained)")
    log.close()
    teardown_distributed(env)
    return final
