"""Balancing real data (SPEC section 1): local reals may not outnumber the fakes.

When Hugging Face data and local folders are combined, local real images are limited
to `limit = (all fakes) - (HF reals)`. As in the original, only a negative limit (HF
reals already outnumber every fake) skips the limiting step: the original sets such a
limit to 0 but then keeps every local real, and so does this module (with a warning).
A limit of exactly 0 is applied like any other, so it drops every local real (the
original passes 0 on to its limiting step, which samples nothing). The limit is spread
"water-filling" style over the local real datasets (by dataset name), as the original
does: datasets are taken from the smallest while keeping them whole and giving every
remaining dataset as many images still stays under the limit; at the first dataset
where it does not, one quota `ceil((limit - kept so far) / datasets left)` applies to
it and every larger dataset (sampled, seeded). Small datasets survive whole, the big
ones share the rest equally; the ceiling can overshoot the limit by a few images.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from commfor_fast.sources import get_source_kind
from commfor_fast.sources.units import Source, Unit

REAL = 0
SEED_STREAM = 1  # keeps balancing's random numbers apart from the other planning draws
REALS_OUTNUMBER_FAKES = "HF reals outnumber all fakes"


def water_fill(sizes: dict[str, int], limit: int) -> dict[str, int]:
    """How many samples each dataset keeps (all of them when the total fits the limit)."""
    if sum(sizes.values()) <= limit:
        return dict(sizes)
    order = sorted(sizes, key=lambda name: (sizes[name], name))
    whole, left = 0, len(order)
    for i, name in enumerate(order):
        if sizes[name] * left + whole >= limit:
            quota = math.ceil((limit - whole) / left)
            return {**{n: sizes[n] for n in order[:i]}, **{n: min(sizes[n], quota) for n in order[i:]}}
        whole += sizes[name]
        left -= 1
    return dict(sizes)


def balancing_applies(sources: list[Source], enabled: bool) -> bool:
    """Whether balancing limits local reals: HF data and local folders combined, and not `--no-balance`."""
    return enabled and len({get_source_kind(s.kind).BALANCED for s in sources}) == 2


def balance_reals(units: list[Unit], sources: list[Source], enabled: bool, seed: int,
                  failing: set[tuple[int, int]] | None = None) -> tuple[list[Unit], dict[str, Any] | None]:
    """The units that stay after balancing, and the report for the manifest.

    The report is None when the sources do not mix HF data with local data (kinds
    whose reals are balanced, `BALANCED` in `commfor_fast.sources`): then there is
    nothing to balance. When HF reals already outnumber all fakes (negative limit)
    every local real is kept and the report says why (`balance_warnings` turns that
    into the converter's warning).

    A unit of a balanced kind is one image, so dropping an image drops its unit.

    `failing` holds (unit position, row) of the images the checks will reject
    (`--balance-checked`, `balance_checks.py`): those are not counted among the fakes
    and HF reals. None counts every row, as the original does.
    """
    balanced = [get_source_kind(s.kind).BALANCED for s in sources]
    if not balancing_applies(sources, True):
        return units, None
    if not enabled:
        return units, {"applied": False, "reason": "--no-balance"}
    unwritten_fakes = sum(units[i].labels[row] for i, row in failing or ())
    unwritten_hf_reals = sum(1 for i, row in failing or () if not balanced[units[i].source]
                             and units[i].labels[row] == REAL)
    fakes = sum(sum(u.labels) for u in units) - unwritten_fakes
    hf_reals = sum(u.num_rows - sum(u.labels) for u in units if not balanced[u.source]) - unwritten_hf_reals
    checked = {} if failing is None else {"checked": True, "unwritten_fakes": unwritten_fakes,
                                          "unwritten_hf_reals": unwritten_hf_reals}
    limit = fakes - hf_reals
    by_dataset: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        if balanced[u.source] and u.labels[0] == REAL:
            by_dataset.setdefault(u.generators[0], []).append(i)
    local_reals = sum(len(v) for v in by_dataset.values())
    if limit < 0:
        return units, {"applied": False, "reason": REALS_OUTNUMBER_FAKES, "fakes": fakes, "hf_reals": hf_reals,
                       "limit": limit, "local_reals_available": local_reals, "local_reals_kept": local_reals,
                       **checked}
    quotas = water_fill({name: len(idx) for name, idx in by_dataset.items()}, limit)
    dropped: set[int] = set()
    report = {}
    for name in sorted(by_dataset):
        idx = by_dataset[name]
        if quotas[name] < len(idx):
            rng = np.random.default_rng([seed, SEED_STREAM, zlib.crc32(name.encode())])
            keep = set(rng.choice(len(idx), size=quotas[name], replace=False).tolist())
            dropped.update(unit for j, unit in enumerate(idx) if j not in keep)
        report[name] = {"available": len(idx), "kept": quotas[name], "dropped": len(idx) - quotas[name]}
    return ([u for i, u in enumerate(units) if i not in dropped],
            {"applied": True, "fakes": fakes, "hf_reals": hf_reals, "limit": limit,
             "local_reals_available": local_reals,
             "local_reals_kept": sum(quotas.values()), "datasets": report, **checked})


def balance_warnings(report: dict[str, Any] | None) -> list[str]:
    """The warning for the manifest and the console when HF reals already outnumber all fakes."""
    if not report or report.get("reason") != REALS_OUTNUMBER_FAKES:
        return []
    reals = report["hf_reals"] + report["local_reals_available"]
    return [f"reals already outnumber fakes ({reals} to {report['fakes']}): the HF reals alone "
            f"({report['hf_reals']}) exceed all fakes, so balancing is skipped and all "
            f"{report['local_reals_available']} local real image(s) are kept, as the original does"]
