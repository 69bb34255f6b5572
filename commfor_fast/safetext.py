"""Text from data made safe for where it is shown: a terminal, a CSV cell.

Generator names, file names and error messages come from the data, which may be
hostile: an escape sequence printed to a terminal can rewrite the screen or set its
title, a newline splits one row of a table into two, a cell starting with `=` is a
formula to a spreadsheet. These functions show such characters as visible escapes
instead (the model card's Markdown adds its own escapes, `modelcard._code`); every CSV the tool writes
(per_generator.csv, robustness.csv, scores.csv, predict's .csv) passes its text
through `spreadsheet_safe`.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet cell a formula


def spreadsheet_safe(text: str) -> str:
    """`text` for a CSV cell: a leading `'` where a spreadsheet would read a formula
    (=, +, -, @, tab, carriage return), so a hostile name cannot run one."""
    return "'" + text if text[:1] in FORMULA_STARTS else text


def spreadsheet_safe_columns(table: Any) -> Any:
    """A pyarrow table with every text column passed through `spreadsheet_safe` (for CSV)."""
    import pyarrow as pa

    return pa.table({name: [spreadsheet_safe(v) for v in column.to_pylist()] if pa.types.is_string(column.type)
                     else column for name, column in zip(table.column_names, table.columns)})


def printable(text: str) -> str:
    """`text` with every non-printable character (escape codes, newlines, tabs, bytes of
    a name that is not UTF-8) written as its Python escape (`\\x1b`, `\\n`, `\\udcff`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

