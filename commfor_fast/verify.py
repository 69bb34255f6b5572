"""`commfor-fast verify DATA`: find shards that changed after conversion, byte for byte.

Per shard, against `manifest.json`: the tar exists with the recorded size and sha256;
its index parses, lists the recorded number of samples and only members inside the
tar; every sample's members agree with one another (the label in `.ids`, `.cls` and
`.json`, the sample number in `.ids` and the key, the generator id in `.ids` and the
generator named in `.json`, the size and header of pre-resized pixels). A flipped bit anywhere in a tar
fails its hash; the other checks say what it hit. Training runs the cheap part
(sizes) before every run, and the hashes with `--verify-hashes`.

Shards are checked on one thread per core (sha256 and reads release the GIL), and
under torchrun every rank checks its share (`verify_for_training`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from commfor_fast.errors import UserError
from commfor_fast.fileio import sha256_file
from commfor_fast.progress import Progress
from commfor_fast.shards import (IDS_EXT, LABEL_EXT, MANIFEST_NAME, META_EXT, Manifest, ShardInfo, read_index,
                                 sample_ids_problem, set_problem, shard_file_problem, unpack_ids)
from commfor_fast.threads import default_threads, map_threads

if TYPE_CHECKING:
    from commfor_fast.distributed import Dist


@dataclass(frozen=True)
class Damage:
    """One damaged shard: its tar (relative to the data folder) and what is wrong."""

    shard: str
    problem: str


def _sample_problem(members: dict[str, bytes], key: str, generators: list[str]) -> str | None:
    """What disagrees between the members of one sample; None if they agree."""
    missing = [ext for ext in (LABEL_EXT, IDS_EXT, META_EXT) if ext not in members]
    if missing or len(members) != 4:
        return f"sample {key}: members {sorted(members)} (expected an image, cls, ids and json)"
    try:
        label = int(members[LABEL_EXT])
        meta = json.loads(members[META_EXT])
    except ValueError as exc:  # json.JSONDecodeError and bad ints are ValueErrors
        return f"sample {key}: unreadable cls/json ({exc})"
    problem = sample_ids_problem(members, key)  # what the loaders check too: number, size, pixels
    if problem:
        return f"sample {key}: {problem}"
    ids = unpack_ids(members[IDS_EXT])
    if not ids.label == label == meta.get("label"):
        return f"sample {key}: labels disagree (ids {ids.label}, cls {label}, json {meta.get('label')})"
    if not ids.generator_id < len(generators) or generators[ids.generator_id] != meta.get("generator"):
        return f"sample {key}: generator id {ids.generator_id} is not {meta.get('generator')!r}"
    return None


def _shard_problem(root: Path, shard: ShardInfo, generators: list[str]) -> str | None:
    """The first thing wrong with one shard, cheapest checks first; None if it is intact."""
    tar = root / shard.tar
    found = shard_file_problem(root, shard)
    if found:
        return f"{found[0].name}: {found[1]}"
    try:
        problem = None if sha256_file(tar) == shard.sha256 else "sha256 differs from manifest.json (bytes changed)"
    except OSError as exc:
        return f"{tar.name}: cannot be read ({exc.strerror or exc})"
    try:
        samples = read_index(root / shard.index)
    except UserError as exc:
        return str(exc)
    if len(samples) != shard.num_samples:
        return f"index lists {len(samples)} samples, manifest.json {shard.num_samples}"
    with open(tar, "rb") as f:
        for members in samples:
            key = next(iter(members.values())).filename.split(".", 1)[0]
            if any(m.offset + m.size > shard.bytes for m in members.values()):
                return f"sample {key}: index points past the end of the tar"
            data = {}
            for ext, m in members.items():
                f.seek(m.offset)
                data[ext] = f.read(m.size)
            found = _sample_problem(data, key, generators)
            if found:
                return f"{problem}; {found}" if problem else found
    return problem


def check_shards(root: Path, shards: list[ShardInfo], generators: list[str], *, threads: int = 0,
                 progress: bool = True) -> list[Damage]:
    """The damaged ones among `shards` of the data folder `root`, in the order given,
    checked on `threads` threads (0: one per core; `threads.map_threads`)."""
    with Progress(len(shards), "verify", unit="shard", enabled=progress) as bar:
        problems = map_threads(lambda shard: _shard_problem(root, shard, generators), shards,
                               threads or default_threads(), bar, nbytes=lambda shard: shard.bytes)
        if progress and not bar.live:
            print(bar.line(), file=sys.stderr, flush=True)  # the rate reached: shards/s and MB/s
    return [Damage(shard.tar, problem) for shard, problem in zip(shards, problems) if problem]


def verify_shards(data: Path, progress: bool = True, threads: int = 0, rank: int = 0,
                  world_size: int = 1) -> tuple[int, list[Damage]]:
    """Check every shard of a convert output folder; returns (shards checked, damaged ones).

    With `world_size` > 1 this process checks only every `world_size`-th shard from
    `rank` on (the manifest's set counts are checked by rank 0): several ranks share
    the work, and `verify_for_training` combines their findings.
    """
    manifest = Manifest.load(data)
    shards = [shard for info in manifest.sets.values() for shard in info.shards][rank::world_size]
    damaged = [Damage(MANIFEST_NAME, f"set {name}: {problem}") for name, info in manifest.sets.items()
               if rank == 0 and (problem := set_problem(info))]
    damaged += check_shards(Path(data), shards, manifest.generators, threads=threads, progress=progress)
    return len(shards), damaged


def verify_for_training(data: Path, env: Dist) -> None:
    """`train --verify-hashes`: every rank checks its share of the shards (`verify_shards`),
    then all learn what any found; raises the same `UserError` on every rank if a shard
    is damaged. Called after the process group is up, by every rank: the wait for the
    slowest share is covered by the process group's timeout (`distributed.COLLECTIVE_TIMEOUT`)."""
    from commfor_fast.distributed import all_gather

    checked, damaged = verify_shards(data, progress=env.is_main, rank=env.rank, world_size=env.world_size)
    found = all_gather((checked, damaged), env)
    checked = sum(n for n, _ in found)
    damaged = [d for _, part in found for d in part]
    if damaged:
        raise UserError(f"--verify-hashes: {len(damaged)} of {checked} shards in {data} are damaged, e.g. "
                        f"{damaged[0].shard}: {damaged[0].problem}; `commfor-fast verify {data}` lists them all. "
                        "Re-run the convert command recorded in its manifest.json to redo them")
