"""Atomic file writes: a reader, a crash or a kill never sees half a file.

Everything that marks progress (shards, indexes, manifests, checkpoints) is written
to a temporary file beside its destination, fsynced, then renamed over it. The
temporary name is unique per writer, so two processes (or two nodes on shared
storage) writing the same file never share a temporary file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success fsync it and rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_temporary(name: str) -> bool:
    """Whether a file name is one of `atomic_write`'s temporary files (left by a kill)."""
    return name.startswith(".") and name.endswith(".tmp")
