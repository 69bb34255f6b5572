"""Training slots for a whole batch at once: RSA drawn with numpy, no loop over samples.

`draw_train_slots` is the vectorised twin of `plan.train_plan` + `slots.lower_plans`
for training: the same distributions (SPEC section 3; each op's per-batch draw sits
next to its per-image draw in `ops.py`), not the same random stream. It runs in
three passes over the batch:

1. counts and order: every sample's bag of ops, shuffled by sorting uniform keys;
2. sizes: a loop over application steps that traces every sample's (h, w) through
   the ops that change it (the ops' size rules: only the size-relevant draws happen here);
3. per op, its batch draw of all its applications' parameters for the sizes they
   see, then positions from one pass over the steps (no-op flips and erases take no
   slot; JPEGs end or join stages, as `lower_plans` places them), the step columns
   written by `slots.fill_slot`, and identity geometry for the idle slots of used stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from commfor_fast.imageio import resized_shapes
from commfor_fast.pipelines.ops import OPS, Apps, BatchDraw
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.pipelines.preprocess import resize_size
from commfor_fast.pipelines.slots import SLOTS_PER_STAGE, Slots, fill_idle_slots, fill_slot, place_jpeg, stage_end


@dataclass
class TrainDraw:
    """A batch's training preprocessing: first resize, RSA slots, final crop."""

    first_size: np.ndarray  # int32 (B, 2): (h, w) after the first resize (the input size if pre-resized)
    slots: Slots
    crop: np.ndarray  # int32 (B, 4): (top, left, C, C) of the final random crop


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


def _write(slots: Slots, a: Apps, d: BatchDraw, first: np.ndarray) -> None:
    """Write an op's drawn rounds, given each application's first position: a round
    after an application's first starts the stage after the one before it ends."""
    pos, b = first[d.app], a.b[d.app]
    if len(d.app) > np.count_nonzero(d.rounds):  # some application has several rounds
        offset = np.arange(len(d.app)) - np.repeat(np.cumsum(d.rounds) - d.rounds, d.rounds)
        pos = np.where(offset == 0, pos, stage_end(pos) + 1 + SLOTS_PER_STAGE * (offset - 1))
    if d.geometry is not None:
        fill_slot(d.geometry, slots, pos, b, d.h, d.w)
    if d.jpeg is not None:
        fill_slot(d.jpeg, slots, pos if d.geometry is None else stage_end(pos), b, d.h, d.w)


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
    specs = [OPS[op] for op in config.ops]
    rules = {i: specs[i].size(rng, len(kb[0]), crop, config.fix_padding_quirk)
             for i, kb in applications.items() if specs[i].size is not None}
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
        a = Apps(k, b, sizes_h[k, b], sizes_w[k, b], sizes_h[k + 1, b], sizes_w[k + 1, b])
        d = specs[i].batch(rng, a, crop, rules.get(i))
        rounds[b, k], geom[b, k], jpeg[b, k] = d.rounds, d.geometry is not None, d.jpeg is not None
        draws.append((a, d))
    slots = Slots.empty(stages, batch, config.built_box)
    if steps:
        first_pos = _first_positions(rounds, geom, jpeg, len(slots.geom))
        for a, d in draws:
            _write(slots, a, d, first_pos[a.b, a.k])
        fill_idle_slots(slots, *first)

    final_h, final_w = sizes_h[-1], sizes_w[-1]
    top, left = rng.integers(0, final_h - crop + 1), rng.integers(0, final_w - crop + 1)
    square = np.full(batch, crop)
    crops = np.stack([top, left, square, square], 1).astype(np.int32)
    return TrainDraw(np.stack(first, 1).astype(np.int32), slots, crops)
