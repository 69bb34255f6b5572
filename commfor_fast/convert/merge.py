"""Merging the partitions' done-markers into `manifest.json`; the warnings, summary and dry-run lines.

Markers are merged in partition order, so the manifest's data depends only on the
plan and the data, never on which node or process finished first; its `nodes` say
which node (rank, host, workers, command line) converted which partitions. The manifest is written
last (atomically): its presence means the whole conversion is complete.
"""

from __future__ import annotations

import json
from typing import Any

from commfor_fast import __version__
from commfor_fast.console_summary import count_table
from commfor_fast.convert.plan import ConversionPlan
from commfor_fast.convert.settings import ConvertSettings, Limits
from commfor_fast.convert.tarshard import member_bytes
from commfor_fast.shards import RAW_HEADER_BYTES, Manifest, SetInfo, ShardInfo
from commfor_fast.sources import get_source_kind

# A format that is nearly all one label lets a detector learn the file format instead
# of the image (a known shortcut in this field); below this many images it is noise.
FORMAT_BIAS_SHARE = 0.95
FORMAT_BIAS_MIN_IMAGES = 20
LABEL_NAMES = {"0": "real", "1": "fake"}
METADATA_BYTES = 400  # a sample's `.json` member, about (for --dry-run's size estimate)


def _add(total: dict[str, dict[str, int]], part: dict[str, dict[str, int]]) -> None:
    for key, by_label in part.items():
        into = total.setdefault(key, {})
        for label, n in by_label.items():
            into[label] = into.get(label, 0) + n


def _sorted(table: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {k: dict(sorted(table[k].items())) for k in sorted(table)}


def format_bias_warnings(sets: dict[str, SetInfo]) -> list[str]:
    """A warning for each format that is >= 95% one label while the other label exists."""
    formats: dict[str, dict[str, int]] = {}
    for info in sets.values():
        _add(formats, info.formats)
    labels_present = {label for by_label in formats.values() for label, n in by_label.items() if n}
    if len(labels_present) < 2:
        return []
    warnings = []
    for fmt, by_label in sorted(formats.items()):
        total = sum(by_label.values())
        label, count = max(by_label.items(), key=lambda kv: (kv[1], kv[0]))
        if total >= FORMAT_BIAS_MIN_IMAGES and count / total >= FORMAT_BIAS_SHARE:
            warnings.append(
                f"format bias: {count / total:.0%} of the {total} {fmt} images are {LABEL_NAMES.get(label, label)} "
                f"(label {label}); a detector can learn the file format instead of the image. Mix formats "
                f"within each label, and check accuracy per format"
            )
    return warnings


def node_records(markers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every node that converted partitions, in order of node rank: its host, workers and
    command line as its markers recorded them, and which partitions it converted (one
    record per distinct node, so a rerun on another machine shows as well)."""
    nodes: dict[str, dict[str, Any]] = {}
    for marker in markers:
        node = marker.get("node") or {}
        record = nodes.setdefault(json.dumps(node, sort_keys=True), {**node, "partitions": []})
        record["partitions"].append(marker["partition"])
    return sorted(nodes.values(), key=lambda n: (n.get("node_rank", -1), n["partitions"]))


def merge(plan: ConversionPlan, markers: list[dict[str, Any]], settings: ConvertSettings, command: str,
          packed: dict[str, list[ShardInfo]] | None = None) -> Manifest:
    """The manifest of a complete conversion from the plan and every partition's marker;
    the shards of a set in `packed` are those (`pack.py`), not the partitions' pieces."""
    sets: dict[str, SetInfo] = {}
    for set_name in plan.set_names:
        info = SetInfo(num_samples=0, shards=[])
        for marker in markers:
            part = marker["sets"][set_name]
            info.num_samples += part["num_samples"]
            info.shards.extend(ShardInfo(**shard) for shard in part["shards"])
            _add(info.counts, part["counts"])
            _add(info.formats, part["formats"])
            _add(info.resolutions, part["resolutions"])
            _add(info.stored, part["stored"])
        info.shards = (packed or {}).get(set_name, info.shards)
        info.counts, info.formats, info.resolutions, info.stored = (
            _sorted(info.counts), _sorted(info.formats), _sorted(info.resolutions), _sorted(info.stored))
        sets[set_name] = info
    normalised: dict[str, int] = {}
    for marker in markers:
        for reason, n in marker["normalised"].items():
            normalised[reason] = normalised.get(reason, 0) + n
    warnings = plan.warnings() + format_bias_warnings(sets)
    if not any(info.num_samples for info in sets.values()):
        warnings.append("no image passed the checks: every set is empty (see manifest.json rejects)")
    return Manifest(
        package_version=__version__,
        command=command,
        settings=settings.record(),
        seed=settings.seed,
        preresize=settings.preresize,
        generators=plan.generators,
        sets=sets,
        sources=[source.summary for source in plan.sources],
        balance=plan.balance,
        rejects=[reject for marker in markers for reject in marker["rejects"]],
        normalised=dict(sorted(normalised.items())),
        warnings=warnings,
        nodes=node_records(markers),
    )


def balance_lines(b: dict[str, Any] | None, val_frac: float) -> list[str]:
    """What balancing did (`b`, the plan's balance report), when it applied: a line if it
    dropped local reals, and a note for unsplit sets.

    Balancing is a training rule (SPEC section 1), but it applies whenever HF data
    and folders are combined; with `--val-frac 0` the output is often an evaluation
    set, where dropping reals is rarely wanted, so the user is told how to keep them.
    """
    if not b or not b["applied"]:
        return []
    kept, available = b["local_reals_kept"], b["local_reals_available"]
    lines = []
    if kept < available:
        lines.append(f"balance: kept {kept} of {available} local real images (limit {b['limit']} = fakes "
                     f"{b['fakes']} - HF reals {b['hf_reals']}); see manifest.json balance")
    if b.get("checked"):
        lines.append(f"balance: counted only images that pass the checks (--balance-checked): "
                     f"{b['unwritten_fakes']} fake(s) and {b['unwritten_hf_reals']} HF real(s) will be rejected")
    if val_frac == 0:
        lines.append(f"note: with --val-frac 0 (e.g. an evaluation set) local reals are still balanced as for "
                     f"training (kept {kept} of {available}); pass --no-balance to keep them all")
    return lines


def summary_lines(manifest: Manifest) -> list[str]:
    """The final lines printed after a conversion."""
    lines = [f"{name}: {info.num_samples} samples in {len(info.shards)} shards" for name, info in manifest.sets.items()]
    lines += balance_lines(manifest.balance, manifest.settings["val_frac"])
    if manifest.rejects:
        lines.append(f"rejected {len(manifest.rejects)} unreadable image(s) (see manifest.json rejects)")
    if manifest.normalised:
        lines.append(f"stored {sum(manifest.normalised.values())} image(s) as lossless PNG "
                     f"(see manifest.json normalised)")
    return lines


def human_bytes(nbytes: float) -> str:
    """`nbytes` in kB, MB or GB (decimal units, as --shard-size reads them)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes:.0f} B"


def label_table(title: str, columns: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    """A table of "real / fake" counts: one row per key (e.g. generator), one column per table (e.g. set)."""
    keys = sorted({key for table in columns.values() for key in table})
    cells = [[key] + [f"{table.get(key, {}).get('0', 0)} / {table.get(key, {}).get('1', 0)}"
                      for table in columns.values()] for key in keys]
    header = [f"{title} ({LABEL_NAMES['0']} / {LABEL_NAMES['1']})", *columns]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            .rstrip() for row in [header, *cells]]


def _sample_tar_bytes(image_bytes: int) -> int:
    """Bytes of one sample in a tar: its image, `.cls`, `.ids` (20 bytes) and `.json` members."""
    return sum(member_bytes(n) for n in (image_bytes, 1, 20, METADATA_BYTES))


def dry_run_lines(plan: ConversionPlan, settings: ConvertSettings, limits: Limits) -> list[str]:
    """What `convert --dry-run` prints: sources, balance, split, partitions, expected size."""
    counts: dict[str, dict[str, dict[str, int]]] = {name: {} for name in plan.set_names}
    input_bytes = tar_bytes = 0.0
    for task in plan.partitions:
        for unit, refs in zip(task.units, task.samples):
            per_row = unit.nbytes / unit.num_rows
            for ref in refs:
                label = unit.labels[ref.row]
                by_label = counts[ref.set_name].setdefault(unit.generators[ref.row], {})
                by_label[str(label)] = by_label.get(str(label), 0) + 1
                input_bytes += per_row
                tar_bytes += _sample_tar_bytes(round(per_row))
    samples = sum(plan.set_sizes.values())
    lines = [f"dry run: nothing is written to {settings.out}", "sources:"]
    lines += [line for source in plan.sources for line in get_source_kind(source.kind).describe(source)]
    lines += [f"warning: {w}" for source in plan.sources for w in source.warnings]
    b = plan.balance
    if b and b["applied"] and b["local_reals_kept"] == b["local_reals_available"]:
        lines.append(f"balance: keeps all {b['local_reals_kept']} local real images (limit {b['limit']} = fakes "
                     f"{b['fakes']} - HF reals {b['hf_reals']})")
    lines += balance_lines(b, settings.val_frac)
    sizes = ", ".join(f"{name} {n}" for name, n in plan.set_sizes.items())
    lines += [f"split: {sizes} (--val-frac {settings.val_frac}, --seed {settings.seed}); {len(plan.generators)} "
              f"generator(s)", "", *count_table(label_table("per generator", counts), counts, noun="generators",
                                                where=f"inspect {settings.out} --all after converting"), ""]
    lines.append(f"partitions: {len(plan.partitions)} of up to {settings.partition_size} of input "
                 f"({human_bytes(input_bytes)} in all), {limits.workers} worker(s)")
    if settings.preresize:
        side = settings.preresize
        raw = samples * _sample_tar_bytes(RAW_HEADER_BYTES + side * side * 3)
        lines.append(f"expected output: at least {human_bytes(raw)} ({side} x {side} x 3 bytes per square image, "
                     f"more for others), {max(1, round(raw / limits.shard_bytes))} shard(s) or more")
    else:
        lines.append(f"expected output: about {human_bytes(tar_bytes)} (the images verbatim, tar headers, "
                     f"metadata), about {max(1, round(tar_bytes / limits.shard_bytes))} shard(s) of up to "
                     f"{settings.shard_size}")
    return lines
