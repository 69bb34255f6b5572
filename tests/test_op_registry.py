"""Registering an RSA op: one registration, then both samplers and both executors run it.

The op registered here, "RandomSquash" (a test op, not the original's), reuses the
Resize and Jpeg step kinds: it resizes to an independent height and width in
[C, round(1.1 C)], bilinear or bicubic, then compresses at quality 75-100. Its one
`ops.rsa_op` registration is the only place it touches: the per-image sampler, the
batch planner, the DALI CPU pipeline and the PIL reference then all run it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_batch_plan import _assert_same_slots, _batch_draw, _compare, _read, _sample_draw
from test_parity import CROP, IMAGES, _diff, _replay, shards  # noqa: F401 (shards is a fixture)

from commfor_fast.pipelines import ops
from commfor_fast.pipelines.dali import create_train_pipeline
from commfor_fast.pipelines.ops import INTERPS, Apps, BatchDraw, Interp, Jpeg, Resize, trace_sizes
from commfor_fast.pipelines.plan import RSAConfig, train_plan
from commfor_fast.pipelines.source import ShardSource
from commfor_fast.shards import Manifest, SampleIds

SQUASH = "RandomSquash"


@pytest.fixture
def squash() -> Iterator[str]:
    """Register RandomSquash for one test, then restore the op table."""
    saved = dict(ops.OPS)

    def size_rule(rng: np.random.Generator, n: int, crop: int, fix: bool):
        sides = rng.integers(crop, round(1.1 * crop) + 1, (n, 2))
        return lambda h, w, sel: (sides[sel, 0], sides[sel, 1])

    def batch(rng: np.random.Generator, a: Apps, crop: int, sized: object) -> BatchDraw:
        interp = np.where(rng.random(len(a)) < 0.5, INTERPS.index(Interp.BILINEAR), INTERPS.index(Interp.BICUBIC))
        quality = rng.integers(75, 101, len(a))
        return BatchDraw.once(a, Resize(a.out_h, a.out_w, interp), Jpeg(quality))

    @ops.rsa_op(SQUASH, batch=batch, size=size_rule, max_steps=2, max_jpegs=1)
    def sample(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[ops.Step]:
        height, width = (int(rng.integers(crop, round(1.1 * crop) + 1)) for _ in range(2))
        interp = Interp.BILINEAR if rng.random() < 0.5 else Interp.BICUBIC
        return [Resize(height, width, interp), Jpeg(int(rng.integers(75, 101)))]

    yield SQUASH
    ops.OPS.clear()
    ops.OPS.update(saved)


def test_registered_op_is_accepted_and_drawn_per_image(squash: str) -> None:
    config = RSAConfig.from_flags(f"{squash},RandomHorizontalFlip", 1, 2)
    assert config.max_steps == 2 * 2 + 2 and config.max_jpegs == 2
    rng = np.random.default_rng(0)
    heights = set()
    for _ in range(300):
        plan = train_plan(rng, config, 600, 800, 384)
        assert trace_sizes(plan.steps(), 600, 800)[-1] == (384, 384)
        for entry in (e for e in plan.entries if e.op == squash):
            resize, jpeg = entry.steps
            assert 384 <= resize.height <= 422 and 384 <= resize.width <= 422 and 75 <= jpeg.quality <= 100
            heights.add(resize.height)
    assert heights == set(range(384, 423))
    with pytest.raises(ValueError, match="registered twice"):
        ops.rsa_op(squash, batch=ops.OPS[squash].batch)(ops.OPS[squash].sample)


@pytest.mark.parametrize("u", [0.01, 0.4, 0.999])
def test_registered_op_fills_the_same_slots_in_both_samplers(squash: str, u: float) -> None:
    """With one constant uniform both samplers draw the same parameters: equal slots."""
    _assert_same_slots(RSAConfig((squash,), (2,), (2,)), u)
    _assert_same_slots(RSAConfig(("RandomCrop", squash, "JPEGinMemory"), (1,) * 3, (1,) * 3), 0.01)


def test_registered_op_has_one_law_in_both_samplers(squash: str) -> None:
    config = RSAConfig((squash, "RandomRotation"), (0, 0), (2, 1))
    sizes = [(440, 586), (600, 440)]
    batch, sample = _batch_draw(config, sizes, 384, True, 2000), _sample_draw(config, sizes, 384, True, 2000)
    _compare(_read(*batch[:2]), _read(*sample[:2]))


def test_registered_op_runs_in_dali_and_the_reference(squash: str, shards: dict[str, Path]) -> None:
    """Per-image plans replayed in DALI (CPU) and PIL; the batch planner through DALI."""
    config = RSAConfig((squash,), (1,), (1,))

    def draw(ids: SampleIds, h: int, w: int):
        return train_plan(np.random.default_rng([3, ids.sample_number]), config, h, w, CROP)

    means = [_diff(a, b).mean() for a, b in _replay(shards["verbatim"], draw)]
    # A resize (within a grey level or two) then JPEG (exact) of slightly different
    # inputs: measured mean differences 0.64-1.08 per image.
    assert np.median(means) < 1.5 and max(means) < 3.0, means
    root = shards["verbatim"]
    pipe = create_train_pipeline(ShardSource.from_manifest(root, Manifest.load(root), "all"), device="cpu",
                                 batch_size=len(IMAGES), crop=CROP, rsa=config, seed=0, normalise=False,
                                 num_threads=2)
    pipe.build()
    images, _ = pipe.run()
    assert all(np.array(images[j]).shape == (CROP, CROP, 3) for j in range(len(IMAGES)))
