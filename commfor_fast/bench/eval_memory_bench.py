"""Evaluation memory: the process's resident memory after scoring 5k and 50k images.

Evaluation (and training's validation) scores every image of a set through
`evaluate.score_batches`, joins the ranks with `evaluate.gather_scores` and measures
the report with `metrics.evaluate`. Its memory must not grow with the number of
images beyond the scores themselves (24 bytes per image). This runs those three steps
on tiny images (3 x 32 x 32 float32, 12 kB each, in batches of 128, made fresh per
batch as a loader does) with a trivial model (the mean pixel is the logit), in a fresh
process per run, and reports the resident set size (RSS) before scoring, after, and
its peak, at each size (median of the repeats); the figure to watch is the growth
from the smaller to the larger size. The loaders' own memory (their shard index) is
not part of it.

    python -m commfor_fast.bench.eval_memory_bench [--sizes 5000,50000] [--repeats 3] [--out bench-output/eval_memory]

Prints a table and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from commfor_fast.bench.common import check_spread, machine, markdown_table, say

IMAGE_SIDE = 32
BATCH = 128
GENERATORS = 100
MODULE = "commfor_fast.bench.eval_memory_bench"  # run again per measurement, in a fresh process


def rss_mb() -> float:
    """This process's resident set size now, in MB (from /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


class _TinyImages:
    """An evaluation loader over `n` generated images: fresh tensors every batch, as a real loader's."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        import torch

        from commfor_fast.pipelines.batch import Batch

        for first in range(0, self.n, BATCH):
            numbers = torch.arange(first, min(first + BATCH, self.n))
            images = torch.rand(len(numbers), 3, IMAGE_SIDE, IMAGE_SIDE)
            yield Batch(images, (numbers % 2).float(), numbers % GENERATORS, numbers)

    def close(self) -> None:
        """Nothing to release."""


def measure_once(n: int) -> dict[str, float]:
    """Score, gather and measure `n` tiny images in this process; RSS before, after and at its peak."""
    import torch

    from commfor_fast.distributed import Dist
    from commfor_fast.evaluate import gather_scores, score_batches
    from commfor_fast.metrics import evaluate

    class MeanPixel(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.mean((1, 2, 3))[:, None] - 0.5

    model, device = MeanPixel(), torch.device("cpu")
    score_batches(model, _TinyImages(BATCH), "val", device=device, autocast_dtype=torch.bfloat16, use_amp=False)
    before = rss_mb()  # torch and the allocator warmed up by one batch
    mine = score_batches(model, _TinyImages(n), "val", device=device, autocast_dtype=torch.bfloat16, use_amp=False)
    scores = gather_scores(mine, Dist(rank=0, local_rank=0, world_size=1))[0]
    report = evaluate(scores.labels, scores.probabilities, scores.generator_ids, [f"g{i}" for i in range(GENERATORS)])
    after = rss_mb()
    assert report.n == n
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux
    return {"rss_before_mb": before, "rss_after_mb": after, "peak_rss_mb": peak}


def run(sizes: list[int], repeats: int) -> dict[str, Any]:
    """Every size `repeats` times, each in a fresh process; the medians and the growth per image."""
    rows = []
    for n in sizes:
        say(f"eval memory: scoring {n} tiny images, {repeats} fresh processes")
        runs = [json.loads(subprocess.run([sys.executable, "-m", MODULE, "--child", str(n)], check=True,
                                          capture_output=True, text=True).stdout) for _ in range(repeats)]
        check_spread(f"eval memory, RSS after {n} images", [r["rss_after_mb"] for r in runs], "MB")
        row: dict[str, Any] = {"images": n, **{k: statistics.median(r[k] for r in runs) for k in runs[0]}}
        row["growth_bytes_per_image"] = 1e6 * (row["rss_after_mb"] - row["rss_before_mb"]) / n
        rows.append(row)
    first, last = rows[0], rows[-1]
    return {"machine": machine(), "image": f"3x{IMAGE_SIDE}x{IMAGE_SIDE} float32", "batch": BATCH,
            "generators": GENERATORS, "repeats": repeats, "rows": rows,
            "rss_ratio_last_to_first": last["rss_after_mb"] / first["rss_after_mb"],
            "peak_ratio_last_to_first": last["peak_rss_mb"] / first["peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,50000", help="comma list of image counts")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per size (the median is reported)")
    parser.add_argument("--out", type=Path, default=Path("bench-output/eval_memory"), help="where results.json goes")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one measurement, as JSON on stdout
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure_once(args.child)))
        return
    results = run([int(s) for s in args.sizes.split(",")], args.repeats)
    columns = ["images", "rss_before_mb", "rss_after_mb", "peak_rss_mb", "growth_bytes_per_image"]
    print(markdown_table([{k: row[k] for k in columns} for row in results["rows"]], columns))
    print(f"RSS after scoring, largest / smallest size: {results['rss_ratio_last_to_first']:.3f} (peak "
          f"{results['peak_ratio_last_to_first']:.3f}); {results['image']} images, batch {BATCH}, median of "
          f"{args.repeats} processes; {results['machine']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
