"""Tests of the synthetic demo data: determinism, records, the format mix, each trace, encoding.

Each trace is checked on un-augmented images, paired by scene: with the same seed
and size, every source renders the same scene. So a real image and a fake image
differ only in how the pixels were formed, and a statistic can be compared image by
image without the content getting in the way.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from commfor_fast.demo import synth
from commfor_fast.imageio import check_image

SIZE = (256, 384)  # (height, width): valid for every source, not square
SEEDS = range(4)
REAL_NAMES = [s.name for s in synth.REAL_SOURCES]


def _render(name: str, seed: int) -> np.ndarray:
    return synth.render_image(name, np.random.default_rng([seed, 11]), SIZE)


def _grey(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32).mean(axis=2) / 255.0


def _periodic_energy(img: np.ndarray, period: int) -> float:
    """Share of the high-pass energy in a fixed pattern repeating every `period` pixels.

    Averages the high-pass residual over all period x period cells: content and noise
    average out (about 1 / number of cells), a fixed pattern does not.
    """
    g = _grey(img)
    residual = g - cv2.GaussianBlur(g, (0, 0), 1.5)
    h, w = residual.shape
    cells = residual.reshape(h // period, period, w // period, period).mean(axis=(0, 2))
    return float((cells**2).mean() / (residual**2).mean())


def _seam_ratio(img: np.ndarray, period: int) -> float:
    """How much larger the jumps between columns are at block borders (every `period` columns)."""
    jumps = np.abs(np.diff(_grey(img), axis=1)).mean(axis=0)
    by_phase = jumps[: len(jumps) // period * period].reshape(-1, period).mean(axis=0)
    return float(by_phase[period - 1] / np.median(by_phase))


def _band_energy(img: np.ndarray, low: float, high: float) -> float:
    """Mean spectral power between `low` and `high` cycles per pixel."""
    g = _grey(img)
    power = np.abs(np.fft.rfft2(g - g.mean())) ** 2
    fy = np.fft.fftfreq(g.shape[0])[:, None]
    fx = np.fft.rfftfreq(g.shape[1])[None, :]
    radius = np.sqrt(fy * fy + fx * fx)
    return float(power[(radius >= low) & (radius < high)].mean())


def _bias_projection(img: np.ndarray, name: str) -> float:
    """Average colour along the generator `name`'s bias direction (display units)."""
    bias = np.asarray(synth.get_source(name).colour_bias)
    return float(img.reshape(-1, 3).mean(axis=0) / 255.0 @ (bias / np.linalg.norm(bias)))


# --------------------------------------------------------------------------- sources and records


def test_sources_cover_both_labels_and_spec_architectures():
    assert len(synth.REAL_SOURCES) >= 2 and len(synth.GENERATORS) >= 4
    assert {s.label for s in synth.REAL_SOURCES} == {0}
    assert {s.label for s in synth.GENERATORS} == {1}
    assert {s.architecture for s in synth.REAL_SOURCES} == {"real"}
    assert {s.architecture for s in synth.GENERATORS} <= {"LatDiff", "PixDiff", "GAN", "other"}
    assert len({s.architecture for s in synth.GENERATORS}) >= 3
    assert len(synth.SOURCES) == len(synth.REAL_SOURCES) + len(synth.GENERATORS)
    assert all("/" in s.name for s in synth.GENERATORS)  # Hugging Face style ids
    assert all("/" not in s.name for s in synth.REAL_SOURCES)  # dataset folder names


def test_make_sample_is_deterministic_per_seed_source_and_index():
    a = synth.make_sample("demo/gan-tconv", 3, seed=7)
    assert a == synth.make_sample("demo/gan-tconv", 3, seed=7)
    assert a.data != synth.make_sample("demo/gan-tconv", 3, seed=8).data
    assert a.data != synth.make_sample("demo/gan-tconv", 4, seed=7).data


def test_generate_yields_make_sample_for_each_source_and_index():
    names = ["demo-photos", "demo/vq-autoregressive"]
    samples = list(synth.generate(2, seed=5, sources=names, start=3))
    assert [(s.name, s.index) for s in samples] == [(n, i) for n in names for i in (3, 4)]
    assert samples[1] == synth.make_sample("demo-photos", 4, seed=5)
    assert [s.name for s in synth.generate(1)] == list(synth.SOURCES)


def test_records_decode_to_their_metadata():
    samples = list(synth.generate(2, seed=1))
    for s in samples:
        src = synth.get_source(s.name)
        info, rgb = check_image(s.data)
        assert info.format == s.format
        assert (info.width, info.height) == (s.width, s.height) == rgb.size
        assert info.normalise_reason is None  # stored verbatim in shards
        assert (s.label, s.architecture) == (src.label, src.architecture)
        assert s.file_name.endswith("." + synth.FORMAT_EXTENSIONS[s.format])
        assert "/" not in s.file_name
        if src.label:
            assert (s.height, s.width) in src.sizes
        else:
            assert 256 <= min(s.height, s.width) and max(s.height, s.width) <= 400
    assert len({s.file_name for s in samples}) == len(samples)
    assert len({(s.width, s.height) for s in samples}) > 3
    assert any(s.width != s.height for s in samples)


def test_format_is_not_a_shortcut():
    share = {label: {} for label in (0, 1)}
    for src in synth.SOURCES.values():
        probs = dict(src.formats)
        assert sum(probs.values()) == pytest.approx(1.0)
        for fmt in ("PNG", "JPEG"):
            share[src.label].setdefault(fmt, []).append(probs.get(fmt, 0.0))
    for fmt in ("PNG", "JPEG"):
        assert abs(np.mean(share[0][fmt]) - np.mean(share[1][fmt])) < 0.1

    drawn = {(s.label, s.format) for s in synth.generate(6, seed=2)}
    assert {(0, "PNG"), (0, "JPEG"), (1, "PNG"), (1, "JPEG")} <= drawn


# --------------------------------------------------------------------------- traces


def test_same_seed_and_size_render_the_same_scene_in_every_source():
    """The premise of the paired trace tests: only the image formation differs."""

    def coarse(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(_grey(img), (0, 0), 4.0).ravel()

    photo = coarse(_render("demo-photos", 0))
    same_scene = np.corrcoef(photo, coarse(_render("demo/latdiff-vae", 0)))[0, 1]
    other_scene = np.corrcoef(photo, coarse(_render("demo/latdiff-vae", 1)))[0, 1]
    assert same_scene > 0.9 > other_scene


@pytest.mark.parametrize("seed", SEEDS)
def test_every_generator_shifts_the_average_colour_in_its_own_direction(seed):
    reals = [_render(n, seed) for n in REAL_NAMES]
    for gen in synth.GENERATORS:
        fake = _bias_projection(_render(gen.name, seed), gen.name)
        assert fake > 0.045, gen.name
        for real in reals:
            assert abs(_bias_projection(real, gen.name)) < 0.035


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["demo/gan-tconv", "demo/latdiff-vae"])
def test_checkerboard_and_decoder_pattern_repeat_every_8_pixels(seed, name):
    fake = _periodic_energy(_render(name, seed), 8)
    reals = [_periodic_energy(_render(n, seed), 8) for n in REAL_NAMES]
    assert fake > 0.03
    assert max(reals) < 0.01


@pytest.mark.parametrize("seed", SEEDS)
def test_transposed_convolution_leaves_a_period_2_checkerboard(seed):
    assert _periodic_energy(_render("demo/gan-tconv", seed), 2) > 10 * max(
        _periodic_energy(_render(n, seed), 2) for n in REAL_NAMES
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("name", "period", "least"), [("demo/gan-upsample-nn", 8, 1.2), ("demo/vq-autoregressive", 16, 1.8)]
)
def test_blocks_have_seams(seed, name, period, least):
    assert _seam_ratio(_render(name, seed), period) > least
    for real in REAL_NAMES:
        assert _seam_ratio(_render(real, seed), period) < 1.1


@pytest.mark.parametrize("seed", SEEDS)
def test_super_resolution_misses_fine_detail(seed):
    fake = _band_energy(_render("demo/pixdiff-cascade", seed), 0.15, 0.3)
    for real in REAL_NAMES:
        assert _band_energy(_render(real, seed), 0.15, 0.3) > 1.2 * fake


# --------------------------------------------------------------------------- encoding and errors


def test_png_round_trips_exactly_and_lossy_formats_closely():
    img = _render("demo-scans", 0)
    png = synth.encode_image(img, "PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), img)
    for fmt in ("JPEG", "WEBP"):
        data = synth.encode_image(img, fmt, quality=90)
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == fmt
        mse = np.mean((np.asarray(decoded.convert("RGB"), np.float64) - img) ** 2)
        assert 10 * np.log10(255.0**2 / mse) > 30.0


def test_bad_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match="demo-photos"):
        synth.get_source("demo/nope")
    with pytest.raises(ValueError, match="multiples of 16"):
        synth.render_image("demo/gan-tconv", np.random.default_rng(0), (250, 256))
    with pytest.raises(ValueError, match="PNG"):
        synth.encode_image(np.zeros((8, 8, 3), np.uint8), "GIF")
    with pytest.raises(ValueError, match="n_per_source"):
        list(synth.generate(-1))


def test_rendering_the_demo_data_reports_progress(tmp_path, capsys):
    from commfor_fast.demo.run import write_demo_data

    hf, folders = write_demo_data(tmp_path, fakes_per_generator=1, test_per_source=1, seed=0)
    total = len(synth.GENERATORS) + 2 * (len(synth.GENERATORS) // len(synth.REAL_SOURCES)) + len(synth.SOURCES)
    assert f"render: {total}/{total} img (100%)" in capsys.readouterr().err
    assert len(list(folders.rglob("*.*"))) == len(synth.GENERATORS) // len(synth.REAL_SOURCES)
    assert (hf / "README.md").is_file()
