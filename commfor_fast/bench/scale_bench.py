"""`commfor-fast bench --scale`: what each step costs per sample as the dataset grows.

The real workload is about 2.7 million images from ~4,800 generators, read by 8 ranks
per node. Pixels do not matter for the costs that grow with the count (listing,
planning, indexing, gathering scores), so this builds folder trees of tiny PNGs
(8x8 px) at real counts: N images over 5,000 generators, both labels, converted with
shards and partitions holding as many samples as at full scale. Each step runs in a
fresh process (its memory is its own, its imports are not counted), the ranks of a
two-rank start side by side:

    dry run      `convert --dry-run` (scan and plan)
    convert      the conversion (its worker processes' CPU time included)
    loader       a training stream's start to its first batch, `--loader dali` and
                 `reference` (2 threads or workers), 1 rank and 2 ranks at once; the
                 shard index cache of the node is emptied first (the first start
                 builds it), and a full `gc.collect()` is timed once the stream runs
    eval         scoring a rank's part of the training set with a trivial model
                 (`evaluate.score_batches`): N/20 and N/2 images, their `.ids` read
                 through the index, 8x8 black pixels (pixels cost the same per image
                 at any scale; what is kept per scored image is measured)
    verify       `verify` of the whole folder

Memory is the peak RSS of the process and the PSS of it and its children (pages
shared by processes counted once across them), so a node's memory is about the sum of
its ranks' PSS; a loader's index is also measured alone (`index_mb`: the resident pages
of the mapped index file, which a node holds once). Per sample: the slope between the
two largest sizes (what one more sample costs, fixed costs removed), and that slope
extrapolated to the full dataset (`FULL_SCALE` samples) per rank and per node of
`RANKS_PER_NODE` ranks (`extrapolate`). Figures go to the console, `scale.md` and
`results.json` (`scale`).
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from commfor_fast.bench.common import cpu_seconds, markdown_table, say

GENERATORS = 5_000
FULL_SCALE = 2_700_000  # training images of the real dataset
RANKS_PER_NODE = 8
SIZES = (10_000, 100_000)  # what `--scale` runs by default; `--scale-sizes` may add 1,000,000
# Samples per shard and per partition as at full scale (1.1 TB in 512 MB shards, 2 GB partitions).
SAMPLES_PER_SHARD, SAMPLES_PER_PARTITION = 1_250, 4_900
SIDE = 8  # px of the tiny PNGs
COLUMNS = ["step", "samples", "processes", "cpu_s", "cpu_us/sample", "peak_rss_mb", "pss_mb", "gc_ms", "index_cpu_s",
           "index_mb"]
EXTRA_COLUMNS = ["step", "cpu_us/sample", "bytes/sample", f"at {FULL_SCALE / 1e6:.1f}M: cpu_s per rank",
                 f"at {FULL_SCALE / 1e6:.1f}M: GB per node"]


# ----------------------------------------------------------------------------- data


def write_tree(root: Path, n: int) -> Path:
    """n tiny PNGs as ROOT/gen<g>/<real|fake>/<i>.png over `GENERATORS` generators
    (written once; `done` marks a whole tree). Returns `root`."""
    from PIL import Image

    if (root / "done").exists():
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"gen{i % GENERATORS:04d}" / ("fake" if i // GENERATORS % 2 else "real")
        if i < 2 * GENERATORS:
            folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(folder / f"{i:07d}.png")
    (root / "done").write_text(str(n))
    return root


def _convert_settings(src: Path, out: Path, dry_run: bool) -> Any:
    from commfor_fast.convert.settings import ConvertSettings

    mean_file = np.mean([p.stat().st_size for p in list((src / "gen0000").rglob("*.png"))])
    return ConvertSettings(folders=[src], out=out, quiet=True, dry_run=dry_run,
                           shard_size=str(SAMPLES_PER_SHARD * 5 * 1024),  # ~5 KiB per tiny sample in the tar
                           partition_size=str(int(SAMPLES_PER_PARTITION * mean_file)))


# --------------------------------------------------------------- one step, one process


def _family() -> list[str]:
    """The pids of this process and its live children (workers)."""
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and (entry == me or
                                    Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1] == me):
                found.append(entry)
        except OSError:
            continue
    return found


def _pss_mb(pid: str) -> float:
    """PSS of a process (MB): its shared pages divided among the processes sharing them."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0.0
    return sum(int(line.split()[1]) for line in lines if line.startswith("Pss:")) / 1024


def _mapped_mb(pid: str, path_part: str) -> float:
    """Resident pages (MB) of a process's mappings of files whose path contains `path_part`.
    (Not PSS: processes measured one after another see different numbers of sharers.)"""
    rss, inside = 0, False
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
                inside = path_part in line
            elif inside and fields[0] == "Rss:":
                rss += int(fields[1])
    except OSError:
        return 0.0
    return rss / 1024


def _memory() -> dict[str, float]:
    """Peak RSS of this process, PSS of it and its live children (MB), and the peak RSS
    of its largest reaped child (e.g. a convert worker)."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024, "pss_mb": sum(map(_pss_mb, _family())),
            "child_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _step_dry_run(src: str, out: str) -> dict[str, Any]:
    from commfor_fast.convert.run import convert

    convert(_convert_settings(Path(src), Path(out), dry_run=True), command="bench")
    return {}


def _step_convert(src: str, out: str) -> dict[str, Any]:
    from commfor_fast.convert.run import convert

    convert(_convert_settings(Path(src), Path(out), dry_run=False), command="bench")
    return {}


def _step_loader(data: str, loader: str, rank: int, world: int) -> dict[str, Any]:
    import torch

    from commfor_fast.pipelines.loader import create_train_stream
    from commfor_fast.pipelines.plan import RSAConfig
    from commfor_fast.shards import Manifest, ShardReader

    manifest = Manifest.load(data)
    set_name = manifest.training_sets()[0]
    started = time.thread_time()
    index = ShardReader(data, manifest.sets[set_name])  # what the stream's index costs: built or mapped
    index_cpu_s = time.thread_time() - started
    stream = create_train_stream(loader, Path(data), manifest, set_name,
                                 device=torch.device("cpu"), batch_size=16, crop=224, rsa=RSAConfig(), seed=0,
                                 rank=rank, world_size=world, num_threads=2)
    next(iter(stream))
    started = time.thread_time()  # CPU time: the machine may be busy
    gc.collect()
    found = {"gc_ms": 1000 * (time.thread_time() - started), "index_cpu_s": index_cpu_s,
             "index_mb": max(_mapped_mb(pid, "commfor-fast-index-") for pid in _family()), **_memory()}
    stream.close()
    index.close()
    return found


def _step_eval(data: str, images: int) -> dict[str, Any]:
    import torch

    from commfor_fast.evaluate import score_batches
    from commfor_fast.shards import Manifest

    manifest = Manifest.load(data)
    set_name = manifest.training_sets()[0]
    world = max(1, round(manifest.sets[set_name].num_samples / images))
    scores = score_batches(_Trivial(), _IdsLoader(Path(data), manifest.sets[set_name], world), set_name,
                           device=torch.device("cpu"), autocast_dtype=torch.bfloat16, use_amp=False)
    return {"scored": len(scores[0].labels), **_memory()}


class _IdsLoader:
    """Rank 0's part of a set (of `world` ranks) in batches of 128 as an evaluation loader
    gives them, but with 8x8 black images: each sample's `.ids` record is read through
    the index, and pixels, which cost the same per image at any scale, are left out."""

    def __init__(self, root: Path, info: Any, world: int) -> None:
        from commfor_fast.shards import ShardReader, shard_range

        self.part = shard_range(info.num_samples, 0, world)
        self.reader = ShardReader(root, info, self.part)

    def __len__(self) -> int:  # `batch.EvalLoader`'s: the scores are preallocated from it
        return self.part[1] - self.part[0]

    def __iter__(self) -> Any:
        import torch

        from commfor_fast.pipelines.batch import to_batch
        from commfor_fast.shards import IDS_EXT, unpack_ids

        for lo in range(self.part[0], self.part[1], 128):
            batch = range(lo, min(lo + 128, self.part[1]))
            ids = torch.tensor([unpack_ids(self.reader.read(i, (IDS_EXT,))[IDS_EXT]) for i in batch])
            yield to_batch(torch.zeros(len(batch), 3, SIDE, SIDE), ids)


class _Trivial:
    """A stand-in detector: one logit per image (its mean), so scoring costs nothing."""

    def __call__(self, images: Any) -> Any:
        return images.mean((1, 2, 3)).unsqueeze(1)


def _step_verify(data: str) -> dict[str, Any]:
    from commfor_fast.verify import verify_shards

    checked, damaged = verify_shards(Path(data), progress=False)
    if damaged:
        raise RuntimeError(f"verify found damage in freshly converted shards: {damaged[0]}")
    return {}


_STEPS = {"dry run": _step_dry_run, "convert": _step_convert, "loader": _step_loader, "eval": _step_eval,
          "verify": _step_verify}


def _child(step: str, args: dict[str, Any], result: str) -> None:
    """Run one step in this (fresh) process; write its figures to `result` as JSON."""
    import torch  # imported before the clock starts: every step's process pays it

    del torch
    cpu, wall = cpu_seconds(), time.perf_counter()
    found = _STEPS[step](**args)
    figures = {"cpu_s": cpu_seconds() - cpu, "wall_s": time.perf_counter() - wall, **_memory(), **found}
    Path(result).write_text(json.dumps(figures))


def _spawn(work: Path, steps: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run `steps` side by side, each in its own process (the temporary folder, so the
    node's index cache, is `work/tmp`); their figures, in order."""
    env = {**os.environ, "TMPDIR": str(work / "tmp")}
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    runs = []
    for k, (step, args) in enumerate(steps):
        result = work / f"result-{k}.json"
        result.unlink(missing_ok=True)
        log = open(work / f"step-{k}.log", "w")
        runs.append((result, log, subprocess.Popen(
            [sys.executable, "-m", "commfor_fast.bench.scale_bench", step, json.dumps(args), str(result)],
            stdout=log, stderr=subprocess.STDOUT, env=env)))
    out = []
    for result, log, process in runs:
        process.wait()
        log.close()
        if process.returncode:
            raise RuntimeError(f"bench --scale: a step failed (exit {process.returncode}); see {log.name}")
        out.append(json.loads(result.read_text()))
    return out


# ------------------------------------------------------------------------ the runs


def _clear_index_cache(work: Path) -> None:
    for path in (work / "tmp").glob("commfor-fast-index-*/*"):
        path.unlink()


def measure_size(work: Path, n: int) -> list[dict[str, Any]]:
    """Every step at n samples: one row per step (and loader, and number of ranks)."""
    src = write_tree(work / f"src-{n}", n)
    data = work / f"shards-{n}"
    rows = []

    def row(step: str, figures: list[dict[str, Any]]) -> None:
        rows.append({"step": step, "samples": n, "processes": len(figures),
                     "cpu_s": max(f["cpu_s"] for f in figures),
                     "cpu_us/sample": 1e6 * max(f["cpu_s"] for f in figures) / n,
                     "peak_rss_mb": max(f["peak_rss_mb"] for f in figures),
                     "pss_mb": sum(f["pss_mb"] for f in figures),
                     "gc_ms": max((f["gc_ms"] for f in figures if "gc_ms" in f), default=None),
                     "index_cpu_s": max((f["index_cpu_s"] for f in figures if "index_cpu_s" in f), default=None),
                     "index_mb": max((f["index_mb"] for f in figures if "index_mb" in f), default=None)})
        say(f"scale {n}: {step}: {rows[-1]['cpu_us/sample']:.1f} us/sample, {rows[-1]['pss_mb']:.0f} MB PSS")

    say(f"scale {n}: dry run")
    row("dry run", _spawn(work, [("dry run", {"src": str(src), "out": str(work / f"dry-{n}")})]))
    if not (data / "manifest.json").exists():
        say(f"scale {n}: convert")
        row("convert", _spawn(work, [("convert", {"src": str(src), "out": str(data)})]))
    for loader in ("reference", "dali"):
        for world in (1, 2):
            _clear_index_cache(work)
            say(f"scale {n}: {loader} loader, {world} rank(s)")
            row(f"loader {loader}, {world} rank(s)", _spawn(work, [
                ("loader", {"data": str(data), "loader": loader, "rank": r, "world": world}) for r in range(world)]))
    for images in (n // 20, n // 2):
        say(f"scale {n}: eval of {images} images")
        figures = _spawn(work, [("eval", {"data": str(data), "images": images})])
        row(f"eval {figures[0]['scored']} images", figures)
        rows[-1]["scored"] = figures[0]["scored"]
    row("verify", _spawn(work, [("verify", {"data": str(data)})]))
    return rows


def extrapolate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step: the cost of one more sample (the slope between the two largest sizes)
    and the figures at `FULL_SCALE` samples along that slope. For a loader start, what
    grows with the set is its index, measured on its own (`index_cpu_s`: the rank that
    built it; `index_mb`: its mapped pages, one copy per node); the rest (torch, DALI, the first
    batch) is taken as fixed. A node runs `RANKS_PER_NODE` loader ranks (the one-rank
    PSS plus, per further rank, what the second rank added), each evaluation rank
    scores 1/`RANKS_PER_NODE` of the images, and every other step runs once."""
    sizes = sorted({r["samples"] for r in rows})
    if len(sizes) < 2:
        return []
    lo, hi = sizes[-2:]
    by = {(r["step"], r["samples"]): r for r in rows}

    def slope(step: str, key: str) -> float:
        return (by[(step, hi)][key] - by[(step, lo)][key]) / (hi - lo)

    out = []
    for step in dict.fromkeys(r["step"] for r in rows if r["samples"] == hi and not r["step"].startswith("eval")):
        if (step, lo) not in by:
            continue
        cpu, mb = ("index_cpu_s", "index_mb") if step.startswith("loader") else ("cpu_s", "pss_mb")
        fixed = by[(step, hi)]["pss_mb"]
        if step.startswith("loader"):
            one = by[(step.replace("2 rank(s)", "1 rank(s)"), hi)]["pss_mb"]
            fixed = one + (RANKS_PER_NODE - 1) * (fixed - one) if step.endswith("2 rank(s)") else None
        out.append({"step": step, "cpu_us/sample": 1e6 * slope(step, cpu), "bytes/sample": slope(step, mb) * 2**20,
                    EXTRA_COLUMNS[3]: by[(step, hi)]["cpu_s"] + slope(step, cpu) * (FULL_SCALE - hi),
                    EXTRA_COLUMNS[4]: None if fixed is None else
                    (fixed + slope(step, mb) * (FULL_SCALE - hi)) * 2**20 / 1e9})
    evals = sorted((r for r in rows if r["step"].startswith("eval") and r["samples"] == hi),
                   key=lambda r: r["scored"])
    if len(evals) == 2:
        (a, b), per_rank = evals, FULL_SCALE / RANKS_PER_NODE
        per_image = (b["peak_rss_mb"] - a["peak_rss_mb"]) * 2**20 / (b["scored"] - a["scored"])
        out.append({"step": "eval, per scored image", "cpu_us/sample": 1e6 * (b["cpu_s"] - a["cpu_s"]) /
                    (b["scored"] - a["scored"]), "bytes/sample": per_image,
                    EXTRA_COLUMNS[4]: RANKS_PER_NODE * (b["peak_rss_mb"] * 2**20 + per_image *
                                                       (per_rank - b["scored"])) / 1e9})
    return out


def run(out: Path, sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    """Measure every step at each size; print and write the tables (`scale.md`); returns
    the figures for `results.json`."""
    work = out / "scale"
    work.mkdir(parents=True, exist_ok=True)
    rows = [row for n in sizes for row in measure_size(work, n)]
    extra = extrapolate(rows)
    text = ("## Scale: cost per sample as the dataset grows (tiny PNGs, 5,000 generators)\n\n" +
            markdown_table(rows, COLUMNS) + "\n\nPer sample, and extrapolated to the full dataset:\n\n" +
            markdown_table(extra, EXTRA_COLUMNS) + "\n")
    (out / "scale.md").write_text(text)
    print(text)
    return {"scale": {"sizes": list(sizes), "generators": GENERATORS, "steps": rows, "extrapolated": extra}}


if __name__ == "__main__":
    _child(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])
