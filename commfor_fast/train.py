"""Training: a lean DDP loop over the converter's shards.

Single process:   commfor-fast train --data SHARDS --out RUN [--device cpu] ...
torchrun:         torchrun --nproc_per_node=8 -m commfor_fast train --data SHARDS --out RUN ...

`train()` reads top to bottom: settings, the torchrun environment, data, model
(resume, a checkpoint's weights, a released detector or scratch), optimizer,
stream, compile, DDP, the loop, the final model, and a teardown that runs whatever
happened; the helpers it calls follow it, in the order it calls them. The defaults
are the reference recipe (SPEC section 5): AdamW (lr 2e-5, weight decay 1e-2),
BCE-with-logits, gradient clipping at 1.0, linear warmup then cosine annealing
towards lr * 1e-3 stepped as the original steps it (`schedule.py`; `--lr-schedule
per-iteration` ends exactly at the floor instead), mixed precision with a grad scaler
for fp16, per-rank batch size, a checkpoint every epoch keeping the newest N.
Validation runs after every epoch and after the last iteration whatever
`--train-itrs` is; the model of the best validation AP is kept in `best/`, and the
training curves of `metrics.jsonl` are drawn at the end (`training_curves.py`).

Resume is exact: a checkpoint (`checkpoint.py`) holds the model, optimizer, grad
scaler, iteration (the schedule is a function of it), the schedule's shape and every
rank's data-stream position, so a run killed mid-epoch and resumed sees the same
batches as one that never stopped. Settings that shape the schedule or the stream
(and the process count) may not change on resume without `--allow-changed-settings`,
which prints each change (the streams then restart from their seeds when the stream
changed). Rank 0 picks the checkpoint and tells the others, so every rank resumes
from the same one. `--ckpt` with the original's checkpoints or a plain state dict,
and `--hf-model` (a released detector), start from their weights with a new
optimizer and schedule. Only rank 0 prints, logs (`runlog.py`: the loss is the mean over
the ranks) and saves; the other ranks' errors name their rank.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from commfor_fast import __version__
from commfor_fast.checkpoint import (BEST, RunShape, TrainCheckpoint, checkpoint_due, checkpoints_in, find_start,
                                     folder_replaced, is_new_best, remove_stale_temporaries, resume_changes,
                                     save_atomic, write_checkpoint)
from commfor_fast.training_curves import plot_training_curves
from commfor_fast.distributed import (Dist, all_gather, amp_dtype, data_parallel, resolve_device, setup_distributed,
                                      teardown_distributed)
from commfor_fast.errors import UserError
from commfor_fast.evaluate import gather_scores, score_batches
from commfor_fast.fileio import check_writable, output_errors
from commfor_fast.metrics import accuracy, average_precision
from commfor_fast.model import (CommForDetector, clean_state_dict, create_detector, detector_from_checkpoint,
                                load_detector, read_checkpoint)
from commfor_fast.modelcard import write_model_card
from commfor_fast.pipelines.executor import ExecutorOptions
from commfor_fast.pipelines.loader import (LOADERS, EvalLoader, TrainStream, create_eval_loader, create_train_stream,
                                           iters_per_epoch)
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.pipelines.synthetic import SyntheticStream
from commfor_fast.runlog import MetricsLog, Throughput, check_wandb, rank_error
from commfor_fast.schedule import LR_SCHEDULES, LRSchedule
from commfor_fast.settings import TrainSettings, resolve_precision, settings_dict
from commfor_fast.shards import Manifest
from commfor_fast.verify import verify_for_training


def train(settings: TrainSettings) -> Path:
    """Train a detector; returns the path of the final model (a plain state dict)."""
    env = Dist.from_env()  # the torchrun environment, read once: this process's rank and the process count
    out = Path(settings.out)
    log: MetricsLog | None = None
    stream: TrainStream | None = None
    val_loader: EvalLoader | None = None
    completed = False
    try:
        # -- settings, checked before any work (and wandb's credentials, on the rank that logs)
        check_settings(settings)
        check_wandb(settings, env)
        rsa = RSAConfig.from_flags(settings.rsa_ops, settings.rsa_min_num_ops, settings.rsa_max_num_ops,
                                   settings.fix_padding_quirk, settings.box_filter)

        # -- this process's device, process group and seed
        device = resolve_device(settings.device, env.local_rank)
        settings = resolve_precision(dataclasses.replace(settings, device=device.type))
        setup_distributed(device, env)
        seed = settings.seed + env.rank  # torch's and numpy's own draws per rank (DDP starts all from rank 0's weights)
        manifest = Manifest.load(settings.data)
        if env.is_main:
            prepare_run_folder(out)
        if settings.verify_hashes:  # every rank hashes its share of the shards
            verify_for_training(settings.data, env)
        torch.manual_seed(seed)
        np.random.seed(seed)
        log = MetricsLog(settings, env)

        # -- data: the sets, iterations per epoch and the schedule they give
        train_set, val_set = pick_sets(manifest, settings, log)
        itrs_per_epoch = iters_per_epoch(manifest.sets[train_set].num_samples, settings.batch_size, env.world_size)
        schedule = LRSchedule.from_settings(settings, itrs_per_epoch)
        warn_long_warmup(schedule, settings, log)
        shape = RunShape(world_size=env.world_size, total_itrs=schedule.total, warmup=schedule.warmup,
                         data=manifest.fingerprint())

        # -- model: rank 0's choice of checkpoint, a released detector, or scratch (no download on resume)
        start, resuming = find_start(out, settings, env)
        ckpt, ckpt_format = None, None
        if start is not None:  # resume (our checkpoint in --out), or --ckpt
            ckpt = read_checkpoint(Path(start), trust=settings.trust_checkpoint,
                                   older=checkpoints_in(out)[:-1] if resuming else None)
            model, ckpt_format = detector_from_checkpoint(ckpt, Path(start))
            if settings.freeze_backbone and not resuming:
                model.set_freeze_backbone(True)
        elif settings.hf_model is not None:  # fine-tune a released detector
            model, _ = load_detector(hf_model=settings.hf_model)
            model.set_freeze_backbone(settings.freeze_backbone)
            log.print(f"fine-tuning {settings.hf_model}: its weights, a new optimizer and schedule")
        else:  # scratch: a new head on timm's ImageNet weights (random ones with --no-pretrained)
            model = create_detector(model_size=settings.model_size, input_size=settings.input_size,
                                    patch_size=settings.patch_size, freeze_backbone=settings.freeze_backbone,
                                    pretrained=settings.pretrained, pretrained_path=settings.pretrained_path)
        note_model_shape(model, settings, start or settings.hf_model, log)
        model.train().to(device)
        card = dict(model_args=model.model_args, timm_name=model.timm_name, settings=settings, manifest=manifest,
                    train_set=train_set, schedule=dict(shape))  # what the model cards of final/ and best/ tell

        # -- optimizer and mixed precision; our checkpoints also restore them, the iteration and the streams
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        autocast_dtype = amp_dtype(settings.amp_dtype)
        scaler = torch.amp.GradScaler(device.type, enabled=settings.use_amp and autocast_dtype == torch.float16)
        itr, data_state = start_from_checkpoint(ckpt, ckpt_format, start, resuming, settings=settings, shape=shape,
                                                env=env, optimizer=optimizer, scaler=scaler, log=log)
        del ckpt
        scheduler = schedule.scheduler(optimizer, settings.lr, settings.weight_decay, itr)

        # -- the training stream, from this rank's saved position on resume
        stream = create_stream(settings, manifest, train_set, crop=model.input_size, rsa=rsa, env=env, device=device,
                               state=data_state)

        # -- the validation loader, built once: every epoch's pass reuses its pipeline (and workers)
        val_loader = None if val_set is None else create_val_loader(settings, manifest, val_set, crop=model.input_size,
                                                                    env=env, device=device)

        # -- compile, DDP
        net = data_parallel(torch.compile(model) if settings.compile else model, env, device)

        # -- the loop
        log.print(f"training {model.model_args} on {manifest.sets[train_set].num_samples} images ({train_set}), "
                  f"{env.world_size} process(es) x batch {settings.batch_size}, {itrs_per_epoch} iterations per epoch, "
                  f"{schedule.total} in all (warmup {schedule.warmup}, {schedule.kind} lr schedule), loader "
                  f"{settings.loader}, device {device}")
        window = Throughput()
        log.start_progress(schedule.total, itr)
        while itr < schedule.total:
            # fetch (the wait is what the data stream costs the loop)
            t0 = time.perf_counter()
            batch = next(stream)
            window.data_wait += time.perf_counter() - t0
            # forward, backward, clip, step; then the lr of the next iteration
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
            window.images += batch.images.shape[0] * env.world_size
            log.step()
            # log: every --log-every iterations and the last
            if itr % settings.log_every == 0 or itr == schedule.total:
                log.iteration(itr, (itr - 1) // itrs_per_epoch, schedule.total, loss, lr, window, device)
                window.restart()
            # validate at epoch ends and after the last iteration (the best model kept in best/);
            # checkpoint at epoch ends, every --ckpt-every iterations and the last
            epoch_end = itr % itrs_per_epoch == 0
            if val_set is not None and (epoch_end or itr == schedule.total):
                validate_and_keep_best(model, itr, (itr - 1) // itrs_per_epoch, val_set, val_loader, settings=settings,
                                       card=card, env=env, device=device, log=log)
            if checkpoint_due(itr, total_itrs=schedule.total, per_epoch=itrs_per_epoch, settings=settings):
                save_checkpoint(out, itr, model=model, optimizer=optimizer, scaler=scaler, stream=stream,
                                shape=shape, per_epoch=itrs_per_epoch, settings=settings, env=env, log=log)
            if epoch_end:  # the throughput window starts after validation and saving
                window.restart()

        # -- the final model, as a plain state dict and a save_pretrained folder; the training curves
        final = save_final(model, out, card=card, env=env, log=log)
        completed = True
        return final
    except UserError as exc:  # only rank 0 prints: the other ranks' errors say which rank they come from
        raise rank_error(exc, env) from None
    finally:  # whatever happened: the stream, the run log (and wandb), the process group
        close_run(stream, val_loader, log, env, completed)


# ------------------------------------------------------- the helpers, in order of use

def check_settings(s: TrainSettings) -> None:
    """Reject impossible values before any work starts (one clear line each)."""
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
    if s.loader not in LOADERS:
        raise UserError(f"--loader {s.loader!r}: choose one of {', '.join(LOADERS)}")
    if s.hf_model is not None and (s.ckpt is not None or s.pretrained_path is not None):
        raise UserError(f"--hf-model {s.hf_model}: give it alone, without --ckpt or --pretrained-path "
                        "(each names the weights to start from)")
    amp_dtype(s.amp_dtype)


def prepare_run_folder(out: Path) -> None:
    """Rank 0, before any work: `--out` writable, no temporaries of writes killed midway."""
    check_writable(out, "--out")
    remove_stale_temporaries(out)


def pick_sets(manifest: Manifest, settings: TrainSettings, log: MetricsLog) -> tuple[str, str | None]:
    """The set to train on and the one to validate on (None: no validation, as asked or
    for want of validation images)."""
    train_set, val_set = manifest.training_sets()
    if val_set is not None and manifest.sets[val_set].num_samples == 0:
        val_set = None
    if settings.validate and val_set is None:
        log.print(f"note: {settings.data} has no validation images (convert with --val-frac > 0); "
                  "no validation will run")
    return train_set, val_set if settings.validate else None


def warn_long_warmup(schedule: LRSchedule, settings: TrainSettings, log: MetricsLog) -> None:
    """A warmup longer than the run never reaches `--lr`: say so and how to fix it."""
    if schedule.warmup > schedule.total:
        log.print(f"warning: the warmup ({schedule.warmup} iterations, --warmup-epochs {settings.warmup_epochs}) is "
                  f"longer than the whole run ({schedule.total}): the lr never reaches --lr {settings.lr}; shorten "
                  "--warmup-epochs or give --warmup-frac")


def note_model_shape(model: CommForDetector, settings: TrainSettings, source: Path | str | None,
                     log: MetricsLog) -> None:
    """A model started from weights (`source`) has their shape, whatever the shape flags say: say so."""
    if source is not None and (model.model_size, model.input_size, model.patch_size) != \
            (settings.model_size, settings.input_size, settings.patch_size):
        log.print(f"note: model shape taken from {source}: {model.model_args}")


def start_from_checkpoint(ckpt: Any, ckpt_format: str | None, start: Path | None, resuming: bool, *,
                          settings: TrainSettings, shape: RunShape, env: Dist, optimizer: torch.optim.Optimizer,
                          scaler: torch.amp.GradScaler, log: MetricsLog) -> tuple[int, dict[str, Any] | None]:
    """The iteration to start at and this rank's stream position (None: the stream starts
    from its seed), from the checkpoint loaded from `start` (None: none, iteration 0).

    Our checkpoints resume everything (unless `--only-load-model-weights` with `--ckpt`):
    optimizer, grad scaler, iteration and, when the stream settings are unchanged, the
    streams; settings that shape the schedule or the stream may change only with
    `--allow-changed-settings`. Other formats gave their weights only (already loaded).
    """
    if ckpt is None or start is None:
        return 0, None
    if ckpt_format != "commfor-fast" or (settings.only_load_model_weights and not resuming):
        log.print(f"starting from the weights of {start} ({ckpt_format} format): new optimizer and schedule")
        return 0, None
    record = TrainCheckpoint.from_dict(ckpt, start)
    changes, same_stream = resume_changes(record, settings, shape)
    if changes and not settings.allow_changed_settings:
        raise UserError(
            f"{start} was written with other settings ({'; '.join(changes)}); rerun with the same ones, "
            "or add --allow-changed-settings to go on with these"
            + ("" if resuming else ", or --only-load-model-weights to start a new schedule from its weights"))
    optimizer.load_state_dict(record.optimizer)
    scaler.load_state_dict(record.scaler)
    for change in changes:
        log.print(f"note: changed since {start}: {change}")
    data_state = record.data[env.rank] if same_stream else None
    if not same_stream:
        log.print(f"note: the data streams restart from their seeds (the stream settings changed since {start})")
    if resuming:
        log.drop_after(record.itr)
    log.print(f"resumed from {start} at iteration {record.itr}")
    return record.itr, data_state


def create_stream(settings: TrainSettings, manifest: Manifest, train_set: str, *, crop: int, rsa: RSAConfig,
                  env: Dist, device: torch.device, state: dict[str, Any] | None) -> TrainStream:
    """This rank's training stream from `state` (None: from its seed), or the synthetic one."""
    if settings.synthetic_data:
        return SyntheticStream(settings.batch_size, crop, device)
    return create_train_stream(settings.loader, settings.data, manifest, train_set, device=device,
                               batch_size=settings.batch_size, crop=crop, rsa=rsa, seed=settings.seed, rank=env.rank,
                               world_size=env.world_size, num_threads=settings.num_threads,
                               batches_per_run=settings.batches_per_run, state=state,
                               executor=ExecutorOptions.from_flags(settings.executor))


def validate_and_keep_best(model: CommForDetector, itr: int, epoch: int, val_set: str, loader: EvalLoader, *,
                           settings: TrainSettings, card: dict[str, Any], env: Dist, device: torch.device,
                           log: MetricsLog) -> None:
    """Validate after iteration `itr` of `epoch` (0-based; a collective, every rank calls it)
    on a pass of `loader` and log it; rank 0 writes the model to `OUT/best/` (as `final/`: save_pretrained and
    a model card) when its AP beats every earlier validation of the run, resumes included."""
    started = time.perf_counter()
    record = {"itr": itr, "epoch": epoch, **validate(model, loader, settings, val_set, env=env, device=device)}
    best = env.is_main and is_new_best(record["val_ap"], log.records())  # before this record is logged
    log.validation(record, time.perf_counter() - started)
    if best:
        with folder_replaced(settings.out / BEST) as folder:
            save_pretrained(model, folder, card=card, validation=record)
        log.print(f"best validation AP so far ({record['val_ap']:.4f}): saved {settings.out / BEST}")


def create_val_loader(settings: TrainSettings, manifest: Manifest, val_set: str, *, crop: int, env: Dist,
                      device: torch.device) -> EvalLoader:
    """This rank's part of `val_set`, one pass each time it is iterated (closed by `close_run`)."""
    return create_eval_loader(settings.loader, settings.data, manifest, val_set, device=device,
                              batch_size=settings.batch_size, crop=crop, rank=env.rank, world_size=env.world_size,
                              num_threads=settings.num_threads, executor=ExecutorOptions.from_flags(settings.executor))


def validate(model: CommForDetector, loader: EvalLoader, settings: TrainSettings, val_set: str, *, env: Dist,
             device: torch.device) -> dict[str, Any]:
    """Loss, accuracy and AP on `val_set` (a pass of `loader`), over every rank's part (gathered
    on every rank): `val_loss`, `val_acc`, `val_ap` and `val_n`, the images scored. Leaves
    `model` in training mode."""
    model.eval()
    try:
        mine = score_batches(model, loader, val_set, device=device, autocast_dtype=amp_dtype(settings.amp_dtype),
                             use_amp=bool(settings.use_amp))
    finally:
        model.train()
    gathered = gather_scores(mine, env)[0]  # a collective: every rank gets every image
    z, y = torch.from_numpy(gathered.logits), torch.from_numpy(gathered.labels)
    scores = torch.sigmoid(z).numpy()  # torch's float32 sigmoid, as the loop's own metrics
    return {"val_loss": F.binary_cross_entropy_with_logits(z, y).item(), "val_acc": accuracy(y.numpy(), scores),
            "val_ap": average_precision(y.numpy(), scores), "val_n": int(y.numel())}


def save_checkpoint(out: Path, itr: int, *, model: CommForDetector, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, stream: TrainStream, shape: RunShape,
                    per_epoch: int, settings: TrainSettings, env: Dist, log: MetricsLog) -> None:
    """Every rank's stream position gathered to rank 0, which writes the checkpoint after
    iteration `itr` and keeps the newest `--ckpt-keep-count`."""
    states = all_gather(stream.state_dict(), env)
    if not env.is_main:
        return
    record = TrainCheckpoint(model=clean_state_dict(model), model_args=model.model_args,
                             optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), epoch=itr // per_epoch,
                             itr=itr, schedule=shape, data=states, settings=settings_dict(settings),
                             version=__version__)
    log.print(f"saved {write_checkpoint(out, record, settings.ckpt_keep_count)}")


def save_pretrained(model: CommForDetector, folder: Path, *, card: dict[str, Any],
                    validation: dict[str, Any] | None) -> None:
    """`model` as a `save_pretrained` folder (what `--hf-model` and `from_pretrained` accept)
    with its model card, which tells `validation` (None: no validation ran)."""
    with output_errors(folder):  # a full disk: one line (safetensors raises no OSError)
        model.save_pretrained(folder)
    write_model_card(folder, **card, validation=validation)


def save_final(model: CommForDetector, out: Path, *, card: dict[str, Any], env: Dist, log: MetricsLog) -> Path:
    """Rank 0 writes the final model as a plain state dict (`model.pt`, the original's
    format, returned on every rank) and as a `save_pretrained` folder with a model card
    (`final/`), and draws the training curves of `metrics.jsonl`."""
    final = out / "model.pt"
    if not env.is_main:
        return final
    save_atomic(clean_state_dict(model), final)
    validations = [r for r in log.records() if "val_loss" in r]  # this run's, across resumes
    save_pretrained(model, out / "final", card=card, validation=validations[-1] if validations else None)
    curves, _ = plot_training_curves(out)
    log.print(f"final model: {final} (and {out / 'final'} for from_pretrained); training curves: {curves}")
    return final


def close_run(stream: TrainStream | None, val_loader: EvalLoader | None, log: MetricsLog | None, env: Dist,
              completed: bool) -> None:
    """The teardown, after a finished run or a failure: the stream and the validation
    loader, the run log and wandb, and the process group (without waiting for the other
    ranks after a failure)."""
    for loader in (stream, val_loader):
        if loader is not None:
            loader.close()
    if log is not None:
        log.close()
    teardown_distributed(env, wait=completed)
