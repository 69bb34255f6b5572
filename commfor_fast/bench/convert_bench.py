"""Conversion benchmark: images/s and MB/s per worker, 1 vs 2 workers, and where the time goes.

Uses the benchmark images of `data.py` (1024x1024 demo scenes as PNG and JPEG
folders) as a folder source and, the same images, as a hub-like parquet replica,
then times `convert` on each source: verbatim with the full check (the
default: all compressed data decoded), verbatim with `--check fast`, and
`--preresize 440`, with 1 and 2 workers, each image four times over (once with
--quick) so that worker start-up does not decide the figures. Every figure is the
median of three runs after a warm-up. MB/s
counts source bytes; the sources sit in the page cache, and the shards are written
(and fsync'ed) to the output folder. Times include planning and worker start-up.
A second table times each step of converting one image in one process, so the
conversion figures can be read against their parts.

    python -m commfor_fast.bench.convert_bench [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import shutil
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from commfor_fast.bench.common import check_spread, machine, markdown_table, say
from commfor_fast.convert.check import check_data, check_structure
from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.convert.tarshard import ShardWriter
from commfor_fast.demo.hf_replica import write_hf_replica
from commfor_fast.imageio import check_image, encode_raw, resize_shorter

MODES = {  # name -> ConvertSettings overrides
    "verbatim, --check full": {},
    "verbatim, --check fast": {"check": "fast"},
    "--preresize 440": {"preresize": 440},
}
CONVERT_COLUMNS = ["source", "mode", "workers", "images", "MB", "s", "img/s", "MB/s", "MB/s per worker",
                   "x 1 worker"]
STAGE_COLUMNS = ["step", "format", "ms/img", "MB/s", "x"]


def read_images(folders: dict[str, Path]) -> list[tuple[str, str, int, bytes]]:
    """(format, generator, label, bytes) of every image `data.write_sources` wrote, in path order."""
    images = []
    for fmt, folder in folders.items():
        for path in sorted(folder.glob(f"*/*/*.{fmt}")):
            images.append((fmt.upper(), path.parts[-3], int(path.parent.name == "fake"), path.read_bytes()))
    return images


def repeated(folders: dict[str, Path], times: int, root: Path) -> dict[str, Path]:
    """The same files `times` over, hard-linked under numbered generator folders.

    Rendering 1024-px images is slow; repeating them makes the runs long enough that
    planning and worker start-up do not decide the 2-worker figures.
    """
    if times == 1:
        return folders
    out = {}
    for fmt, folder in folders.items():
        for path in sorted(folder.glob(f"*/*/*.{fmt}")):
            for k in range(times):
                copy = root / fmt / f"{path.parts[-3]}-{k}" / path.parent.name / path.name
                if not copy.exists():
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    os.link(path, copy)
        out[fmt] = root / fmt
    return out


def parquet_replica(root: Path, images: list[tuple[str, str, int, bytes]], side: int) -> Path:
    """The same images as a hub-like parquet replica (8 rows per row group)."""
    rows = [{"image_name": f"{i:05d}", "format": fmt, "resolution": f"[{side}, {side}]", "image_data": data,
             "model_name": generator, "label": label, "architecture": "LatDiff" if label else "real"}
            for i, (fmt, generator, label, data) in enumerate(images)]
    return write_hf_replica(root, {"train": rows}, rows_per_file=64, row_group_size=8)


def time_convert(out: Path, source: dict[str, Any], workers: int, overrides: dict[str, Any],
                 partition_bytes: int) -> float:
    """Seconds for one conversion, planning and process start-up included."""
    shutil.rmtree(out, ignore_errors=True)
    settings = ConvertSettings(out=out, val_frac=0, workers=workers, quiet=True, shard_size="64MB",
                               partition_size=str(partition_bytes), **source, **overrides)
    start = time.perf_counter()
    convert(settings, command="convert_bench")
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def median_after_warmup(run: Callable[[], float], repeats: int, label: str) -> float:
    """The median of `repeats` results of `run` (seconds) after one warm-up call; a
    warning names `label` when the results spread widely."""
    run()
    samples = [run() for _ in range(repeats)]
    check_spread(label, samples, "s")
    return statistics.median(samples)


def _per_image(images: list[bytes], step: Callable[[list[bytes]], object]) -> Callable[[], float]:
    """A timer of `step` over all `images`: seconds per image."""
    def run() -> float:
        start = time.perf_counter()
        step(images)
        return (time.perf_counter() - start) / len(images)
    return run


def _write_tar(path: Path, images: list[bytes]) -> None:
    """All images into one tar (hashed, indexed, fsync'ed once), as a worker writes a shard."""
    writer = ShardWriter(path, path.parent)
    for i, d in enumerate(images):
        writer.add(f"{i:010d}", [("png", d), ("cls", b"1"), ("ids", bytes(20)), ("json", b"{}")])
    writer.close()


def stage_rows(images: list[tuple[str, bytes]], out: Path, repeats: int) -> list[dict[str, Any]]:
    """Time each step of converting one image, per format, in this process."""
    from commfor_fast.pipelines.decode_check import DaliDecodeCheck

    dali = DaliDecodeCheck()
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    for fmt in ("PNG", "JPEG"):
        data = [d for f, d in images if f == fmt]
        mb = sum(map(len, data)) / len(data) / 1e6

        each = {
            "PIL full decode (check_image)": lambda d: check_image(d),
            "--check full (check_data)": lambda d: check_data(d, 10**9),
            "--check fast (check_structure)": lambda d: check_structure(d, 10**9),
            "DALI CPU decode (--dali-check)": dali.check,
            "decode + resize 440 + raw": lambda d: encode_raw(resize_shorter(check_image(d)[1], 440)),
            "sha256": lambda d: hashlib.sha256(d).digest(),
        }
        steps = {name: (lambda images, step=step: [step(d) for d in images]) for name, step in each.items()}
        steps["tar write + sha256 + index + fsync"] = lambda images, fmt=fmt: _write_tar(out / f"stage-{fmt}.tar",
                                                                                      images)
        say(f"timing the steps of converting one {fmt} image")
        for name, step in steps.items():
            seconds = median_after_warmup(_per_image(data, step), repeats, f"step {name!r} ({fmt})")
            rows.append({"step": name, "format": fmt, "ms/img": 1000 * seconds, "MB/s": mb / seconds, "x": None})
    return rows


def _decode_loop(data: bytes, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        check_image(data)
    return time.perf_counter() - start


def cpu_parallelism(data: bytes, repeats: int) -> float:
    """How much more decoding 2 processes get done than 1 on this machine (2.0 = two real cores).

    Shared or throttled virtual CPUs can make this well below 2, which caps what
    any 2-worker figure can show.
    """
    one = _decode_loop(data, repeats)
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_decode_loop, [data, data], [1, 1]))  # start-up outside the timing
        start = time.perf_counter()
        list(pool.map(_decode_loop, [data, data], [repeats, repeats]))
        both = time.perf_counter() - start
    return 2 * one / both


def run(out_dir: Path, quick: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Time every conversion and step on `data.py`'s images (written under `out_dir`).

    Returns two tables, each a list of rows with the same keys: "conversion"
    (`CONVERT_COLUMNS`) and "steps" (`STAGE_COLUMNS`).
    """
    # Imported here, not at the top: worker processes re-import this file when it is
    # run as a script, and `data` imports the demo renderer (OpenCV).
    from commfor_fast.bench.data import SIZE, write_sources

    say("converter benchmark")

    out_dir = Path(out_dir)
    n_images = 12 if quick else 48  # per format
    times = 1 if quick else 4  # each image converted this many times over
    repeats = 3  # timed runs of everything, after a warm-up
    originals = write_sources(out_dir / f"sources-{n_images}", n_images)
    folders = repeated(originals, times, out_dir / f"sources-{n_images}-x{times}")
    images = read_images(folders)
    sources = {"folder": {"folders": list(folders.values())},
               "parquet": {"hf_repo": str(parquet_replica(out_dir / "parquet", images, SIZE))}}
    total_bytes = sum(len(d) for *_, d in images)
    total_mb = total_bytes / 1e6
    conversion: list[dict[str, Any]] = []
    for source_name, source in sources.items():
        for mode, overrides in MODES.items():
            one = None
            for workers in (1, 2):
                label = f"convert {source_name}, {mode}, {workers} worker(s)"
                say(f"{label}: {len(images)} images, {repeats} runs after a warm-up")
                seconds = median_after_warmup(
                    partial(time_convert, out_dir / "shards", source, workers, overrides, total_bytes // 8), repeats,
                    label)
                one = one or seconds
                conversion.append({"source": source_name, "mode": mode, "workers": workers, "images": len(images),
                                   "MB": total_mb, "s": seconds, "img/s": len(images) / seconds,
                                   "MB/s": total_mb / seconds, "MB/s per worker": total_mb / seconds / workers,
                                   "x 1 worker": one / seconds})
    encoded = [(fmt, data) for fmt, *_, data in read_images(originals)]
    steps = stage_rows(encoded, out_dir / "stages", repeats)
    shutil.rmtree(out_dir / "stages", ignore_errors=True)
    steps.append({"step": "CPU parallelism: 2 processes decoding vs 1 (2.0 = two full cores)", "format": "PNG",
                  "ms/img": None, "MB/s": None, "x": cpu_parallelism(encoded[0][1], 10 if quick else 40)})
    return {"conversion": conversion, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="12 + 12 images instead of 48 + 48")
    parser.add_argument("--out", type=Path, default=Path("bench-output/convert"))
    args = parser.parse_args()
    tables = run(args.out, args.quick)
    print(f"# Conversion benchmark ({machine()})\n")
    print(markdown_table(tables["conversion"], CONVERT_COLUMNS))
    print("\nSteps of converting one image (one process):\n")
    print(markdown_table(tables["steps"], STAGE_COLUMNS))


if __name__ == "__main__":
    main()
