"""The DALI graph's per-stage arguments, and how each plan step kind fills them.

The DALI graph applies RSA as `stages` identical stages, each run only for the
samples that use it. A stage holds `SLOTS_PER_STAGE` geometric slots and then, where
drawn, a JPEG, with per-sample arguments that the host emits as dense arrays:

    slot:  warp (affine, bilinear, PIL's fill rule) -> erase up to 4 boxes -> resize
    stage: slot, slot, slot -> JPEG compression at `quality`

One slot does one RSA step: a warp is a crop, a flip, a rotation, a translation, a
shear or a padding canvas (integer shifts and mirror images sample pixel centres, so
they copy exactly); erase paints padding borders and cutout boxes; resize is a
RandomResize, a RandomResizedCrop's resize or padding's resize back. The unused parts
of a slot are identities (identity matrix, empty boxes, a nearest-neighbour resize to
the same size), which copy exactly, and so is a whole unused slot of a used stage.

Slots are numbered in application order (position p is slot p % 3 of stage p // 3).
A JPEG step ends its stage: it sits at the stage's last slot, after the geometric
steps before it in that stage (the slots between are identities); when the stage
before is complete and has no JPEG yet, the JPEG joins it instead (`place_jpeg`).
So a stage costs DALI its conditional bookkeeping once for three steps, and a plan
with G geometric and J JPEG steps needs at most ceil(G / 3) + J stages
(`graph_stages`).

Each plan step kind declares its slot once, in `fill_slot` (its PIL twin is
`reference.apply_step`): adding a step kind touches one function per executor.
`fill_slot` writes one step or a column of steps (array fields, one entry per
sample), so it serves both places that fill slots: `lower_plans` (per-sample `Plan`s:
the reference sampler and tests' injected plans) and `batch_plan.draw_train_slots`
(the ops' per-batch draws, for training); both end with `fill_idle_slots`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import singledispatch
from typing import Union

import numpy as np

from commfor_fast.pipelines.ops import INTERPS, Affine, Crop, Erase, Flip, Interp, Jpeg, Pad, Resize, ResizedCrop, Step, \
    affine_matrices
from commfor_fast.pipelines.plan import Plan, RSAConfig
from commfor_fast.pipelines.resampling import BOX_REGION_COLUMNS, box_regions, covers_box

# DALI's DALIInterpType values (nvidia.dali.types), kept here so the host side needs no DALI import.
DALI_NN, DALI_LINEAR, DALI_CUBIC, DALI_LANCZOS3, DALI_TRIANGULAR, DALI_GAUSSIAN = range(6)

# PIL filter -> DALI filter (when shrinking, when enlarging); antialias is always on.
# Hamming and box have no DALI twin: the stand-ins are the closest single filters
# measured at RSA's scales (commfor_fast/bench/filters_bench.py, real photos: 99.9th
# percentile of the difference to PIL, shrinking / enlarging: Hamming 5 / 6 grey levels;
# box 37 / 4, nothing in DALI is closer when shrinking; the others 1 / 1 and nearest
# 18 / 3 at pixel-edge ties). By default (`--box-filter built`, `RSAConfig.box_filter`)
# `resampling.box_from_regions` (8 / 0) replaces the box stand-in where it applies,
# marked BOX_BUILT; `--box-filter standin` keeps the stand-in.
DALI_FILTERS: dict[Interp, tuple[int, int]] = {
    Interp.NEAREST: (DALI_NN, DALI_NN),
    Interp.BILINEAR: (DALI_LINEAR, DALI_LINEAR),
    Interp.BICUBIC: (DALI_CUBIC, DALI_CUBIC),
    Interp.LANCZOS: (DALI_LANCZOS3, DALI_LANCZOS3),
    Interp.HAMMING: (DALI_GAUSSIAN, DALI_GAUSSIAN),
    Interp.BOX: (DALI_GAUSSIAN, DALI_NN),
}

BOX_BUILT = 6  # not a DALI filter: the slot resizes with `resampling.box_from_regions`
MAX_BOXES = 4  # padding paints four borders
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
SLOTS_PER_STAGE = 3

_BOX = INTERPS.index(Interp.BOX)
_SHRINK = np.array([DALI_FILTERS[i][0] for i in INTERPS], np.int32)
_ENLARGE = np.array([DALI_FILTERS[i][1] for i in INTERPS], np.int32)


def graph_stages(config: RSAConfig) -> int:
    """Stages the training graph needs for `config`: ceil(G / 3) + J for at most G
    geometric and J JPEG steps per image (each JPEG ends a stage, at worst early)."""
    geometric = config.max_steps - config.max_jpegs
    return -(-geometric // SLOTS_PER_STAGE) + config.max_jpegs


def dali_filters(interp: np.ndarray | int, in_h: np.ndarray | int, in_w: np.ndarray | int, out_h: np.ndarray | int,
                 out_w: np.ndarray | int) -> np.ndarray:
    """The DALI filter standing in for PIL's `INTERPS[interp]` on each resize (by area
    change); nearest neighbour, an exact copy, where the size does not change."""
    chosen = np.where(np.multiply(out_h, out_w) < np.multiply(in_h, in_w), _SHRINK[interp], _ENLARGE[interp])
    return np.where(np.equal(out_h, in_h) & np.equal(out_w, in_w), DALI_NN, chosen)


@dataclass
class Slots:
    """Every sample's slot arguments, arrays of shape (positions, batch, ...), where
    positions = 3 x stages.

    The warp matrix maps output pixel centres to input coordinates (DALI's
    `warp_affine` convention); `mask` is the same map scaled so the input is 1 x 1,
    which makes a nearest-neighbour warp of a 1 x 1 image of ones PIL's inside test.
    Boxes are (y, x) anchors and (h, w) shapes, four per sample. `jpeg` and `quality`
    are set only at a stage's last slot. With `built_box`, resizes that PIL does with
    its box filter get the filter BOX_BUILT and their `regions` (`resampling.box_regions`).
    """

    geom: np.ndarray  # bool
    matrix: np.ndarray  # float32 (2, 3)
    mask: np.ndarray  # float32 (2, 3)
    warp_size: np.ndarray  # float32 (2,): output (h, w)
    anchors: np.ndarray  # float32 (8,)
    shapes: np.ndarray  # float32 (8,)
    fill: np.ndarray  # float32
    size: np.ndarray  # float32 (2,): resize output (h, w)
    interp: np.ndarray  # int32, DALI filter
    jpeg: np.ndarray  # bool
    quality: np.ndarray  # int32
    regions: np.ndarray  # float32 (BOX_REGION_COLUMNS,)
    built_box: bool = False

    @classmethod
    def empty(cls, stages: int, batch: int, built_box: bool = False) -> Slots:
        """All slots unused: no stage runs."""
        p, b = stages * SLOTS_PER_STAGE, batch
        return cls(
            geom=np.zeros((p, b), bool), matrix=np.tile(IDENTITY, (p, b, 1, 1)),
            mask=np.tile(IDENTITY, (p, b, 1, 1)), warp_size=np.ones((p, b, 2), np.float32),
            anchors=np.zeros((p, b, 2 * MAX_BOXES), np.float32), shapes=np.zeros((p, b, 2 * MAX_BOXES), np.float32),
            fill=np.zeros((p, b), np.float32), size=np.ones((p, b, 2), np.float32),
            interp=np.zeros((p, b), np.int32), jpeg=np.zeros((p, b), bool), quality=np.full((p, b), 100, np.int32),
            regions=np.zeros((p, b, BOX_REGION_COLUMNS), np.float32), built_box=built_box,
        )

    @property
    def stages(self) -> int:
        return len(self.geom) // SLOTS_PER_STAGE

    def stage(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """What the graph receives for stage `k`: (used, args), the arguments packed as
        float32 (batch, ARGS_ROWS, ARGS_WIDTH), laid out as below. After
        `fill_idle_slots` every slot of a used stage has geometry, so `used` is its
        first slot's `geom`."""
        lo = k * SLOTS_PER_STAGE
        args = np.zeros((self.geom.shape[1], ARGS_ROWS, ARGS_WIDTH), np.float32)
        for s in range(SLOTS_PER_STAGE):
            p, rows = lo + s, args[:, 2 * s: 2 * s + 2]
            rows[:, :, 0:3], rows[:, :, 3:6] = self.matrix[p], self.mask[p]
            rows[:, 0, 6:8], rows[:, 0, 8], rows[:, 0, 9:17] = self.warp_size[p], self.fill[p], self.anchors[p]
            rows[:, 1, 6:8], rows[:, 1, 9:17] = self.size[p], self.shapes[p]
            rows[:, 0, REGIONS] = self.regions[p]
            args[:, -1, s] = self.interp[p]
        last = lo + SLOTS_PER_STAGE - 1
        args[:, -1, SLOTS_PER_STAGE] = np.where(self.jpeg[last], self.quality[last], 0)
        return self.geom[lo].copy(), args


# The packed arguments of one sample at one stage: two rows of 35 floats per slot, so
# each operator argument is one slice (a 2 x 3 matrix is the first three columns of
# both rows), and a last row of the slots' DALI filters and the JPEG quality (0: no
# JPEG). Slot s, rows 2s and 2s + 1:
#     row 2s:     matrix[0] 0:3, mask[0] 3:6, warp_size 6:8, fill 8, anchors 9:17, regions 17:35
#     row 2s + 1: matrix[1] 0:3, mask[1] 3:6, size 6:8, (unused) 8, shapes 9:17, (unused) 17:35
#     row 6:      interp of slots 0, 1, 2 at 0:3, quality at 3
# The graph slices them inside the stage's branch, where only the samples that use the
# stage pay; a typed input per field would need a conditional split each, paid by the
# whole batch at every stage (measured: most of the stages' fixed cost).
REGIONS = slice(17, 17 + BOX_REGION_COLUMNS)
ARGS_WIDTH = REGIONS.stop
ARGS_ROWS = 2 * SLOTS_PER_STAGE + 1


def set_geometry(slots: Slots, p: np.ndarray | int, b: np.ndarray | int, h: np.ndarray | int, w: np.ndarray | int,
                 matrix: np.ndarray | None = None, warp: tuple[np.ndarray, np.ndarray] | None = None,
                 boxes: np.ndarray | None = None, fill: np.ndarray | int = 0,
                 size: tuple[np.ndarray, np.ndarray] | None = None, interp: np.ndarray | int = 0) -> np.ndarray:
    """Fill the geometric slot at positions `p` of samples `b` with input sizes (h, w)
    ((n,) arrays, or scalars for one sample): warp, boxes, resize.

    `matrix` is (n, 2, 3) (identity if None), `boxes` (n, k, 4) of (top, left, height,
    width), `interp` indexes `INTERPS`. Returns the slots taken (all n), as `fill_slot` does.
    """
    p, b, h, w = (np.atleast_1d(np.asarray(v, np.int64)) for v in (p, b, h, w))
    n = len(p)
    matrix = np.broadcast_to(IDENTITY if matrix is None else np.asarray(matrix, np.float32), (n, 2, 3))
    wh, ww = (h, w) if warp is None else (np.broadcast_to(v, (n,)) for v in warp)
    rh, rw = (wh, ww) if size is None else (np.broadcast_to(v, (n,)) for v in size)
    slots.geom[p, b] = True
    slots.matrix[p, b] = matrix
    slots.mask[p, b] = matrix / np.stack([w, h], 1).astype(np.float32)[:, :, None]
    slots.warp_size[p, b] = np.stack([wh, ww], 1)
    if boxes is not None:
        boxes = np.asarray(boxes)
        k = boxes.shape[-2]
        boxes = boxes.reshape(n, k, 4)
        slots.anchors[p, b, : 2 * k] = boxes[:, :, :2].reshape(n, 2 * k)
        slots.shapes[p, b, : 2 * k] = boxes[:, :, 2:].reshape(n, 2 * k)
    slots.fill[p, b] = fill
    slots.size[p, b] = np.stack([rh, rw], 1)
    slots.interp[p, b] = dali_filters(interp, wh, ww, rh, rw)
    if slots.built_box:
        built = (np.equal(interp, _BOX) & covers_box(wh, ww, rh, rw)
                 & ~(np.equal(wh, rh) & np.equal(ww, rw)))  # the same size stays a nearest-neighbour copy
        if built.any():
            slots.interp[p[built], b[built]] = BOX_BUILT
            slots.regions[p[built], b[built]] = box_regions(wh[built], ww[built], rh[built], rw[built])
    return np.ones(n, bool)


def stage_end(p: np.ndarray | int) -> np.ndarray | int:
    """The last slot of the stage that holds position p."""
    return p - p % SLOTS_PER_STAGE + SLOTS_PER_STAGE - 1


def place_jpeg(p: np.ndarray | int, joinable: np.ndarray | bool) -> tuple[np.ndarray | int, np.ndarray | int]:
    """Where a JPEG step goes when the next free slot is p: (its position, the next
    free slot). Mid-stage it ends that stage; at a stage start it joins the stage
    before when `joinable` (complete, no JPEG yet), else it ends a stage of its own."""
    at_start = p % SLOTS_PER_STAGE == 0
    join = at_start & joinable
    q = np.where(join, p - 1, np.where(at_start, p + SLOTS_PER_STAGE - 1, stage_end(p)))
    return q, np.where(join, p, q + 1)


def fill_idle_slots(slots: Slots, heights: np.ndarray, widths: np.ndarray) -> None:
    """Give every unused slot of a used stage identity geometry at the size it sees
    (`heights`, `widths`: each sample's size before RSA), so the stage runs exactly."""
    positions, batch = slots.geom.shape
    by_stage = (slots.geom.reshape(slots.stages, SLOTS_PER_STAGE, batch).any(1)
                | slots.jpeg.reshape(slots.stages, SLOTS_PER_STAGE, batch)[:, -1])
    idle_p, idle_b = np.nonzero(np.repeat(by_stage, SLOTS_PER_STAGE, 0) & ~slots.geom)
    # An idle slot sees the output of the last geometric slot before it (idle slots copy).
    last = np.maximum.accumulate(np.where(slots.geom, np.arange(positions)[:, None], -1), 0)
    before = np.concatenate([np.full((1, batch), -1), last[:-1]])[idle_p, idle_b]
    seen = slots.size[np.maximum(before, 0), idle_b].astype(np.int64)
    h = np.where(before >= 0, seen[:, 0], np.asarray(heights, np.int64)[idle_b])
    w = np.where(before >= 0, seen[:, 1], np.asarray(widths, np.int64)[idle_b])
    # `Slots.empty` left these slots identities of unknown size (identity matrix, no
    # boxes, nearest-neighbour filter): what `set_geometry` would write, minus the size.
    hw = np.stack([h, w], 1).astype(np.float32)
    slots.geom[idle_p, idle_b] = True
    slots.mask[idle_p, idle_b] = IDENTITY / hw[:, ::-1, None]
    slots.warp_size[idle_p, idle_b] = slots.size[idle_p, idle_b] = hw


def pad_borders(top: np.ndarray, left: np.ndarray, bottom: np.ndarray, right: np.ndarray, h: np.ndarray,
                w: np.ndarray) -> np.ndarray:
    """The four border boxes (top, left, height, width) of (h, w) canvases: (n, 4, 4)."""
    borders = [(0, 0, top, w), (h - bottom, 0, bottom, w), (0, 0, h, left), (0, w - right, h, right)]
    boxes = np.zeros((np.size(h), 4, 4), np.int64)
    for i, box in enumerate(borders):
        boxes[:, i] = np.stack([np.broadcast_to(v, np.shape(h)) for v in box], -1)
    return boxes


def shift(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """The warp matrices, (n, 2, 3), that read the input at (y + dy, x + dx)."""
    m = np.zeros((max(np.size(dy), np.size(dx)), 2, 3), np.float32)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    m[:, 0, 2], m[:, 1, 2] = dx, dy
    return m


def _code(interp: Interp | np.ndarray) -> int | np.ndarray:
    """A step's interpolation as an index into `INTERPS` (columns carry indices)."""
    return INTERPS.index(interp) if isinstance(interp, Interp) else interp


def _rows(n: int, *values: object) -> list[np.ndarray]:
    """Scalars or (n,) arrays as (n,) arrays."""
    return [v if isinstance(v, np.ndarray) else np.full(n, v) for v in values]


Ints = Union[np.ndarray, int]  # one value, or one per sample


@singledispatch
def fill_slot(step: Step, slots: Slots, p: Ints, b: Ints, h: Ints, w: Ints) -> np.ndarray:
    """Write `step` (applied to (h, w) images) into slot p of samples b: one step and
    scalars, or a column of steps and (n,) arrays.

    Returns where a slot was taken: False where the step drew a no-op (the slot stays free).
    """
    raise TypeError(f"no DALI slot for {type(step).__name__}")


@fill_slot.register
def _(step: Resize, slots: Slots, p: Ints, b: Ints, h: Ints, w: Ints) -> np.ndarray:
    return set_geometry(slots, p, b, h, w, size=(step.height, step.width), interp=_code(step.interp))


@fill_slot.register
def _(step: Crop, slots: Slots, p: Ints, b: Ints, h: Ints, w: Ints) -> np.ndarray:
    return set_geometry(slots, p, b, h, w, matrix=shift(step.top, step.left), warp=(step.height, step.width))


@fill_slot.register
def _(step: ResizedCrop, slots: Slots, p: Ints, b: Ints, h: Ints, w: Ints) -> np.ndarray:
    return set_geometry(slots, p, b, h, w, matrix=shift(step.top, step.left), warp=(step.height, step.width),
                        size=(step.out_height, step.out_width), interp=_code(step.interp))


@fill_slot.register
def _(step: Flip, slots: Slots, p: Ints, b: Ints, h: Ints, w: Ints) -> np.ndarray:
    p, b, h, w = (np.atleast_1d(v) for v in (p, b, h, w))
    horizontal, applied = _rows(len(p), step.horizontal, step.applied)
    if not applied.all():
        p, b, h, w, horizontal = p[applied], b[applied], h[applied], w[applied], horizontal[applied]
    m = np.zeros((len(p), 2, 3), np.float32)
    m[:, 0, 0], m[:, 0, 2] = np.where(horizontal, -1.0, 1.0), np.where(horizontal, w, 0)
    m[:, 1, 1], m[:, 1, 2] = np.where(horizontal, 1.0, -1.0), np.where(horizontal, 0, h)
    set_geometry(slots, p, b, h, w, matrix=m)
    return applied


@fill_slot.register
def _(step: Affine, slots: Slots, p: Ints, b: Ints, h: Ints, w: Ints) -> np.ndarray:
    h, w = np.atleast_1d(np.asarray(h, np.int64)), np.atleast_1d(np.asarray(w, np.int64))
    matrix = affine_matrices(h, w, step.rotation, step.translate_x, step.translate_y, step.shear_x, step.shear_y)
    return set_geometry(slots, p, b, h, w, matrix=matrix)


@fill_slot.register
def _(step: Pad, slots: Slots, p: Ints, b: Ints, h: Ints, w: Ints) -> np.ndarray:
    ph, pw = h + step.top + step.bottom, w + step.left + step.right
    return set_geometry(slots, p, b, h, w, matrix=shift(-step.top, -step.left), warp=(ph, pw),
                        boxes=pad_borders(step.top, step.left, step.bottom, step.right, ph, pw), fill=step.fill,
                        size=(step.height, step.width), interp=INTERPS.index(Interp.BILINEAR))


@fill_slot.register
def _(step: Erase, slots: Slots, p: Ints, b: Ints, h: Ints, w: Ints) -> np.ndarray:
    p, b, h, w = (np.atleast_1d(v) for v in (p, b, h, w))
    top, left, eh, ew, fill, applied = _rows(len(p), step.top, step.left, step.height, step.width, step.fill,
                                             step.applied)
    taken = applied & (eh * ew > 0)
    boxes = np.stack([top, left, eh, ew], 1)[:, None]
    if not taken.all():
        p, b, h, w, boxes, fill = p[taken], b[taken], h[taken], w[taken], boxes[taken], fill[taken]
    set_geometry(slots, p, b, h, w, boxes=boxes, fill=fill)
    return taken


@fill_slot.register
def _(step: Jpeg, slots: Slots, p: Ints, b: Ints, h: Ints, w: Ints) -> np.ndarray:
    slots.jpeg[p, b] = True  # at a stage's last slot (`place_jpeg`)
    slots.quality[p, b] = step.quality
    return np.ones(np.shape(np.atleast_1d(p)), bool)


def lower_plans(plans: list[Plan], stages: int, built_box: bool = False) -> Slots:
    """Slots for per-sample plans (their RSA steps; first resize and crop are separate),
    placed as the module docstring says. Raises ValueError when a plan needs more
    than `stages` stages."""
    slots = Slots.empty(stages, len(plans), built_box)
    firsts = [plan.resize.out_size(plan.height, plan.width) if plan.resize else (plan.height, plan.width)
              for plan in plans]
    for i, (plan, (h, w)) in enumerate(zip(plans, firsts)):
        p, joinable = 0, False
        for step in plan.rsa_steps():
            target, after = place_jpeg(p, joinable) if isinstance(step, Jpeg) else (p, p + 1)
            if target >= len(slots.geom):
                raise ValueError(f"plan needs more than the graph's {stages} stages")
            if fill_slot(step, slots, int(target), i, h, w).all():
                p, joinable = int(after), not isinstance(step, Jpeg) and after % SLOTS_PER_STAGE == 0
            h, w = step.out_size(h, w)
    heights, widths = np.array(firsts, np.int64).reshape(-1, 2).T
    fill_idle_slots(slots, heights, widths)
    return slots
