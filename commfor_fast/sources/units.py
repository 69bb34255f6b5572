"""What planning knows about the input before converting anything.

A *unit* is the smallest piece of input that is read in one go: a parquet row group
(its rows share one read of the `image_data` column) or one local image file. Units
carry what planning needs (byte size, label and generator of every row) and what a
worker needs to find the bytes again; nothing else is read until conversion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Unit:
    """A parquet row group or one image file, and the label/generator of each of its rows."""

    source: int  # index of its Source in the plan
    path: str  # absolute path of the parquet file or image file
    name: str  # path relative to the source root: stable across machines, used in the fingerprint
    row_group: int  # parquet row group; -1 for an image file
    first_row: int  # row number (in the file) of the row group's first row; 0 for an image file
    nbytes: int  # bytes read to convert it (row-group size or file size)
    labels: tuple[int, ...]  # per row
    generators: tuple[str, ...]  # per row

    @property
    def num_rows(self) -> int:
        return len(self.labels)


def escape_name(name: str) -> str:
    """A file-system name as valid UTF-8 text, losslessly.

    Names are bytes on Linux; Python holds bytes that are not UTF-8 as lone
    surrogates, which cannot be encoded (written to JSON or a shard). Such a name is
    returned with its backslashes doubled and every such byte as `\\xNN`, so the
    original bytes can be recovered; a valid name is returned unchanged.
    """
    try:
        name.encode()
        return name
    except UnicodeEncodeError:
        return name.replace("\\", "\\\\").encode(errors="surrogateescape").decode(errors="backslashreplace")


@dataclass
class Source:
    """One input as the user named it, and what scanning it found."""

    kind: str  # the KIND of its module in `commfor_fast.sources`
    given: str  # as the user gave it: the --hf-repo value, a --folder path
    root: str  # absolute folder the unit names are relative to
    summary: dict[str, Any] = field(default_factory=dict)  # counts for the manifest
    warnings: list[str] = field(default_factory=list)
    # folder -> ctime (ns) when the scan listed it, for kinds whose scan a rerun may
    # reuse while these are unchanged (`convert/listing.py`); -1: changed while listed
    stamps: dict[str, int] = field(default_factory=dict)
