"""The scan of the local folders, recorded once in OUT/listing.json.gz and read by reruns and other nodes.

Walking a folder tree costs a `stat` per file (888 s for a million files on a cold
cache), and every node and every rerun of `convert` needs the same units. So the
first run that writes `--out` records what the scan of each source kind that can
vouch for its result found (the folders: sources, units, and the ctime of every
folder the walk listed); a later run with the same source settings stats only those
folders and, if none changed, takes the recorded units instead of walking again.

A folder's ctime changes whenever a file or folder is added to it, removed from it
or renamed in it, and when its permissions change, so any of these makes the rerun
walk everything again (and then a changed plan is refused as before, or converted
with `--overwrite`). A file rewritten in place, under the same name, does not change
its folder: `--verify-hashes` finds that (the partition's recorded source hash
differs and the partition is converted again). A folder changed in the very
moment it was listed is never trusted (`Source.stamps` holds -1 for it). Parquet
sources (`--hf-repo`) are scanned every time: they are few files, read by footer.

The listing travels with the shards but names no local folder (`portable.py`): the
folders are recorded by a digest of their absolute paths (the same folders on this
machine), every path in it relative to its `--folder` root, and a run takes the roots
from its own `--folder` values. On another machine, or for other folders, the digest
differs and the folders are walked.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.errors import UserError
from commfor_fast.fileio import atomic_write
from commfor_fast.portable import portable_source_meta
from commfor_fast.sources.units import Source, Unit

LISTING_NAME = "listing.json.gz"
LISTING_VERSION = 2  # 2: no absolute paths (version 1 listings are not read: the folders are walked once more)


def _key(settings: ConvertSettings) -> dict[str, Any]:
    """What decides what the folder scan finds: the folders (by a digest of their absolute
    paths, which the listing does not name), `--labels` and `--discovery`."""
    record = settings.record()
    folders = hashlib.sha256(json.dumps(record["folders"]).encode()).hexdigest()
    return {"version": LISTING_VERSION, "folders_sha256": folders, "labels": record["labels"],
            "discovery": record["discovery"]}


def recordable(source: Source) -> bool:
    """Whether a rerun can tell that the scan of `source` still holds: its folders were stamped."""
    return bool(source.stamps)


def unchanged(source: Source) -> bool:
    """Whether every folder the scan of `source` listed still has its recorded ctime."""
    for folder, ctime in source.stamps.items():
        try:
            if ctime < 0 or os.stat(folder).st_ctime_ns != ctime:
                return False
        except OSError:
            return False
    return True


def _unit_row(unit: Unit, first: int, root: str) -> list[Any]:
    path = None if unit.path == os.path.join(root, unit.name) else os.path.relpath(unit.path, root)  # most: root/name
    return [unit.source - first, path, unit.name, unit.row_group, unit.first_row, unit.nbytes, list(unit.labels),
            list(unit.generators)]


def listing_record(settings: ConvertSettings, sources: list[Source], units: list[Unit]) -> dict[str, Any] | None:
    """What `listing.json.gz` is written from: the scan settings, the recordable sources
    (a tail of the scan order: the folders) and all units (`write_listing` takes
    theirs); None when there is none."""
    first = next((i for i, s in enumerate(sources) if recordable(s)), None)
    if first is None or not all(recordable(s) for s in sources[first:]):
        return None
    return {"key": _key(settings), "first": first, "sources": sources, "units": units}


def write_listing(out: Path, record: dict[str, Any]) -> None:
    """Write the listing atomically (several nodes may write the same one at once), one
    unit at a time: a million units never exist twice in memory."""
    first, sources = record["first"], record["sources"]
    head = {**record["key"], "sources": [
        {"kind": s.kind, "summary": portable_source_meta(s.summary), "warnings": s.warnings,
         "stamps": {os.path.relpath(folder, s.root): ctime for folder, ctime in s.stamps.items()}}
        for s in sources[first:]]}
    with atomic_write(out / LISTING_NAME, "wb") as raw, gzip.open(raw, "wt", compresslevel=1) as f:
        f.write(json.dumps(head, separators=(",", ":"))[:-1] + ',"units":[')
        rows = (_unit_row(u, first, sources[u.source].root) for u in record["units"] if u.source >= first)
        for i, row in enumerate(rows):
            f.write(("," if i else "") + json.dumps(row, separators=(",", ":")))
        f.write("]}")


def read_listing(out: Path, settings: ConvertSettings) -> dict[str, Any] | None:
    """The listing recorded in `out` if it was made with the same scan settings and every
    folder it stamped is unchanged; None otherwise (then the caller walks the folders).
    Its sources are the `--folder` roots of `settings`, in order, as their scan names them."""
    try:
        record = json.loads(gzip.decompress((out / LISTING_NAME).read_bytes()))
        key = _key(settings)
        if (not isinstance(record, dict) or {k: record.get(k) for k in key} != key
                or len(record["sources"]) != len(settings.folders)):
            return None
        sources = []
        for folder, s in zip(settings.folders, record["sources"]):
            root = str(Path(folder).absolute())  # as `folders.scan_folder` names it
            sources.append(Source(kind=s["kind"], given=str(folder), root=root,
                                  summary={**s["summary"], "root": root}, warnings=s["warnings"],
                                  stamps={os.path.join(root, rel): ctime for rel, ctime in s["stamps"].items()}))
        if not sources or not all(unchanged(source) for source in sources):
            return None
        return {"sources": sources, "units": record["units"]}
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError, AttributeError):  # other shape
        return None


def recorded_scan(listing: dict[str, Any], first: int) -> tuple[list[Source], list[Unit]]:
    """The sources and units of a listing `read_listing` accepted, its sources numbered from `first` on."""
    sources: list[Source] = listing["sources"]
    try:
        units = [Unit(source=first + s, path=os.path.join(sources[s].root, name if path is None else path),
                      name=name, row_group=row_group, first_row=first_row, nbytes=nbytes, labels=tuple(labels),
                      generators=tuple(generators))
                 for s, path, name, row_group, first_row, nbytes, labels, generators in listing["units"]]
    except (ValueError, TypeError, IndexError) as exc:
        raise UserError(f"{LISTING_NAME} in --out is damaged ({exc}); delete it and rerun (the folders are "
                        "walked again)") from None
    return sources, units
