"""Write a folder laid out like the Community Forensics Hugging Face repo, from given rows.

The demo and the tests need the real input format without the 1.1 TB download: a
README.md whose YAML front matter lists the splits (`configs` -> `data_files`), and
parquet files with exactly the hub's columns under `data/<split dir>/`. `convert`
reads such a folder exactly as it reads a hub snapshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# The hub repo's columns, in its order.
SCHEMA = pa.schema([
    ("image_name", pa.string()),
    ("format", pa.string()),
    ("resolution", pa.string()),
    ("image_data", pa.binary()),
    ("model_name", pa.string()),
    ("prompt", pa.string()),
    ("subset", pa.string()),
    ("split", pa.string()),
    ("label", pa.int64()),
    ("architecture", pa.string()),
])

TEXT_COLUMNS = tuple(f.name for f in SCHEMA if f.type == pa.string())

# Split name -> folder, as in the hub repos (the Small set's one split lives in data/).
SPLIT_DIRS = {"Systematic": "data/systematic", "Manual": "data/manual", "Commercial": "data/commercial",
              "PublicEval": "data/publicEval", "train": "data"}


def _split_dir(split: str) -> str:
    return SPLIT_DIRS.get(split, f"data/{split[:1].lower()}{split[1:]}")


def _readme(splits: list[str]) -> str:
    lines = ["---", "license: cc-by-4.0", "pretty_name: Community Forensics (replica)", "configs:",
             "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", "    path:", f"    - {_split_dir(split)}/*.parquet"]
    lines += ["---", "", "A local replica of the Community Forensics dataset layout, written by commfor-fast.", ""]
    return "\n".join(lines)


def write_hf_replica(root: Path, rows_by_split: dict[str, list[dict[str, Any]]], rows_per_file: int = 1000,
                     row_group_size: int = 100) -> Path:
    """Write `root` like the hub repo: README.md plus `data/<split dir>/part-NNNNN.parquet`.

    Args:
        root: folder to write (created; existing files of the same names are replaced).
        rows_by_split: split name -> rows; each row is a dict with the hub's columns
            (`image_data` as bytes; missing text columns become "", a missing
            `split` column the split name).
        rows_per_file: rows per parquet file.
        row_group_size: rows per parquet row group (the converter's unit of reading).

    Returns:
        `root`.
    """
    if rows_per_file < 1 or row_group_size < 1:
        raise ValueError(f"rows_per_file={rows_per_file} and row_group_size={row_group_size} must be >= 1")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(_readme(list(rows_by_split)))
    for split, rows in rows_by_split.items():
        folder = root / _split_dir(split)
        folder.mkdir(parents=True, exist_ok=True)
        for number, start in enumerate(range(0, len(rows), rows_per_file)):
            chunk = [{**dict.fromkeys(TEXT_COLUMNS, ""), "split": split, **row}
                     for row in rows[start : start + rows_per_file]]
            table = pa.Table.from_pylist(chunk, schema=SCHEMA)
            pq.write_table(table, folder / f"part-{number:05d}.parquet", row_group_size=row_group_size)
    return root
