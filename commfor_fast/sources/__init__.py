"""Source kinds: where the converter's images come from, one module per kind.

Each kind's module (`hf`: Hugging Face parquet files, `folders`: local image folders)
provides
- `KIND`: its name, which the samples' metadata records as `"source"`;
- `BALANCED`: whether its real images are limited by balancing (SPEC section 1: the
  extra local reals are limited against the fakes; a kind whose reals are balanced
  has one image per unit, so dropping an image drops its unit);
- `scan(settings, limits, first_index)`: its sources among the convert settings, each
  as a `units.Source` and the units found in it (source indices from `first_index`);
- `read(unit, given, root)`: (image bytes, or the reason they cannot be read; the
  sample's source metadata) per row of a unit;
- `item(unit, row)`: how a row that cannot be stored is named among the rejects;
- `describe(source)`: the lines `convert --dry-run` prints for a source;
- `origin(meta)`: a sample's original name and its source, from its metadata.
The converter (`convert/plan.py`, `worker.py`, `merge.py`, `balance.py`) and
evaluation (`evaluate.sample_origins`) reach a kind only through this registry, so
none of them knows any kind by name. Modules are imported when first asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

# kind -> module; scanning follows this order (HF first, then the folders as given).
_KINDS = {"hf": "commfor_fast.sources.hf", "folder": "commfor_fast.sources.folders"}


def get_source_kind(kind: str) -> ModuleType:
    """The module of source kind `kind` (a `KIND` recorded in a Source or a sample's metadata)."""
    return importlib.import_module(_KINDS[kind])


def source_kinds() -> Iterator[ModuleType]:
    """Every kind's module, in scanning order."""
    return (get_source_kind(kind) for kind in _KINDS)


def sample_origin(meta: dict[str, Any]) -> tuple[str, str]:
    """(original name, source) of a sample from its `KEY.json` metadata; empty for a
    sample without metadata of a known kind."""
    kind = meta.get("source")
    return get_source_kind(kind).origin(meta) if kind in _KINDS else ("", "")
