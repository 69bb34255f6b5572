"""The settings of `commfor-fast convert`, and the checks that turn them into numbers.

One flat dataclass holds every option; the CLI fills it and the manifest records it.
Sizes stay human strings ("512MB") in the settings so the record reads as typed; the
checks here parse them once, before any work starts, so a typo fails in a second
instead of after an hour of planning.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from commfor_fast.sources.folders import DISCOVERY_RULES
from commfor_fast.errors import UserError
from commfor_fast.imageio import DEFAULT_MAX_PIXELS, RESIZE_FOR_CROP
from commfor_fast.settings import CheckMode

CHECK_MODES: tuple[str, ...] = get_args(CheckMode)


@dataclass
class ConvertSettings:
    """Everything `convert` needs; the CLI fills it from its flags."""

    # --- sources (at least one)
    hf_repo: str | None = None  # hub dataset id, a local folder laid out like the hub repo, or parquet file(s)/glob
    hf_split: str | None = None  # e.g. "Systematic+Manual"; may be omitted when the repo has one split
    cache_dir: Path | None = None  # Hugging Face cache for hub downloads (like the original's --cache_dir)
    folders: list[Path] = field(default_factory=list)  # roots laid out as ROOT/<generator>/<label dir>/<image>
    labels: str = "real:0,fake:1"  # label folder name -> label (exactly two; 0 = real, 1 = fake)
    # which files of a --folder are images: "broad" or "original" (sources/folders.py); not among
    # OUTPUT_SETTINGS: the fingerprint sees it through the files found
    discovery: str = "broad"
    # --- output
    out: Path = Path("shards")
    overwrite: bool = False  # replace a finished or partial conversion made with other settings
    # --- dataset shaping (SPEC section 1)
    val_frac: float = 0.01  # share of samples in the `val` set; 0 = one set called `all`
    seed: int = 0
    balance: bool = True  # limit local reals to (all fakes - HF reals) when HF and local data are combined
    balance_checked: bool = False  # count only fakes and HF reals that pass the image checks (checks them first)
    # --- shard layout
    shard_size: str = "512MB"  # target tar size: "512MB", "1GB", "2GiB" or plain bytes
    partition_size: str = "2GB"  # input bytes per unit of work (memory per worker is about this much)
    preresize: int | None = None  # store raw RGB pixels resized to this shorter side: 440 (crop 384) or 256 (crop 224)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are rejected as decompression bombs
    check: str = "full"  # "full": decode all compressed data of every image; "fast": file structure of verbatim PNG/JPEG
    dali_check: bool = False  # also decode every verbatim image with DALI's CPU decoder; reject what it refuses
    # --- execution
    workers: int = 0  # conversion processes; 0 = one per CPU core, as many as memory allows
    num_nodes: int = 1  # machines sharing the work; each converts partitions p with p % num_nodes == node_rank
    node_rank: int = 0
    verify_hashes: bool = False  # on resume, re-hash finished shards and their sources (sha256), not only sizes
    quiet: bool = False  # no progress or summary lines
    dry_run: bool = False  # scan and plan, print sources, balance, split, partitions and expected size; write nothing

    def record(self) -> dict[str, Any]:
        """The settings as plain JSON values (for the manifest)."""
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# Settings that change what is written; the rest (where to cache, how many processes,
# which node) only change how fast it is written, so nodes and reruns may differ there.
OUTPUT_SETTINGS = ("hf_repo", "hf_split", "folders", "labels", "val_frac", "seed", "balance", "balance_checked",
                   "shard_size", "partition_size", "preresize", "max_pixels", "check", "dali_check")
# Output settings added later, with the default that writes what earlier versions wrote.
ADDED_SETTINGS = {"balance_checked": False}


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(flag: str, value: str | int) -> int:
    """Bytes from "512MB" (decimal: 10^6), "2GiB" (binary: 2^30) or plain bytes."""
    match = _SIZE.match(str(value))
    if not match:
        raise UserError(f"{flag} {value!r}: not a size; write e.g. 512MB, 1GB, 2GiB or a number of bytes")
    number, prefix, binary = match.groups()
    size = int(float(number) * (1024 if binary else 1000) ** _POWERS[prefix.lower()])
    if size < 1:
        raise UserError(f"{flag} {value!r}: must be at least 1 byte")
    return size


def parse_labels(value: str) -> dict[str, int]:
    """Label folder name -> label from "real:0,fake:1" (exactly two names, values 0 and 1)."""
    fix = "write it like real:0,fake:1 (two folder names, one mapped to 0 = real and one to 1 = fake)"
    mapping: dict[str, int] = {}
    for item in value.split(","):
        name, sep, number = item.strip().rpartition(":")
        if not sep or not name or number.strip() not in ("0", "1") or name in mapping:
            raise UserError(f"--labels {value!r}: bad entry {item.strip()!r}; {fix}")
        mapping[name] = int(number)
    if len(mapping) != 2 or set(mapping.values()) != {0, 1}:
        raise UserError(f"--labels {value!r}: needs exactly two names with the values 0 and 1; {fix}")
    return mapping


# Words in a label folder's name that say which label it holds (the hint of `labels_hint`).
_LABEL_WORDS = {0: {"real", "reals", "genuine", "authentic", "natural", "nature", "pristine", "original"},
                1: {"fake", "fakes", "synthetic", "generated", "gen", "ai", "synth", "forged", "deepfake"}}


def labels_hint(labels: dict[str, int], folder: str) -> str:
    """The `--labels` that would take the label folder `folder` in, for an error message.

    `folder` replaces the name of the label its words say (`0_real` or `real_images`
    -> 0, `fake` or `generated` -> 1); with no such word, or words of both, both
    choices are shown, each with what it means.
    """
    words = set(re.split(r"[^a-z]+", folder.lower()))
    guessed = [label for label, known in _LABEL_WORDS.items() if words & known]

    def taking(label: int) -> str:
        kept = {name: value for name, value in labels.items() if value != label}
        return ",".join(f"{name}:{value}" for name, value in sorted({**kept, folder: label}.items(),
                                                                      key=lambda item: item[1]))

    if len(guessed) == 1:
        return f"--labels {taking(guessed[0])}"
    return f"--labels {taking(0)} if it holds real images, --labels {taking(1)} if fake"


# A worker holds its partition's stored samples plus decoded images: about this many
# times --partition-size (more with --preresize of small JPEGs, whose raw pixels are larger).
MEMORY_PER_PARTITION_BYTE = 3


# Where a container's memory limit shows: cgroup v2, then cgroup v1 (a huge number there means none).
CGROUP_MEMORY_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def read_cgroup_file(path: Path) -> str | None:
    """The text of a cgroup file, or None when it is not there (no such cgroup version)."""
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_memory_limit() -> int | None:
    """Bytes this process's container may use (its cgroup's limit); None when unlimited or unknown.

    In a container (Docker, Kubernetes, Slurm with cgroups) the host's RAM is not what
    the workers may use: going over the cgroup limit gets a worker OOM-killed.
    """
    for path in CGROUP_MEMORY_FILES:
        text = read_cgroup_file(path)
        if text is None:
            continue
        text = text.strip()
        return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit
    return None


def host_memory() -> int | None:
    """Bytes of RAM in the machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_workers(partition_bytes: int) -> int:
    """One worker per CPU core, but no more than the machine's memory, or its container's limit, holds."""
    cores = os.cpu_count() or 1
    known = [m for m in (host_memory(), cgroup_memory_limit()) if m]
    if not known:
        return cores
    return max(1, min(cores, min(known) // (MEMORY_PER_PARTITION_BYTE * partition_bytes)))


def resolve_sources(s: ConvertSettings) -> ConvertSettings:
    """The settings with local source paths made absolute and resolved; hub ids stay as given.

    The plan's fingerprint and the manifest record the sources, so the same data given
    as `data/` in one run and `/home/me/data` in the next must read the same, or the
    rerun would be refused as "other settings" (and `--overwrite` would delete
    finished work). An `--hf-repo` is local when it names an existing file or folder
    or is a glob of parquet files, exactly as `hf.find_parquet_files` decides.
    """
    hf_repo = s.hf_repo
    if hf_repo and (glob.has_magic(hf_repo) or Path(hf_repo).expanduser().exists()):
        hf_repo = str(Path(hf_repo).expanduser().resolve())
    folders = [Path(folder).expanduser().resolve() for folder in s.folders]
    return dataclasses.replace(s, hf_repo=hf_repo, folders=folders)


@dataclass(frozen=True)
class Limits:
    """The parsed numbers behind the settings, checked once."""

    labels: dict[str, int]
    shard_bytes: int
    partition_bytes: int
    workers: int


def check_settings(s: ConvertSettings) -> Limits:
    """Check every setting that needs no file access; raise `UserError` naming the flag."""
    if not s.hf_repo and not s.folders:
        raise UserError("no source given; pass --hf-repo (a hub dataset id, repo folder or parquet files) "
                        "and/or --folder ROOT (repeatable)")
    if s.hf_split is not None and not s.hf_repo:
        raise UserError(f"--hf-split {s.hf_split!r} needs --hf-repo; add the repo or drop --hf-split")
    if not 0 <= s.val_frac < 1:
        raise UserError(f"--val-frac {s.val_frac}: must be in [0, 1); e.g. 0.01, or 0 for no validation set")
    if s.seed < 0:
        raise UserError(f"--seed {s.seed}: must be >= 0")
    if s.preresize is not None and s.preresize not in RESIZE_FOR_CROP.values():
        usable = " or ".join(f"{size} (crop {crop})" for crop, size in RESIZE_FOR_CROP.items())
        raise UserError(f"--preresize {s.preresize}: the pipelines can only use {usable}, the shorter side "
                        "they resize to first; pick the one for your --input-size, or leave --preresize out")
    if s.max_pixels < 1:
        raise UserError(f"--max-pixels {s.max_pixels}: must be positive; the default is {DEFAULT_MAX_PIXELS}")
    if s.discovery not in DISCOVERY_RULES:
        raise UserError(f"--discovery {s.discovery!r}: choose one of {', '.join(DISCOVERY_RULES)}")
    if s.check not in CHECK_MODES:
        raise UserError(f"--check {s.check!r}: choose one of {', '.join(CHECK_MODES)}")
    if s.workers < 0:
        raise UserError(f"--workers {s.workers}: must be >= 0 (0 = one per CPU core)")
    if s.num_nodes < 1 or not 0 <= s.node_rank < s.num_nodes:
        raise UserError(f"--num-nodes {s.num_nodes} --node-rank {s.node_rank}: need num_nodes >= 1 and "
                        f"0 <= node_rank < num_nodes")
    partition_bytes = parse_size("--partition-size", s.partition_size)
    return Limits(
        labels=parse_labels(s.labels),
        shard_bytes=parse_size("--shard-size", s.shard_size),
        partition_bytes=partition_bytes,
        workers=s.workers or default_workers(partition_bytes),
    )
