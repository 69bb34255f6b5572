"""The DALI executor: training and evaluation pipelines over the converter's shards.

The same graph runs on `device="gpu"` (nvJPEG decoding, every image op on the GPU) and
on `device="cpu"` (DALI's CPU backend, `device_id=None`), which is how the tests and
GPU-less machines run it.

How a per-sample random op sequence becomes a static graph: a plan compiler (one
`python_function` per batch, on the host) draws each sample's plan with the shared op
table (`ops`, `plan`), knowing the exact image size at every step, and lowers it to
`max_steps` positions of (kind, packed float arguments). The graph then has
`max_steps` positions; at each one a small selector splits the batch by kind with
DALI's conditional execution, so every sample only pays for the ops it draws.
The per-sample seeds come from DALI's own RNG, so pipeline checkpoints restore the
exact stream, and a test can replace the compiler's plans to inject parameters.

Known, measured differences to the PIL reference (see tests/test_parity.py):
PIL's Hamming and box filters have no DALI counterpart (Hamming becomes Gaussian when
shrinking and cubic when enlarging; box becomes nearest neighbour, which it nearly is
at RandomResizedCrop's scales), and resampling rounds differently by about a grey level.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline, do_not_convert

from commfor_fast.errors import UserError
from commfor_fast.pipelines.ops import Affine, Crop, Erase, Flip, Interp, Jpeg, Pad, Resize, ResizedCrop, Step, trace_sizes
from commfor_fast.pipelines.plan import Plan, RSAConfig, eval_plan, train_plan
from commfor_fast.pipelines.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_preresize
from commfor_fast.shards import IDS_EXT, IMAGE_EXTS, RAW_HEADER_BYTES, Manifest, SampleIds

READER_NAME = "reader"

# Kinds of generic DALI step; every plan step lowers to one of them.
NONE, RESIZE, CROP, FLIP, WARP, PAD, ERASE, JPEG = range(8)
NUM_ARGS = 23  # the longest packed argument vector (PAD)

# PIL filter -> DALI (filter when shrinking, filter when enlarging).
DALI_FILTERS = {
    Interp.NEAREST: (types.INTERP_NN, types.INTERP_NN),
    Interp.BILINEAR: (types.INTERP_LINEAR, types.INTERP_LINEAR),
    Interp.BICUBIC: (types.INTERP_CUBIC, types.INTERP_CUBIC),
    Interp.LANCZOS: (types.INTERP_LANCZOS3, types.INTERP_LANCZOS3),
    Interp.HAMMING: (types.INTERP_GAUSSIAN, types.INTERP_CUBIC),
    Interp.BOX: (types.INTERP_NN, types.INTERP_NN),
}


# ------------------------------------------------------------- lowering (host side)


def lower_step(step: Step, h: int, w: int) -> tuple[int, list[float]]:
    """(kind, arguments) of one step applied to an image of size (h, w)."""
    if isinstance(step, (Resize, ResizedCrop)):
        if isinstance(step, Resize):
            box, out = (0, 0, h, w), (step.height, step.width)
        else:
            box, out = (step.top, step.left, step.top + step.height, step.left + step.width), (step.size, step.size)
        shrink, enlarge = DALI_FILTERS[step.interp]
        return RESIZE, [*out, *box, int(shrink), int(enlarge)]
    if isinstance(step, Crop):
        return CROP, [step.top, step.left, step.height, step.width]
    if isinstance(step, Flip):
        return (FLIP, [float(step.horizontal), float(not step.horizontal)]) if step.applied else (NONE, [])
    if isinstance(step, Affine):
        return WARP, [*step.inverse_matrix(h, w), h, w]
    if isinstance(step, Pad):
        py, px = step.pad_y, step.pad_x
        ph, pw = h + 2 * py, w + 2 * px
        # Pad with zeros, then paint the four borders with the fill value.
        anchors = [0, 0, ph - py, 0, 0, 0, 0, pw - px]
        shapes = [py, pw, py, pw, ph, px, ph, px]
        return PAD, [-py, -px, ph, pw, step.fill, step.height, step.width, *anchors, *shapes]
    if isinstance(step, Erase):
        if not step.applied or step.height * step.width == 0:
            return NONE, []
        return ERASE, [step.top, step.left, step.height, step.width, step.fill]
    if isinstance(step, Jpeg):
        return JPEG, [step.quality]
    raise TypeError(f"no DALI lowering for {type(step).__name__}")


PlanFn = Callable[[SampleIds, int, int, np.random.Generator], Plan]


class PlanCompiler:
    """The per-batch host function: draws (or looks up) plans and lowers them.

    Inputs per sample: the `.ids` record (which holds the stored image's size), two
    random seeds from DALI and the encoded bytes (only their length is read). Outputs: the first-resize size, `positions`
    step kinds, the packed step arguments, the final crop window, and the byte count,
    which the graph uses to make decoding wait for this function: so the compiler has
    always seen a batch that fails to decode.
    """

    def __init__(self, plan_fn: PlanFn, positions: int) -> None:
        self.plan_fn = plan_fn
        self.positions = positions
        # Sample numbers of the last few batches: where to look when decoding fails.
        self.recent: deque[tuple[int, ...]] = deque(maxlen=8)

    @do_not_convert
    def __call__(self, ids_batch: list[np.ndarray], seed_batch: list[np.ndarray], encoded_batch: list[np.ndarray]):
        sizes, kinds, args, crops = [], [], [], []
        lengths = [np.array(e.shape, np.int64) for e in encoded_batch]
        self.recent.append(tuple(int(ids[2]) for ids in ids_batch))
        for raw_ids, seed in zip(ids_batch, seed_batch):
            ids = SampleIds(*(int(v) for v in raw_ids))
            rng = np.random.default_rng([int(s) for s in seed])
            plan = self.plan_fn(ids, ids.height, ids.width, rng)
            h, w = plan.height, plan.width
            if plan.resize is not None:
                h, w = plan.resize.out_size(h, w)
            sizes.append(np.array([h, w], np.float32))
            k = np.zeros(self.positions, np.int32)
            a = np.zeros((self.positions, NUM_ARGS), np.float32)
            steps = plan.rsa_steps()
            if len(steps) > self.positions:
                raise ValueError(f"plan has {len(steps)} steps, the graph has {self.positions} positions")
            for p, (step, (sh, sw)) in enumerate(zip(steps, trace_sizes(steps, h, w))):
                kind, values = lower_step(step, sh, sw)
                k[p] = kind
                a[p, : len(values)] = values
            kinds.append(k)
            args.append(a)
            crop = plan.crop
            crops.append(np.array([crop.top, crop.left, crop.height, crop.width], np.int32))
        return sizes, kinds, args, crops, lengths


# ---------------------------------------------------------------- graph (DALI side)


def _int(node):
    return fn.cast(node, dtype=types.INT32)


def _interp(node):
    return fn.cast(_int(node), dtype=types.INTERP_TYPE)


def _none(x, a):
    return x


def _resize(x, a):
    return fn.resize(x, size=a[0:2], roi_start=a[2:4], roi_end=a[4:6], roi_relative=False,
                     min_filter=_interp(a[6]), mag_filter=_interp(a[7]), antialias=True)


def _crop(x, a):
    return fn.slice(x, start=_int(a[0:2]), shape=_int(a[2:4]), axes=[0, 1])


def _flip(x, a):
    return fn.flip(x, horizontal=_int(a[0]), vertical=_int(a[1]))


def _warp(x, a):
    # PIL samples bilinearly with edge-clamped neighbours and fills only where the
    # sample point itself falls outside the image; DALI's fill mode also blends the fill
    # into the border band. So: warp with clamping, then zero where a nearest-neighbour
    # warp of a ones image says the point is outside.
    matrix = fn.reshape(a[0:6], shape=[2, 3])
    size = a[6:8]
    inside = fn.warp_affine(fn.ones_like(x), matrix=matrix, size=size, fill_value=0, interp_type=types.INTERP_NN)
    warped = fn.warp_affine(x, matrix=matrix, size=size, interp_type=types.INTERP_LINEAR)
    return fn.cast(warped * inside, dtype=types.UINT8)


def _pad(x, a):
    padded = fn.slice(x, start=_int(a[0:2]), shape=_int(a[2:4]), axes=[0, 1], out_of_bounds_policy="pad", fill_values=0)
    painted = fn.erase(padded, anchor=a[7:15], shape=a[15:23], axis_names="HW", fill_value=a[4])
    return fn.resize(painted, size=a[5:7], interp_type=types.INTERP_LINEAR, antialias=True)


def _erase(x, a):
    return fn.erase(x, anchor=a[0:2], shape=a[2:4], axis_names="HW", fill_value=a[4])


def _jpeg(x, a):
    return fn.jpeg_compression_distortion(x, quality=_int(a[0]))


BRANCHES = (_none, _resize, _crop, _flip, _warp, _pad, _erase, _jpeg)


def _select(kind, x, a, lo: int = 0, hi: int = len(BRANCHES) - 1):
    """Apply BRANCHES[kind] per sample, splitting the batch in halves by kind."""
    if lo == hi:
        return BRANCHES[lo](x, a)
    mid = (lo + hi) // 2
    if kind <= mid:
        out = _select(kind, x, a, lo, mid)
    else:
        out = _select(kind, x, a, mid + 1, hi)
    return out


# --------------------------------------------------------------------- pipelines


@dataclass(frozen=True)
class ShardSource:
    """The tar and index files of one shard set, and how its images are stored."""

    tars: tuple[str, ...]
    indexes: tuple[str, ...]
    num_samples: int
    preresize: int | None  # shorter side of raw stored pixels, or None (encoded images)

    @classmethod
    def from_manifest(cls, root: Path | str, manifest: Manifest, set_name: str) -> ShardSource:
        if set_name not in manifest.sets:
            raise UserError(f"set {set_name!r} is not in {root}; it has {', '.join(manifest.sets)}")
        info = manifest.sets[set_name]
        root = Path(root)
        return cls(
            tuple(str(root / s.tar) for s in info.shards),
            tuple(str(root / s.index) for s in info.shards),
            info.num_samples,
            manifest.preresize,
        )



def _read(source: ShardSource, shard_id: int, num_shards: int, shuffle: bool, initial_fill: int, seed: int):
    """The reader: (encoded image or raw pixels, ids int32[5])."""
    encoded, ids = fn.readers.webdataset(
        paths=list(source.tars),
        index_paths=list(source.indexes),
        ext=[";".join(IMAGE_EXTS), IDS_EXT],
        dtypes=[types.UINT8, types.INT32],
        missing_component_behavior="error",
        shard_id=shard_id,
        num_shards=num_shards,
        random_shuffle=shuffle,
        initial_fill=initial_fill,
        shuffle_after_epoch=shuffle,
        **({"shuffle_after_epoch_seed": seed} if shuffle else {}),
        stick_to_shard=not shuffle,
        pad_last_batch=not shuffle,
        name=READER_NAME,
    )
    return encoded, ids


def _decode(source: ShardSource, device: str, encoded, ids):
    """uint8 HWC RGB on the pipeline's device, decoded like PIL (no EXIF rotation)."""
    if source.preresize is not None:  # a .npy file: skip its fixed-size header, view the rest as HWC
        pixels = (encoded.gpu() if device == "gpu" else encoded)[RAW_HEADER_BYTES:]
        return fn.reshape(pixels, shape=fn.cat(ids[3:5], types.Constant(np.array([3], np.int32))), layout="HWC")
    return fn.decoders.image(
        encoded,
        device="mixed" if device == "gpu" else "cpu",
        output_type=types.RGB,
        adjust_orientation=False,
        jpeg_fancy_upsampling=True,
    )


def _compile_then_decode(source: ShardSource, device: str, compiler: PlanCompiler, encoded, ids, seeds):
    size, kinds, args, crop, length = fn.python_function(ids, seeds, encoded, function=compiler,
                                                         num_outputs=5, batch_processing=True)
    # A zero-copy reshape to the byte count the compiler returned orders decoding after it.
    encoded = fn.reshape(encoded, shape=length)
    return size, kinds, args, crop, _decode(source, device, encoded, ids)


def _normalise(img):
    return fn.crop_mirror_normalize(
        img,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in IMAGENET_MEAN],
        std=[255.0 * s for s in IMAGENET_STD],
    )


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def _train_graph(source: ShardSource, device: str, compiler: PlanCompiler, shard_id: int, num_shards: int,
                 initial_fill: int, reader_seed: int, normalise: bool):
    encoded, ids = _read(source, shard_id, num_shards, True, initial_fill, reader_seed)
    seeds = fn.random.uniform(range=[0, 2**31 - 1], shape=[2], dtype=types.INT64)
    size, kinds, args, crop, img = _compile_then_decode(source, device, compiler, encoded, ids, seeds)
    if source.preresize is None:
        img = fn.resize(img, size=size, interp_type=types.INTERP_LINEAR, antialias=True)
    for p in range(compiler.positions):
        img = _select(kinds[p], img, args[p])
    img = fn.slice(img, start=crop[0:2], shape=crop[2:4], axes=[0, 1])
    return (_normalise(img) if normalise else img), ids


@pipeline_def
def _eval_graph(source: ShardSource, device: str, compiler: PlanCompiler, shard_id: int, num_shards: int,
                normalise: bool):
    encoded, ids = _read(source, shard_id, num_shards, False, 1, 0)
    seeds = fn.random.uniform(range=[0, 1], shape=[2], dtype=types.INT64)
    size, kinds, args, crop, img = _compile_then_decode(source, device, compiler, encoded, ids, seeds)
    if source.preresize is None:
        img = fn.resize(img, size=size, interp_type=types.INTERP_LINEAR, antialias=True)
    img = fn.slice(img, start=crop[0:2], shape=crop[2:4], axes=[0, 1])
    return (_normalise(img) if normalise else img), ids


def _check_device(device: str, device_id: int | None) -> int | None:
    if device not in ("gpu", "cpu"):
        raise UserError(f"pipeline device {device!r}: use 'gpu' or 'cpu'")
    if device == "cpu":
        return None
    return 0 if device_id is None else device_id


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
    initial_fill: int = 4096,
    plans: Callable[[SampleIds, int, int], Plan] | None = None,
    normalise: bool = True,
    prefetch_queue_depth: int = 2,
    checkpoint: str | None = None,
) -> Pipeline:
    """The training pipeline: decode, first resize, RSA, random crop, normalise.

    Outputs per sample: float32 CHW image (uint8 HWC with `normalise=False`) and the
    int32[5] ids record. Reading is shuffled (a buffer of `initial_fill` samples, shard
    order reshuffled every epoch) and sharded by `shard_id`/`num_shards`. `seed` and
    `shard_id` fix the stream. `plans(ids, h, w)` replaces the random plans (tests use
    it to inject parameters). `checkpoint` restores a state from `Pipeline.checkpoint()`.
    The returned pipeline's `plan_compiler` remembers the last batches' sample numbers.
    """
    check_preresize(source.preresize, crop)
    preresized = source.preresize is not None

    def draw(ids: SampleIds, h: int, w: int, rng: np.random.Generator) -> Plan:
        if plans is not None:
            return plans(ids, h, w)
        return train_plan(rng, rsa, h, w, crop, preresized)

    compiler = PlanCompiler(draw, max(rsa.max_steps, 1))
    pipe = _train_graph(
        source, device, compiler, shard_id, num_shards, initial_fill, seed, normalise,
        batch_size=batch_size, num_threads=num_threads, device_id=_check_device(device, device_id),
        seed=int(np.random.SeedSequence([seed, shard_id]).generate_state(1)[0] >> 1),
        prefetch_queue_depth=prefetch_queue_depth, checkpoint=checkpoint,
    )
    pipe.plan_compiler = compiler
    return pipe


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
    prefetch_queue_depth: int = 2,
) -> Pipeline:
    """The evaluation pipeline: decode, first resize, centre crop, normalise.

    Each shard_id reads its contiguous part of the set once, in stored order; the last
    batch is padded by repeating the last sample (the loader drops those repeats).
    """
    check_preresize(source.preresize, crop)
    preresized = source.preresize is not None

    def draw(ids: SampleIds, h: int, w: int, rng: np.random.Generator) -> Plan:
        return eval_plan(h, w, crop, preresized)

    compiler = PlanCompiler(draw, 0)
    pipe = _eval_graph(
        source, device, compiler, shard_id, num_shards, normalise,
        batch_size=batch_size, num_threads=num_threads, device_id=_check_device(device, device_id),
        seed=0, prefetch_queue_depth=prefetch_queue_depth,
    )
    pipe.plan_compiler = compiler
    return pipe
