"""`commfor-fast verify DATA`: find shards that changed after conversion, byte for byte.

Per shard, against `manifest.json`: the tar exists with the recorded size and sha256;
its index parses, lists the recorded number of samples and only members inside the
tar; every sample's members agree with one another (the label in `.ids`, `.cls` and
`.json`, the sample number in `.ids` and the key, the generator id in `.ids` and the
generator named in `.json`, the size and header of pre-resized pixels). A flipped bit anywhere in a tar
fails its hash; the other checks say what it hit. Training runs the cheap part
(sizes) before every run, and the hashes with `--verify-hashes`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from commfor_fast.errors import UserError
from commfor_fast.fileio import sha256_file
from commfor_fast.progress import Progress
from commfor_fast.shards import (IDS_EXT, LABEL_EXT, MANIFEST_NAME, META_EXT, Manifest, ShardInfo, read_index,
                                 sample_ids_problem, set_problem, shard_file_problem, unpack_ids)


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


def verify_shards(data: Path, progress: bool = True) -> tuple[int, list[Damage]]:
    """Check every shard of a convert output folder; returns (shards checked, damaged ones)."""
    manifest = Manifest.load(data)
    shards = [shard for info in manifest.sets.values() for shard in info.shards]
    damaged = [Damage(MANIFEST_NAME, f"set {name}: {problem}") for name, info in manifest.sets.items()
               if (problem := set_problem(info))]
    with Progress(len(shards), "verify", unit="shard", enabled=progress) as bar:
        for shard in shards:
            problem = _shard_problem(Path(data), shard, manifest.generators)
            if problem:
                damaged.append(Damage(shard.tar, problem))
            bar.update(1, shard.bytes)
    return len(shards), damaged
