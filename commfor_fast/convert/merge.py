"""Merging the partitions' done-markers into `manifest.json`, and the warnings and summary lines.

Markers are merged in partition order, so the manifest depends only on the plan and
the data, never on which node or process finished first. The manifest is written
last (atomically): its presence means the whole conversion is complete.
"""

from __future__ import annotations

from typing import Any

from commfor_fast import __version__
from commfor_fast.convert.plan import Plan
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.shards import Manifest, SetInfo, ShardInfo

# A format that is nearly all one label lets a detector learn the file format instead
# of the image (a known shortcut in this field); below this many images it is noise.
FORMAT_BIAS_SHARE = 0.95
FORMAT_BIAS_MIN_IMAGES = 20
LABEL_NAMES = {"0": "real", "1": "fake"}


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


def merge(plan: Plan, markers: list[dict[str, Any]], settings: ConvertSettings, command: str) -> Manifest:
    """The manifest of a complete conversion from the plan and every partition's marker."""
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
        info.counts, info.formats, info.resolutions = (_sorted(info.counts), _sorted(info.formats),
                                                       _sorted(info.resolutions))
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
    )


def balance_lines(manifest: Manifest) -> list[str]:
    """What balancing did, when it applied: a line if it dropped local reals, and a note for unsplit sets.

    Balancing is a training rule (SPEC section 1), but it applies whenever HF data
    and folders are combined; with `--val-frac 0` the output is often an evaluation
    set, where dropping reals is rarely wanted, so the user is told how to keep them.
    """
    b = manifest.balance
    if not b or not b["applied"]:
        return []
    kept, available = b["local_reals_kept"], b["local_reals_available"]
    lines = []
    if kept < available:
        lines.append(f"balance: kept {kept} of {available} local real images (limit {b['limit']} = fakes "
                     f"{b['fakes']} - HF reals {b['hf_reals']}); see manifest.json balance")
    if manifest.settings["val_frac"] == 0:
        lines.append(f"note: with --val-frac 0 (e.g. an evaluation set) local reals are still balanced as for "
                     f"training (kept {kept} of {available}); pass --no-balance to keep them all")
    return lines


def summary_lines(manifest: Manifest) -> list[str]:
    """The final lines printed after a conversion."""
    lines = [f"{name}: {info.num_samples} samples in {len(info.shards)} shards" for name, info in manifest.sets.items()]
    lines += balance_lines(manifest)
    if manifest.rejects:
        lines.append(f"rejected {len(manifest.rejects)} unreadable image(s) (see manifest.json rejects)")
    if manifest.normalised:
        lines.append(f"stored {sum(manifest.normalised.values())} image(s) as lossless PNG "
                     f"(see manifest.json normalised)")
    return lines
