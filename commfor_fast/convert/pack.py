"""Packing the validation samples of every partition into full shards, once all are converted.

A partition holds about `--partition-size` of input, so its share of `val` (1 % by
default) is a few dozen samples: converted alone, every partition would leave a tiny
val shard (550 shards of about 49 samples at full scale). So partitions write their
val samples as pieces under OUT/parts/val/ (kept as the partitions' record, for
resume), and when every partition is done the node that writes the manifest copies
them, member by member, into OUT/val/shard-val-00000.tar, ... of up to
`--shard-size`, cut by the same rule as the worker's shards. The samples, their
numbers and their order (partitions in order, each piece in number order) are
exactly those of the pieces; only where one tar ends and the next begins differs.
The manifest and the dataset card list the packed shards. A rerun of a complete
folder keeps packed shards that still check out; otherwise it packs them again, to
the same bytes. A folder whose partitions were converted (all or some) before
packing existed, with pieces in OUT/val/, is not packed: the manifest lists the
pieces as before (finish a conversion with the version that started it, or the
dataset card's `val/*.tar` misses the newer pieces).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from commfor_fast.convert.parts import PACKED_SET, PARTS_DIR, shard_intact
from commfor_fast.convert.tarshard import write_shards
from commfor_fast.fileio import is_temporary
from commfor_fast.shards import Manifest, ShardInfo, read_index

PACKED_PREFIX = f"shard-{PACKED_SET}-"


def packed_path(out: Path, number: int) -> Path:
    return out / PACKED_SET / f"{PACKED_PREFIX}{number:05d}.tar"


def pack_validation(out: Path, markers: list[dict[str, Any]], shard_bytes: int, recorded: Manifest | None,
                    verify_hashes: bool) -> dict[str, list[ShardInfo]]:
    """The packed shards of the val set ({} when there is none, or its pieces are not in
    OUT/parts/val/): those of `recorded` (the manifest already there) if they check
    out and hold as many samples as the pieces, else packed now."""
    pieces = [ShardInfo(**s) for m in markers if PACKED_SET in m["sets"] for s in m["sets"][PACKED_SET]["shards"]]
    if not pieces or not all(Path(p.tar).parent == Path(PARTS_DIR, PACKED_SET) for p in pieces):
        return {}
    total = sum(p.num_samples for p in pieces)
    if recorded is not None and PACKED_SET in recorded.sets:
        kept = recorded.sets[PACKED_SET].shards
        if (kept and all(Path(s.tar).name.startswith(PACKED_PREFIX) for s in kept)
                and sum(s.num_samples for s in kept) == total
                and all(shard_intact(out, s, check_index=True, check_hash=verify_hashes) for s in kept)):
            return {PACKED_SET: kept}
    return {PACKED_SET: _pack(out, pieces, shard_bytes)}


def _clear_packed(out: Path) -> None:
    """Delete the packed shards (and temporaries) an earlier packing left: all are made again."""
    with os.scandir(out / PACKED_SET) as entries:
        for entry in entries:
            name = entry.name[1:] if is_temporary(entry.name) else entry.name
            if name.startswith(PACKED_PREFIX):
                os.unlink(entry.path)


def _pack(out: Path, pieces: list[ShardInfo], shard_bytes: int) -> list[ShardInfo]:
    """Copy the samples of `pieces`, in order, into new tars of up to `shard_bytes`."""
    _clear_packed(out)
    return write_shards(_samples(out, pieces), shard_bytes, lambda n: packed_path(out, n), out)


def _samples(out: Path, pieces: list[ShardInfo]) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """(key, members in stored order) of every sample of `pieces`, read through their indexes."""
    for piece in pieces:
        with open(out / piece.tar, "rb") as f:
            for sample in read_index(out / piece.index):
                members = []
                for ext, member in sample.items():
                    f.seek(member.offset)
                    members.append((ext, f.read(member.size)))
                yield next(iter(sample.values())).filename.split(".", 1)[0], members
