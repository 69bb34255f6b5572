"""The DALI executor: training and evaluation graphs over the converter's shards.

The same graph runs on `device="gpu"` (nvJPEG decoding, every image op on the GPU) and
on `device="cpu"` (DALI's CPU backend, `device_id=None`), which is how the tests and
GPU-less machines run it.

Everything random or size-dependent is decided on the host (`source.py`): one
external source hands the graph each batch's images and the arguments of every
operator (one packed tensor per RSA stage, sliced in the graph), so the graph holds
the operators that touch pixels, the slices and the conditional splits around them.
RSA is `stages` identical stages (`slots.py`), each run only for the samples whose
plan uses it: three geometric slots (warp -> erase -> resize) and a JPEG where drawn.

Robustness evaluation (`eval --perturb`) uses a second evaluation graph: one decode,
then a branch per level (`pipelines/perturb.py`: the perturbation, then the usual first
resize, centre crop and normalisation), one output per level.

Measured differences to the PIL reference (tests/test_parity.py): PIL's Hamming
filter has no DALI twin (a stand-in in `slots.DALI_FILTERS`), its box filter is built
from DALI operators (`resampling.box_from_regions`, or a stand-in), resampling rounds
differently by about a grey level, and DALI's JPEG codec on the GPU (nvJPEG) is not
bit-exact with libjpeg.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from commfor_fast.errors import UserError
from commfor_fast.pipelines.perturb import GraphInputs, Level, apply_dali
from commfor_fast.pipelines.plan import Plan, RSAConfig
from commfor_fast.pipelines.resampling import box_from_regions
from commfor_fast.pipelines.slots import BOX_BUILT, REGIONS, SLOTS_PER_STAGE, graph_stages
from commfor_fast.pipelines.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_preresize
from commfor_fast.pipelines.executor import ExecutorOptions
from commfor_fast.pipelines.source import BatchSource, EvalOrder, EvalPlanner, ShardSource, TrainOrder, TrainPlanner
from commfor_fast.shards import SampleIds

# dtypes of the external source's outputs: the head, then (used, args) per stage.
HEAD_DTYPES = {"images": types.UINT8, "ids": types.INT32, "first_size": types.FLOAT, "crop_start": types.INT32,
               "crop_shape": types.INT32}
STAGE_DTYPES = (types.BOOL, types.FLOAT)
# Share of the JPEGs that the mixed decoder hands to the hardware decoder (A100, H100);
# None keeps DALI's default (0.65). The GPU check sets it to measure 0, 0.65 and 1.
HW_DECODER_LOAD: float | None = None


def _slot(img, one, args, r: int, interp, options: ExecutorOptions, code=None):
    """One geometric slot from its rows `r`, `r + 1` of the stage's `args`: warp -> erase
    -> resize with the DALI filter `interp`, or, where the filter `code` is given and
    BOX_BUILT, with PIL's box filter built from DALI operators.

    PIL fills only where the sample point itself falls outside the image and clamps
    the bilinear neighbours at the border; DALI's fill mode also blends the fill into
    the border band. So: warp with clamping, times the inside mask, a nearest-neighbour
    warp of a 1 x 1 image of ones (`one`) with the map scaled to it.
    """
    matrix, mask, size = args[r:r + 2, 0:3], args[r:r + 2, 3:6], args[r, 6:8]
    inside = fn.warp_affine(one, matrix=mask, size=size, fill_value=0, interp_type=types.INTERP_NN)
    img = fn.warp_affine(img, matrix=matrix, size=size, interp_type=types.INTERP_LINEAR) * inside
    img = fn.erase(img, anchor=args[r, 9:17], shape=args[r + 1, 9:17], axis_names="HW", fill_value=args[r, 8:9])  # 1-D, as the GPU erase takes it
    size, resize_kwargs = args[r + 1, 6:8], options.resize_kwargs()
    if code is None:
        return fn.resize(img, size=size, interp_type=interp, antialias=True, **resize_kwargs)
    if code == BOX_BUILT:  # a per-sample split
        img = box_from_regions(img, args[r, REGIONS], size, **resize_kwargs)
    else:
        img = fn.resize(img, size=size, interp_type=interp, antialias=True, **resize_kwargs)
    return img


def _stage(img, one, used, args, options: ExecutorOptions, built_box: bool):
    """One RSA stage, for the samples that use it: its slots, then JPEG where the
    quality (`slots.Slots.stage`'s last row) is not 0; with `built_box`, the slots
    split off the samples that resize with PIL's box filter. Everything is sliced from
    `args` inside the branch, so a stage costs the whole batch only the splits of
    `img`, `args` and `one` and the merge."""
    if used:
        codes = fn.cast(args[-1, 0:SLOTS_PER_STAGE + 1], dtype=types.INT32)
        interps = fn.cast(codes[0:SLOTS_PER_STAGE], dtype=types.INTERP_TYPE)  # no float -> enum cast
        for s in range(SLOTS_PER_STAGE):
            img = _slot(img, one, args, 2 * s, interps[s], options, codes[s] if built_box else None)
        quality = codes[SLOTS_PER_STAGE]
        if quality:
            img = fn.jpeg_compression_distortion(img, quality=quality)
    return img


def _inputs(source: BatchSource, stages: int, options: ExecutorOptions, workers: int):
    """The external source's outputs: the head fields by name, and each stage's two.

    With `workers`, DALI's worker processes call `source` (parallel mode); either way
    DALI takes the arrays without a copy (the source keeps them alive, `BatchSource`)."""
    dtypes = [HEAD_DTYPES[name] for name in source.head] + list(STAGE_DTYPES) * stages
    parallel = {"parallel": True, "prefetch_queue_depth": options.source_prefetch} if workers else {}
    outs = fn.external_source(source=source, num_outputs=len(dtypes), batch=True, batch_info=True, dtype=dtypes,
                              no_copy=True, **parallel)
    head, rest = dict(zip(source.head, outs)), outs[len(source.head):]
    return head, [rest[2 * k: 2 * k + 2] for k in range(stages)]


def _decode(images, raw: bool, device: str, options: ExecutorOptions):
    """uint8 HWC RGB on the pipeline's device, decoded like PIL (no EXIF rotation)."""
    if raw:
        images = fn.reshape(images, layout="HWC")
        return images.gpu() if device == "gpu" else images
    # The option, else the module's setting (the GPU check's jpeg-hw step sets HW_DECODER_LOAD).
    load = HW_DECODER_LOAD if options.hw_decoder_load is None else options.hw_decoder_load
    hw = {} if load is None or device != "gpu" else {"hw_decoder_load": load}
    return fn.decoders.image(images, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB,
                             adjust_orientation=False, jpeg_fancy_upsampling=True, **hw)


def _first_resize(img, size, options: ExecutorOptions):
    return fn.resize(img, size=size, interp_type=types.INTERP_LINEAR, antialias=True, **options.resize_kwargs())


def _normalise(img):
    return fn.crop_mirror_normalize(img, dtype=types.FLOAT, output_layout="CHW",
                                    mean=[255.0 * m for m in IMAGENET_MEAN], std=[255.0 * s for s in IMAGENET_STD])


@pipeline_def(enable_conditionals=True)
def _graph(source: BatchSource, options: ExecutorOptions, workers: int, stages: int, raw: bool, device: str,
           normalise: bool, built_box: bool):
    head, stage_inputs = _inputs(source, stages, options, workers)
    img = _decode(head["images"], raw, device, options)
    if not raw:
        img = _first_resize(img, head["first_size"], options)
    if stage_inputs:
        one = types.Constant(np.ones((1, 1, 1), np.uint8), device=device, layout="HWC")
        for used, args in stage_inputs:
            img = _stage(img, one, used, args, options, built_box)
    img = fn.slice(img, start=head["crop_start"], shape=head["crop_shape"], axes=[0, 1])
    return (_normalise(img) if normalise else img), head["ids"]


@pipeline_def
def _levels_graph(source: BatchSource, options: ExecutorOptions, workers: int, raw: bool, device: str,
                  normalise: bool, levels: tuple[Level, ...], seed: int):
    """The evaluation graph with perturbations (`perturb.py`): one decode, then per level
    perturb -> first resize -> centre crop -> normalise; one output per level, then the ids."""
    head, _ = _inputs(source, 0, options, workers)
    decoded = _decode(head["images"], raw, device, options)
    inputs = GraphInputs(head["ids"], device, seed)  # one for all levels: they share what they can
    outputs = []
    for level in levels:
        img = apply_dali(level, decoded, inputs)
        if not raw:
            img = _first_resize(img, head["first_size"], options)
        img = fn.slice(img, start=head["crop_start"], shape=head["crop_shape"], axes=[0, 1])
        outputs.append(_normalise(img) if normalise else img)
    return (*outputs, head["ids"])


def create_pipeline(source: BatchSource, *, stages: int, device: str, batch_size: int, num_threads: int = 4,
                    device_id: int | None = None, normalise: bool = True,
                    options: ExecutorOptions = ExecutorOptions(source_workers=0)) -> Pipeline:
    """The graph over any `BatchSource` (the training and evaluation factories below
    make theirs; benchmarks make one that draws samples with replacement), with the
    built box filter's branches where the source's plans use them (`source.built_box`)."""
    return _build(_graph, source, (stages, source.raw, device, normalise, source.built_box), device=device,
                  batch_size=batch_size, num_threads=num_threads, device_id=device_id, options=options)


def _build(graph: Callable[..., Pipeline], source: BatchSource, graph_args: tuple, *, device: str, batch_size: int,
           num_threads: int, device_id: int | None, options: ExecutorOptions) -> Pipeline:
    """A pipeline of `graph(source, options, workers, *graph_args)` on `device`, its
    `num_threads` split between DALI and the source's workers (`ExecutorOptions.split`);
    it keeps its `source`."""
    if device not in ("gpu", "cpu"):
        raise UserError(f"pipeline device {device!r}: use 'gpu' or 'cpu'")
    threads, workers = options.split(num_threads)
    # In this process: DALI reads the source's arrays until their run is consumed (the
    # pipeline's queue and one run either side); reading threads as DALI has. Workers
    # read with one thread each (they are the parallelism).
    source.prepare(read_threads=1 if workers else threads, keep=0 if workers else options.prefetch_queue_depth + 2)
    pipe = graph(source, options, workers, *graph_args, batch_size=batch_size,
                 num_threads=threads, device_id=None if device == "cpu" else (device_id or 0),
                 prefetch_queue_depth=options.prefetch_queue_depth, exec_dynamic=True,
                 py_num_workers=max(workers, 1), py_start_method="spawn", **options.pipeline_kwargs())
    pipe.source = source
    return pipe


def create_train_pipeline(
    source: ShardSource,
    *,
    device: str,
    batch_size: int,
    crop: int,
    rsa: RSAConfig,
    seed: int,
    shard_id: int = 0,
    num_shards: int = 1,
    num_threads: int = 4,
    device_id: int | None = None,
    plans: Callable[[SampleIds, int, int], Plan] | None = None,
    normalise: bool = True,
    options: ExecutorOptions = ExecutorOptions(source_workers=0),
    batches_per_run: int = 1,
    start_run: int = 0,
) -> Pipeline:
    """The training pipeline: decode, first resize, RSA, random crop, normalise.

    Outputs per sample: float32 CHW image (uint8 HWC with `normalise=False`) and the
    int32[5] ids record. One run of the pipeline holds `batches_per_run` consecutive
    training batches of `batch_size` from this rank's seeded stream
    (`source.TrainOrder`), planned together from (seed, rank, run number): DALI's
    fixed cost per run is shared by all of them, and `start_run` resumes exactly.
    `plans(ids, h, w)` replaces the random plans (tests inject parameters; with
    source workers, it must be picklable). `options` says how the pipeline runs
    (`executor.py`); by default the calling thread prepares the batches. The
    pipeline's `source` names the samples of the runs around the one it is at.
    """
    check_preresize(source.preresize, crop)
    stages = graph_stages(rsa)
    order = TrainOrder(source.num_samples, batch_size, shard_id, num_shards, seed, batches_per_run, start_run)
    plan = TrainPlanner(rsa, crop, source.preresize is not None, seed, shard_id, stages, plans)
    host = BatchSource(source, order, plan, stages)
    return create_pipeline(host, stages=stages, device=device, batch_size=batch_size * batches_per_run,
                           num_threads=num_threads, device_id=device_id, normalise=normalise, options=options)


def create_eval_pipeline(
    source: ShardSource,
    *,
    device: str,
    batch_size: int,
    crop: int,
    shard_id: int = 0,
    num_shards: int = 1,
    num_threads: int = 4,
    device_id: int | None = None,
    normalise: bool = True,
    options: ExecutorOptions = ExecutorOptions(source_workers=0),
    levels: tuple[Level, ...] = (),
    seed: int = 0,
) -> Pipeline:
    """The evaluation pipeline: decode, first resize, centre crop, normalise.

    Each shard_id reads its contiguous part of the set once, in stored order; the last
    batch is short, so every sample comes out exactly once. The pipeline stops with
    StopIteration at the end of the part.

    Outputs: the images and the ids; with `levels` (robustness evaluation,
    `perturb.parse_perturbations`), one image output per level, every level made from
    the same decode (`seed` seeds the noise), then the ids.
    """
    check_preresize(source.preresize, crop)
    order = EvalOrder(source.num_samples, batch_size, shard_id, num_shards)
    host = BatchSource(source, order, EvalPlanner(crop, source.preresize is not None), 0)
    if not levels:
        return create_pipeline(host, stages=0, device=device, batch_size=batch_size, num_threads=num_threads,
                               device_id=device_id, normalise=normalise, options=options)
    return _build(_levels_graph, host, (host.raw, device, normalise, tuple(levels), seed), device=device,
                  batch_size=batch_size, num_threads=num_threads, device_id=device_id, options=options)


def operator_census(pipe: Pipeline) -> Counter[tuple[str, str]]:
    """Operator instances of the traced graph, by (operator, device).

    Tracing needs no GPU, so CI can check a GPU graph. (Reads DALI's private graph
    lists: `Pipeline._build_graph`, `_ops`; DALI has no public census.)
    """
    pipe._build_graph()
    return Counter((getattr(op._op, "schema_name", type(op._op).__name__), getattr(op._op, "device", "cpu"))
                   for op in pipe._ops)


def missing_gpu_ops(census: Counter[tuple[str, str]]) -> list[str]:
    """Operators placed on the GPU that DALI has no GPU implementation of."""
    from nvidia.dali.ops import _registry

    have = set(_registry.gpu_ops())
    return sorted(name for name, device in census if device == "gpu" and name not in have)
