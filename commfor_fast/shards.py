"""The shard format: what `convert` writes and every reader relies on.

An output folder of `commfor-fast convert` holds:

    manifest.json                      written last: its presence means "complete"
    README.md                          a dataset card: `datasets.load_dataset(OUT)` reads the folder
    generators.csv                     every generator (id, name, images per label and set)
    train/shard-00000-000.tar          WebDataset tar files (one folder per set:
    train/shard-00000-000.tar.idx      `train` and `val`, or `all` without a split),
                                       named by partition and shard within it
    ...

Each sample is a group of tar members sharing one key (`0000000042`, the sample's
number within its set):

    KEY.image                          the image bytes as the source held them (JPEG, PNG,
                                       WebP, BMP or TIFF; other formats as a lossless PNG),
                                       or the pixels resized by `--preresize`: a binary
                                       PPM (P6) whose header is always RAW_HEADER_BYTES
    KEY.cls                            the label as ASCII ("0" real, "1" fake)
    KEY.ids                            5 little-endian int32: label, generator id,
                                       sample number, stored height, stored width
    KEY.json                           metadata: generator, source, original name,
                                       format and size, HF columns, conversions

The image member has one name whatever its format, so that Hugging Face `datasets`,
which makes a column of each member suffix, gives one `image` column (v2 had a member
and a column per format, `.jpg`, `.png`, ..., empty in all but one); the json records
each sample's format. webdataset's decoders choose by suffix: give them the suffix
(`wds.imagehandler("pil", ["image"])`). DALI's readers take any suffix, and its
decoders read the format from the bytes.

The `.idx` file beside each tar is DALI's webdataset index (version v1.2: one line
per sample listing `ext offset size filename` for every member), so DALI never has
to scan a tar at start-up. `ShardReader` gives random access through the same index,
held as flat arrays mapped once per node (`shard_index.py`: 29 bytes per sample,
built from the `.idx` files into a cache file on first use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import struct
import threading
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from commfor_fast.errors import UserError
from commfor_fast.fileio import atomic_write

FORMAT_NAME = "commfor-fast-shards"
# 2: pre-resized pixels as `.npy` (were headerless `.rgb`); a dataset card. 3: one image
# member, `.image`, whatever the format; pre-resized pixels as PPM (were `.npy`)
FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
CARD_NAME = "README.md"  # the dataset card for Hugging Face `datasets` (convert/card.py)
GENERATORS_NAME = "generators.csv"  # every generator with its counts, beside the card (convert/card.py)
INDEX_VERSION = "v1.2"
INDEX_SUFFIX = ".idx"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # `owner/name`: how a hub dataset is given to --hf-repo

IMAGE_EXT = "image"
# Every pre-resized image member is a PPM whose header (padded with a comment) has
# exactly this many bytes, so readers find the pixels at a constant offset.
RAW_HEADER_BYTES = 128
RAW_FORMAT = "ppm"  # how the manifest's `stored` counts and a sample's json name pre-resized pixels
LABEL_EXT = "cls"
IDS_EXT = "ids"
META_EXT = "json"

_IDS = struct.Struct("<5i")


class SampleIds(NamedTuple):
    """The fixed-size integer record of a sample (`KEY.ids`), read by DALI as int32[5]."""

    label: int
    generator_id: int
    sample_number: int
    height: int
    width: int


def pack_ids(ids: SampleIds) -> bytes:
    return _IDS.pack(*ids)


def unpack_ids(data: bytes) -> SampleIds:
    return SampleIds(*_IDS.unpack(data))


def sample_key(number: int) -> str:
    """Tar key of a sample: its number within the set, zero-padded (sorts naturally)."""
    return f"{number:010d}"


# --------------------------------------------------------------------------- index


@dataclass(frozen=True)
class Member:
    """One tar member of a sample, as the DALI index records it."""

    ext: str
    offset: int  # byte offset of the member's data (after its 512-byte header)
    size: int
    filename: str


def format_index(samples: list[list[Member]]) -> str:
    """DALI webdataset index text (v1.2) for the samples of one tar, in tar order."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for members in samples:
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.filename}" for m in members))
    return "\n".join(lines) + "\n"


def not_regular(path: Path) -> str | None:
    """Why `path` cannot be read as a file without blocking: missing, or a FIFO, a device
    or a folder in its place (opening a FIFO waits for a writer forever); None if it can."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None if stat.S_ISREG(mode) else "not a regular file (a FIFO, device or folder is in its place)"


def damaged_index_line(path: Path, line: int, what: str) -> UserError:
    """The one-line error for a damaged line of a shard index (`line` counts from 1, the header)."""
    return UserError(f"{path}: damaged index line {line} ({what}); re-run the convert command recorded in "
                     f"{MANIFEST_NAME} (it redoes the damaged partitions)")


def read_index(path: Path) -> list[dict[str, Member]]:
    """Parse a v1.2 index: for each sample, its members by extension."""
    problem = not_regular(path)
    if problem:
        raise UserError(f"shard index {path}: {problem}; re-run the convert command recorded in {MANIFEST_NAME}")
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, ValueError) as exc:  # ValueError: bytes that are not UTF-8
        raise UserError(f"cannot read shard index {path}: {exc}; re-run `commfor-fast convert`") from None
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != INDEX_VERSION:
        raise UserError(f"{path} is not a DALI {INDEX_VERSION} index; re-run `commfor-fast convert`")
    samples = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) % 4:
            raise UserError(f"{path}: malformed index line {line!r}; re-run `commfor-fast convert`")
        members = {}
        for i in range(0, len(fields), 4):
            ext, off, size, name = fields[i : i + 4]
            if not (off.isdigit() and size.isdigit()):  # a damaged line: offsets and sizes are whole numbers
                raise damaged_index_line(path, len(samples) + 2, repr(line[:80]))
            members[ext] = Member(ext, int(off), int(size), name)
        samples.append(members)
    if not header[1].isdigit() or len(samples) != int(header[1]):
        raise UserError(f"{path}: header says {header[1]} samples, found {len(samples)}")
    return samples


# ------------------------------------------------------------------------ manifest


@dataclass
class ShardInfo:
    """One tar file of a set (paths relative to the output folder)."""

    tar: str
    index: str
    num_samples: int
    bytes: int
    sha256: str


@dataclass
class SetInfo:
    """One shard set (`train`, `val` or `all`) and its statistics."""

    num_samples: int
    shards: list[ShardInfo]
    # generator name -> label ("0"/"1") -> count
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    # original format (e.g. "PNG") -> label -> count: format bias is a known shortcut
    formats: dict[str, dict[str, int]] = field(default_factory=dict)
    # original resolution bucket (e.g. "512x512") -> label -> count
    resolutions: dict[str, dict[str, int]] = field(default_factory=dict)
    # stored form of the image member (verbatim "jpg", "png", ..., or "ppm" pre-resized) -> label -> count
    stored: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Manifest:
    """Everything about a converted dataset; `manifest.json` is written last. It names no
    local folder (`portable.py`: an absolute path by its last component, a reject's file
    below its source), so a copied folder reads the same anywhere."""

    package_version: str
    command: str  # the exact command line that produced the folder
    settings: dict[str, Any]  # the convert settings, as given (absolute paths by their last component)
    seed: int
    preresize: int | None  # shorter side of stored raw pixels; None = images verbatim
    generators: list[str]  # generator id -> name (sorted by name)
    sets: dict[str, SetInfo]
    sources: list[dict[str, Any]] = field(default_factory=list)
    balance: dict[str, Any] | None = None  # water-filling report, per real dataset
    rejects: list[dict[str, str]] = field(default_factory=list)  # {"item", "reason"} (+ "image_name" for HF rows)
    normalised: dict[str, int] = field(default_factory=dict)  # reason -> count (stored as PNG)
    warnings: list[str] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # who converted what (`convert/merge.py`)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    # -- names of the sets a training or evaluation run reads

    def training_sets(self) -> tuple[str, str | None]:
        """(set to train on, set to validate on or None)."""
        if "train" in self.sets:
            return "train", ("val" if "val" in self.sets else None)
        return "all", None

    def hub_datasets(self) -> list[str]:
        """The Hugging Face dataset ids this conversion read (`--hf-repo owner/name`), not
        local replicas or parquet files: what the dataset and model cards cite."""
        return sorted({str(s["repo"]) for s in self.sources if s.get("kind") == "hf" and
                       HUB_ID.fullmatch(str(s.get("repo"))) and not str(s["repo"]).startswith(".")
                       and not Path(str(s["repo"])).exists()})

    def fingerprint(self) -> str:
        """A short hash of the shards' bytes (every shard's sha256, set by set): data
        converted again at the same path, from other sources or settings, has another."""
        digest = hashlib.sha256()
        for name, info in sorted(self.sets.items()):
            digest.update(name.encode())
            for shard in info.shards:
                digest.update(shard.sha256.encode())
        return digest.hexdigest()[:16]

    # -- (de)serialisation

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Manifest:
        """The manifest in parsed JSON; keys it does not know (a later release's) are
        ignored, a missing or mistyped key is a `ValueError` naming it."""
        return _typed(data, cls, "")

    def save(self, folder: Path) -> Path:
        """Write `manifest.json` atomically (a reader never sees half a manifest)."""
        return write_json_atomic(Path(folder) / MANIFEST_NAME, self.to_json())

    @classmethod
    def load(cls, folder: Path | str) -> Manifest:
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise UserError(f"--data {folder}: no such folder; pass the --out folder of `commfor-fast convert`")
        if not path.is_file():
            raise UserError(
                f"--data {folder}: no {MANIFEST_NAME} there. Pass the --out folder of `commfor-fast convert`; "
                "if a conversion into it was interrupted, re-run the same convert command to finish it"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:  # JSONDecodeError and bytes that are not UTF-8 are ValueErrors
            raise UserError(f"{path} is unreadable ({exc}); re-run `commfor-fast convert`") from None
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a manifest (its JSON is a {type(data).__name__}, not an object); re-run "
                            "the convert command that made the folder")
        if data.get("format") != FORMAT_NAME or data.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{path} is not a {FORMAT_NAME} v{FORMAT_VERSION} manifest "
                f"(found {data.get('format')} v{data.get('format_version')}); re-convert with this version"
            )
        try:
            return cls.from_json(data)
        except ValueError as exc:
            raise UserError(f"{path}: {exc}; re-run the convert command that made the folder (it rebuilds "
                            f"{MANIFEST_NAME})") from None


def _typed(value: Any, hint: Any, where: str) -> Any:
    """`value` (parsed JSON) checked against the type `hint`, dataclasses built on the way.

    Raises `ValueError` naming the key path (`sets.all.shards[3].bytes`) of the first
    value of the wrong type or dataclass field that is missing; unknown keys of a
    dataclass are dropped."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where or 'the manifest'} is a {type(value).__name__}, not an object")
        hints = typing.get_type_hints(hint)
        given = {}
        for f in dataclasses.fields(hint):
            key = f"{where}.{f.name}" if where else f.name
            if f.name in value:
                given[f.name] = _typed(value[f.name], hints[f.name], key)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"the key {key} is missing")
        return hint(**given)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _typed(value, option, where)
            except ValueError:
                continue
        raise ValueError(f"{where} is {json.dumps(value)[:40]}, not {' or '.join(_json_name(a) for a in args)}")
    if hint is Any:
        return value
    if origin is list and isinstance(value, list):
        return [_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return {k: _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    plain = origin or hint
    if plain in (list, dict) or not isinstance(value, plain) or (plain is int and isinstance(value, bool)):
        raise ValueError(f"{where} is {json.dumps(value)[:40]}, not {_json_name(hint)}")
    return value


def _json_name(hint: Any) -> str:
    """How a type reads in an error about JSON: an integer, an object, a list, ..."""
    plain = typing.get_origin(hint) or hint
    return {int: "an integer", str: "a string", list: "a list", dict: "an object", float: "a number",
            type(None): "null"}.get(plain, getattr(plain, "__name__", str(plain)))


def other_conversion(folder: Path) -> str:
    """What the conversion in `folder` is, to say why it is not this one: one of an older
    (or newer) shard format, named by the version its manifest records, else one of
    other settings or sources."""
    try:
        recorded = json.loads((folder / MANIFEST_NAME).read_text()).get("format_version")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded is not None and recorded != FORMAT_VERSION:
        return (f"shards written by an earlier or later commfor-fast, in format v{recorded} (this version reads "
                f"and writes v{FORMAT_VERSION}), so they must be converted again")
    return "a conversion with other settings or other source files"


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON so that readers never see half a file (`fileio.atomic_write`)."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    return Path(path)


# ------------------------------------------------------------------- quick check

INDEX_TAIL_BYTES = 4096  # enough for the last line of an index (a sample's four members)


def damaged_shard(root: Path, path: Path, problem: str) -> UserError:
    """The one-line error for a file of the shard folder `root` that no longer matches its manifest."""
    return UserError(f"{path}: {problem}. The shards were damaged after conversion: run `commfor-fast verify "
                     f"{root}` to list every damaged shard, then re-run the convert command recorded in its "
                     f"{MANIFEST_NAME} (it redoes only the damaged partitions)")


def check_shard_files(root: Path | str, info: SetInfo) -> None:
    """Check every shard and index of a set against the manifest, without reading them.

    Per shard: the tar exists with the recorded size; the index exists, its header
    names the recorded number of samples, and its last line is whole and points
    inside the tar. A few small reads per shard: milliseconds for thousands of
    shards. Raises `UserError` naming the first damaged file.
    """
    root = Path(root)
    problem = set_problem(info)
    if problem:
        raise UserError(f"{root / MANIFEST_NAME}: {problem}. Re-run the convert command recorded in it (it "
                        f"rebuilds {MANIFEST_NAME} from the partitions' records)")
    for shard in info.shards:
        found = shard_file_problem(root, shard)
        if found:
            raise damaged_shard(root, *found)


def set_problem(info: SetInfo) -> str | None:
    """What disagrees within a set's record in the manifest: its sample count and the sum
    of its shards' counts (loaders index samples by both); None if they agree."""
    listed = sum(shard.num_samples for shard in info.shards)
    if info.num_samples != listed:
        return f"a set of {info.num_samples} samples, but its shards hold {listed}"
    return None


def shard_file_problem(root: Path, shard: ShardInfo) -> tuple[Path, str] | None:
    """The damaged file of one shard (tar or index) and what is wrong, by the checks of
    `check_shard_files`; None if both look as the manifest says."""
    tar, index = root / shard.tar, root / shard.index
    problem = not_regular(tar)
    if problem:
        return tar, problem
    size = tar.stat().st_size
    if size != shard.bytes:
        return tar, f"{size} bytes, but {MANIFEST_NAME} lists {shard.bytes}"
    problem = _index_problem(index, shard)
    return (index, problem) if problem else None


def _index_problem(index: Path, shard: ShardInfo) -> str | None:
    """What is wrong with a shard's index, judged by its first and last line; None if nothing."""
    problem = not_regular(index)
    if problem:
        return problem
    try:
        with open(index, "rb") as f:
            head = f.read(64).split(b"\n", 1)[0].split()
            f.seek(max(f.seek(0, os.SEEK_END) - INDEX_TAIL_BYTES, 0))
            tail = f.read()
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if head != [INDEX_VERSION.encode(), str(shard.num_samples).encode()]:
        first = b" ".join(head)[:40].decode(errors="replace")
        return f"not a DALI {INDEX_VERSION} index of {shard.num_samples} samples (its first line is {first!r})"
    if shard.num_samples == 0:
        return None
    fields = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].split()
    try:
        if not tail.endswith(b"\n") or not fields or len(fields) % 4:
            raise ValueError
        end = max(int(fields[i + 1]) + int(fields[i + 2]) for i in range(0, len(fields), 4))
    except ValueError:
        return "cut short or damaged (its last line is not a whole sample)"
    if end > shard.bytes:
        return f"points past the end of its tar ({end} > {shard.bytes} bytes)"
    return None


def check_generator_ids(generator_ids: Any, manifest: Manifest, root: Path | str) -> None:
    """Refuse scored samples whose `.ids` generator id is not an index of the manifest's
    generators (a damaged record that `ShardReader` cannot judge without the manifest)."""
    bad = [int(g) for g in generator_ids if not 0 <= int(g) < len(manifest.generators)]
    if bad:
        raise DataError(f"{root}: a sample's .ids record holds the generator id {bad[0]}, but {MANIFEST_NAME} "
                        f"names {len(manifest.generators)} generators. The shards were damaged after conversion: "
                        f"run `commfor-fast verify {root}` to list every damaged shard, then re-run the convert "
                        f"command recorded in its {MANIFEST_NAME}")


# -------------------------------------------------------------------------- reader


class DataError(UserError):
    """A sample in the shards cannot be used at training or evaluation time (damaged after conversion)."""


def open_input(path: Path) -> Any:
    """Open a file of the shard folder for reading; a refusal (permissions) is a one-line
    `DataError` about reading it, not advice about the output folder."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; give this user read permission on the data "
                        f"folder (or re-run the convert command recorded in its {MANIFEST_NAME})") from None


MAX_STORED_SIDE = 1 << 20  # longer than any side `convert` lets through (its pixel limit)


def sample_ids_problem(members: dict[str, bytes], key: str) -> str | None:
    """What is wrong with a sample's `.ids` record (and its pre-resized pixels, which the
    record describes); None if it can be used. Damage here would otherwise surface as a
    DALI slice error, an IndexError of the generator table or a wrong sample number."""
    from commfor_fast.imageio import BadImage, decode_raw, is_raw

    try:
        ids = unpack_ids(members[IDS_EXT])
    except struct.error:
        return f"its .ids record has {len(members[IDS_EXT])} bytes, not {_IDS.size}"
    if ids.label not in (0, 1):
        return f"its .ids record holds the label {ids.label}"
    if sample_key(ids.sample_number) != key:
        return f"its .ids record names sample {ids.sample_number}, its key is {key}"
    if ids.generator_id < 0:
        return f"its .ids record holds the generator id {ids.generator_id}"
    if not (0 < ids.height <= MAX_STORED_SIDE and 0 < ids.width <= MAX_STORED_SIDE):
        return f"its .ids record holds the image size {ids.height}x{ids.width}"
    if is_raw(members.get(IMAGE_EXT, b"")):
        try:
            decode_raw(members[IMAGE_EXT], ids.height, ids.width)
        except BadImage as exc:
            return f"its pixels do not match its .ids record ({exc})"
    return None


def shard_range(num_samples: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """[start, end) of the samples process `shard_id` of `num_shards` reads in evaluation
    (contiguous parts, as DALI's readers split a set; no padding)."""
    return num_samples * shard_id // num_shards, num_samples * (shard_id + 1) // num_shards



class ShardReader:
    """Random access to the samples of one set through the index files.

    Sample `i` is the i-th sample in shard order (shards as listed in the manifest,
    samples in tar order). The index is flat arrays mapped once per node
    (`shard_index.py`); reads are plain `pread`s at the indexed offsets. With `part`
    (samples [start, end), an evaluation rank's `shard_range`), only that part is read.
    """

    def __init__(self, root: Path | str, info: SetInfo, part: tuple[int, int] | None = None) -> None:
        from commfor_fast.shard_index import load_index

        self.root = Path(root)
        self.info = info
        self.index = load_index(self.root, info, part)
        self._files: dict[int, Any] = {}
        self._opening = threading.Lock()

    def __len__(self) -> int:
        return self.index.num_samples

    def shard_of(self, i: int) -> str:
        return self.info.shards[self.index.shard_no(i)].tar

    def members(self, i: int) -> dict[str, Member]:
        return self.index.members(i)

    def position(self, key: str) -> int | None:
        """Where the sample with tar key `key` is, or None."""
        return self.index.position(int(key)) if key.isdigit() and len(key) == len(sample_key(0)) else None

    def read(self, i: int, exts: tuple[str, ...] | None = None) -> dict[str, bytes]:
        """The members of sample `i` (all, or only `exts`), by extension. Threads may
        read at once: reads are `pread`s, and a shard is opened once, under a lock."""
        shard_no = self.index.shard_no(i)
        f = self._files.get(shard_no)
        if f is None:
            with self._opening:
                f = self._files.get(shard_no)
                if f is None:
                    f = self._files[shard_no] = open_input(self.root / self.info.shards[shard_no].tar)
        out = {}
        for ext, offset, size in self.index.spans(i):
            if exts is None or ext in exts:
                out[ext] = os.pread(f.fileno(), size, offset)
        if IDS_EXT in out:
            key = sample_key(self.index.number(i))
            problem = sample_ids_problem(out, key)
            if problem:
                raise DataError(f"sample {key} in {self.info.shards[shard_no].tar}: {problem}. The shards were "
                                f"damaged after conversion: run `commfor-fast verify {self.root}` to list every "
                                f"damaged shard, then re-run the convert command recorded in its {MANIFEST_NAME}")
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __getstate__(self) -> dict[str, Any]:
        # Open files and locks do not cross process boundaries (DataLoader workers reopen them).
        return {key: value for key, value in self.__dict__.items() if key not in ("_files", "_opening")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _files={}, _opening=threading.Lock())
