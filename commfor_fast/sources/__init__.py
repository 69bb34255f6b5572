"""Source kinds: where the converter's images come from, one module per kind.

`hf` (Hugging Face parquet files) and `folders` (local image folders) each provide
what `SourceKind` declares. The converter (`convert/plan.py`, `worker.py`,
`merge.py`, `balance.py`) and evaluation (`evaluate.sample_origins`) reach a kind
only through this registry, so none of them knows any kind by name; evaluation
imports nothing of the converter. A kind's module is imported when first asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from commfor_fast.convert.settings import ConvertSettings, Limits
    from commfor_fast.sources.units import Source, Unit

# kind -> module; scanning follows this order (HF first, then the folders as given).
_KINDS = {"hf": "commfor_fast.sources.hf", "folder": "commfor_fast.sources.folders"}


class SourceKind(Protocol):
    """What the module of a source kind provides (the module itself follows this protocol)."""

    KIND: str  # its name: `Source.kind`, and `"source"` in every sample's metadata
    # Whether its real images are limited by balancing (SPEC section 1 limits the extra
    # local reals against the fakes). A unit of a balanced kind is one image, so that
    # dropping an image drops its unit.
    BALANCED: bool

    def scan(self, settings: ConvertSettings, limits: Limits, first_index: int) -> list[tuple[Source, list[Unit]]]:
        """Its sources among the convert settings, in order, each with the units found in
        it; source indices count from `first_index`. Raises `UserError` for a bad source."""

    def read(self, unit: Unit, given: str, root: str) -> Iterator[tuple[bytes | str, dict[str, Any]]]:
        """Per row of `unit`: the image bytes, or the reason they cannot be read; and the
        sample's source metadata (with `"source": KIND`)."""

    def item(self, unit: Unit, row: int, root: str) -> str:
        """How a row that cannot be stored is named among the manifest's rejects (`root`:
        its source's folder), without local folders (`commfor_fast.portable`)."""

    def describe(self, source: Source) -> list[str]:
        """The lines `convert --dry-run` prints for a source."""

    def origin(self, meta: dict[str, Any]) -> tuple[str, str]:
        """A sample's original name and its source, from its metadata."""


def get_source_kind(kind: str) -> SourceKind:
    """The module of source kind `kind` (a `KIND` recorded in a Source or a sample's metadata)."""
    return cast(SourceKind, importlib.import_module(_KINDS[kind]))


def source_kinds() -> Iterator[SourceKind]:
    """Every kind's module, in scanning order."""
    return (get_source_kind(kind) for kind in _KINDS)


def sample_origin(meta: dict[str, Any]) -> tuple[str, str]:
    """(original name, source) of a sample from its `KEY.json` metadata; empty for a
    sample without metadata of a known kind."""
    kind = meta.get("source")
    return get_source_kind(kind).origin(meta) if kind in _KINDS else ("", "")
