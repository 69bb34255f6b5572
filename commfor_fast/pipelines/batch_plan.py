"""Training slots for a whole batch at once: RSA drawn with numpy, no loop over samples.

`draw_train_slots` is the vectorised twin of `plan.train_plan` + `slots.lower_plans`
for training: the same distributions (SPEC section 3, the samplers in `ops.py`), not
the same random stream. It runs in three passes over the batch:

1. counts and order: every sample's bag of ops, shuffled by sorting uniform keys;
2. sizes: a loop over application steps that traces every sample's (h, w) through
   the ops that change it (only the size-relevant draws happen here);
3. per op kind, one draw of all its applications' parameters for the sizes they
   see, then one scatter into the slots at positions from one pass over the steps
   (no-op flips and erases take no slot; JPEGs end or join stages, as `lower_plans`
   places them), and identity geometry for the idle slots of used stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from commfor_fast.imageio import resized_shapes
from commfor_fast.pipelines import ops
from commfor_fast.pipelines.ops import Interp
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.pipelines.preprocess import resize_size
from commfor_fast.pipelines.slots import INTERPS, SLOTS_PER_STAGE, Slots, fill_idle_slots, pad_borders, \
    place_jpeg, set_geometry, stage_end

_RRC_INTERPS = np.array([INTERPS.index(i) for i in ops.RRC_INTERPS])
_BILINEAR, _BICUBIC = INTERPS.index(Interp.BILINEAR), INTERPS.index(Interp.BICUBIC)
_ATTEMPTS = 10  # torchvision's RandomResizedCrop and RandomErasing


@dataclass
class TrainDraw:
    """A batch's training preprocessing: first resize, RSA slots, final crop."""

    first_size: np.ndarray  # int32 (B, 2): (h, w) after the first resize (the input size if pre-resized)
    slots: Slots
    crop: np.ndarray  # int32 (B, 4): (top, left, C, C) of the final random crop


# ----------------------------------------------------------------- array helpers


def _shifts(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """`slots.shift` for arrays: (n, 2, 3) matrices reading the input at (y + dy, x + dx)."""
    m = np.zeros((len(dy), 2, 3), np.float32)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    m[:, 0, 2], m[:, 1, 2] = dx, dy
    return m


def _first_valid(ok: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Whether any attempt (axis 1) is valid, and each value at the first valid attempt."""
    rows, first = np.arange(len(ok)), ok.argmax(1)
    return (ok[rows, first],) + tuple(v[rows, first] for v in values)


def _resized_box_shapes(rng: np.random.Generator, n: int, scale: tuple[float, float],
                        ratio: tuple[float, float]) -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`ops._random_resized_box`'s shape for n applications: the ten attempts are drawn
    now; the returned function gives (height, width, found) for the input sizes of the
    applications `sel` (the centre-crop fallback's shape where no attempt fits)."""
    frac = rng.uniform(scale[0], scale[1], (n, _ATTEMPTS))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, _ATTEMPTS)))

    def shapes(h: np.ndarray, w: np.ndarray, sel: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        area = (h * w)[:, None] * frac[sel]
        cw = np.rint(np.sqrt(area * aspect[sel])).astype(np.int64)
        ch = np.rint(np.sqrt(area / aspect[sel])).astype(np.int64)
        ok = (cw > 0) & (cw <= w[:, None]) & (ch > 0) & (ch <= h[:, None])
        found, ch, cw = _first_valid(ok, ch, cw)
        if found.all():
            return ch, cw, found
        in_ratio = w / h
        narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
        fallback_h = np.where(narrow, np.rint(w / min(ratio)).astype(np.int64), h)
        fallback_w = np.where(wide, np.rint(h * max(ratio)).astype(np.int64), w)
        return np.where(found, ch, fallback_h), np.where(found, cw, fallback_w), found

    return shapes


def _box_corners(rng: np.random.Generator, h: np.ndarray, w: np.ndarray, ch: np.ndarray, cw: np.ndarray,
                 random: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uniform (top, left) of a (ch, cw) box inside (h, w) where `random`, centred elsewhere."""
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return np.where(random, top, (h - ch) // 2), np.where(random, left, (w - cw) // 2)


def _jpeg_quality(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(ops.JPEG_QUALITY[0], ops.JPEG_QUALITY[1] + 1, n)


# ----------------------------------------------------------------- op kinds


@dataclass
class _Apps:
    """Every application of one op in the batch: step index, sample, size in and out."""

    k: np.ndarray
    b: np.ndarray
    h: np.ndarray
    w: np.ndarray
    out_h: np.ndarray
    out_w: np.ndarray

    def __len__(self) -> int:
        return len(self.b)


@dataclass
class _Draw:
    """One op kind's drawn applications, ready to scatter once positions are known.

    Each application is `rounds` rounds (0 for a no-op), each a geometric slot when
    `geom`, then a JPEG when `jpeg`; `write` fills the slots given each application's
    first position (its geometric slot, or for a JPEG alone the JPEG's slot).
    """

    rounds: np.ndarray | int
    write: Callable[[Slots, np.ndarray], None]
    geom: bool = True
    jpeg: bool = False


# Size rules: (rng, n applications, crop, fix_quirks) -> out(h, w, sel) -> (out_h, out_w).
# They hold the size-relevant draws, made before the sizes are traced; draws that do not
# change the size (positions, interpolations, fills) wait for the per-kind pass.
SizeRule = Callable[[np.random.Generator, int, int, bool], Callable[..., tuple[np.ndarray, np.ndarray]]]


def _resize_size_rule(rng: np.random.Generator, n: int, crop: int, fix: bool) -> Callable[..., tuple]:
    side = rng.integers(crop + 1, round(ops.RESIZE_SCALE * crop) + 1, n)
    return lambda h, w, sel: resized_shapes(h, w, side[sel])


def _square_size_rule(rng: np.random.Generator, n: int, crop: int, fix: bool) -> Callable[..., tuple]:
    return lambda h, w, sel: (crop, crop)


def _shorter_to_crop_rule(rng: np.random.Generator, n: int, crop: int, fix: bool) -> Callable[..., tuple]:
    return lambda h, w, sel: resized_shapes(h, w, crop)


def _padding_size_rule(rng: np.random.Generator, n: int, crop: int, fix: bool) -> Callable[..., tuple]:
    return lambda h, w, sel: (h, w) if fix else (w, h)


class _RRCSizeRule:
    """RRCWithRandomIntpl's box shape per application, kept for its slot."""

    def __init__(self, rng: np.random.Generator, n: int, crop: int, fix: bool) -> None:
        self.crop = crop
        self.shapes = _resized_box_shapes(rng, n, ops.RRC_SCALE, ops.RRC_RATIO)
        self.box_h, self.box_w = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.found = np.zeros(n, bool)

    def __call__(self, h: np.ndarray, w: np.ndarray, sel: slice) -> tuple[np.ndarray, np.ndarray]:
        self.box_h[sel], self.box_w[sel], self.found[sel] = self.shapes(h, w, sel)
        return resized_shapes(self.box_h[sel], self.box_w[sel], self.crop)


SIZE_RULES: dict[str, SizeRule] = {
    "RandomResizeWithRandomIntpl": _resize_size_rule,
    "RandomCrop": _square_size_rule,
    "RRCWithRandomIntpl": _RRCSizeRule,
    "RandomPadding": _padding_size_rule,
    "singleJPEG": _shorter_to_crop_rule,
    "StochasticJPEG": _square_size_rule,
}


def _jpeg_in_memory(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
    quality = _jpeg_quality(rng, len(a))

    def write(slots: Slots, p: np.ndarray) -> None:
        slots.jpeg[p, a.b] = True
        slots.quality[p, a.b] = quality

    return _Draw(1, write, geom=False, jpeg=True)


def _random_resize(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
    interp = np.where(rng.random(len(a)) < 0.5, _BILINEAR, _BICUBIC)
    return _Draw(1, lambda s, p: set_geometry(s, p, a.b, a.h, a.w, size=(a.out_h, a.out_w), interp=interp))


def _random_crop(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
    top, left = rng.integers(0, a.h - crop + 1), rng.integers(0, a.w - crop + 1)
    return _Draw(1, lambda s, p: set_geometry(s, p, a.b, a.h, a.w, matrix=_shifts(top, left),
                                              warp=(a.out_h, a.out_w)))


def _flip(horizontal: bool) -> Callable[..., _Draw]:
    def draw(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
        applied = rng.random(len(a)) < 0.5
        b, h, w = a.b[applied], a.h[applied], a.w[applied]
        m = np.zeros((len(b), 2, 3), np.float32)
        if horizontal:
            m[:, 0, 0], m[:, 0, 2], m[:, 1, 1] = -1.0, w, 1.0
        else:
            m[:, 0, 0], m[:, 1, 1], m[:, 1, 2] = 1.0, -1.0, h
        return _Draw(applied.astype(np.int64), lambda s, p: set_geometry(s, p[applied], b, h, w, matrix=m))

    return draw


def _random_resized_crop(rng: np.random.Generator, a: _Apps, crop: int, rule: _RRCSizeRule) -> _Draw:
    top, left = _box_corners(rng, a.h, a.w, rule.box_h, rule.box_w, rule.found)
    interp = _RRC_INTERPS[rng.integers(0, len(_RRC_INTERPS), len(a))]
    return _Draw(1, lambda s, p: set_geometry(s, p, a.b, a.h, a.w, matrix=_shifts(top, left),
                                              warp=(rule.box_h, rule.box_w), size=(a.out_h, a.out_w),
                                              interp=interp))


def _affine(a: _Apps, matrix: np.ndarray) -> _Draw:
    return _Draw(1, lambda s, p: set_geometry(s, p, a.b, a.h, a.w, matrix=matrix))


def _random_rotation(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
    angle = rng.uniform(-ops.ROTATION_DEGREES, ops.ROTATION_DEGREES, len(a))
    return _affine(a, ops.affine_matrices(a.h, a.w, rotation=angle))


def _random_translate(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
    max_dx, max_dy = ops.TRANSLATE_FRACTION * a.w, ops.TRANSLATE_FRACTION * a.h
    tx, ty = np.rint(rng.uniform(-max_dx, max_dx)), np.rint(rng.uniform(-max_dy, max_dy))
    return _affine(a, ops.affine_matrices(a.h, a.w, translate_x=tx, translate_y=ty))


def _random_shear(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
    sx, sy = (rng.uniform(-ops.SHEAR_DEGREES, ops.SHEAR_DEGREES, len(a)) for _ in range(2))
    return _affine(a, ops.affine_matrices(a.h, a.w, shear_x=sx, shear_y=sy))


def _random_padding(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
    n = len(a)
    left, right = ((rng.uniform(0, ops.PAD_FRACTION, n) * a.w).astype(np.int64) for _ in range(2))
    top, bottom = ((rng.uniform(0, ops.PAD_FRACTION, n) * a.h).astype(np.int64) for _ in range(2))
    fill = rng.integers(0, 256, n)
    ph, pw = a.h + top + bottom, a.w + left + right
    borders = pad_borders(top, left, bottom, right, ph, pw)
    boxes = np.stack([np.stack(np.broadcast_arrays(*box), 1) for box in borders], 1)
    return _Draw(1, lambda s, p: set_geometry(s, p, a.b, a.h, a.w, matrix=_shifts(-top, -left),
                                              warp=(ph, pw), boxes=boxes, fill=fill, size=(a.out_h, a.out_w),
                                              interp=_BILINEAR))


def _random_cutout(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
    n = len(a)
    coin = rng.random(n) < ops.CUTOUT_P
    fill = rng.integers(0, 256, n)
    area = (a.h * a.w)[:, None] * rng.uniform(*ops.CUTOUT_SCALE, (n, _ATTEMPTS))
    aspect = np.exp(rng.uniform(math.log(ops.CUTOUT_RATIO[0]), math.log(ops.CUTOUT_RATIO[1]), (n, _ATTEMPTS)))
    eh = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    ew = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    found, eh, ew = _first_valid((eh < a.h[:, None]) & (ew < a.w[:, None]), eh, ew)
    eh, ew = np.where(found, eh, 0), np.where(found, ew, 0)
    top, left = rng.integers(0, a.h - eh + 1), rng.integers(0, a.w - ew + 1)
    applied = coin & found & (eh * ew > 0)
    boxes = np.stack([top, left, eh, ew], 1)[applied, None]
    b, h, w = a.b[applied], a.h[applied], a.w[applied]
    return _Draw(applied.astype(np.int64),
                 lambda s, p: set_geometry(s, p[applied], b, h, w, boxes=boxes, fill=fill[applied]))


def _single_jpeg(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
    def write(slots: Slots, p: np.ndarray) -> None:
        set_geometry(slots, p, a.b, a.h, a.w, size=(a.out_h, a.out_w), interp=_BILINEAR)
        slots.jpeg[stage_end(p), a.b] = True
        slots.quality[stage_end(p), a.b] = ops.SINGLE_JPEG_QUALITY

    return _Draw(1, write, jpeg=True)


def _stochastic_jpeg(rng: np.random.Generator, a: _Apps, crop: int, rule: object) -> _Draw:
    """Round 1 crops the input; each later round (p = 0.5 each) crops the C x C result.
    A round's JPEG ends its stage, so every later round starts a stage."""
    n = len(a)
    rounds = np.concatenate([np.ones((n, 1), bool), rng.random((n, ops.STOCHASTIC_JPEG_ROUNDS - 1)) < 0.5], 1)
    app, round_no = np.nonzero(rounds)
    offset = np.cumsum(rounds, 1)[app, round_no] - 1  # rounds before this one
    first = offset == 0
    h, w = np.where(first, a.h[app], crop), np.where(first, a.w[app], crop)
    ch, cw, found = _resized_box_shapes(rng, len(app), ops.STOCHASTIC_JPEG_SCALE, ops.RRC_RATIO)(h, w, slice(None))
    top, left = _box_corners(rng, h, w, ch, cw, found)
    quality = _jpeg_quality(rng, len(app))
    square = np.full_like(h, crop)

    def write(slots: Slots, p: np.ndarray) -> None:
        start = p[app]
        pos, b = np.where(first, start, stage_end(start) + 1 + SLOTS_PER_STAGE * (offset - 1)), a.b[app]
        set_geometry(slots, pos, b, h, w, matrix=_shifts(top, left), warp=(ch, cw), size=(square, square),
                     interp=_BILINEAR)
        slots.jpeg[stage_end(pos), b] = True
        slots.quality[stage_end(pos), b] = quality

    return _Draw(rounds.sum(1), write, jpeg=True)


# Every op of `ops.OPS`: (rng, applications, crop, its size rule or None) -> _Draw.
BATCH_OPS: dict[str, Callable[..., _Draw]] = {
    "JPEGinMemory": _jpeg_in_memory,
    "RandomResizeWithRandomIntpl": _random_resize,
    "RandomCrop": _random_crop,
    "RandomHorizontalFlip": _flip(horizontal=True),
    "RandomVerticalFlip": _flip(horizontal=False),
    "RRCWithRandomIntpl": _random_resized_crop,
    "RandomRotation": _random_rotation,
    "RandomTranslate": _random_translate,
    "RandomShear": _random_shear,
    "RandomPadding": _random_padding,
    "RandomCutout": _random_cutout,
    "singleJPEG": _single_jpeg,
    "StochasticJPEG": _stochastic_jpeg,
}


# ----------------------------------------------------------------- the batch


def _draw_sequence(rng: np.random.Generator, config: RSAConfig, batch: int) -> np.ndarray:
    """(batch, steps) op indices in application order, -1 past a sample's last op.

    Counts are UniformInt[min_i, max_i]; sorting uniform keys (unused bag places last)
    gives a uniformly random order of each sample's bag.
    """
    highs = np.array(config.max_counts, np.int64)
    counts = rng.integers(np.array(config.min_counts, np.int64), highs + 1, (batch, len(highs)))
    op_of = np.repeat(np.arange(len(highs)), highs)
    rank = np.arange(len(op_of)) - np.repeat(np.cumsum(highs) - highs, highs)
    in_bag = rank < counts[:, op_of]
    order = np.argsort(np.where(in_bag, rng.random(in_bag.shape), 2.0), axis=1, kind="stable")
    return np.where(np.take_along_axis(in_bag, order, 1), op_of[order], -1)


def _applications(seq: np.ndarray, n_ops: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every op's applications as (step, sample) arrays in step order (one stable sort
    of the step-major sequence); ops that no sample applies are left out."""
    batch = seq.shape[0]
    flat = seq.T.ravel()
    order = np.argsort(flat, kind="stable")
    ends = np.cumsum(np.bincount(flat + 1, minlength=n_ops + 1))
    return {i: (order[lo:hi] // batch, order[lo:hi] % batch)
            for i, (lo, hi) in enumerate(zip(ends[:-1].tolist(), ends[1:].tolist())) if hi > lo}


def _placement_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`slots.lower_plans`' placement rules as tables over (kind, state), so one pass
    over the steps places every sample with three lookups per step.

    Kinds: 0 no-op, 1 geometric, 2 JPEG alone, 3 a round of geometry + JPEG. States:
    p % 3 for the next free slot p, or 3 at a stage start that a JPEG may join.
    Returns (first - p, next p - p, next state), indexed by kind * 4 + state; the
    rules come from `slots.place_jpeg` and `slots.stage_end`, run on one slot p per state.
    """
    k = SLOTS_PER_STAGE
    first, step, state = (np.zeros(4 * (k + 1), np.int64) for _ in range(3))
    for s in range(k + 1):
        p, joinable = (k + s, False) if s < k else (k, True)
        q, after = place_jpeg(p, joinable)
        rows = {0: (p, p, joinable), 1: (p, p + 1, (p + 1) % k == 0), 2: (q, after, False),
                3: (p, stage_end(p) + 1, False)}
        for kind, (f, a, j) in rows.items():
            c = kind * (k + 1) + s
            first[c], step[c], state[c] = f - p, a - p, k if j else a % k
    return first, step, state


_FIRST, _STEP, _STATE = _placement_tables()


def _first_positions(rounds: np.ndarray, geom: np.ndarray, jpeg: np.ndarray, positions: int) -> np.ndarray:
    """Each application's first position, from (batch, steps) arrays of its rounds and
    kind: its geometric slot, or for a JPEG alone the JPEG's slot (`_placement_tables`;
    rounds after a geometry + JPEG application's first each take a whole stage)."""
    batch, steps = rounds.shape
    kind = np.where(rounds == 0, 0, np.where(~jpeg, 1, np.where(geom, 3, 2)))
    code = kind * (SLOTS_PER_STAGE + 1)
    extra = np.where(kind == 3, SLOTS_PER_STAGE * (rounds - 1), 0)
    first = np.zeros((batch, steps), np.int64)
    p, state = np.zeros(batch, np.int64), np.zeros(batch, np.int64)
    for k in range(steps):
        c = code[:, k] + state
        first[:, k] = p + _FIRST[c]
        p += _STEP[c] + extra[:, k]
        state = _STATE[c]
    if p.max(initial=0) > positions:
        need = -(-int(p.max()) // SLOTS_PER_STAGE)
        raise ValueError(f"a sample needs {need} stages, more than the graph's {positions // SLOTS_PER_STAGE} stages")
    return first


def draw_train_slots(rng: np.random.Generator, config: RSAConfig, heights: np.ndarray, widths: np.ndarray,
                     crop: int, preresized: bool, stages: int) -> TrainDraw:
    """Draw a batch's training preprocessing (first resize, RSA slots, final crop).

    Same distributions as `plan.train_plan` per image lowered by `slots.lower_plans`.
    Raises ValueError when a sample needs more than `stages` stages.
    """
    heights, widths = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    batch = len(heights)
    first = (heights, widths) if preresized else resized_shapes(heights, widths, resize_size(crop))
    seq = _draw_sequence(rng, config, batch)
    steps = seq.shape[1]
    sizes_h, sizes_w = np.empty((steps + 1, batch), np.int64), np.empty((steps + 1, batch), np.int64)
    sizes_h[0], sizes_w[0] = first

    applications = _applications(seq, len(config.ops))
    rules = {i: SIZE_RULES[config.ops[i]](rng, len(kb[0]), crop, config.fix_padding_quirk)
             for i, kb in applications.items() if config.ops[i] in SIZE_RULES}
    bounds = {i: np.searchsorted(applications[i][0], np.arange(steps + 1)).tolist() for i in rules}
    for k in range(steps):
        sizes_h[k + 1], sizes_w[k + 1] = sizes_h[k], sizes_w[k]
        for i, rule in rules.items():
            lo, hi = bounds[i][k], bounds[i][k + 1]
            if lo < hi:
                b = applications[i][1][lo:hi]
                sizes_h[k + 1, b], sizes_w[k + 1, b] = rule(sizes_h[k, b], sizes_w[k, b], slice(lo, hi))

    rounds = np.zeros((batch, steps), np.int64)
    geom, jpeg = np.zeros((batch, steps), bool), np.zeros((batch, steps), bool)
    draws = []
    for i, (k, b) in applications.items():
        a = _Apps(k, b, sizes_h[k, b], sizes_w[k, b], sizes_h[k + 1, b], sizes_w[k + 1, b])
        d = BATCH_OPS[config.ops[i]](rng, a, crop, rules.get(i))
        rounds[b, k], geom[b, k], jpeg[b, k] = d.rounds, d.geom, d.jpeg
        draws.append((a, d))
    slots = Slots.empty(stages, batch)
    if steps:
        first_pos = _first_positions(rounds, geom, jpeg, len(slots.geom))
        for a, d in draws:
            d.write(slots, first_pos[a.b, a.k])
        fill_idle_slots(slots, *first)

    final_h, final_w = sizes_h[-1], sizes_w[-1]
    top, left = rng.integers(0, final_h - crop + 1), rng.integers(0, final_w - crop + 1)
    square = np.full(batch, crop)
    crops = np.stack([top, left, square, square], 1).astype(np.int32)
    return TrainDraw(np.stack(first, 1).astype(np.int32), slots, crops)
