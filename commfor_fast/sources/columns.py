"""Which parquet columns `convert` takes, and how: the label, and the metadata carried.

The hub's files hold `label` as int64, but a parquet file written by other tools may
hold it as `bool` or as `float` (1.0): both are read as the integers 0 and 1, so the
shards' `.cls` is always "0" or "1". Any other type (text, a float such as 0.5, a
missing value) is refused with one line naming the file, the column and its type.
Of the other columns in `hf.META_COLUMNS`, those holding text, numbers or booleans are
carried into each sample's `.json`; any other type (bytes, lists, structs) is skipped,
as JSON cannot hold it losslessly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from commfor_fast.errors import UserError

LABEL_COLUMN = "label"


def read_labels(path: object, column: pa.ChunkedArray) -> list[int]:
    """The 0/1 labels of a parquet file's `label` column (int, bool or integral float)."""
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_floating(kind)):
        raise UserError(f"{path}: the column {LABEL_COLUMN!r} is of type {kind}; labels must be 0 (real) or "
                        f"1 (fake), stored as integers, booleans or whole floats")
    values = column.to_pylist()
    bad = next((i for i, v in enumerate(values) if v not in (0, 1)), None)  # None, 0.5, 2, ... (True == 1)
    if bad is not None:
        raise UserError(f"{path}#row {bad}: label {values[bad]!r} in the {kind} column {LABEL_COLUMN!r}; labels "
                        f"must be 0 (real) or 1 (fake)")
    return [int(v) for v in values]


def carried_columns(schema: pa.Schema, wanted: Sequence[str]) -> list[str]:
    """The columns of `wanted` present in `schema` that go into a sample's JSON: text,
    numbers and booleans. The label is not among them: the sample's own 0/1 label is."""
    def plain(kind: Any) -> bool:
        return any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer,
                                           pa.types.is_floating, pa.types.is_boolean))

    return [name for name in wanted if name != LABEL_COLUMN and name in schema.names
            and plain(schema.field(name).type)]
