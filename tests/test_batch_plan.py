"""The vectorised training draw matches the per-sample path in distribution.

`draw_train_slots` must draw what `train_plan` + `lower_plans` draw, image for image in
law (not in random stream). Both sides' slots are read back with one classifier (each
slot's kind from its matrix, boxes and sizes; its input size traced through the earlier
slots), and every field of every kind is compared: chi-square for discrete fields,
two-sample Kolmogorov-Smirnov for the others, each at alpha = 1e-6 (a few hundred
comparisons per case), plus exact supports. Exact invariants (mask rule, filter rule,
free slots untouched, sizes >= C, positions) are checked on both sides. Rounding and
truncation, which sampling cannot resolve, are checked exactly: with a generator that
returns one constant uniform, both paths must fill identical slots.
"""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from commfor_fast.pipelines.batch_plan import draw_train_slots
from commfor_fast.pipelines.ops import OPS, Crop, Flip, Interp, Jpeg, ResizedCrop, trace_sizes
from commfor_fast.pipelines.plan import Plan, PlanEntry, RSAConfig, train_plan
from commfor_fast.pipelines.resampling import box_regions
from commfor_fast.pipelines.slots import BOX_BUILT, DALI_GAUSSIAN, DALI_LINEAR, DALI_NN, REGIONS, SLOTS_PER_STAGE, \
    Slots, graph_stages, lower_plans

N = 4000
# Critical values at alpha = 1e-6: each case makes a few hundred comparisons.
KS_ALPHA_C = math.sqrt(-math.log(1e-6 / 2) / 2)  # two-sample Kolmogorov-Smirnov constant
CHI2_Z = 4.753  # standard normal upper 1e-6 quantile (Wilson-Hilferty chi-square quantile)
DISCRETE = ("interp", "jpeg", "quality")
ALL_OPS = RSAConfig(tuple(OPS), (1,) * len(OPS), (3,) * len(OPS))  # every registered op
KINDS = ("jpeg", "hflip", "vflip", "pad", "cutout", "resize", "identity", "translate", "crop", "rrc", "rotation",
         "shear")


def _batch_draw(config: RSAConfig, sizes: list[tuple[int, int]], crop: int, preresized: bool, n: int = N,
                seed: int = 1) -> tuple[np.ndarray, Slots, np.ndarray]:
    rng = np.random.default_rng(seed)
    hw = np.array([sizes[i % len(sizes)] for i in range(n)])
    draw = draw_train_slots(rng, config, hw[:, 0], hw[:, 1], crop, preresized, graph_stages(config))
    return draw.first_size, draw.slots, draw.crop


def _sample_draw(config: RSAConfig, sizes: list[tuple[int, int]], crop: int, preresized: bool, n: int = N,
                 seed: int = 2) -> tuple[np.ndarray, Slots, np.ndarray]:
    rng = np.random.default_rng(seed)
    plans = [train_plan(rng, config, *sizes[i % len(sizes)], crop, preresized) for i in range(n)]
    first = np.array([p.resize.out_size(p.height, p.width) if p.resize else (p.height, p.width) for p in plans])
    boxes = np.array([(p.crop.top, p.crop.left, p.crop.height, p.crop.width) for p in plans])
    return first, lower_plans(plans, graph_stages(config), config.built_box), boxes


def _read(first: np.ndarray, slots: Slots) -> dict[str, np.ndarray]:
    """Every used slot as flat feature arrays (kind, input size, fields), plus per-sample ones."""
    used = slots.geom | slots.jpeg
    in_h, in_w = np.empty(used.shape), np.empty(used.shape)
    h, w = first[:, 0].astype(float), first[:, 1].astype(float)
    for p in range(len(used)):
        in_h[p], in_w[p] = h, w
        h, w = np.where(slots.geom[p], slots.size[p, :, 0], h), np.where(slots.geom[p], slots.size[p, :, 1], w)
    m = slots.matrix
    warp_h, warp_w = slots.warp_size[..., 0], slots.warp_size[..., 1]
    size_h, size_w = slots.size[..., 0], slots.size[..., 1]
    same_canvas = (warp_h == in_h) & (warp_w == in_w)
    shift = (m[..., 0, 0] == 1) & (m[..., 1, 1] == 1) & (m[..., 0, 1] == 0) & (m[..., 1, 0] == 0)
    moved = (m[..., 0, 2] != 0) | (m[..., 1, 2] != 0)
    boxed = slots.shapes.any(-1)
    rotation = np.isclose(m[..., 0, 0], m[..., 1, 1], atol=1e-6) & np.isclose(m[..., 0, 1], -m[..., 1, 0], atol=1e-6)
    identity = shift & same_canvas & ~moved & ~boxed & (size_h == in_h) & (size_w == in_w)
    conditions = [
        ~slots.geom | (identity & slots.jpeg),  # a JPEG alone has identity geometry
        (m[..., 0, 0] == -1) & (m[..., 0, 2] == in_w) & (m[..., 1, 1] == 1) & (m[..., 0, 1] == 0) & (m[..., 1, 0] == 0),
        (m[..., 1, 1] == -1) & (m[..., 1, 2] == in_h) & (m[..., 0, 0] == 1) & (m[..., 0, 1] == 0) & (m[..., 1, 0] == 0),
        shift & (warp_h >= in_h) & (warp_w >= in_w) & ~same_canvas,
        shift & same_canvas & boxed,
        shift & same_canvas & ~moved & ((size_h != in_h) | (size_w != in_w)),
        shift & same_canvas & ~moved,
        shift & same_canvas,
        shift & (size_h == warp_h) & (size_w == warp_w),
        shift,
        rotation,
    ]
    kind = np.select(conditions, np.arange(len(conditions)), len(conditions))
    sel = np.nonzero(used)
    angle = -np.degrees(np.arctan2(m[..., 0, 1], m[..., 0, 0]))
    feats = dict(kind=kind, in_h=in_h, in_w=in_w, warp_h=warp_h, warp_w=warp_w, size_h=size_h, size_w=size_w,
                 interp=slots.interp, fill=slots.fill, tx=m[..., 0, 2], ty=m[..., 1, 2], angle=angle,
                 jpeg=slots.jpeg, quality=np.where(slots.jpeg, slots.quality, -1),
                 box_top=slots.anchors[..., 0], box_left=slots.anchors[..., 1], box_h=slots.shapes[..., 0],
                 box_w=slots.shapes[..., 1], pad_bottom=slots.shapes[..., 2], pad_right=slots.shapes[..., 7])
    out = {k: v[sel] for k, v in feats.items()}
    out["slots_per_sample"] = used.sum(0)
    for code, name in enumerate(KINDS):
        out[f"count_{name}"] = ((kind == code) & used).sum(0)
    return out


def _ks(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and its critical value."""
    grid = np.union1d(x, y)
    cx = np.searchsorted(np.sort(x), grid, side="right") / len(x)
    cy = np.searchsorted(np.sort(y), grid, side="right") / len(y)
    return float(np.abs(cx - cy).max()), KS_ALPHA_C * math.sqrt((len(x) + len(y)) / (len(x) * len(y)))


def _chi2(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Chi-square homogeneity statistic of two discrete samples and its critical value
    (cells expecting fewer than 5 counts are pooled into one)."""
    values, inverse = np.unique(np.concatenate([x, y]), return_inverse=True)
    table = np.stack([np.bincount(inverse[: len(x)], minlength=len(values)),
                      np.bincount(inverse[len(x):], minlength=len(values))]).astype(float)
    small = (table.sum(0) * min(len(x), len(y)) / table.sum()) < 5
    if small.any():
        table = np.column_stack([table[:, ~small], table[:, small].sum(1)])
    dof = table.shape[1] - 1
    if dof == 0:
        return 0.0, 0.0
    expected = table.sum(0) * table.sum(1)[:, None] / table.sum()
    crit = dof * (1 - 2 / (9 * dof) + CHI2_Z * math.sqrt(2 / (9 * dof))) ** 3
    return float(((table - expected) ** 2 / expected).sum()), crit


def _same_law(x: np.ndarray, y: np.ndarray, discrete: bool) -> tuple[float, float]:
    return _chi2(x, y) if discrete else _ks(x, y)


def _compare(mine: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    """Per-sample counts, then every field of every kind, then exact discrete supports."""
    for key in [k for k in mine if k == "slots_per_sample" or k.startswith("count_")]:
        d, crit = _chi2(mine[key], ref[key])
        assert d <= crit, (key, d, crit)
    for code, name in enumerate(KINDS):
        a, b = mine["kind"] == code, ref["kind"] == code
        assert (a.sum() >= 20) == (b.sum() >= 20), (name, a.sum(), b.sum())
        if a.sum() < 20:
            continue
        for key in ("in_h", "in_w", "warp_h", "warp_w", "size_h", "size_w", "fill", "tx", "ty", "angle", "box_top",
                    "box_left", "box_h", "box_w", "pad_bottom", "pad_right") + DISCRETE:
            d, crit = _same_law(mine[key][a], ref[key][b], key in DISCRETE)
            assert d <= crit, (name, key, d, crit)
        for key in ("interp", "jpeg"):
            assert set(np.unique(mine[key][a])) == set(np.unique(ref[key][b])), (name, key)
        if name in ("pad", "cutout"):
            for fills in (mine["fill"][a], ref["fill"][b]):
                assert (fills.min(), fills.max()) == (0, 255), name
    assert set(np.unique(mine["quality"][mine["jpeg"]])) == set(np.unique(ref["quality"][ref["jpeg"]]))


def _check_invariants(first: np.ndarray, slots: Slots, crop_boxes: np.ndarray, crop: int, config: RSAConfig) -> None:
    """Exact rules both sides obey: used stages a prefix and whole, JPEGs at stage ends,
    mask and filter rules, free slots, sizes."""
    used = slots.geom | slots.jpeg
    assert not (used[1:] & ~used[:-1]).any(), "used slots must be a prefix of the positions"
    assert not (slots.jpeg & ~slots.geom).any(), "a JPEG's slot has (identity) geometry"
    by_stage = used.reshape(-1, SLOTS_PER_STAGE, used.shape[1])
    assert (by_stage.all(1) == by_stage.any(1)).all(), "a used stage has every slot filled"
    assert not slots.jpeg.reshape(by_stage.shape)[:, :-1].any(), "JPEGs sit at a stage's last slot"
    assert used.shape[0] == SLOTS_PER_STAGE * graph_stages(config)
    empty = Slots.empty(slots.stages, used.shape[1])
    for f in [f for f in fields(Slots) if f.name != "built_box"]:
        free = ~slots.jpeg if f.name in ("jpeg", "quality") else ~slots.geom
        assert np.array_equal(getattr(slots, f.name)[free], getattr(empty, f.name)[free]), f.name
    h, w = first[:, 0].astype(np.float32), first[:, 1].astype(np.float32)
    for p in range(len(used)):
        g = slots.geom[p]
        m = slots.matrix[p, g]
        assert np.array_equal(slots.mask[p, g], m / np.stack([w[g], h[g]], 1).astype(np.float32)[:, :, None])
        same = (slots.size[p, g] == slots.warp_size[p, g]).all(1)
        assert (slots.interp[p, g][same] == DALI_NN).all()
        h, w = np.where(g, slots.size[p, :, 0], h), np.where(g, slots.size[p, :, 1], w)
        assert (h[g] >= crop).all() and (w[g] >= crop).all()
    assert (crop_boxes[:, 2:] == crop).all() and (crop_boxes[:, :2] >= 0).all()
    assert (crop_boxes[:, 0] + crop <= h).all() and (crop_boxes[:, 1] + crop <= w).all()


CASES = [
    pytest.param(RSAConfig(), [(440, 586)], 384, True, N, id="default-preresized-440x586"),
    pytest.param(RSAConfig(), [(600, 440), (1000, 1200)], 384, False, N, id="default-mixed-sizes"),
    pytest.param(RSAConfig(fix_padding_quirk=True), [(300, 500)], 224, False, N, id="default-fixed-quirk-224"),
    # About 30 slots per image: half the images give as many slots per kind.
    pytest.param(ALL_OPS, [(440, 586), (600, 440)], 384, True, N // 2, id="all-ops-1-to-3"),
]


@pytest.mark.parametrize(("config", "sizes", "crop", "preresized", "n"), CASES)
def test_batch_draw_matches_per_sample_path(config: RSAConfig, sizes: list[tuple[int, int]], crop: int,
                                            preresized: bool, n: int) -> None:
    batch, sample = _batch_draw(config, sizes, crop, preresized, n), _sample_draw(config, sizes, crop, preresized, n)
    assert np.array_equal(batch[0], sample[0]), "first resize sizes differ"
    for first, slots, boxes in (batch, sample):
        _check_invariants(first, slots, boxes, crop, config)
    mine, ref = _read(*batch[:2]), _read(*sample[:2])
    _compare(mine, ref)
    for col in range(2):
        d, c = _ks(batch[2][:, col], sample[2][:, col])
        assert d <= c, ("final crop", col, d, c)


def test_every_kind_is_seen() -> None:
    """The classifier separates the kinds (so the comparison above covers each one)."""
    mine = _read(*_batch_draw(ALL_OPS, [(440, 586)], 384, True)[:2])
    seen = {KINDS[c] for c in np.unique(mine["kind"])}
    assert seen >= set(KINDS) - {"identity"}, seen


def test_size_rule_exactly_when_an_op_changes_sizes() -> None:
    """An op without a size rule keeps the size in the batch draw: its per-image draw must too."""
    rng = np.random.default_rng(4)
    for name, spec in OPS.items():
        changes = any(trace_sizes(spec.sample(rng, 440, 586, 384, fix_quirks=False), 440, 586)[-1] != (440, 586)
                      for _ in range(20))
        assert changes == (spec.size is not None), name


def test_too_few_stages_is_an_error() -> None:
    config = RSAConfig(min_counts=(2,) * 11, max_counts=(2,) * 11)
    with pytest.raises(ValueError, match="more than the graph's 3 stages"):
        draw_train_slots(np.random.default_rng(0), config, np.full(8, 440), np.full(8, 586), 384, True, 3)


def test_graph_stages_hold_the_worst_case() -> None:
    """Two JPEGs first (each ends a stage of its own), then 20 geometric steps: the
    default RSA's worst case uses all of its ceil(20 / 3) + 2 = 9 stages."""
    assert graph_stages(RSAConfig()) == 9
    assert graph_stages(RSAConfig.from_flags("StochasticJPEG,singleJPEG", 0, "1,2")) == 3 + 7  # G = J = 7
    flips = tuple(PlanEntry("RandomHorizontalFlip", (Flip(True, True),)) for _ in range(20))
    jpegs = tuple(PlanEntry("JPEGinMemory", (Jpeg(90, "pil"),)) for _ in range(2))
    worst = Plan(440, 586, None, jpegs + flips, Crop(0, 0, 384, 384))
    slots = lower_plans([worst], 9)
    assert slots.geom.all() and slots.jpeg[[2, 5], 0].all() and slots.jpeg.sum() == 2
    longer = Plan(440, 586, None, jpegs + flips + flips[:2], Crop(0, 0, 384, 384))  # 22 geometric steps
    with pytest.raises(ValueError, match="more than the graph's 9 stages"):
        lower_plans([longer], 9)
    # Every count at its maximum fits, in both lowerings.
    full = RSAConfig(ALL_OPS.ops, ALL_OPS.max_counts, ALL_OPS.max_counts)
    rng = np.random.default_rng(3)
    draw_train_slots(rng, full, np.full(500, 440), np.full(500, 586), 384, True, graph_stages(full))
    lower_plans([train_plan(rng, full, 440, 586, 384, True) for _ in range(200)], graph_stages(full))


def test_no_ops_draws_only_the_crop() -> None:
    config = RSAConfig((), (), ())
    draw = draw_train_slots(np.random.default_rng(0), config, np.array([500, 440]), np.array([700, 440]), 384, False, 0)
    assert draw.first_size.tolist() == [[440, 616], [440, 440]]
    assert draw.slots.geom.shape == (0, 2)
    assert (draw.crop[:, 2:] == 384).all()
    assert 0 <= draw.crop[0, 0] <= 440 - 384 and 0 <= draw.crop[0, 1] <= 616 - 384 and draw.crop[1, :2].max() <= 56


def test_empty_batch() -> None:
    config = RSAConfig()
    draw = draw_train_slots(np.random.default_rng(0), config, np.zeros(0, int), np.zeros(0, int), 384, False,
                            graph_stages(config))
    assert draw.first_size.shape == (0, 2) and draw.crop.shape == (0, 4) and draw.slots.geom.shape == (27, 0)


class ConstantRng:
    """A stand-in for np.random.Generator whose every uniform draw is `u`: both paths then
    draw the same parameters, so their slots must agree exactly (rounding included)."""

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        return self.uniform(0.0, 1.0, size)

    def uniform(self, low: float | np.ndarray = 0.0, high: float | np.ndarray = 1.0,
                size: int | tuple[int, ...] | None = None) -> np.ndarray:
        low, high = np.asarray(low, float), np.asarray(high, float)
        value = low + (high - low) * self.u
        return value if size is None else np.broadcast_to(value, size).copy()

    def integers(self, low: int | np.ndarray, high: int | np.ndarray | None = None,
                 size: int | tuple[int, ...] | None = None) -> np.ndarray:
        low, high = (0, low) if high is None else (low, high)
        value = np.asarray(low, np.int64) + np.floor(self.u * (np.asarray(high) - np.asarray(low))).astype(np.int64)
        return value if size is None else np.broadcast_to(value, size).copy()


EXACT_SIZES = ((440, 586), (600, 440), (1000, 700))


@pytest.mark.parametrize("u", [0.01, 0.3, 0.55, 0.9, 0.999])
@pytest.mark.parametrize(("op", "fix"), [(op, False) for op in ALL_OPS.ops] + [("RandomPadding", True)])
def test_each_op_fills_the_same_slots_as_lower_plans(op: str, u: float, fix: bool) -> None:
    """One application of `op` per image (twice, to see it on its own output)."""
    _assert_same_slots(RSAConfig((op,), (2,), (2,), fix_padding_quirk=fix), u)


@pytest.mark.parametrize("counts", [1, 2])
def test_op_sequences_fill_the_same_slots_as_lower_plans(counts: int) -> None:
    """Every op in a row: positions, JPEG joins and sizes carried through the sequence
    (u * bag size < 1 keeps the per-sample pops in the table's order)."""
    every = (counts,) * len(ALL_OPS.ops)
    _assert_same_slots(RSAConfig(ALL_OPS.ops, every, every), 0.01)
    _assert_same_slots(RSAConfig(ALL_OPS.ops[::-1], every, every), 0.02)
    # An op listed twice is two independent entries of the bag.
    repeated = ("RandomCrop", "RandomRotation", "RandomCrop", "JPEGinMemory")
    _assert_same_slots(RSAConfig(repeated, (counts,) * 4, (counts,) * 4), 0.01)


def _assert_same_slots(config: RSAConfig, u: float) -> None:
    for preresized in (True, False):
        sizes = np.array(EXACT_SIZES)
        stages = graph_stages(config)
        draw = draw_train_slots(ConstantRng(u), config, sizes[:, 0], sizes[:, 1], 384, preresized, stages)
        plans = [train_plan(ConstantRng(u), config, h, w, 384, preresized) for h, w in EXACT_SIZES]
        ref = lower_plans(plans, stages, config.built_box)
        assert draw.crop.tolist() == [[p.crop.top, p.crop.left, p.crop.height, p.crop.width] for p in plans]
        for f in fields(Slots):
            got, want = getattr(draw.slots, f.name), getattr(ref, f.name)
            if f.name in ("matrix", "mask"):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f.name)
            else:
                assert np.array_equal(got, want), (f.name, preresized)


def test_box_resizes_are_marked_for_the_built_filter() -> None:
    """`--box-filter built` (the default): PIL-box resizes get BOX_BUILT and their regions
    (where at most two pixels share a window); `standin` the Gaussian; other filters
    and same-size resizes are untouched."""
    steps = [ResizedCrop(0, 0, 300, 280, 240, 224, Interp.BOX), ResizedCrop(0, 0, 300, 280, 240, 224, Interp.BILINEAR),
             ResizedCrop(0, 0, 300, 280, 120, 112, Interp.BOX), ResizedCrop(0, 0, 240, 224, 240, 224, Interp.BOX)]
    plans = [Plan(300, 280, None, (PlanEntry("rrc", (s,)),), Crop(0, 0, s.out_height, s.out_width)) for s in steps]
    built, standin = (lower_plans(plans, 1, built_box) for built_box in (True, False))
    assert built.interp[0].tolist() == [BOX_BUILT, DALI_LINEAR, DALI_GAUSSIAN, DALI_NN]
    assert standin.interp[0].tolist() == [DALI_GAUSSIAN, DALI_LINEAR, DALI_GAUSSIAN, DALI_NN]
    assert np.array_equal(built.regions[0, 0], box_regions(300, 280, 240, 224)[0])
    assert not built.regions[0, 1:].any() and not standin.regions.any()
    args = built.stage(0)[1]
    assert np.array_equal(args[0, 0, REGIONS], built.regions[0, 0])
