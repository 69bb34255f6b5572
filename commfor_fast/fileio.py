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
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from commfor_fast.errors import UserError

# Failures of a write that the user fixes on the output side (space, permissions).
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


# How errors of native writers (safetensors' Rust, torch's C++) that do not keep the OSError name its code.
_NATIVE_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def output_error(path: Path | str | None, exc: OSError) -> UserError:
    """The one-line error for an output write that failed for lack of space or permission;
    `path` may be None when the failed call did not say which file (a plain `write`)."""
    fix = ("free some space there or choose another output folder" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else "choose an output folder you can write to")
    where = f"cannot write {path}" if path is not None else "cannot write an output file"
    return UserError(f"{where}: {exc.strerror or exc}; {fix}")


def output_cause(exc: BaseException) -> OSError | None:
    """The failure for lack of space or permission behind `exc`, or None.

    torch.save raises a RuntimeError whose context is the OSError of the file's
    write; safetensors names the code only in its message ("os error 28"). Both are
    found here, so any writer's full disk is one line (`output_error`)."""
    seen: set[int] = set()
    chained: BaseException | None = exc
    while chained is not None and id(chained) not in seen:
        seen.add(id(chained))
        if isinstance(chained, OSError) and chained.errno in OUTPUT_ERRNOS:
            return chained
        found = _NATIVE_OS_ERROR.search(str(chained))
        code = int(found.group(1)) if found else None
        if code in OUTPUT_ERRNOS:
            return OSError(code, os.strerror(code))
        chained = chained.__cause__ or chained.__context__
    return None


@contextmanager
def output_errors(path: Path | str) -> Iterator[None]:
    """Turn a failure for lack of space or permission while writing `path` (by any
    writer, `output_cause`) into the one-line `output_error`."""
    try:
        yield
    except Exception as exc:
        cause = output_cause(exc)
        if cause is None or isinstance(exc, UserError):
            raise
        raise output_error(path, cause) from None


@contextmanager
def atomic_write(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success fsync it and rename it to `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with output_errors(path), open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
