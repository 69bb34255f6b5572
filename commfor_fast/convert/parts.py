"""The files of a conversion folder besides the shards: plan.json and the per-partition done-markers.

    OUT/plan.json                  the plan's fingerprint, written before any shard
    OUT/listing.json.gz            the folder scan, for reruns and other nodes (`listing.py`)
    OUT/balance-checks.json        with --balance-checked: the images balancing does not count
    OUT/parts/part-00003.json      partition 3 is done: its shards, stats and rejects
    OUT/<set>/shard-00003-001.tar  shard 1 of partition 3 in that set (+ .tar.idx)
    OUT/parts/val/shard-00003-000.tar  partition 3's validation samples, packed with the
                                   others' into OUT/val/shard-val-00000.tar... (`pack.py`)

A marker is written after all of its partition's shards are durable, so a marker
whose shards still check out means "done"; anything else of that partition is
deleted and redone on the next run. Every file is written through
`fileio.atomic_write`, so a kill leaves at most its temporary dot-files
(`fileio.is_temporary`); they are ours, never "foreign" files, and are deleted with
the partition they belong to. A rerun with other output settings would mix two
datasets, so it is refused unless `--overwrite` is given.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from commfor_fast.convert.listing import LISTING_NAME
from commfor_fast.errors import UserError
from commfor_fast.fileio import is_temporary, sha256_file
from commfor_fast.shards import (CARD_NAME, GENERATORS_NAME, MANIFEST_NAME, ShardInfo, other_conversion, read_index,
                                 write_json_atomic)

PLAN_NAME = "plan.json"
PARTS_DIR = "parts"
CHECKS_NAME = "balance-checks.json"  # `balance_checks.py`
PACKED_SET = "val"  # its partitions' pieces are packed into full shards (`pack.py`)


def marker_path(out: Path, partition: int) -> Path:
    return out / PARTS_DIR / f"part-{partition:05d}.json"


def shard_path(out: Path, set_name: str, partition: int, number: int) -> Path:
    """Where a partition writes a shard: in its set's folder, or for `val` a piece in
    OUT/parts/val/ that `pack.py` packs into full shards."""
    folder = out / PARTS_DIR / set_name if set_name == PACKED_SET else out / set_name
    return folder / f"shard-{partition:05d}-{number:03d}.tar"


def _ours(set_names: tuple[str, ...]) -> set[str]:
    return {PLAN_NAME, LISTING_NAME, CHECKS_NAME, PARTS_DIR, MANIFEST_NAME, CARD_NAME, GENERATORS_NAME, "train", "val",
            "all", *set_names}


def _recorded_fingerprint(plan_file: Path) -> str | None:
    try:
        return json.loads(plan_file.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def check_out(out: Path, plan_record: dict[str, Any], overwrite: bool) -> str | None:
    """Refuse an `out` that this plan may not write into (a file, a folder of other
    files, another conversion without `overwrite`); returns the fingerprint of the
    conversion there, or None. Writes nothing: `--dry-run` asks it too."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    plan_file = out / PLAN_NAME
    previous = _recorded_fingerprint(plan_file)
    if previous is None and out.is_dir() and any(not is_temporary(p.name) for p in out.iterdir()):
        previous = _recorded_fingerprint(plan_file)  # another node may have just written it
        if previous is None:
            raise UserError(f"--out {out} is not empty and holds no {PLAN_NAME}, so it is not from "
                            "`commfor-fast convert`; give an empty or new folder")
    if previous not in (None, plan_record["fingerprint"]) and not overwrite:
        raise UserError(f"--out {out} holds {other_conversion(out)}; use a new --out folder, or pass --overwrite "
                        "to delete it and start again")
    return previous


def prepare_out(out: Path, plan_record: dict[str, Any], set_names: tuple[str, ...], overwrite: bool) -> None:
    """Make sure `out` holds this plan's conversion (or nothing), then record the plan.

    A folder without plan.json must be empty (but for temporary files of an
    interrupted write, e.g. another node's plan.json): nothing that `convert` did not
    write is ever deleted. Several nodes may start at once: plan.json is written
    before any folder, and a node that finds the same plan there deletes nothing.
    """
    plan_file = out / PLAN_NAME
    previous = check_out(out, plan_record, overwrite)
    if previous == plan_record["fingerprint"]:
        _make_dirs(out, set_names)
        return
    if previous is not None:
        strangers = sorted(p.name for p in out.iterdir()
                           if p.name not in _ours(set_names) and not is_temporary(p.name))
        if strangers:
            raise UserError(f"--out {out} also holds files that are not from `commfor-fast convert` "
                            f"({', '.join(strangers[:3])}); move them away or give a new folder")
        for path in out.iterdir():  # everything in it is ours now
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_file, plan_record)
    _make_dirs(out, set_names)


def _make_dirs(out: Path, set_names: tuple[str, ...]) -> None:
    (out / PARTS_DIR).mkdir(exist_ok=True)
    for set_name in set_names:
        (out / set_name).mkdir(exist_ok=True)
        if set_name == PACKED_SET:
            (out / PARTS_DIR / set_name).mkdir(exist_ok=True)


def _partition_of(name: str, kind: str) -> int | None:
    """The partition whose `kind` file ("shard" or "part") `name` is, or whose
    `atomic_write` temporary file it is; None for any other name."""
    if is_temporary(name):
        name = name[1:]
    if not name.startswith(f"{kind}-"):
        return None
    number = name[len(kind) + 1:].split("-" if kind == "shard" else ".", 1)[0]
    return int(number) if number.isdigit() else None


def clear_partitions(out: Path, partitions: Iterable[int], set_names: tuple[str, ...]) -> None:
    """Delete everything the given partitions may have left (markers, shards, temporary files).

    Each folder is listed once, whatever the number of partitions: clearing them one
    by one would list every shard of the set once per partition.
    """
    doomed = set(partitions)
    shard_folders = [out / name for name in set_names] + [out / PARTS_DIR / name for name in set_names
                                                          if name == PACKED_SET]
    for folder, kind in [(out / PARTS_DIR, "part"), *((folder, "shard") for folder in shard_folders)]:
        with os.scandir(folder) as entries:
            for entry in entries:
                if _partition_of(entry.name, kind) in doomed:
                    os.unlink(entry.path)


def read_marker(out: Path, partition: int, fingerprint: str, *, check_index: bool,
                check_hash: bool) -> dict[str, Any] | None:
    """The partition's marker if it and its shards check out, else None.

    Always: the marker belongs to this plan and every shard and index exists with the
    recorded size. `check_index` also parses each index and counts its samples;
    `check_hash` also re-hashes each tar.
    """
    try:
        marker = json.loads(marker_path(out, partition).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if marker.get("fingerprint") != fingerprint or marker.get("partition") != partition:
        return None
    shards = [ShardInfo(**shard) for s in marker["sets"].values() for shard in s["shards"]]
    return marker if all(shard_intact(out, s, check_index=check_index, check_hash=check_hash) for s in shards) else None


def shard_intact(out: Path, shard: ShardInfo, *, check_index: bool, check_hash: bool) -> bool:
    """Whether a shard's tar and index exist, the tar with the recorded size; `check_index`
    also parses the index and counts its samples, `check_hash` also re-hashes the tar."""
    tar, index = out / shard.tar, out / shard.index
    if not tar.is_file() or tar.stat().st_size != shard.bytes or not index.is_file():
        return False
    if check_index:
        try:
            if len(read_index(index)) != shard.num_samples:
                return False
        except UserError:
            return False
    return not check_hash or sha256_file(tar) == shard.sha256


def write_marker(out: Path, marker: dict[str, Any]) -> None:
    write_json_atomic(marker_path(out, marker["partition"]), marker)
