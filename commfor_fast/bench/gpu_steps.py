"""The GPU check's steps: each a plain function of the check's `Context` that returns
its figures (a JSON-able dict), listed in `STEPS` most valuable first.

`gpu_check.py` runs every step in its own process (`python -m
commfor_fast.bench.gpu_steps NAME ...`) under a timeout, so a step that crashes, hangs
or runs out of memory costs only its own figures. While a step runs, a sampler reads
the device-wide GPU memory and utilisation through NVML (`DeviceSampler`), not only
torch's allocator. To add a step (an ablation that becomes a knob, say), write its
function and add one `Step` row; the order of `STEPS` is the order of value.

With `--dry-run` every step runs on the CPU at tiny sizes (`Sizes.dry`): the check
cannot rot before a GPU runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CROP = 384
PERTURBATIONS = ["jpeg=95,50,30", "blur=0.7,2,4", "resize=0.75,0.5,0.3", "noise=5,30"]
# Python modules the carry pack brings; the environment step says which were imported.
CARRIED_MODULES = ("nvidia.dali", "nvidia.nvimgcodec", "datasets", "dill", "multiprocess", "isal", "gast",
                   "astunparse", "optree")


@dataclass(frozen=True)
class Sizes:
    """How much each step does: the GPU configuration, or tiny sizes for the dry run."""

    images: int = 512  # rendered per data set
    image_size: int = 1024
    batch: int = 128  # training batch (the paper's, per GPU)
    per_run: int = 4  # training batches per pipeline run
    threads: int = 4  # the goal: at most 4 CPU threads per GPU
    runs: int = 30  # timed pipeline runs after the warm-up
    warmup: int = 3
    ablation_runs: int = 8
    profile_runs: int = 3
    parity_images: int = 64
    train_itrs: int = 120
    train_window: int = 20

    @classmethod
    def dry(cls) -> Sizes:
        return cls(images=16, image_size=480, batch=4, per_run=2, threads=2, runs=3, warmup=1, ablation_runs=2,
                   profile_runs=1, parity_images=4, train_itrs=4, train_window=2)


@dataclass(frozen=True)
class Context:
    """What every step knows: where work data and results go, and how big to run."""

    work: Path  # benchmark data and logs: never returned from the device
    out: Path  # results only (the device returns at most 8 files)
    dry_run: bool
    sizes: Sizes = field(default_factory=Sizes)

    @property
    def gpu(self) -> bool:
        return not self.dry_run and torch.cuda.is_available()

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.gpu else "cpu")

    @property
    def dali_device(self) -> str:
        return "gpu" if self.gpu else "cpu"

    def shards(self) -> dict[str, Path]:
        """The data step's shards, by label ("jpeg", "preresized")."""
        return {k: Path(v) for k, v in json.loads((self.work / "shards.json").read_text()).items()}


# --------------------------------------------------------------------- measuring


class DeviceSampler:
    """Device-wide GPU memory in use and utilisation, read through NVML every `every_s`
    in a thread (what `nvidia-smi` shows: DALI's and torch's memory, the CUDA contexts)."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.memory_mb, self.util = every_s, [], []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DeviceSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # noqa: BLE001 (no NVML, no GPU: the figures say why they are missing)
            self.error = f"{type(exc).__name__}: {exc}"
            return self
        self._thread = threading.Thread(target=self._sample, args=(pynvml, handle), daemon=True)
        self._thread.start()
        return self

    def _sample(self, pynvml: Any, handle: Any) -> None:
        while not self._stop.wait(self.every_s):
            self.memory_mb.append(pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
            self.util.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def figures(self) -> dict[str, Any]:
        if not self.memory_mb:
            return {"device_memory": self.error or "no samples (the step ended within one interval)"}
        return {"device_memory_peak_mb": max(self.memory_mb), "gpu_util_mean_pct": statistics.mean(self.util),
                "gpu_util_median_pct": statistics.median(self.util), "nvml_samples": len(self.util)}


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of each thread of this process, by "name/tid"."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[f"{name}/{tid}"] = (int(fields[11]) + int(fields[12])) / tick
    return out


class HostSplit:
    """Where the training thread's time goes in a DALI run: in our external source
    (reading and planning), in the rest of DALI's `schedule_run` (feeding the batch in),
    and in `share_outputs` (waiting for the run). Patches the classes for this process:
    every step is its own process."""

    def __init__(self) -> None:
        self.source_s = self.schedule_s = self.wait_s = 0.0

    @contextlib.contextmanager
    def patched(self) -> Iterator[HostSplit]:
        from nvidia.dali.pipeline import Pipeline

        from commfor_fast.pipelines.source import BatchSource

        originals = {(BatchSource, "__call__"): BatchSource.__call__,
                     (Pipeline, "schedule_run"): Pipeline.schedule_run,
                     (Pipeline, "share_outputs"): Pipeline.share_outputs}

        def timed(func: Callable[..., Any], slot: str) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return func(*args, **kwargs)
                finally:
                    setattr(self, slot, getattr(self, slot) + time.perf_counter() - t0)
            return wrapper

        for (cls, name), func in originals.items():
            slot = {"__call__": "source_s", "schedule_run": "schedule_s", "share_outputs": "wait_s"}[name]
            setattr(cls, name, timed(func, slot))
        try:
            yield self
        finally:
            for (cls, name), func in originals.items():
                setattr(cls, name, func)


def _stream(ctx: Context, label: str, *, batch: int | None = None, per_run: int | None = None,
            threads: int | None = None, executor: str | None = None, box_filter: str | None = None) -> Any:
    from commfor_fast.pipelines.executor import ExecutorOptions
    from commfor_fast.pipelines.loader import create_train_stream
    from commfor_fast.pipelines.plan import RSAConfig
    from commfor_fast.shards import Manifest

    s = ctx.sizes
    root = ctx.shards()[label]
    manifest = Manifest.load(root)
    return create_train_stream("dali", root, manifest, manifest.training_sets()[0], device=ctx.device,
                               batch_size=batch or s.batch, crop=CROP,
                               rsa=RSAConfig(box_filter=box_filter) if box_filter else RSAConfig(), seed=0, rank=0,
                               world_size=1, num_threads=threads or s.threads, batches_per_run=per_run or s.per_run,
                               executor=ExecutorOptions.from_flags([executor] if executor else []))


def _sync(ctx: Context) -> None:
    if ctx.gpu:
        torch.cuda.synchronize()


def time_pipeline(ctx: Context, label: str, runs: int, *, per_run: int | None = None,
                  threads: int | None = None, executor: str | None = None, box_filter: str | None = None,
                  split: bool = False) -> dict[str, Any]:
    """Training batches from `label`'s shards: images/s over `runs` pipeline runs after
    the warm-up, host CPU ms per image, and with `split` the training thread's time per
    run (source / feed / wait) and each thread's CPU. `executor`: one `--executor
    NAME=VALUE` option (`pipelines/executor.py`), else the defaults; `box_filter`: the
    training graph's `--box-filter`, else the default."""
    from commfor_fast.bench.common import cpu_seconds

    s = ctx.sizes
    per_run = per_run or s.per_run
    stream = _stream(ctx, label, per_run=per_run, threads=threads, executor=executor, box_filter=box_filter)
    try:
        for _ in range(s.warmup * per_run):
            next(stream)
        _sync(ctx)
        host = HostSplit()
        threads0, cpu0, t0 = thread_cpu_seconds(), cpu_seconds(), time.perf_counter()
        with host.patched() if split else contextlib.nullcontext():
            for _ in range(runs * per_run):
                next(stream)
            _sync(ctx)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        threads1 = thread_cpu_seconds()
    finally:
        stream.close()
    images = runs * per_run * s.batch
    figures: dict[str, Any] = {"shards": label, "batch": f"{s.batch} x {per_run}", "threads": threads or s.threads,
                               "runs": runs, "images_per_s": images / wall, "host_cpu_ms_per_image": 1e3 * cpu / images}
    if split:
        figures["host_ms_per_run"] = {"source": 1e3 * host.source_s / runs,
                                      "feed": 1e3 * (host.schedule_s - host.source_s) / runs,
                                      "wait": 1e3 * host.wait_s / runs, "wall": 1e3 * wall / runs}
        used = {name: sec - threads0.get(name, 0.0) for name, sec in threads1.items()}
        figures["thread_cpu_s"] = dict(sorted(((n, round(v, 3)) for n, v in used.items() if v > 0),
                                              key=lambda kv: -kv[1])[:16])
    return figures


# --------------------------------------------------------------------- the steps


def environment(ctx: Context) -> dict[str, Any]:
    """Versions, the GPU and driver, where each carried package comes from, and whether
    nvImageCodec's hardware JPEG decoder decodes a JPEG here."""
    import nvidia.dali

    from commfor_fast.bench.common import machine

    info: dict[str, Any] = {
        "machine": machine(), "python": platform.python_version(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "dali": nvidia.dali.__version__, "cpu_threads": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["nvidia_smi"] = f"{type(exc).__name__}: {exc}"
    for name in CARRIED_MODULES:
        try:
            info[f"from:{name}"] = str(Path(importlib.import_module(name).__file__ or "?").parent)
        except Exception as exc:  # noqa: BLE001 (recorded: which carried module is missing and why)
            info[f"from:{name}"] = f"{type(exc).__name__}: {exc}"
    info["hw_jpeg_decoder"] = _hw_jpeg_decoder(ctx)
    return info


def _hw_jpeg_decoder(ctx: Context) -> str:
    """Decode one 4:2:0 JPEG with nvImageCodec's hardware backend alone: "used" when it can."""
    if not ctx.gpu:
        return "not checked: no GPU"
    from commfor_fast.demo import synth

    data = synth.encode_image(np.random.default_rng(0).integers(0, 256, (512, 512, 3), np.uint8), "JPEG", 90)
    try:
        from nvidia import nvimgcodec

        decoder = nvimgcodec.Decoder(backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])
        image = decoder.decode(data)
    except Exception as exc:  # noqa: BLE001 (the answer is the reason)
        return f"not available: {type(exc).__name__}: {exc}"
    return "used" if image is not None else "not available: the hardware backend decoded nothing"


def data(ctx: Context) -> dict[str, Any]:
    """Render and convert the benchmark data (JPEG-1024 and pre-resized shards)."""
    from commfor_fast.bench.gpu_data import build

    t0 = time.perf_counter()
    shards = build(ctx.work / "data", ctx.sizes.images, ctx.sizes.image_size, workers=max(1, os.cpu_count() or 1))
    (ctx.work / "shards.json").write_text(json.dumps({k: str(v) for k, v in shards.items()}))
    return {"images": ctx.sizes.images, "size": ctx.sizes.image_size, "seconds": time.perf_counter() - t0}


def _first_run(ctx: Context, label: str, mode: str) -> dict[str, Any]:
    """Build one graph and run it once: seconds for each, and its operator instances."""
    from commfor_fast.pipelines.dali import create_eval_pipeline, create_train_pipeline, operator_census
    from commfor_fast.pipelines.perturb import parse_perturbations
    from commfor_fast.pipelines.plan import RSAConfig
    from commfor_fast.pipelines.source import ShardSource
    from commfor_fast.shards import Manifest

    s, root = ctx.sizes, ctx.shards()[label]
    source = ShardSource.from_manifest(root, Manifest.load(root), "all")
    device = {"device": ctx.dali_device, "device_id": 0 if ctx.gpu else None, "num_threads": s.threads}
    if mode == "train":
        pipe = create_train_pipeline(source, batch_size=s.batch, crop=CROP, rsa=RSAConfig(), seed=0,
                                     batches_per_run=s.per_run, **device)
    else:
        levels = parse_perturbations(PERTURBATIONS) if mode == "eval-perturb" else ()
        pipe = create_eval_pipeline(source, batch_size=s.batch, crop=CROP, levels=levels, **device)
    operators = sum(operator_census(pipe).values())
    t0 = time.perf_counter()
    pipe.build()
    t1 = time.perf_counter()
    outputs = pipe.run()
    _sync(ctx)
    t2 = time.perf_counter()
    shapes = [list(outputs[0][0].shape())]
    pipe.source.close()
    return {"graph": f"{mode} on {label}", "operators": operators, "build_s": t1 - t0, "first_run_s": t2 - t1,
            "first_output_shape": shapes}


def headline(ctx: Context) -> dict[str, Any]:
    """The training pipeline on pre-resized shards at the GPU configuration."""
    return time_pipeline(ctx, "preresized", ctx.sizes.runs, split=True)


def profile(ctx: Context) -> dict[str, Any]:
    """torch.profiler over 3 pipeline runs (1 in the dry run) and a ViT-S forward and
    backward on each batch: the trace (gzipped, kept under 16 MiB) and the top-30
    kernel table."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from commfor_fast.model import create_detector

    s = ctx.sizes
    net = create_detector(model_size="small" if ctx.gpu else "tiny", input_size=CROP, pretrained=False).to(ctx.device)
    stream = _stream(ctx, "preresized")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.gpu else [])
    try:
        next(stream)
        with torch_profile(activities=activities) as prof:
            for _ in range(s.profile_runs * s.per_run):
                batch = next(stream)
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.gpu):
                    net(batch.images).float().sum().backward()
            _sync(ctx)
    finally:
        stream.close()
    sort = "cuda_time_total" if ctx.gpu else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30)
    (ctx.out / "kernels.txt").write_text(table + "\n")
    trace = ctx.out / "trace.json.gz"
    prof.export_chrome_trace(str(trace))
    if trace.stat().st_size > 15 * 2**20:
        trace.unlink()
        return {"kernels": "kernels.txt", "trace": "dropped: over 15 MiB gzipped"}
    return {"kernels": "kernels.txt", "trace": trace.name, "trace_mb": trace.stat().st_size / 2**20}


# Ablations: (name, keyword arguments of `time_pipeline`), around the headline's
# configuration, one setting at a time: the loader's knobs, then every executor option
# (`--executor NAME=VALUE`; hw_decoder_load is the jpeg-hw step's) the CPU could not
# decide (host_bench's executor ablation). Knobs the loader does not have yet are listed in
# NOT_YET_KNOBS; when one becomes a `create_train_stream` argument, it gets rows here.
ABLATIONS = [("batches_per_run=1", {"per_run": 1}), ("batches_per_run=2", {"per_run": 2}),
             ("batches_per_run=8", {"per_run": 8}), ("threads=1", {"threads": 1}), ("threads=2", {"threads": 2}),
             ("threads=8", {"threads": 8})] + [
    (flag, {"executor": flag}) for flag in (
        "source_workers=0", "source_workers=1", "source_workers=3", "concurrency=none", "concurrency=full",
        "stream_policy=single", "stream_policy=per_operator", "prefetch_queue_depth=1", "prefetch_queue_depth=3",
        "source_prefetch=1", "source_prefetch=3", "resize_minibatch_size=8", "resize_minibatch_size=128")] + [
    ("box_filter=standin", {"box_filter": "standin"})]  # the single-resize graph: 496 operators, not 1,306
NOT_YET_KNOBS = ["no_copy (DALIGenericIterator)"]


def ablations(ctx: Context) -> dict[str, Any]:
    """The headline pipeline with one setting changed at a time (the dry run: the first
    row of each kind: batches per run, threads, an executor option, the box filter)."""
    rows = {}
    kinds: set[str] = set()
    for name, options in ABLATIONS:
        kind = "executor" if "executor" in options else name.split("=")[0]
        if not ctx.gpu and kind in kinds:
            continue
        kinds.add(kind)
        try:
            rows[name] = time_pipeline(ctx, "preresized", ctx.sizes.ablation_runs, **options)
        except Exception as exc:  # noqa: BLE001 (one setting failing must not lose the others)
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"rows": rows, "not_yet_knobs": NOT_YET_KNOBS}


def jpeg_hw(ctx: Context) -> dict[str, Any]:
    """JPEG-1024 training pipeline and evaluation parity with the hardware decoder's share
    of JPEGs at 0, 0.65 and 1."""
    from commfor_fast.pipelines import dali

    rows = {}
    for load in (0.0, 0.65, 1.0):
        dali.HW_DECODER_LOAD = load
        try:
            rows[str(load)] = {**time_pipeline(ctx, "jpeg", ctx.sizes.ablation_runs), **eval_parity(ctx)}
        except Exception as exc:  # noqa: BLE001 (one setting failing must not lose the others)
            rows[str(load)] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"rows": rows}


def eval_parity(ctx: Context) -> dict[str, Any]:
    """Evaluation images from the DALI pipeline vs the reference executor, same JPEGs:
    absolute differences in grey levels (uint8, before normalisation)."""
    from commfor_fast.imageio import decode_rgb
    from commfor_fast.pipelines.dali import create_eval_pipeline
    from commfor_fast.pipelines.reference import eval_image
    from commfor_fast.pipelines.source import ShardSource
    from commfor_fast.shards import IMAGE_EXT, Manifest, ShardReader

    n, root = ctx.sizes.parity_images, ctx.shards()["jpeg"]
    manifest = Manifest.load(root)
    pipe = create_eval_pipeline(ShardSource.from_manifest(root, manifest, "all"), device=ctx.dali_device,
                                device_id=0 if ctx.gpu else None, batch_size=n, crop=CROP, normalise=False,
                                num_threads=ctx.sizes.threads)
    pipe.build()
    images, ids = pipe.run()
    images = images.as_cpu() if ctx.gpu else images
    reader = ShardReader(root, manifest.sets["all"])
    diffs = []
    for j in range(len(ids)):
        data = reader.read(reader.position(f"{int(np.array(ids[j])[2]):010d}"))
        ref = eval_image(decode_rgb(data[IMAGE_EXT]), CROP)
        diffs.append(np.abs(np.array(images[j]).astype(np.int16) - ref.astype(np.int16)).ravel())
    reader.close()
    pipe.source.close()
    d = np.concatenate(diffs)
    return {"parity_mean": float(d.mean()), "parity_p99_9": float(np.percentile(d, 99.9)), "parity_max": int(d.max()),
            "parity_images": len(ids)}


def gpu_tests(ctx: Context) -> dict[str, Any]:
    """The `gpu` tests, with JUnit XML (measured differences as properties) in the results."""
    import xml.etree.ElementTree as ET

    xml = ctx.out / "gpu-tests.xml"
    repo = Path(__file__).resolve().parents[2]
    files = sorted(str(f.relative_to(repo)) for f in (repo / "tests").glob("test_*.py")
                   if "mark.gpu" in f.read_text())  # collecting only these saves a minute of imports
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           f"--junitxml={xml}", *files], cwd=repo, capture_output=True, text=True)
    print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n")
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {**counts, "exit_code": proc.returncode, "junit": xml.name}


def training(ctx: Context) -> dict[str, Any]:
    """Eager training (ViT-S/16 at 384, bf16, batch 128 on the GPU): real pre-resized
    data vs synthetic batches, with the GPU's utilisation sampled during each."""
    from commfor_fast.bench import train_bench

    s = ctx.sizes
    label, flags, _, _ = train_bench.model_args_for(ctx.gpu, quick=True)
    rows = {}
    for data_label, extra in (("synthetic (bound)", ["--synthetic-data"]), ("preresized", ["--loader", "dali"])):
        with DeviceSampler() as sampler:
            figures = train_bench.train_once(ctx.shards()["preresized"], flags + extra, s.train_itrs, s.train_window,
                                              ctx.device.type, s.threads, f"{label} {data_label}")
        rows[data_label] = {**figures, **sampler.figures()}
    bound = rows["synthetic (bound)"]["img/s"]
    return {"model": label, "rows": rows, "real_vs_synthetic": rows["preresized"]["img/s"] / bound}


@dataclass(frozen=True)
class Step:
    """One step of the check: its function, its time limit on the GPU and whether the
    global deadline may skip it."""

    name: str
    run: Callable[[Context], dict[str, Any]]
    timeout_s: float
    optional: bool
    what: str  # one line for the README and the results


STEPS: list[Step] = [
    Step("environment", environment, 90, False, "versions, GPU, driver, carried packages, hardware JPEG decoder"),
    Step("data", data, 150, False, "render and convert the JPEG-1024 and pre-resized shards, in parallel"),
    Step("build-train-raw", lambda c: _first_run(c, "preresized", "train"), 90, False,
         "build + first run: training graph, pre-resized shards"),
    Step("build-train-jpeg", lambda c: _first_run(c, "jpeg", "train"), 90, False,
         "build + first run: training graph, JPEG shards"),
    Step("build-eval", lambda c: _first_run(c, "jpeg", "eval"), 60, False,
         "build + first run: evaluation graph"),
    Step("build-eval-perturb", lambda c: _first_run(c, "jpeg", "eval-perturb"), 90, False,
         "build + first run: evaluation graph with every --perturb family"),
    Step("headline", headline, 120, False,
         "training pipeline, pre-resized, 128 x 4, 4 threads, 30 runs: img/s, host ms, source/feed/wait, "
         "CPU per thread"),
    Step("profile", profile, 120, True, "torch.profiler: 3 runs + ViT-S steps, trace and top-30 kernels"),
    Step("ablations", ablations, 300, True, "batches per run, threads and every executor option, one at a time"),
    Step("jpeg-hw", jpeg_hw, 150, True, "JPEG-1024 pipeline and eval parity at hw_decoder_load 0, 0.65, 1"),
    Step("gpu-tests", gpu_tests, 240, True, "pytest -m gpu with JUnit XML and the measured differences"),
    Step("training", training, 240, True, "eager ViT-S/16 384 bf16 b128: real vs synthetic, GPU utilisation"),
]


def main() -> None:
    """Run one step in this process; its figures go to --result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=[s.name for s in STEPS])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    ctx = Context(args.work, args.out, args.dry_run, Sizes.dry() if args.dry_run else Sizes())
    step = next(s for s in STEPS if s.name == args.step)
    with DeviceSampler() as sampler:
        figures = step.run(ctx)
    args.result.write_text(json.dumps({**figures, **sampler.figures()}, default=str))


if __name__ == "__main__":
    main()
