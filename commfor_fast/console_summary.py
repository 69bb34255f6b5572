"""Console tables that stay short at thousands of rows.

`eval`, `inspect` and `convert --dry-run` print one row per generator, and the real
dataset has about 5,000 of them: 10,000 lines scroll the overall figures out of sight
and fill logs. Up to `ALL_ROWS_UP_TO` rows a table is printed whole, as before; beyond,
the console shows the `SHOWN` lowest and highest rows by one value (the worst and best
generators by AP, those with the fewest and most images), a text histogram of that
value over every row, and where the whole table is (a file keeps every row).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

ALL_ROWS_UP_TO = 40  # tables up to this many rows are printed whole
SHOWN = 10  # rows shown at each end of a longer table
BAR_WIDTH = 40  # characters of the longest histogram bar
SCORE_BINS = 10  # histogram bins of a score in [0, 1]


@dataclass(frozen=True)
class Scale:
    """How the values a table is ranked by are binned and shown."""

    edges: Callable[[Sequence[float]], list[float]]  # the histogram's bin edges for these values, ascending
    bin_label: Callable[[float, float], str]  # a bin's label from its two edges
    fmt: Callable[[float], str]  # one value


def summarise(header: str, rows: Sequence[str], values: Sequence[float | None], *, noun: str, value_name: str,
              scale: Scale, where: str, whole: bool = False) -> list[str]:
    """`header` and `rows` whole when short (or `whole`), else summarised by `values`.

    Args:
        header: the table's header line.
        rows: one formatted line per row, in the order of the whole table.
        values: the value each row is ranked by (None: undefined, left out of the ranking).
        noun: what a row is, plural ("fake generators").
        value_name: what `values` are ("AP", "images").
        scale: the histogram's bins and how a value is shown (`SCORES`, `COUNTS`).
        where: where every row can be read ("per_generator.csv in the report folder").
        whole: print every row whatever their number.

    Returns the lines: the whole table, or the header, the `SHOWN` rows of lowest
    value, a line counting the rows left out, the `SHOWN` of highest value (both ends
    in ascending order), the histogram and `where`.
    """
    if whole or len(rows) <= ALL_ROWS_UP_TO:
        return [header, *rows]
    ranked = sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: values[i])  # type: ignore[arg-type, return-value]
    undefined = len(rows) - len(ranked)
    low, high = ranked[:SHOWN], ranked[max(SHOWN, len(ranked) - SHOWN):]
    hidden = len(ranked) - len(low) - len(high)
    lines = [header, *(rows[i] for i in low)]
    if hidden:
        lines.append(f"  ... {hidden:,} {noun} not shown ({value_name} {scale.fmt(values[ranked[SHOWN]])} to "
                     f"{scale.fmt(values[ranked[-SHOWN - 1]])}) ...")  # type: ignore[arg-type]
    lines += [rows[i] for i in high]
    defined: list[float] = [values[i] for i in ranked]  # type: ignore[misc]
    lines += ["", f"{value_name} over the {len(rows):,} {noun}"
              + (f" ({undefined:,} n/a, not ranked)" if undefined else "") + ":"]
    lines += histogram_lines(defined, scale.edges(defined), scale.bin_label)
    lines.append(f"all {len(rows):,} {noun}: {where}")
    return lines


def histogram_lines(values: Sequence[float], edges: Sequence[float], edge_fmt: Callable[[float, float], str]) -> list[str]:
    """One line per bin [edges[i], edges[i+1]) (the last bin closed): its label, a bar of
    `#` scaled to the fullest bin (at least one `#` for a bin that is not empty), the count."""
    counts = [0] * (len(edges) - 1)
    for v in values:
        counts[min(max(_bin(edges, v), 0), len(counts) - 1)] += 1
    labels = [edge_fmt(lo, hi) for lo, hi in zip(edges, edges[1:])]
    width = max(len(label) for label in labels)
    most = max(counts) or 1
    return [f"  {label:>{width}} |{'#' * (math.ceil(BAR_WIDTH * n / most) if n else 0):<{BAR_WIDTH}} {n:,}"
            for label, n in zip(labels, counts)]


def _bin(edges: Sequence[float], value: float) -> int:
    """Index of the bin [edges[i], edges[i+1]) holding `value`."""
    return sum(1 for e in edges[1:-1] if value >= e)


def score_edges(values: Sequence[float]) -> list[float]:
    """`SCORE_BINS` equal bins over [lowest value rounded down to a tenth, 1]: a good
    detector's thousands of APs between 0.9 and 1 spread over the bins."""
    start = min(math.floor(min(values, default=0.0) * 10) / 10, 0.9)
    return [round(start + (1 - start) * i / SCORE_BINS, 6) for i in range(SCORE_BINS + 1)]


def score_bin(lo: float, hi: float) -> str:
    """A score bin's label: `0.90-0.91`."""
    return f"{lo:.2f}-{hi:.2f}"


def count_edges(values: Sequence[float]) -> list[float]:
    """Bins of counts in steps of 1, 2, 5 x 10^k, from the bin of the smallest count to
    that of the largest: sizes from 1 to a million in at most 19 lines."""
    low, high = min(values, default=1), max(values, default=1)
    steps = [m * 10 ** k for k in range(0, 13) for m in (1, 2, 5)]
    first = max(i for i, s in enumerate(steps) if s <= max(low, 1)) if low >= 1 else 0
    last = next(i for i, s in enumerate(steps) if s > high)
    return [0.0] * (low < 1) + [float(s) for s in steps[first:last + 1]]


def count_bin(lo: float, hi: float) -> str:
    """A count bin's label, both ends included: `20-49`, `1` for a bin of one value."""
    lo_i, hi_i = int(lo), int(hi) - 1
    return f"{lo_i:,}" if lo_i == hi_i else f"{lo_i:,}-{hi_i:,}"


SCORES = Scale(score_edges, score_bin, lambda v: f"{v:.4f}")  # metrics in [0, 1]
COUNTS = Scale(count_edges, count_bin, lambda v: f"{v:,.0f}")  # images


def count_table(table: Sequence[str], columns: Mapping[str, Mapping[str, Mapping[str, int]]], *, noun: str,
                where: str, whole: bool = False) -> list[str]:
    """A table of "real / fake" counts (`convert.merge.label_table`'s lines: the header,
    then one row per key in sorted order) summarised by each key's images over all
    columns: the keys with the fewest and the most images, and their histogram."""
    keys = sorted({key for counts in columns.values() for key in counts})
    if len(keys) != len(table) - 1:
        raise ValueError(f"{len(table) - 1} table rows for {len(keys)} keys")
    totals = [float(sum(n for counts in columns.values() for n in counts.get(key, {}).values())) for key in keys]
    return summarise(table[0], table[1:], totals, noun=noun, value_name="images", scale=COUNTS, where=where,
                     whole=whole)
