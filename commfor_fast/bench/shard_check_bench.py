"""The shard check before a pipeline starts: its wall time per shard.

Every loader checks the shards of its set against the manifest first
(`shards.check_shard_files`: the tar's size, the index's first and last line), so a
damaged shard stops a run with one line instead of a DALI error mid-epoch. The tests
hold how little it reads; this times it, on a set that lists the shards of one small
convert output over and over (2 000 entries by default, a 1 TB dataset at 512 MB per
shard), and prints the median of five repeats after a warm-up. It also times `verify`
(sha256 and every sample's records) on one thread and on one per core, over the same
shards listed until they add up to `--verify-mb` (read from the page cache: the
hashing rate, not the disk's).

    python -m commfor_fast.bench.shard_check_bench [--shards 2000] [--verify-mb 1000] [--work bench-output/data]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from commfor_fast.bench.common import check_spread, machine
from commfor_fast.shards import Manifest, SetInfo, check_shard_files
from commfor_fast.threads import default_threads
from commfor_fast.verify import check_shards


def time_check(shards: Path, count: int, repeats: int = 5) -> float:
    """Median wall seconds of `check_shard_files` over `count` entries cycling through the
    shards of the `all` set of the convert output `shards`."""
    info = Manifest.load(shards).sets["all"]
    listed = [info.shards[i % len(info.shards)] for i in range(count)]
    many = SetInfo(num_samples=sum(shard.num_samples for shard in listed), shards=listed)

    check_shard_files(shards, many)  # warm-up: the file system's caches
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        check_shard_files(shards, many)
        walls.append(time.perf_counter() - started)
    check_spread(f"shard check of {count} shards", walls, "s")
    return statistics.median(walls)


def time_verify(shards: Path, total_mb: int, threads: int, repeats: int = 3) -> float:
    """Median GB/s of `verify.check_shards` on `threads` threads over the shards of the
    `all` set of `shards`, listed over and over up to `total_mb` MB."""
    manifest = Manifest.load(shards)
    info = manifest.sets["all"]
    many, nbytes = [], 0
    while nbytes < total_mb * 1e6:
        many.append(info.shards[len(many) % len(info.shards)])
        nbytes += many[-1].bytes
    check_shards(shards, info.shards, manifest.generators, threads=threads, progress=False)  # warm-up
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        assert not check_shards(shards, many, manifest.generators, threads=threads, progress=False)
        walls.append(time.perf_counter() - started)
    check_spread(f"verify on {threads} thread(s)", walls, "s")
    return nbytes / 1e9 / statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2000, help="shard entries in the checked set")
    parser.add_argument("--verify-mb", type=int, default=1000, help="MB of shards `verify` hashes per repeat")
    parser.add_argument("--work", type=Path, default=Path("bench-output/data"), help="where generated data goes")
    args = parser.parse_args()
    from commfor_fast.bench.data import bench_shards

    shards = next(iter(bench_shards(args.work, quick=True, tiny=True).values()))
    for threads in sorted({1, default_threads()}):
        rate = time_verify(shards, args.verify_mb, threads)
        print(f"verify: {rate:.2f} GB/s on {threads} thread(s) (median of 3, {args.verify_mb} MB from the page "
              f"cache; {machine()})")
    seconds = time_check(shards, args.shards)
    print(f"shard check: {args.shards} shards in {seconds:.3f} s, {1e6 * seconds / args.shards:.0f} us per shard "
          f"(median of 5; {machine()})")


if __name__ == "__main__":
    main()
