"""The DALI graph's per-position arguments, and how each plan step kind fills them.

The DALI graph applies RSA as `positions` identical slots. A slot runs, for the
samples that use it, a geometric sub-step and then, where drawn, a JPEG sub-step,
with per-sample arguments that the host emits as dense arrays:

    geom:  warp (affine, bilinear, PIL's fill rule) -> erase up to 4 boxes -> resize
    jpeg:  JPEG compression at `quality`

One slot does one RSA step: a warp is a crop, a flip, a rotation, a translation, a
shear or a padding canvas (integer shifts and mirror images sample pixel centres, so
they copy exactly); erase paints padding borders and cutout boxes; resize is a
RandomResize, a RandomResizedCrop's resize or padding's resize back. The unused parts
of a geometric slot are identities (identity matrix, empty boxes, a nearest-neighbour
resize to the same size), which copy exactly; a JPEG step alone has identity geometry.
A JPEG step shares the slot of the geometric step just before it when that slot has
none (singleJPEG, StochasticJPEG).

Each plan step kind declares its slot once, in `fill_slot` (its PIL twin is
`reference.apply_step`): adding a step kind touches one function per executor.
Filled slots come from two places: `lower_plans` (per-sample `Plan`s: the reference
sampler and tests' injected plans) and `batch_plan.draw_train_slots` (vectorised
draws for training).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import singledispatch

import numpy as np

from commfor_fast.pipelines.ops import Affine, Crop, Erase, Flip, Interp, Jpeg, Pad, Resize, ResizedCrop, Step
from commfor_fast.pipelines.plan import Plan

# DALI's DALIInterpType values (nvidia.dali.types), kept here so the host side needs no DALI import.
DALI_NN, DALI_LINEAR, DALI_CUBIC, DALI_LANCZOS3, DALI_TRIANGULAR, DALI_GAUSSIAN = range(6)

# PIL filter -> DALI filter (when shrinking, when enlarging); antialias is always on.
# Hamming and box have no DALI twin: the stand-ins are the closest measured at RSA's
# scales (commfor_fast/bench/filters_bench.py: 99.9th percentile of the difference to PIL,
# shrinking / enlarging: Hamming 3 / 3 grey levels; box 16 / 0, nothing in DALI is
# closer when shrinking; the others 0-1).
DALI_FILTERS: dict[Interp, tuple[int, int]] = {
    Interp.NEAREST: (DALI_NN, DALI_NN),
    Interp.BILINEAR: (DALI_LINEAR, DALI_LINEAR),
    Interp.BICUBIC: (DALI_CUBIC, DALI_CUBIC),
    Interp.LANCZOS: (DALI_LANCZOS3, DALI_LANCZOS3),
    Interp.HAMMING: (DALI_GAUSSIAN, DALI_GAUSSIAN),
    Interp.BOX: (DALI_GAUSSIAN, DALI_NN),
}

MAX_BOXES = 4  # padding paints four borders
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)

INTERPS = tuple(Interp)  # array code carries interpolations as indices into this tuple
_SHRINK = np.array([DALI_FILTERS[i][0] for i in INTERPS], np.int32)
_ENLARGE = np.array([DALI_FILTERS[i][1] for i in INTERPS], np.int32)


def dali_filters(interp: np.ndarray | int, in_h: np.ndarray | int, in_w: np.ndarray | int, out_h: np.ndarray | int,
                 out_w: np.ndarray | int) -> np.ndarray:
    """The DALI filter standing in for PIL's `INTERPS[interp]` on each resize (by area
    change); nearest neighbour, an exact copy, where the size does not change."""
    chosen = np.where(np.multiply(out_h, out_w) < np.multiply(in_h, in_w), _SHRINK[interp], _ENLARGE[interp])
    return np.where(np.equal(out_h, in_h) & np.equal(out_w, in_w), DALI_NN, chosen)


@dataclass
class Slots:
    """Every sample's slot arguments, arrays of shape (positions, batch, ...).

    The warp matrix maps output pixel centres to input coordinates (DALI's
    `warp_affine` convention); `mask` is the same map scaled so the input is 1 x 1,
    which makes a nearest-neighbour warp of a 1 x 1 image of ones PIL's inside test.
    Boxes are (y, x) anchors and (h, w) shapes, four per sample.
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

    @classmethod
    def empty(cls, positions: int, batch: int) -> Slots:
        """All slots unused: no sub-step runs."""
        p, b = positions, batch
        return cls(
            geom=np.zeros((p, b), bool), matrix=np.tile(IDENTITY, (p, b, 1, 1)),
            mask=np.tile(IDENTITY, (p, b, 1, 1)), warp_size=np.ones((p, b, 2), np.float32),
            anchors=np.zeros((p, b, 2 * MAX_BOXES), np.float32), shapes=np.zeros((p, b, 2 * MAX_BOXES), np.float32),
            fill=np.zeros((p, b), np.float32), size=np.ones((p, b, 2), np.float32),
            interp=np.zeros((p, b), np.int32), jpeg=np.zeros((p, b), bool), quality=np.full((p, b), 100, np.int32),
        )

    def position(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """What the graph receives for position `p`: (used, args), the arguments packed
        as float32 (batch, 2, 18) in `ARGS_LAYOUT`. A used slot always has geometry
        (the identity for a JPEG step alone), so `used` is `geom`."""
        args = np.empty((self.geom.shape[1], 2, ARGS_WIDTH), np.float32)
        for row, fields_ in enumerate(ARGS_LAYOUT):
            for name, cols in fields_.items():
                value = getattr(self, name)[p]
                args[:, row, cols] = value[:, row] if name in ("matrix", "mask") else value.reshape(len(value), -1)
        return self.geom[p].copy(), args


# The packed arguments of one sample at one position: two rows of 18 floats, so each
# operator argument is one slice (a 2 x 3 matrix is the first three columns of both
# rows). The graph slices them inside the slot's branch, where only the samples that
# use the slot pay; a typed input per field would need a conditional split each, paid
# by the whole batch at every position (measured: most of the positions' fixed cost).
ARGS_WIDTH = 18
ARGS_LAYOUT = (
    {"matrix": slice(0, 3), "mask": slice(3, 6), "warp_size": slice(6, 8), "fill": slice(8, 9),
     "anchors": slice(9, 17), "quality": slice(17, 18)},
    {"matrix": slice(0, 3), "mask": slice(3, 6), "size": slice(6, 8), "interp": slice(8, 9),
     "shapes": slice(9, 17), "jpeg": slice(17, 18)},
)


def set_geometry(slots: Slots, p: int, i: int, in_h: int, in_w: int, matrix: np.ndarray | None = None,
                 warp_size: tuple[int, int] | None = None, boxes: list[tuple[int, int, int, int]] = (),
                 fill: int = 0, size: tuple[int, int] | None = None, interp: Interp = Interp.NEAREST) -> None:
    """Fill sample i's geometric sub-step at position p: warp, boxes, resize."""
    matrix = IDENTITY if matrix is None else np.asarray(matrix, np.float32)
    wh, ww = warp_size or (in_h, in_w)
    rh, rw = size or (wh, ww)
    slots.geom[p, i] = True
    slots.matrix[p, i] = matrix
    slots.mask[p, i] = matrix / np.array([[in_w], [in_h]], np.float32)
    slots.warp_size[p, i] = (wh, ww)
    for k, (top, left, h, w) in enumerate(boxes):
        slots.anchors[p, i, 2 * k: 2 * k + 2] = (top, left)
        slots.shapes[p, i, 2 * k: 2 * k + 2] = (h, w)
    slots.fill[p, i] = fill
    slots.size[p, i] = (rh, rw)
    slots.interp[p, i] = dali_filters(INTERPS.index(interp), wh, ww, rh, rw)


def pad_borders(top: int, left: int, bottom: int, right: int, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """The four border boxes (top, left, height, width) of an (h, w) canvas."""
    return [(0, 0, top, w), (h - bottom, 0, bottom, w), (0, 0, h, left), (0, w - right, h, right)]


def shift(dy: float, dx: float) -> np.ndarray:
    """The warp matrix that reads the input at (y + dy, x + dx)."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], np.float32)


@singledispatch
def fill_slot(step: Step, slots: Slots, p: int, i: int, h: int, w: int) -> bool:
    """Write `step` (applied to an (h, w) image) into slot p of sample i.

    Returns False when the step draws a no-op (the slot stays free).
    """
    raise TypeError(f"no DALI slot for {type(step).__name__}")


@fill_slot.register
def _(step: Resize, slots: Slots, p: int, i: int, h: int, w: int) -> bool:
    set_geometry(slots, p, i, h, w, size=(step.height, step.width), interp=step.interp)
    return True


@fill_slot.register
def _(step: Crop, slots: Slots, p: int, i: int, h: int, w: int) -> bool:
    set_geometry(slots, p, i, h, w, matrix=shift(step.top, step.left), warp_size=(step.height, step.width))
    return True


@fill_slot.register
def _(step: ResizedCrop, slots: Slots, p: int, i: int, h: int, w: int) -> bool:
    set_geometry(slots, p, i, h, w, matrix=shift(step.top, step.left), warp_size=(step.height, step.width),
                 size=(step.out_height, step.out_width), interp=step.interp)
    return True


@fill_slot.register
def _(step: Flip, slots: Slots, p: int, i: int, h: int, w: int) -> bool:
    if not step.applied:
        return False
    mirror = [[-1.0, 0.0, w], [0.0, 1.0, 0.0]] if step.horizontal else [[1.0, 0.0, 0.0], [0.0, -1.0, h]]
    set_geometry(slots, p, i, h, w, matrix=np.array(mirror, np.float32))
    return True


@fill_slot.register
def _(step: Affine, slots: Slots, p: int, i: int, h: int, w: int) -> bool:
    set_geometry(slots, p, i, h, w, matrix=np.array(step.inverse_matrix(h, w), np.float32).reshape(2, 3))
    return True


@fill_slot.register
def _(step: Pad, slots: Slots, p: int, i: int, h: int, w: int) -> bool:
    ph, pw = h + step.top + step.bottom, w + step.left + step.right
    set_geometry(slots, p, i, h, w, matrix=shift(-step.top, -step.left), warp_size=(ph, pw),
                 boxes=pad_borders(step.top, step.left, step.bottom, step.right, ph, pw), fill=step.fill,
                 size=(step.height, step.width), interp=Interp.BILINEAR)
    return True


@fill_slot.register
def _(step: Erase, slots: Slots, p: int, i: int, h: int, w: int) -> bool:
    if not step.applied or step.height * step.width == 0:
        return False
    set_geometry(slots, p, i, h, w, boxes=[(step.top, step.left, step.height, step.width)], fill=step.fill)
    return True


@fill_slot.register
def _(step: Jpeg, slots: Slots, p: int, i: int, h: int, w: int) -> bool:
    if not slots.geom[p, i]:  # a JPEG alone: the slot's geometry is the identity
        set_geometry(slots, p, i, h, w)
    slots.jpeg[p, i] = True
    slots.quality[p, i] = step.quality
    return True


def lower_plans(plans: list[Plan], positions: int) -> Slots:
    """Slots for per-sample plans (their RSA steps; first resize and crop are separate).

    A JPEG step joins the previous slot when that slot is geometric and has no JPEG
    yet (the slot runs geometry first), so a plan never needs more positions than steps.
    """
    slots = Slots.empty(positions, len(plans))
    for i, plan in enumerate(plans):
        h, w = plan.resize.out_size(plan.height, plan.width) if plan.resize else (plan.height, plan.width)
        p = 0
        for step in plan.rsa_steps():
            joins = isinstance(step, Jpeg) and p > 0 and slots.geom[p - 1, i] and not slots.jpeg[p - 1, i]
            target = p - 1 if joins else p
            if target >= positions:
                raise ValueError(f"plan needs more than the graph's {positions} positions")
            if fill_slot(step, slots, target, i, h, w) and not joins:
                p += 1
            h, w = step.out_size(h, w)
    return slots
