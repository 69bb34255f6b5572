"""Training checkpoints: the record a resume reads, its files, and what changed since one was written.

A checkpoint is one `torch.save`d dict holding `TrainCheckpoint`'s fields by name,
the keys every earlier version wrote, so their checkpoints still resume. Files are
`ckpt-<iteration, 9 digits>.pt` in the run folder, written atomically; the newest
`--ckpt-keep-count` are kept. Rank 0 picks the checkpoint a run starts from and
tells the others (`find_start`), so every rank resumes from the same one. The model
with the best validation AP of the run is kept beside them in `best/` (`is_new_best`,
`folder_replaced`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

import torch

from commfor_fast.distributed import Dist, broadcast
from commfor_fast.errors import UserError
from commfor_fast.fileio import atomic_write
from commfor_fast.settings import TrainSettings, settings_dict

CKPT_PATTERN = re.compile(r"^ckpt-(\d{9})\.pt$")

# Settings that shape the data stream: a checkpoint's stream position only replays
# the same batches when these (and the process count) are unchanged.
STREAM_SETTINGS = ("data", "loader", "batch_size", "seed", "batches_per_run", "rsa_ops", "rsa_min_num_ops",
                   "rsa_max_num_ops", "fix_padding_quirk", "box_filter")
# Settings that shape the optimisation: its schedule and its precision (as resolved for
# the device: an fp32 run must not go on in fp16 unnoticed). Neither kind may change on
# resume without --allow-changed-settings.
SCHEDULE_SETTINGS = ("epochs", "train_itrs", "lr", "weight_decay", "warmup_epochs", "warmup_frac", "no_lr_schedule",
                     "lr_schedule", "use_amp", "amp_dtype")


class RunShape(TypedDict):
    """What a resume compares besides the settings: the process count, the schedule they
    give and the data (its shards' hashes: converted again at the same path, they differ)."""

    world_size: int
    total_itrs: int  # iterations in all
    warmup: int  # warmup iterations
    data: str  # `Manifest.fingerprint()`


@dataclasses.dataclass
class TrainCheckpoint:
    """One training checkpoint, field by field the keys of the file.

    `model` and `model_args` are read by `model.detector_from_checkpoint` (which also
    reads the original's checkpoints and plain state dicts); a resume reads the rest
    through `from_dict`. `epoch` and `version` are for people and tools reading the file.
    """

    model: dict[str, torch.Tensor]  # the unwrapped model's weights (`model.clean_state_dict`)
    model_args: dict[str, Any]  # its architecture: a resume builds this one, whatever the flags say
    optimizer: dict[str, Any]
    scaler: dict[str, Any]  # the fp16 grad scaler (disabled otherwise, but always saved)
    epoch: int  # epochs completed at `itr`
    itr: int  # iterations done; the lr schedule is a function of it
    schedule: RunShape | dict[str, int]  # empty in checkpoints written before it was recorded
    data: list[dict[str, Any]]  # every rank's data-stream position, in rank order
    settings: dict[str, Any]  # `settings_dict` of the run that wrote it
    version: str  # the commfor-fast version that wrote it

    # What resume cannot go without; the others default as older versions left them out.
    REQUIRED = ("model", "model_args", "optimizer", "scaler", "itr")

    def to_dict(self) -> dict[str, Any]:
        """The dict `torch.save` writes (shallow: the state dicts are not copied)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], path: Path | str) -> TrainCheckpoint:
        """The record of a loaded checkpoint of ours; a `UserError` naming `path` when it lacks
        what a resume needs (a file cut down by hand, or another program's)."""
        missing = [key for key in cls.REQUIRED if key not in obj]
        if missing:
            raise UserError(f"{path}: not a complete training checkpoint (no {', '.join(missing)}); start a new "
                            f"run from its weights with --ckpt {path} --only-load-model-weights and another --out")
        return cls(model=obj["model"], model_args=obj["model_args"], optimizer=obj["optimizer"],
                   scaler=obj["scaler"], epoch=int(obj.get("epoch", 0)), itr=int(obj["itr"]),
                   schedule=obj.get("schedule") or {}, data=obj.get("data") or [], settings=obj.get("settings") or {},
                   version=str(obj.get("version", "")))


def checkpoints_in(folder: Path) -> list[Path]:
    """Checkpoint files in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CKPT_PATTERN.match(p.name))


def find_start(out: Path, settings: TrainSettings, env: Dist) -> tuple[Path | None, bool]:
    """Where the run starts, as rank 0 sees it, on every rank: the newest checkpoint in
    `out` (a resume: True), else `--ckpt` (False), else None. `--resume` insists on the first."""
    found = checkpoints_in(out) if env.is_main else []
    start, resuming = broadcast((found[-1] if found else settings.ckpt, bool(found)), env)
    if settings.resume and not resuming:
        raise UserError(f"--resume: no checkpoint (ckpt-*.pt) in {out} to resume from")
    return start, resuming


def checkpoint_due(itr: int, *, total_itrs: int, per_epoch: int, settings: TrainSettings) -> bool:
    """Whether iteration `itr` ends with a checkpoint: at every epoch end, at the end of the
    run and every `--ckpt-every` iterations; never with `--ckpt-keep-count 0`."""
    every = settings.ckpt_every
    return settings.ckpt_keep_count != 0 and (
        itr % per_epoch == 0 or itr == total_itrs or (every > 0 and itr % every == 0))


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through `fileio.atomic_write`: a kill never leaves half a checkpoint."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def write_checkpoint(out: Path, record: TrainCheckpoint, keep: int) -> Path:
    """Write `record` as `out/ckpt-<itr>.pt`, then delete all but the newest `keep` (-1: keep all)."""
    path = out / f"ckpt-{record.itr:09d}.pt"
    save_atomic(record.to_dict(), path)
    kept = checkpoints_in(out)
    if keep >= 0:
        for old in kept[: max(len(kept) - keep, 0)]:
            old.unlink()
    return path


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary files that checkpoint writes killed midway left in `out`
    (`fileio.atomic_write` names them `.ckpt-*.tmp`, `.model.pt.*.tmp`), and a `best/`
    folder whose write was killed (`.best.tmp`)."""
    for path in [*out.glob(".ckpt-*.tmp"), *out.glob(".model.pt.*.tmp")]:
        path.unlink(missing_ok=True)
    shutil.rmtree(out / f".{BEST}.tmp", ignore_errors=True)


BEST = "best"  # the folder in the run folder holding the model of the best validation AP


def is_new_best(ap: float | None, records: Iterable[Mapping[str, Any]]) -> bool:
    """Whether a validation AP of `ap` beats every earlier validation in `records` (the run's
    `metrics.jsonl`, across resumes, so a resumed run keeps comparing with the validations
    before it). An AP that could not be computed (None or NaN: one class only) never does;
    a tie keeps the earlier model."""
    if ap is None or math.isnan(ap):
        return False
    return all(ap > r["val_ap"] for r in records if r.get("val_ap") is not None and not math.isnan(r["val_ap"]))


@contextlib.contextmanager
def folder_replaced(dest: Path) -> Iterator[Path]:
    """A fresh folder beside `dest` to write into, which then takes `dest`'s place: a
    kill midway leaves the previous `dest` whole (or, between the two renames, in
    `.NAME.old`), never a half-written one."""
    tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def resume_changes(ckpt: TrainCheckpoint, settings: TrainSettings, shape: RunShape) -> tuple[list[str], bool]:
    """What changed since `ckpt` among the settings that shape the schedule or the data
    stream, and the schedule they give (`shape`), one `what: old -> new` line each; and
    whether the checkpoint's data-stream positions still apply. Shape flags changed to
    contradict the checkpoint's model are refused (`check_model_shape`)."""
    before, now = ckpt.settings, settings_dict(settings)
    check_model_shape(ckpt, before, now)
    was: dict[str, Any] = {"world_size": len(ckpt.data), **ckpt.schedule}
    is_now: dict[str, Any] = dict(shape)
    changes = [f"--{k.replace('_', '-')}: {before.get(k)} -> {now[k]}"
               for k in (*SCHEDULE_SETTINGS, *STREAM_SETTINGS) if str(before.get(k)) != str(now[k])]
    names = {"world_size": "processes", "total_itrs": "iterations in all", "warmup": "warmup iterations",
             "data": "the shards at --data (converted again; fingerprint)"}
    changes += [f"{name}: {was[k]} -> {is_now[k]}" for k, name in names.items() if k in was and was[k] != is_now[k]]
    same_stream = was["world_size"] == shape["world_size"] and all(
        str(before.get(k)) == str(now[k]) for k in STREAM_SETTINGS)
    return changes, same_stream


def check_model_shape(ckpt: TrainCheckpoint, before: dict[str, Any], now: dict[str, Any]) -> None:
    """A resume continues the checkpoint's model: refuse --model-size / --input-size /
    --patch-size changed since the checkpoint's run to values its model does not have
    (a rerun of the same command passes, whatever the flags said then)."""
    names = ("model_size", "input_size", "patch_size")
    wrong = [k for k in names if str(before.get(k)) != str(now[k]) and str(ckpt.model_args.get(k)) != str(now[k])]
    if wrong:
        def flags(values: Mapping[str, Any]) -> str:
            return " ".join(f"--{k.replace('_', '-')} {values.get(k)}" for k in wrong)

        raise UserError(f"{flags(now)}: the checkpoint resumed from holds another model ({flags(ckpt.model_args)}); "
                        f"a resume continues that model: give {flags(ckpt.model_args)}")
