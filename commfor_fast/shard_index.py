"""The sample index of a shard set as flat numpy arrays, mapped once per node.

Why: a loader needs, for sample i, its tar and where its members lie. Held as Python
objects (a dict of `Member`s per sample) that costs ~1.4 kB and ~15 us per sample in
every process that opens the set: every rank, every evaluation pass, every forked
worker (its reference counts make copy-on-write copy the pages), and every full
garbage collection walks them. Here it is one fixed-size record per sample:

    start    int64      offset of the data of the sample's first member in its tar
    number   int32      the sample's number (its tar key), as its `.ids` record holds it
    pattern  uint8      which members, in tar order: a row of the set's `patterns`
    sizes    uint32[W]  each member's size (W: the most members a sample has; 0 past its own)

29 bytes with the four members `convert` writes. The other members' offsets follow
from the tar layout `convert` writes (each member a 512-byte header, then its data
padded to 512 bytes; `tarshard.member_bytes`): the `.idx` text is checked against it
while the records are built, so a damaged offset is refused there. The shard holding
sample i follows from the manifest's per-shard counts (`np.searchsorted`), so nothing
per sample names it.

Sharing: a whole set's records are built once per node into a cache file under
`tempfile.gettempdir()/commfor-fast-index-UID/`, named by a hash of the folder's path
and each `.idx` file's size, mtime and inode (an index rewritten by `convert` is a new
entry), under an exclusive lock, so ranks starting together build it once. Every
process maps it read-only (`np.load(mmap_mode="r")`): its pages live once in the page
cache, forked or spawned workers map the same file (pickling sends its name), and a
process touches only the pages of the samples it reads: an evaluation rank its own
part. Where no cache can be written, the records are built in memory, and for an
evaluation part (`shards.shard_range`) only from the shards that part covers.

Pruning: each entry records the index files it was built from. Whenever a new entry
is written (a set converted again, or a new one), the entries whose index files are
gone or changed, entries of another layout, and what a killed writer left are removed,
so converting again and again does not fill the temporary folder (78 MB per entry at
2.7M samples). A process that maps a removed entry keeps its mapping.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from commfor_fast.convert.tarshard import BLOCK, member_bytes
from commfor_fast.errors import UserError
from commfor_fast.fileio import atomic_write
from commfor_fast.shards import INDEX_VERSION, Member, SetInfo, damaged_index_line, damaged_shard, not_regular, \
    read_index, sample_key

# Of the cache files' layout: another version is another cache entry. 2: the json
# records what the entry stands for (`_describe`), which pruning reads.
CACHE_VERSION = 2
_MAX_SIZE = 2**32 - 1  # a member's size must fit `sizes` (uint32)
_MAX_NUMBER = 2**31 - 1  # sample numbers are int32 in `.ids`
_KEY_DIGITS = len(sample_key(0))


def record_dtype(width: int) -> np.dtype:
    """One sample's record (packed, no padding): see the module docstring."""
    return np.dtype([("start", "<i8"), ("number", "<i4"), ("pattern", "u1"), ("sizes", "<u4", (width,))])


class SetIndex:
    """Where each sample of a set is: records of samples [first, first + len(records))
    of the set, and the set's shard boundaries (`shard_starts[k]`: the first sample of shard k)."""

    def __init__(self, records: np.ndarray, patterns: list[tuple[str, ...]], shard_starts: np.ndarray,
                 first: int = 0, cache: Path | None = None) -> None:
        self.records, self.patterns, self.shard_starts = records, patterns, shard_starts
        self.first, self.cache = first, cache
        # Plain views per field (np.memmap's own indexing is slow), and the shard starts
        # as a list for `bisect`: a lookup costs about a microsecond.
        fields = records.view(np.ndarray)
        self._start, self._number = fields["start"], fields["number"]
        self._pattern, self._sizes = fields["pattern"], fields["sizes"]
        self._shard_starts = shard_starts.tolist()
        self._order: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        """Samples in the whole set (not only those this index holds)."""
        return int(self.shard_starts[-1])

    def _row(self, i: int) -> int:
        """Sample i's row in `records`."""
        if not self.first <= i < self.first + len(self.records):
            raise IndexError(f"sample {i} is not in this index (it holds samples {self.first} to "
                             f"{self.first + len(self.records) - 1})")
        return i - self.first

    def shard_no(self, i: int) -> int:
        """The shard (its place in the manifest's list) holding sample i."""
        self._row(i)
        return bisect.bisect_right(self._shard_starts, i) - 1

    def number(self, i: int) -> int:
        return int(self._number[self._row(i)])

    def spans(self, i: int) -> list[tuple[str, int, int]]:
        """(extension, data offset, size) of each member of sample i, in tar order."""
        row = self._row(i)
        offset, out = int(self._start[row]), []
        for ext, size in zip(self.patterns[self._pattern[row]], self._sizes[row].tolist()):
            out.append((ext, offset, size))
            offset += BLOCK - -size // BLOCK * BLOCK  # tarshard.member_bytes, inlined: this is the hot path
        return out

    def members(self, i: int) -> dict[str, Member]:
        key = sample_key(self.number(i))
        return {ext: Member(ext, offset, size, f"{key}.{ext}") for ext, offset, size in self.spans(i)}

    def position(self, number: int) -> int | None:
        """Where the sample numbered `number` is, or None (a sorted order, made on first use)."""
        numbers = self._number
        if self._order is None:
            self._order = np.argsort(numbers, kind="stable")
        k = int(np.searchsorted(numbers, number, sorter=self._order))
        if k < len(numbers) and int(numbers[self._order[k]]) == number:
            return self.first + int(self._order[k])
        return None

    def __reduce__(self) -> tuple[Any, tuple]:
        # A mapped index travels as its file's name (each process maps the same pages).
        if self.cache is not None:
            return _open_cached, (self.cache, self.shard_starts)
        return SetIndex, (self.records, self.patterns, self.shard_starts, self.first)


def load_index(root: Path, info: SetInfo, part: tuple[int, int] | None = None) -> SetIndex:
    """The index of a set: mapped from this node's cache (built there once if missing),
    or, where no cache can be written, built in memory from the shards covering `part`
    (samples [start, end); None: all). Damaged `.idx` files are `UserError`s naming them."""
    starts = np.concatenate([[0], np.cumsum([s.num_samples for s in info.shards], dtype=np.int64)])
    described, folder = _describe(root, [(s.index, s.num_samples) for s in info.shards]), _cache_folder()
    if described is not None and folder is not None:
        key = _cache_key(described)
        try:
            with _locked(folder):
                if not (folder / f"{key}.json").exists():
                    index = _build(root, info, starts, 0, len(info.shards))  # a damaged .idx: its UserError
                    _prune(folder)
                    try:
                        _write_cache(folder / key, index, described)
                    except (OSError, UserError):  # no space there: this process keeps its own copy
                        return index
            return _open_cached(folder / key, starts)
        except (OSError, ValueError, KeyError):  # a cache entry that cannot be read: build here
            pass
    lo, hi = part if part is not None else (0, int(starts[-1]))
    first = int(np.searchsorted(starts, lo, "right")) - 1
    last = max(int(np.searchsorted(starts, hi, "left")), first + 1)
    return _build(root, info, starts, max(first, 0), min(last, len(info.shards)))


def _build(root: Path, info: SetInfo, starts: np.ndarray, first: int, last: int) -> SetIndex:
    """Records of shards [first, last) of the set, parsed from their `.idx` files."""
    patterns: dict[tuple[str, ...], int] = {}
    parts = []
    for shard in info.shards[first:last]:
        path = root / shard.index
        kinds, kind_of, columns = _parse_fast(path) or _parse_checked(path)
        if len(columns) != shard.num_samples:
            raise damaged_shard(root, path, f"it indexes {len(columns)} samples, but the manifest lists "
                                            f"{shard.num_samples}")
        ids = np.array([patterns.setdefault(kind, len(patterns)) for kind in kinds], np.int64)
        parts.append((ids[kind_of], columns))
    if len(patterns) > 256:
        raise UserError(f"{root}: its samples have {len(patterns)} different member lists (at most 256); "
                        "re-run `commfor-fast convert`")
    records = np.zeros(sum(len(c) for _, c in parts), record_dtype(max((c.shape[1] - 2 for _, c in parts), default=0)))
    at = 0
    for pattern, columns in parts:
        rows = records[at: at + len(columns)]
        rows["start"], rows["number"], rows["pattern"] = columns[:, 0], columns[:, 1], pattern
        rows["sizes"][:, : columns.shape[1] - 2] = columns[:, 2:]
        at += len(columns)
    return SetIndex(records, list(patterns), starts, int(starts[first]))


# One shard's parsed index: the distinct member lists (extensions in tar order), which
# one each sample has, and one row [start, number, size of each member] per sample.
Parsed = tuple[list[tuple[str, ...]], np.ndarray, np.ndarray]


def _parse_fast(path: Path) -> Parsed | None:
    """The common case at numpy speed: every line of one shard's index has the same
    number of members, each named KEY.EXT and laid out as `convert` writes them; None
    for anything else, which `_parse_checked` then judges line by line."""
    if not_regular(path):
        return None
    try:
        tokens = Path(path).read_bytes().split()
    except OSError:
        return None
    if len(tokens) < 3 or tokens[0] != INDEX_VERSION.encode() or not tokens[1].isdigit():
        return None
    n = int(tokens[1])
    if n == 0 or (len(tokens) - 2) % (4 * n):
        return None
    fields = np.array(tokens[2:]).reshape(n, -1, 4)
    exts, offsets, sizes, names = (fields[:, :, k] for k in range(4))
    keys = names[:, 0].astype(f"S{_KEY_DIGITS}")
    if not (np.char.isdigit(offsets).all() and np.char.isdigit(sizes).all() and np.char.isdigit(keys).all()):
        return None
    if not (names == np.char.add(np.char.add(keys[:, None], b"."), exts)).all():
        return None
    offsets, sizes, numbers = offsets.astype(np.int64), sizes.astype(np.int64), keys.astype(np.int64)
    padded = BLOCK + -(-sizes[:, :-1] // BLOCK) * BLOCK  # member_bytes, for whole columns
    if (offsets[:, 1:] != offsets[:, :-1] + padded).any() or sizes.max() > _MAX_SIZE or numbers.max() > _MAX_NUMBER:
        return None
    joined = exts[:, 0]
    for k in range(1, exts.shape[1]):
        joined = np.char.add(np.char.add(joined, b" "), exts[:, k])
    distinct, kind_of = np.unique(joined, return_inverse=True)
    kinds = [tuple(d.decode().split()) for d in distinct]
    return kinds, kind_of.reshape(-1), np.column_stack([offsets[:, 0], numbers, sizes])


def _parse_checked(path: Path) -> Parsed:
    """Any index, line by line (`shards.read_index`, then the key and layout checks),
    with a one-line error naming the first damaged line."""
    kinds: dict[tuple[str, ...], int] = {}
    kind_of, rows = [], []
    for line, members in enumerate(read_index(path), 2):
        listed = list(members.values())
        key = listed[0].filename.split(".", 1)[0]
        if not (len(key) == _KEY_DIGITS and key.isdigit() and int(key) <= _MAX_NUMBER):
            raise damaged_index_line(path, line, f"the key {key!r} is not a sample number")
        offset = listed[0].offset
        for m in listed:
            if m.filename != f"{key}.{m.ext}" or m.offset != offset or m.size > _MAX_SIZE:
                raise damaged_index_line(path, line, f"{m.filename} at {m.offset} is not where the tar layout "
                                                     f"puts {key}.{m.ext}")
            offset += member_bytes(m.size)
        kind_of.append(kinds.setdefault(tuple(members), len(kinds)))
        rows.append([listed[0].offset, int(key), *(m.size for m in listed)])
    width = max((len(r) for r in rows), default=2)
    columns = np.array([r + [0] * (width - len(r)) for r in rows], np.int64).reshape(len(rows), width)
    return list(kinds), np.array(kind_of, np.int64), columns


# --------------------------------------------------------------------------- cache


def _cache_folder() -> Path | None:
    """This user's cache folder on this node, or None if it cannot be used safely (not
    ours, or a link: another user could swap the files under us)."""
    folder = Path(tempfile.gettempdir()) / f"commfor-fast-index-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    return folder if st.st_uid == os.getuid() and not os.path.islink(folder) else None


def _describe(root: Path, shards: list[tuple[str, int]]) -> list[Any] | None:
    """What a cache entry stands for: the layout version, the folder, and each shard's
    index file (name and sample count given) as it is now (size, mtime, inode); None if
    one cannot be looked at (building then names the problem)."""
    described: list[Any] = [CACHE_VERSION, str(Path(root).resolve())]
    for index, num_samples in shards:
        try:
            st = os.stat(Path(root) / index)
        except OSError:
            return None
        described.append([index, num_samples, st.st_size, st.st_mtime_ns, st.st_ino])
    return described


def _cache_key(described: list[Any]) -> str:
    """The name of the cache entry `described` (`_describe`)."""
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:32]


def _still_current(described: Any) -> bool:
    """Whether a recorded description (`_describe`) still holds for the files on disk.
    An index file that exists but cannot be looked at now (a network file system that
    does not answer) counts as current: a run may still be mapping its entry."""
    version, root, *shards = described
    if version != CACHE_VERSION:
        return False
    now = _describe(Path(root), [(index, n) for index, n, *_ in shards])
    if now is None:
        try:
            return all((Path(root) / index).exists() for index, *_ in shards)
        except OSError:
            return True
    return now == described


def _prune(folder: Path) -> None:
    """Remove the cache entries that no longer stand for their index files (a set
    converted again or deleted, see `_still_current`), entries of another layout or
    unreadable, and a killed writer's files. The caller holds the folder's lock, so
    no entry is being written."""
    for path in folder.iterdir():
        if path.suffix == ".tmp" or (path.suffix == ".npy" and not path.with_suffix(".json").exists()):
            path.unlink(missing_ok=True)
        elif path.suffix == ".json":
            try:
                current = _still_current(json.loads(path.read_text())["described"])
            except (OSError, ValueError, KeyError, TypeError):
                current = False
            if not current:
                path.with_suffix(".npy").unlink(missing_ok=True)
                path.unlink(missing_ok=True)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the cache folder: one process of the node builds an entry, the others wait for it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_cache(stem: Path, index: SetIndex, described: list[Any]) -> None:
    """Records first, then the patterns and what the entry stands for (`.json`): the
    json's presence marks a whole entry."""
    with atomic_write(stem.with_suffix(".npy")) as f:
        np.save(f, index.records)
    with atomic_write(stem.with_suffix(".json"), "w") as f:
        json.dump({"version": CACHE_VERSION, "patterns": index.patterns, "described": described}, f)


def _open_cached(stem: Path, shard_starts: np.ndarray) -> SetIndex:
    patterns = [tuple(p) for p in json.loads(stem.with_suffix(".json").read_text())["patterns"]]
    records = np.load(stem.with_suffix(".npy"), mmap_mode="r")
    if len(records) != int(shard_starts[-1]):
        raise ValueError(f"{stem}: a cache entry of {len(records)} samples for a set of {int(shard_starts[-1])}")
    return SetIndex(records, patterns, shard_starts, 0, stem)
