"""Hugging Face `datasets` reading a convert output folder: load, then every image as pixels.

What a user of the dataset card does: `datasets.load_dataset(OUT)` (the builder reads
the tars into its Arrow cache) and then reads each row's `image` column as a uint8
array. This times both on the benchmark images (1024-px demo scenes) stored verbatim
as PNG and pre-resized to a shorter side of 440 (`--preresize 440`: PPM members), with
a fresh cache for every repeat (a first load, not a cached one), and prints the median
wall and CPU seconds per image of each. Format v2 stored the pre-resized pixels as
`.npy`, which the builder turns into nested lists: 640 such images took 363 s to load.

    python -m commfor_fast.bench.hf_load_bench [--images 160] [--repeats 3] [--out bench-output/hf_load]

Prints a table and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from commfor_fast.bench.common import machine, markdown_table, measure, say
from commfor_fast.convert.card import SPLIT_NAMES


def load_all(shards: Path, cache: Path) -> int:
    """Load `shards` through its card into an empty cache `cache` and read every image
    as a uint8 array; returns the number of images."""
    import datasets

    shutil.rmtree(cache, ignore_errors=True)
    rows = datasets.load_dataset(str(shards), cache_dir=str(cache))[SPLIT_NAMES["all"]]
    n = 0
    for row in rows:
        np.asarray(row["image"].convert("RGB"))  # the pixels, as a user reads them
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=160, help="benchmark images (half real, half fake)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-output/hf_load"))
    args = parser.parse_args()
    from commfor_fast.bench.data import SIZE, converted_sources

    datasets_logging()
    rows = []
    for label, preresize in ((f"png-{SIZE} verbatim", None), (f"png-{SIZE} pre-resized 440", 440)):
        shards = converted_sources(args.out / "data", args.images, "png", preresize)
        say(f"loading {label} with datasets")
        timing = measure(lambda: load_all(shards, args.out / "hf-cache"), args.repeats, warmup=0,
                         label=f"datasets, {label}")
        rows.append({"shards": label, "images": timing.images, "wall s": timing.wall_s,
                     "ms per image": 1000 * timing.wall_s / timing.images, "CPU ms per image": timing.cpu_ms_per_image})
    table = markdown_table(rows, list(rows[0]))
    print(f"datasets.load_dataset(OUT) and every image as uint8 pixels, fresh cache per repeat, median of "
          f"{args.repeats} ({machine()}):\n{table}")
    (args.out / "results.json").write_text(json.dumps({"machine": machine(), "repeats": args.repeats,
                                                       "rows": rows}, indent=2) + "\n")


def datasets_logging() -> None:
    """Quiet `datasets`' own progress bars: the benchmark prints its figures."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


if __name__ == "__main__":
    main()
