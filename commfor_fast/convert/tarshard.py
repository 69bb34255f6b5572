"""Writing one WebDataset tar and its DALI index, hashing the bytes on the way out.

Members are written with plain ustar headers (name, size, mode 0644, mtime 0, no
owner), so the same samples always give byte-identical tars. The writer records each
member's data offset and size as it goes, which is exactly what DALI's v1.2 index
needs, so the index costs nothing extra to make and DALI never scans the tar.

Tar and index are written through `fileio.atomic_write`: to temporary dot-files,
fsync'ed and renamed into place only when complete; a crash leaves only temporary
files, which resume deletes (`parts.clear_partitions`). Output is deterministic, so
two processes converting the same partition (a leftover worker of a killed run, or a
mistyped --node-rank) write the same bytes; private temporary names and atomic
renames keep every visible file whole.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

from commfor_fast.fileio import atomic_write
from commfor_fast.shards import INDEX_SUFFIX, Member, ShardInfo, format_index

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)


def member_bytes(size: int) -> int:
    """Bytes a member of `size` data bytes takes in the tar (header + padded data)."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


class ShardWriter:
    """Appends samples to one tar; `close` renames it into place and writes the index."""

    def __init__(self, path: Path, relative_to: Path) -> None:
        self.path = path
        self.relative_to = relative_to
        self._tar = ExitStack()  # the open atomic write of the tar, finished by `close`
        self._file = self._tar.enter_context(atomic_write(path))
        self._sha = hashlib.sha256()
        self._offset = 0
        self._samples: list[list[Member]] = []

    def _write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except BaseException:
            # End the atomic write with this error: it removes the temporary tar and
            # turns a full disk into a one-line error naming the tar.
            self._tar.__exit__(*sys.exc_info())
            raise
        self._sha.update(data)
        self._offset += len(data)

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        """Write one sample: (extension, data) pairs, all under the same key."""
        written = []
        for ext, data in members:
            name = f"{key}.{ext}"
            self._write(_header(name, len(data)))
            written.append(Member(ext, self._offset, len(data), name))
            self._write(data)
            if len(data) % BLOCK:
                self._write(bytes(BLOCK - len(data) % BLOCK))
        self._samples.append(written)

    def close(self) -> ShardInfo:
        """Finish the tar, make both files durable and visible, and describe the shard."""
        self._write(END_OF_ARCHIVE)
        self._tar.close()
        index = self.path.with_name(self.path.name + INDEX_SUFFIX)
        with atomic_write(index, "w") as f:
            f.write(format_index(self._samples))
        return ShardInfo(
            tar=self.path.relative_to(self.relative_to).as_posix(),
            index=index.relative_to(self.relative_to).as_posix(),
            num_samples=len(self._samples),
            bytes=self._offset,
            sha256=self._sha.hexdigest(),
        )


def write_shards(samples: Iterable[tuple[str, list[tuple[str, bytes]]]], shard_bytes: int,
                 path_of: Callable[[int], Path], root: Path) -> list[ShardInfo]:
    """Write (key, members) samples in order into tars `path_of(0)`, `path_of(1)`, ...,
    starting a new one before a tar would exceed `shard_bytes` (a sample larger than
    that gets a tar of its own); paths in the `ShardInfo`s are relative to `root`."""
    shards: list[ShardInfo] = []
    writer: ShardWriter | None = None
    size = 0
    for key, members in samples:
        nbytes = sum(member_bytes(len(data)) for _, data in members)
        if writer is not None and size + nbytes > shard_bytes:
            shards.append(writer.close())
            writer = None
        if writer is None:
            writer = ShardWriter(path_of(len(shards)), root)
            size = 0
        writer.add(key, members)
        size += nbytes
    if writer is not None:
        shards.append(writer.close())
    return shards
