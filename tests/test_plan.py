"""Sampled statistics of RandomStateAugmentation plans match SPEC section 3.

The plans are what both executors run, so these tests cover the randomness of the
DALI and the reference pipelines at once.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import permutations

import numpy as np
import pytest

from commfor_fast.errors import UserError
from commfor_fast.imageio import resized_shape
from commfor_fast.pipelines import ops
from commfor_fast.pipelines.batch_plan import draw_train_slots
from commfor_fast.pipelines.ops import OPS, Affine, Crop, Erase, Flip, Interp, Jpeg, Resize, ResizedCrop, affine_matrices, \
    trace_sizes
from commfor_fast.pipelines.plan import RSAConfig, draw_counts, draw_order, eval_plan, train_plan
from commfor_fast.pipelines.slots import graph_stages

H, W, C = 440, 586, 384
N = 4000


def _draws(op: str, n: int = N, h: int = H, w: int = W, fix: bool = False) -> list[list]:
    rng = np.random.default_rng(123)
    return [OPS[op].sample(rng, h, w, C, fix_quirks=fix) for _ in range(n)]


def _close(share: float, expected: float, tol: float = 0.03) -> bool:
    return abs(share - expected) <= tol


def test_counts_are_uniform_over_min_max() -> None:
    rng = np.random.default_rng(0)
    config = RSAConfig.from_flags(min_num_ops="0,1,0,2,0,0,0,0,0,0,0", max_num_ops="2,3,0,2,1,2,2,2,2,2,2")
    counts = np.array([draw_counts(rng, config) for _ in range(N)])
    for i, (lo, hi) in enumerate(zip(config.min_counts, config.max_counts)):
        seen = Counter(counts[:, i])
        assert set(seen) == set(range(lo, hi + 1))
        for value in range(lo, hi + 1):
            assert _close(seen[value] / N, 1 / (hi - lo + 1)), (i, value, seen)


def test_order_is_a_uniform_permutation_of_the_bag() -> None:
    rng = np.random.default_rng(1)
    orders = Counter(tuple(draw_order(rng, [1, 1, 1])) for _ in range(6000))
    assert set(orders) == set(permutations(range(3)))
    assert all(_close(c / 6000, 1 / 6, 0.025) for c in orders.values())
    # Repeats interleave: with two copies each of ops 0 and 1, every arrangement occurs.
    arrangements = Counter(tuple(draw_order(rng, [2, 2])) for _ in range(6000))
    assert len(arrangements) == math.comb(4, 2)
    assert all(_close(c / 6000, 1 / 6, 0.025) for c in arrangements.values())


def test_jpeg_quality_and_codec() -> None:
    steps = [s[0] for s in _draws("JPEGinMemory")]
    qualities = Counter(s.quality for s in steps)
    assert set(qualities) == set(range(75, 101))
    assert _close(sum(s.codec == "pil" for s in steps) / N, 0.5)


def test_random_resize_side_and_interpolation() -> None:
    steps = [s[0] for s in _draws("RandomResizeWithRandomIntpl")]
    sides = {min(s.height, s.width) for s in steps}
    assert min(sides) == C + 1 and max(sides) == round(1.228 * C) == 472
    for s in steps[:50]:
        assert (s.height, s.width) == resized_shape(H, W, min(s.height, s.width))
    assert _close(sum(s.interp == Interp.BILINEAR for s in steps) / N, 0.5)
    assert {s.interp for s in steps} == {Interp.BILINEAR, Interp.BICUBIC}


def test_random_crop_positions_are_uniform() -> None:
    steps = [s[0] for s in _draws("RandomCrop")]
    tops, lefts = [s.top for s in steps], [s.left for s in steps]
    assert min(tops) == 0 and max(tops) == H - C and min(lefts) == 0 and max(lefts) == W - C
    assert abs(np.mean(lefts) - (W - C) / 2) < 5
    assert all((s.height, s.width) == (C, C) for s in steps)


@pytest.mark.parametrize("op, horizontal", [("RandomHorizontalFlip", True), ("RandomVerticalFlip", False)])
def test_flips_happen_half_the_time(op: str, horizontal: bool) -> None:
    steps = [s[0] for s in _draws(op)]
    assert all(isinstance(s, Flip) and s.horizontal == horizontal for s in steps)
    assert _close(sum(s.applied for s in steps) / N, 0.5)


def test_random_resized_crop_scale_ratio_interpolation() -> None:
    steps = [s[0] for s in _draws("RRCWithRandomIntpl")]
    for s in steps:
        assert isinstance(s, ResizedCrop)
        assert 0 <= s.top <= H - s.height and 0 <= s.left <= W - s.width
        area = s.height * s.width / (H * W)
        assert 0.9 - 0.01 <= area <= 1.0
        assert 3 / 4 - 0.02 <= s.width / s.height <= 4 / 3 + 0.02
    interps = Counter(s.interp for s in steps)
    assert set(interps) == set(Interp)
    assert all(_close(c / N, 1 / 6) for c in interps.values())


@pytest.mark.parametrize("h, w", [(H, W), (W, H), (C + 60, C + 60)])
def test_random_resized_crop_keeps_the_box_aspect_ratio(h: int, w: int) -> None:
    """SPEC 3: the box's shorter side becomes C, the long side int(C * long / short)."""
    steps = [s[0] for s in _draws("RRCWithRandomIntpl", 2000, h, w)]
    for s in steps:
        assert (s.out_height, s.out_width) == resized_shape(s.height, s.width, C)
        assert min(s.out_height, s.out_width) == C
    # Output aspect follows the box: with a 4:3 source the outputs are mostly landscape,
    # with a square source both ways (torchvision's log-uniform ratio is symmetric).
    landscape = np.mean([s.out_width > s.out_height for s in steps])
    portrait = np.mean([s.out_height > s.out_width for s in steps])
    if w > h:  # near 4:3 boxes come out near 384 x 512, as in the original
        assert landscape > 0.95 and max(s.out_width for s in steps) > 1.25 * C
    elif h > w:
        assert portrait > 0.95
    else:
        assert _close(landscape, portrait, 0.05) and landscape > 0.4


def test_random_resized_crop_falls_back_to_centre_crop() -> None:
    # A 10:1 strip cannot hold a crop of ratio <= 4/3 and scale >= 0.9: centre crop.
    (step,) = ops.random_resized_crop(np.random.default_rng(0), 100, 1000, C, fix_quirks=False)
    assert (step.top, step.left, step.height, step.width) == (0, (1000 - 133) // 2, 100, 133)


def test_rotation_translation_shear_ranges() -> None:
    rot = [s[0].rotation for s in _draws("RandomRotation")]
    assert -15 <= min(rot) < -14.5 and 14.5 < max(rot) <= 15 and abs(np.mean(rot)) < 0.5
    tr = [s[0] for s in _draws("RandomTranslate")]
    assert max(abs(s.translate_x) for s in tr) == round(0.1 * W)
    assert max(abs(s.translate_y) for s in tr) == round(0.1 * H)
    assert all(isinstance(s.translate_x, int) and s.rotation == 0 for s in tr)
    sh = [s[0] for s in _draws("RandomShear")]
    for axis in ("shear_x", "shear_y"):
        values = [getattr(s, axis) for s in sh]
        assert -15 <= min(values) < -14.5 and 14.5 < max(values) <= 15


def _inverse_matrix(step: Affine, h: int, w: int) -> np.ndarray:
    """One image's output->input matrix, row-major (6,)."""
    return affine_matrices(np.array([h]), np.array([w]), step.rotation, step.translate_x, step.translate_y,
                           step.shear_x, step.shear_y)[0].ravel()


@pytest.mark.parametrize("step", [Affine(rotation=12.5), Affine(translate_x=7, translate_y=-3),
                                  Affine(shear_x=10.0, shear_y=-7.0), Affine(rotation=-5.0, shear_x=3.0)])
def test_affine_matrix_is_the_one_torchvision_gives_pil(step: Affine) -> None:
    from torchvision.transforms.functional import _get_inverse_affine_matrix

    expected = _get_inverse_affine_matrix([W * 0.5, H * 0.5], -step.rotation, [step.translate_x, step.translate_y],
                                          1.0, [step.shear_x, step.shear_y])
    assert np.allclose(_inverse_matrix(step, H, W), expected, atol=1e-4)


def test_affine_matrix_is_torchvisions() -> None:
    """Rotation about the centre: the centre maps to itself, corners rotate."""
    m = _inverse_matrix(Affine(rotation=90.0), 100, 200)
    centre = (m[0] * 100 + m[1] * 50 + m[2], m[3] * 100 + m[4] * 50 + m[5])
    assert np.allclose(centre, (100, 50))
    m = _inverse_matrix(Affine(translate_x=7, translate_y=-3), 100, 200)
    assert np.allclose(m, [1, 0, -7, 0, 1, 3])


def test_padding_amounts_fill_and_shape_quirk() -> None:
    steps = [s[0] for s in _draws("RandomPadding")]
    sides = {"left": W, "right": W, "top": H, "bottom": H}
    amounts = {side: np.array([getattr(s, side) for s in steps]) for side in sides}
    for side, extent in sides.items():
        # int(U(0, 0.05) * extent): every value from 0 to ceil(0.05 extent) - 1, uniform.
        assert set(amounts[side]) == set(range(math.ceil(0.05 * extent)))
        assert abs(amounts[side].mean() - (0.05 * extent - 1) / 2) < 0.3
    # Four independent draws: the two sides of an axis are uncorrelated, so the
    # content is usually off centre.
    for a, b in (("left", "right"), ("top", "bottom"), ("left", "top")):
        assert abs(np.corrcoef(amounts[a], amounts[b])[0, 1]) < 0.05
    assert np.mean(amounts["left"] != amounts["right"]) > 0.9
    assert {s.fill for s in steps} == set(range(256))
    # The original's quirk: resized back to (height = old width, width = old height).
    assert all((s.height, s.width) == (W, H) for s in steps)
    fixed = [s[0] for s in _draws("RandomPadding", 50, fix=True)]
    assert all((s.height, s.width) == (H, W) for s in fixed)


def test_cutout_probability_area_ratio() -> None:
    steps = [s[0] for s in _draws("RandomCutout")]
    applied = [s for s in steps if s.applied]
    assert _close(len(applied) / N, 0.5)
    for s in applied:
        assert 0.02 - 0.005 <= s.height * s.width / (H * W) <= 0.06 + 0.005
        assert 0.3 - 0.05 <= s.height / s.width <= 3.3 + 0.3
        assert 0 <= s.top <= H - s.height and 0 <= s.left <= W - s.width
    assert {s.fill for s in applied} == set(range(256))


def test_single_and_stochastic_jpeg() -> None:
    for steps in _draws("singleJPEG", 20):
        resize, jpeg = steps
        assert resize == Resize(*resized_shape(H, W, C), Interp.BILINEAR) and jpeg.quality == 95
    for steps in _draws("StochasticJPEG", 50):
        assert all(isinstance(a, ResizedCrop) and isinstance(b, Jpeg) for a, b in zip(steps[::2], steps[1::2]))
        assert trace_sizes(steps, H, W)[-1] == (C, C)


# StochasticJPEG's rounds as the original's loop draws them: one, then another while a
# p = 0.5 coin says so, at most five: P(k) = 2^-k for k < 5, 2^-4 for k = 5.
ROUNDS = np.arange(1, 6)
ROUNDS_P = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625])
Z = 5.0  # standard errors allowed: about 6e-7 two-sided per comparison


def _assert_rounds_follow_the_original(rounds: np.ndarray) -> None:
    """The mean and each count's share within Z standard errors of the formula's."""
    n = len(rounds)
    mean = (ROUNDS_P * ROUNDS).sum()
    var = (ROUNDS_P * ROUNDS**2).sum() - mean**2
    assert mean == 1.9375
    assert abs(rounds.mean() - mean) <= Z * math.sqrt(var / n), rounds.mean()
    assert set(np.unique(rounds)) == set(ROUNDS)
    share = np.bincount(rounds, minlength=6)[1:] / n
    assert (np.abs(share - ROUNDS_P) <= Z * np.sqrt(ROUNDS_P * (1 - ROUNDS_P) / n)).all(), share


def test_stochastic_jpeg_rounds_follow_the_original_in_both_samplers() -> None:
    n = 20000
    draws = _draws("StochasticJPEG", n)
    _assert_rounds_follow_the_original(np.array([len(steps) // 2 for steps in draws]))
    jpegs = [s for steps in draws for s in steps[1::2]]
    assert {s.quality for s in jpegs} == set(range(75, 101))
    pil = np.mean([s.codec == "pil" for s in jpegs])  # the original picks PIL or OpenCV per round
    assert abs(pil - 0.5) <= Z * math.sqrt(0.25 / len(jpegs)), pil
    config = RSAConfig(("StochasticJPEG",), (1,), (1,))
    draw = draw_train_slots(np.random.default_rng(5), config, np.full(n, H), np.full(n, W), C, True,
                            graph_stages(config))
    _assert_rounds_follow_the_original(draw.slots.jpeg.sum(0))


def test_train_plans_always_end_at_the_crop_size() -> None:
    rng = np.random.default_rng(3)
    config = RSAConfig()
    for _ in range(300):
        h, w = int(rng.integers(200, 1500)), int(rng.integers(200, 1500))
        plan = train_plan(rng, config, h, w, C)
        sizes = trace_sizes(plan.steps(), h, w)
        assert sizes[-1] == (C, C)
        assert all(min(s) >= C for s in sizes[1:-1]), sizes  # SPEC: RSA never goes below C
        assert len(plan.rsa_steps()) <= config.max_steps == 22


def test_eval_plan_is_resize_then_centre_crop() -> None:
    plan = eval_plan(600, 801, C)
    assert plan.resize == Resize(440, 587, Interp.BILINEAR)
    assert plan.crop == Crop(28, 102, C, C)  # round((440-384)/2) = 28, round(101.5) = 102 (half to even)
    assert eval_plan(440, 586, C, preresized=True).resize is None


def test_rsa_flags_are_checked() -> None:
    assert RSAConfig.from_flags("RandomCrop,JPEGinMemory", "1", "2,3").max_counts == (2, 3)
    assert RSAConfig.from_flags("", 0, 2).max_steps == 0
    with pytest.raises(UserError, match="unknown op 'Blur'"):
        RSAConfig.from_flags("Blur")
    with pytest.raises(UserError, match="3 numbers for 2 ops"):
        RSAConfig.from_flags("RandomCrop,JPEGinMemory", 0, "1,2,3")
    with pytest.raises(UserError, match="min 2, max 1"):
        RSAConfig.from_flags("RandomCrop", 2, 1)
    with pytest.raises(UserError, match="one count per op"):
        RSAConfig(("RandomCrop", "JPEGinMemory"), (0,), (1,))
    with pytest.raises(UserError, match=">= 0"):
        RSAConfig.from_flags("RandomCrop", -1, 1)
    assert RSAConfig.from_flags("StochasticJPEG,singleJPEG", 0, "1,2").max_steps == 10 + 4


def test_cutout_erases_nothing_when_no_box_fits() -> None:
    # In a 2x2 image, torchvision's rule only accepts boxes that round to zero size.
    draws = [ops.random_cutout(np.random.default_rng(i), 2, 2, 2, fix_quirks=False)[0] for i in range(40)]
    assert all(isinstance(s, Erase) and (not s.applied or s.height * s.width == 0) for s in draws)
