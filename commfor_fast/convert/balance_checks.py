"""`--balance-checked`: which images the checks will reject, found before balancing.

Balancing limits local reals to (all fakes) - (HF reals). The original counts every
row, as `convert` does by default; but the converter rejects images that cannot be
decoded, so a fake that will not be written would still buy a local real its place,
and the written reals would outnumber the written fakes. With `--balance-checked`
every fake and every HF real is checked first, exactly as the worker will check it
(`worker.store_image`), and balancing counts only those that pass. It costs one more
check of those images before planning (on `--workers` processes); the result is
recorded in OUT/balance-checks.json with the scan's fingerprint, so reruns and other
nodes with the same sources read it instead. Local reals are not checked: one that
fails takes a place in its dataset's quota and is then rejected, so the written reals
can only be fewer than the limit, never more.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from commfor_fast.convert.balance import balancing_applies
from commfor_fast.convert.parts import CHECKS_NAME
from commfor_fast.convert.plan import fingerprint
from commfor_fast.convert.settings import ConvertSettings, Limits
from commfor_fast.convert.worker import WorkerConfig, read_unit, store_image
from commfor_fast.imageio import BadImage
from commfor_fast.progress import Progress
from commfor_fast.sources import get_source_kind
from commfor_fast.sources.units import Source, Unit


_CONFIG: dict[str, WorkerConfig] = {}  # the check settings of this (pool) process


def counted(unit: Unit, balanced: bool) -> bool:
    """Whether balancing counts rows of `unit`: every HF row, and the fakes of local folders."""
    return not balanced or any(unit.labels)


def _init(config: WorkerConfig) -> None:
    _CONFIG["config"] = config


def _failing_rows(unit: Unit) -> list[int]:
    """The rows of `unit` that the worker would reject (unreadable, or refused by the checks)."""
    config = _CONFIG["config"]
    failing = []
    for row, (data, _) in enumerate(read_unit(unit, config.sources)):
        try:
            if isinstance(data, str):
                raise BadImage(data)
            store_image(data, config)
        except BadImage:
            failing.append(row)
    return failing


def _check_config(settings: ConvertSettings, sources: list[Source]) -> WorkerConfig:
    """A worker config holding what the checks read (where nothing is written)."""
    return WorkerConfig(out=settings.out, fingerprint="", set_names=(), shard_bytes=0, preresize=settings.preresize,
                        max_pixels=settings.max_pixels, check=settings.check, dali_check=settings.dali_check,
                        generator_ids={}, sources=tuple((s.kind, s.given, s.root) for s in sources))


def find_failing(settings: ConvertSettings, limits: Limits, sources: list[Source],
                 units: list[Unit]) -> tuple[set[tuple[int, int]] | None, dict[str, Any] | None]:
    """(unit position, row) of every counted row the checks reject, and the record for
    `--out` (None when it was read from there: made for the same scan, by its
    fingerprint). Both None when balancing does not apply to these sources."""
    if not balancing_applies(sources, settings.balance):
        return None, None
    key = fingerprint(settings, units)
    recorded = _recorded(settings.out, key)
    if recorded is not None:
        return recorded, None
    balanced = [get_source_kind(s.kind).BALANCED for s in sources]
    todo = [i for i, u in enumerate(units) if counted(u, balanced[u.source])]
    config = _check_config(settings, sources)
    with Progress(sum(units[i].num_rows for i in todo), "balance: check", enabled=not settings.quiet) as bar:
        if limits.workers == 1 or len(todo) < 2:
            _init(config)
            found = map(_failing_rows, (units[i] for i in todo))
            rows = _counting(found, todo, units, bar)
        else:
            with ProcessPoolExecutor(limits.workers, mp_context=mp.get_context("spawn"), initializer=_init,
                                     initargs=(config,)) as pool:
                rows = _counting(pool.map(_failing_rows, [units[i] for i in todo], chunksize=16), todo, units, bar)
    failing = {(i, row) for i, found_rows in zip(todo, rows) for row in found_rows}
    return failing, {"key": key, "failing": sorted(failing)}


def _counting(found: Iterator[list[int]], todo: list[int], units: list[Unit], bar: Progress) -> list[list[int]]:
    """The failing rows of each unit checked, in order, counted on `bar` as they come."""
    rows = []
    for i, failing in zip(todo, found):
        rows.append(failing)
        bar.update(units[i].num_rows, units[i].nbytes)
    return rows


def _recorded(out: Path, key: str) -> set[tuple[int, int]] | None:
    try:
        record: Any = json.loads((out / CHECKS_NAME).read_text())
        if record.get("key") != key:
            return None
        return {(int(i), int(row)) for i, row in record["failing"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
