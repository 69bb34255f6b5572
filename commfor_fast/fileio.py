"""Atomic file writes, output checks and file hashes: a reader, a crash or a kill never sees half a file.

Everything that marks progress (shards, indexes, manifests, checkpoints) and every
report is written to a temporary file beside its destination, fsynced, then renamed
over it. The temporary name is unique per writer, so two processes (or two nodes on
shared storage) writing the same file never share a temporary file. A full disk or
a folder without write permission is a `UserError` naming the destination, not a
traceback.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from commfor_fast.errors import UserError

# Failures of a write that the user fixes on the output side (space, permissions).
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def output_error(path: Path | str, exc: OSError) -> UserError:
    """The one-line error for an output write that failed for lack of space or permission."""
    fix = ("free some space there or choose another output folder" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else "choose an output folder you can write to")
    return UserError(f"cannot write {path}: {exc.strerror or exc}; {fix}")


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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
            raise output_error(path, exc) from None
        raise


def check_writable(folder: Path, flag: str) -> None:
    """Create `folder` if needed and prove that a file can be written in it, before any work.

    Raises `UserError` naming `flag` when `folder` is a file, cannot be created or
    is not writable (permissions, read-only file system, no space left).
    """
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: is a file; give a folder (it is created if missing)")
    probe = folder / f".write-check.{uuid.uuid4().hex}.tmp"  # unique: other ranks or nodes may check too
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb") as f:
            try:
                f.write(b"\0")
                os.fsync(f.fileno())
            finally:
                probe.unlink()
    except OSError as exc:
        raise UserError(f"{flag} {folder}: cannot create or write in it ({exc.strerror or exc}); "
                        "choose an output folder you can write to") from None


def is_temporary(name: str) -> bool:
    """Whether a file name is one of `atomic_write`'s temporary files (left by a kill)."""
    return name.startswith(".") and name.endswith(".tmp")


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
