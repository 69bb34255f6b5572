"""Converting one partition: read its units, check every image, write its shards, then its marker.

A partition is converted in memory (about `--partition-size` bytes per worker), so
its samples can be written in their planned, shuffled order and cut into shards by
their actual stored size. Each image is checked first (`check.py`); undecodable,
empty or truncated images and decompression bombs become rejects with a reason and
never reach a shard or stop the run. Images PIL reads differently from DALI (GIF,
16-bit, CMYK, multi-frame...) are stored as a lossless PNG of the RGB image and their
metadata says so; all others are stored byte for byte. With `--preresize` the stored
image is its RGB pixels resized to the given shorter side, as a binary PPM. With
`--verify-hashes` the marker also records the sha256 of the partition's source bytes,
so a rerun with the flag notices a source edited in place (same name and size).

Every sample is written as four members in this order: image, `cls`, `ids`, `json`
(see `commfor_fast.shards`). The done-marker is written after all shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any, NamedTuple

from commfor_fast.convert.check import check_data, check_structure
from commfor_fast.convert.parts import shard_path, write_marker
from commfor_fast.convert.plan import PartitionTask, SampleRef
from commfor_fast.convert.tarshard import write_shards
from commfor_fast.convert.watchdog import exit_with_parent
from commfor_fast.portable import portable_source_meta
from commfor_fast.imageio import (BadImage, ImageInfo, check_image, check_pixels, encode_png, encode_raw,
                                  resize_shorter, resized_shape)
from commfor_fast.shards import (IDS_EXT, IMAGE_EXT, LABEL_EXT, META_EXT, RAW_FORMAT, SampleIds, ShardInfo, pack_ids,
                                 sample_key)
from commfor_fast.sources import SourceKind, get_source_kind
from commfor_fast.sources.units import Unit

Report = Callable[[int, int], None]  # (images done, input bytes done)


@dataclass(frozen=True)
class WorkerConfig:
    """What every partition's conversion needs besides the partition itself."""

    out: Path
    fingerprint: str
    set_names: tuple[str, ...]
    shard_bytes: int
    preresize: int | None
    max_pixels: int
    check: str  # "full" or "fast"
    dali_check: bool
    generator_ids: dict[str, int]
    sources: tuple[tuple[str, str, str], ...]  # (kind, as given, root) per source index
    hash_inputs: bool = False  # record the sha256 of the partition's source bytes (--verify-hashes)
    node: dict[str, Any] = field(default_factory=dict)  # which node converts it, for the manifest's `nodes`


class Stored(NamedTuple):
    """An image as it goes into the shard."""

    info: ImageInfo  # what checking found (original format and size)
    form: str  # how it is stored: the verbatim format's extension ("jpg", "png", ...) or RAW_FORMAT
    data: bytes
    height: int  # stored size
    width: int


_DALI: dict[str, Any] = {}  # this process's DALI decode check, made on first use


def _dali_refuses(data: bytes) -> str | None:
    if "check" not in _DALI:
        from commfor_fast.pipelines.decode_check import DaliDecodeCheck

        _DALI["check"] = DaliDecodeCheck()
    return _DALI["check"].check(data)


def store_image(data: bytes, config: WorkerConfig) -> Stored:
    """Check `data` and choose its stored form; raises `BadImage` for a reject."""
    info = None
    if config.preresize is None:  # stored verbatim if it can be: a check without the pixels will do
        info = (check_structure if config.check == "fast" else check_data)(data, config.max_pixels)
    if info is None:
        info, rgb = check_image(data, config.max_pixels)
        if config.preresize is not None:  # the stored size is limited too: 4000 x 2 px would become 512000 x 256
            check_pixels(*resized_shape(rgb.height, rgb.width, config.preresize)[::-1], config.max_pixels)
            small = resize_shorter(rgb, config.preresize)
            return Stored(info, RAW_FORMAT, encode_raw(small), small.height, small.width)
        if info.normalise_reason:
            return Stored(info, "png", encode_png(rgb), rgb.height, rgb.width)
    if config.dali_check and (reason := _dali_refuses(data)):
        raise BadImage(reason)
    return Stored(info, info.stored_form, data, info.height, info.width)


def source_kind(unit: Unit, sources: tuple[tuple[str, str, str], ...]) -> SourceKind:
    """The module of the kind of source `unit` comes from (`commfor_fast.sources`)."""
    return get_source_kind(sources[unit.source][0])


def read_unit(unit: Unit, sources: tuple[tuple[str, str, str], ...]) -> Iterator[tuple[bytes | str, dict[str, Any]]]:
    """(image bytes, or the reason they cannot be read; source metadata) per row of `unit`,
    as its source kind reads them."""
    _, given, root = sources[unit.source]
    return source_kind(unit, sources).read(unit, given, root)


def reject_item(unit: Unit, row: int, sources: tuple[tuple[str, str, str], ...]) -> str:
    """How row `row` of `unit` is named among the rejects, as its source kind names it."""
    return source_kind(unit, sources).item(unit, row, sources[unit.source][2])


class _Sample(NamedTuple):
    number: int
    members: list[tuple[str, bytes]]


def _bump(table: dict[str, dict[str, int]], key: str, label: int) -> None:
    counts = table.setdefault(key, {})
    counts[str(label)] = counts.get(str(label), 0) + 1


def _empty_set() -> dict[str, Any]:
    return {"num_samples": 0, "shards": [], "counts": {}, "formats": {}, "resolutions": {}, "stored": {}}


def _sample(unit: Unit, row: int, ref: SampleRef, stored: Stored, source_meta: dict[str, Any],
            config: WorkerConfig) -> _Sample:
    """The four tar members of one sample: image, cls, ids, json."""
    info, label, generator = stored.info, unit.labels[row], unit.generators[row]
    meta = {"generator": generator, "label": label, "set": ref.set_name, **portable_source_meta(source_meta),
            "decoded": {"format": info.format, "mode": info.mode, "width": info.width, "height": info.height}}
    if stored.form == RAW_FORMAT:
        meta["stored"] = {"height": stored.height, "width": stored.width, "format": "ppm uint8 RGB"}
    elif info.normalise_reason:
        meta["normalised"] = info.normalise_reason
    ids = SampleIds(label, config.generator_ids[generator], ref.number, stored.height, stored.width)
    members = [(IMAGE_EXT, stored.data), (LABEL_EXT, str(label).encode()), (IDS_EXT, pack_ids(ids)),
               (META_EXT, json.dumps(meta, ensure_ascii=False).encode())]
    return _Sample(ref.number, members)


def convert_partition(task: PartitionTask, config: WorkerConfig, report: Report) -> dict[str, Any]:
    """Convert one partition and write its marker; returns the marker. The caller has
    deleted what an earlier try left (`parts.clear_partitions`)."""
    samples: dict[str, list[_Sample]] = {name: [] for name in config.set_names}
    sets = {name: _empty_set() for name in config.set_names}
    rejects: list[dict[str, str]] = []
    normalised: dict[str, int] = {}
    inputs = hashlib.sha256() if config.hash_inputs else None
    for unit, refs in zip(task.units, task.samples):
        for row, (data, source_meta) in enumerate(read_unit(unit, config.sources)):
            if inputs is not None:
                _digest(inputs, data)
            try:
                if isinstance(data, str):
                    raise BadImage(data)
                stored = store_image(data, config)
            except BadImage as exc:
                reject = {"item": reject_item(unit, row, config.sources), "reason": str(exc)}
                if source_meta.get("image_name"):  # HF rows: the dataset's own name for the image too
                    reject["image_name"] = str(source_meta["image_name"])
                rejects.append(reject)
                continue
            ref, label, info = refs[row], unit.labels[row], stored.info
            samples[ref.set_name].append(_sample(unit, row, ref, stored, source_meta, config))
            if info.normalise_reason and stored.form != RAW_FORMAT:
                normalised[info.normalise_reason] = normalised.get(info.normalise_reason, 0) + 1
            stats = sets[ref.set_name]
            stats["num_samples"] += 1
            _bump(stats["counts"], unit.generators[row], label)
            _bump(stats["formats"], info.format, label)
            _bump(stats["resolutions"], f"{info.width}x{info.height}", label)
            _bump(stats["stored"], stored.form, label)
        report(unit.num_rows, unit.nbytes)
    for set_name, items in samples.items():
        items.sort()  # planned order: sample numbers were assigned in the permuted order
        sets[set_name]["shards"] = [asdict(info) for info in _write_shards(items, set_name, task.index, config)]
    marker = {"partition": task.index, "fingerprint": config.fingerprint, "sets": sets, "rejects": rejects,
              "normalised": normalised, "inputs_sha256": inputs.hexdigest() if inputs is not None else None,
              "node": config.node}
    write_marker(config.out, marker)
    return marker


def _digest(h: Any, data: bytes | str) -> None:
    """Add one row's bytes (or the reason it could not be read) to a partition's input hash."""
    raw = data if isinstance(data, bytes) else data.encode(errors="surrogateescape")
    h.update(len(raw).to_bytes(8, "little"))
    h.update(raw)


def inputs_sha256(task: PartitionTask, sources: tuple[tuple[str, str, str], ...]) -> str:
    """The sha256 of a partition's source bytes, as `convert_partition` records it with
    `hash_inputs`: reads every source byte again, to find sources edited in place."""
    h = hashlib.sha256()
    for unit in task.units:
        for data, _ in read_unit(unit, sources):
            _digest(h, data)
    return h.hexdigest()


def _write_shards(items: list[_Sample], set_name: str, partition: int, config: WorkerConfig) -> list[ShardInfo]:
    """Write samples in order, starting a new tar before `--shard-size` would be exceeded."""
    return write_shards(((sample_key(s.number), s.members) for s in items), config.shard_bytes,
                        lambda n: shard_path(config.out, set_name, partition, n), config.out)


# ------------------------------------------------------------------ process pool plumbing

_POOL_STATE: dict[str, Any] = {}


def init_pool_worker(config: WorkerConfig, progress: Queue, parent: int) -> None:
    """Pool initializer: keep the shared config, the progress queue and the parent's pid.

    Ctrl-C reaches the whole process group; workers ignore it and the parent stops
    them (`run._run_partitions`), so none is interrupted inside a queue operation.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _POOL_STATE.update(config=config, progress=progress, parent=parent)
    exit_with_parent(parent)  # idle or busy, a worker ends when `convert` is killed


def _report(n: int, nbytes: int) -> None:
    # A worker whose parent was killed stops at the next unit instead of converting
    # on unseen (a rerun redoes its partition anyway).
    if os.getppid() != _POOL_STATE["parent"]:
        os._exit(1)
    _POOL_STATE["progress"].put((n, nbytes))


def run_in_pool(task: PartitionTask) -> int:
    """Pool task: convert one partition, reporting progress per unit; returns its index."""
    convert_partition(task, _POOL_STATE["config"], _report)
    return task.index
