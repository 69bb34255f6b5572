"""The conversion plan: which sample goes to which set, partition, shard order and number.

The plan is a pure function of the sources and the output settings, so every node and
every rerun computes the same one without talking to the others:

1. Scan the sources into units (parquet row groups, image files) with the label and
   generator of every row and the unit's byte size (the folders' units are read from
   `--out`'s listing when their folders did not change since it was recorded,
   `listing.py`).
2. Balance local reals against the fakes (`balance.py`).
3. Split samples (not units) into `train` and `val` with a seeded permutation
   (`val` gets `floor(n * val_frac)` samples, as the original; none for n < 100 at
   the default 0.01); without a split the one set is called `all`.
4. Shuffle the units (seeded) and pack them greedily into *partitions* of up to
   `--partition-size` bytes. A partition is the unit of work, of parallelism across
   processes and nodes, and of resume: it is converted in memory, and its shards are
   either all there (with a done-marker) or redone.
5. Within each partition and set, permute the samples (seeded by seed, partition and
   set) and number them: sample numbers are unique within a set, partitions in
   order, then the permuted order. The worker writes them in number order and cuts a
   new shard whenever `--shard-size` would be exceeded.

Folder data (one image per unit) thus gets a true global shuffle; parquet data a
shuffle of row groups across the whole set plus a full shuffle within each partition.
Training permutes the samples globally every epoch anyway; the mixed stored order
serves readers that stream shards in order (webdataset, HF datasets).

Generator ids are positions in the sorted list of generator names in the plan.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from commfor_fast import __version__
from commfor_fast.convert.balance import balance_reals, balance_warnings
from commfor_fast.convert.listing import listing_record, read_listing, recorded_scan
from commfor_fast.convert.settings import ADDED_SETTINGS, OUTPUT_SETTINGS, ConvertSettings, Limits
from commfor_fast.errors import UserError
from commfor_fast.shards import FORMAT_VERSION
from commfor_fast.sources import source_kinds
from commfor_fast.sources.units import Source, Unit

SPLIT_SETS = ("train", "val")
UNSPLIT_SETS = ("all",)
# Seed streams of the planning draws (balancing uses 1).
SPLIT_STREAM, UNIT_STREAM, ORDER_STREAM = 2, 3, 4


class SampleRef(NamedTuple):
    """Where one row of a unit goes."""

    row: int  # row within the unit
    set_name: str
    number: int  # sample number within the set (the tar key)


@dataclass(frozen=True)
class PartitionTask:
    """One partition: its units in order and, per unit, where each row goes."""

    index: int
    units: tuple[Unit, ...]
    samples: tuple[tuple[SampleRef, ...], ...]  # per unit, rows in order

    @property
    def num_samples(self) -> int:
        return sum(len(s) for s in self.samples)


@dataclass
class ConversionPlan:
    """Everything decided before converting."""

    sources: list[Source]
    generators: list[str]  # generator id -> name
    set_names: tuple[str, ...]
    set_sizes: dict[str, int]
    partitions: list[PartitionTask]
    balance: dict[str, Any] | None
    scanned_samples: int  # before balancing
    fingerprint: str
    listing: dict[str, Any] | None = None  # the folder scan to record in --out (None: read from there)

    def warnings(self) -> list[str]:
        """The warnings known before converting: the sources' and balancing's."""
        return [w for source in self.sources for w in source.warnings] + balance_warnings(self.balance)

    def generator_ids(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.generators)}

    def record(self) -> dict[str, Any]:
        """What `plan.json` holds: enough to recognise the same plan on a rerun or another node."""
        return {"fingerprint": self.fingerprint, "partitions": len(self.partitions), "sets": self.set_sizes,
                "generators": len(self.generators), "package_version": __version__}


def scan_sources(settings: ConvertSettings, limits: Limits) -> tuple[list[Source], list[Unit], dict[str, Any] | None]:
    """Every source's units, kind by kind in the registry's order (`commfor_fast.sources`):
    HF first, then the folders in the order given; and the listing to record (`listing.py`).

    The folders' units come from `--out`'s listing when it holds one of the same
    folders, none of which changed since; then the listing to record is None.
    """
    recorded = read_listing(settings.out, settings)
    reuse = {source.kind for source in recorded["sources"]} if recorded else set()
    sources: list[Source] = []
    units: list[Unit] = []
    for kind in source_kinds():
        if kind.KIND in reuse:
            continue
        for source, found in kind.scan(settings, limits, len(sources)):
            sources.append(source)
            units.extend(found)
    if recorded:
        more, found = recorded_scan(recorded, len(sources))
        return sources + more, units + found, None
    return sources, units, listing_record(settings, sources, units)


def fingerprint(settings: ConvertSettings, units: list[Unit]) -> str:
    """sha256 of the output settings, the shard format version and every unit's name, size and rows.

    Settings added after the first release (`ADDED_SETTINGS`) count only when they differ
    from their default, so a folder converted before they existed keeps its fingerprint.
    """
    h = hashlib.sha256()
    record = settings.record()
    outputs = {**{k: record[k] for k in OUTPUT_SETTINGS if record[k] != ADDED_SETTINGS.get(k, ...)},
               "format_version": FORMAT_VERSION}
    h.update(json.dumps(outputs, sort_keys=True).encode())
    for u in units:
        h.update(f"\n{u.source}\t{u.name}\t{u.row_group}\t{u.nbytes}\t{bytes(u.labels).hex()}\t".encode())
        h.update("\t".join(u.generators).encode())
    return h.hexdigest()


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def split_sets(num_samples: int, val_frac: float, seed: int) -> tuple[tuple[str, ...], np.ndarray]:
    """Set names and, per sample (in scan order), the index of its set.

    `val` gets floor(n x val_frac) samples, as the original counts them; when that is 0
    (n < 100 at the default 0.01) there is no validation set, as in the original, and
    the one set is called `all`.
    """
    num_val = math.floor(num_samples * val_frac)
    if num_val == 0:
        return UNSPLIT_SETS, np.zeros(num_samples, dtype=np.int8)
    which = np.zeros(num_samples, dtype=np.int8)
    which[_rng(seed, SPLIT_STREAM).permutation(num_samples)[:num_val]] = 1
    return SPLIT_SETS, which


def pack_partitions(units: list[Unit], max_bytes: int, seed: int) -> list[list[int]]:
    """Unit positions per partition: seeded shuffle, then greedy packing by bytes."""
    partitions: list[list[int]] = []
    size = 0
    for i in _rng(seed, UNIT_STREAM).permutation(len(units)).tolist():
        if not partitions or (size + units[i].nbytes > max_bytes and partitions[-1]):
            partitions.append([])
            size = 0
        partitions[-1].append(i)
        size += units[i].nbytes
    return partitions


def make_plan(settings: ConvertSettings, limits: Limits, sources: list[Source], scanned: list[Unit],
              listing: dict[str, Any] | None = None, failing: set[tuple[int, int]] | None = None) -> ConversionPlan:
    """Balance, split, partition and number the scanned units. `failing`: the rows of
    `scanned` the checks will reject, which balancing does not count (`--balance-checked`)."""
    units, balance = balance_reals(scanned, sources, settings.balance, settings.seed, failing)
    starts = np.cumsum([0] + [u.num_rows for u in units])
    num_samples = int(starts[-1])
    if num_samples == 0:
        if scanned:
            raise UserError("no sample is left after balancing (no fakes to match the local reals); "
                            "add fake images or pass --no-balance")
        raise UserError("the sources hold no samples (the parquet files have no rows); check --hf-repo/--hf-split")
    set_names, which = split_sets(num_samples, settings.val_frac, settings.seed)
    next_number = [0] * len(set_names)
    tasks = []
    for p, members in enumerate(pack_partitions(units, limits.partition_bytes, settings.seed)):
        # (position of the unit in the partition, row) of each sample, per set, in unit order
        by_set: list[list[tuple[int, int]]] = [[] for _ in set_names]
        for pos, i in enumerate(members):
            for row in range(units[i].num_rows):
                by_set[which[starts[i] + row]].append((pos, row))
        refs: list[list[SampleRef]] = [[] for _ in members]
        for s, samples in enumerate(by_set):
            order = _rng(settings.seed, ORDER_STREAM, p, s).permutation(len(samples))
            for rank, k in enumerate(order.tolist()):
                pos, row = samples[k]
                refs[pos].append(SampleRef(row, set_names[s], next_number[s] + rank))
            next_number[s] += len(samples)
        tasks.append(PartitionTask(
            index=p,
            units=tuple(units[i] for i in members),
            samples=tuple(tuple(sorted(r)) for r in refs),
        ))
    return ConversionPlan(
        sources=sources,
        generators=sorted({g for u in units for g in u.generators}),
        set_names=set_names,
        set_sizes={name: next_number[s] for s, name in enumerate(set_names)},
        partitions=tasks,
        balance=balance,
        scanned_samples=sum(u.num_rows for u in scanned),
        fingerprint=fingerprint(settings, scanned),
        listing=listing,
    )
