"""The command line of a pipeline, host or training benchmark run on its own.

`python -m commfor_fast.bench.pipeline_bench [--quick] [--shards ...]`: the data
(`data.bench_shards`, or the given convert outputs), one benchmark, one Markdown
table. `commfor-fast bench` runs them all instead (`run_all`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from commfor_fast.bench.common import machine, markdown_table
from commfor_fast.bench.data import bench_shards


def bench_main(doc: str, title: str, run: Callable[[dict[str, Path], bool, int], list[dict[str, object]]],
               columns: list[str]) -> None:
    """Parse the flags, get the shards, run one benchmark and print its table (its module's `__main__`)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a reduced set")
    parser.add_argument("--shards", type=Path, nargs="*", help="convert output folders (default: generated)")
    parser.add_argument("--work", type=Path, default=Path("bench-output/data"), help="where generated data goes")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per engine")
    args = parser.parse_args()
    shards = {p.name: p for p in args.shards} if args.shards else bench_shards(args.work, quick=args.quick)
    rows = run(shards, args.quick, args.threads)
    print(f"# {title} ({machine()})\n")
    print(markdown_table(rows, columns))
