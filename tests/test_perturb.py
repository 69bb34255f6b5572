"""The robustness perturbations (`pipelines/perturb.py`): what each family does to real
shard images, the DALI CPU pipeline against the reference executor per family, and
the noise's seeding.

Parity runs on pre-resized shards, where both executors start from the same stored
pixels, so a difference is the perturbation's own; on verbatim shards the first
resize adds its known difference (tests/test_parity.py). Measured on these images,
|DALI CPU - reference| in grey levels (mean, 99.9th percentile, max, share of values
that differ), pre-resized: jpeg 0, 0, 0, 0 (the same libjpeg); blur 0.00001, 0, 1,
0.001 % (float summation order); noise 0, 0, 1, 0.0001 % (float32 log/cos differ in
the last bit: one rounding in a million moves by 1); resize 0.16-0.25, 1-2, 2, 16-25 %
(two bilinear resamplings, DALI's and PIL's round differently). Verbatim, through the
first resize: 0.05-0.26, 1-2, 3.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types
from PIL import Image

from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.imageio import decode_raw, decode_rgb, is_raw
from commfor_fast.pipelines.dali import create_eval_pipeline, missing_gpu_ops, operator_census
from commfor_fast.pipelines.perturb import CLEAN_LEVEL, GraphInputs, Level, apply_dali, apply_reference, \
    blur_radius, downscaled_size, gaussian_kernel, noise_key, parse_perturbations, standard_normal_field
from commfor_fast.pipelines.ops import Jpeg
from commfor_fast.pipelines.reference import apply_step, eval_image
from commfor_fast.pipelines.source import ShardSource
from commfor_fast.shards import IMAGE_EXT, Manifest, ShardReader, unpack_ids

CROP = 224  # first resize to 256
GREY = 128
N_IMAGES = 8  # 6 textured pictures (2 of them JPEG) and 2 flat grey ones


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Waves, texture and a hard-edged block: blur, JPEG and resampling all show."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 90 * np.sin(xx / rng.uniform(3, 12)), 128 + 90 * np.cos(yy / rng.uniform(3, 12)),
                    (xx * yy / rng.uniform(80, 300)) % 256], -1) + rng.normal(0, 10, (h, w, 3))
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    img[y0:y0 + h // 4, x0:x0 + w // 4] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 8 images (256-330 px) converted verbatim and pre-resized (shorter side 256)."""
    root = tmp_path_factory.mktemp("perturb")
    rng = np.random.default_rng(3)
    for i in range(N_IMAGES):
        h, w = (int(v) for v in rng.integers(256, 331, size=2))
        folder = root / "src" / f"gen{i % 2}" / ("fake" if i % 2 else "real")
        folder.mkdir(parents=True, exist_ok=True)
        if i >= N_IMAGES - 2:
            Image.fromarray(np.full((h, w, 3), GREY, np.uint8)).save(folder / f"grey{i}.png")
        elif i % 3 == 0:
            Image.fromarray(_scene(rng, h, w)).save(folder / f"img{i}.jpg", quality=92)
        else:
            Image.fromarray(_scene(rng, h, w)).save(folder / f"img{i}.png")
    out = {}
    for kind, preresize in (("verbatim", None), ("preresized", 256)):
        convert(ConvertSettings(folders=[root / "src"], out=root / kind, val_frac=0.0, seed=1, preresize=preresize,
                                workers=1, quiet=True))
        out[kind] = root / kind
    return out


def _stored(root: Path) -> dict[int, tuple[np.ndarray, bool]]:
    """Sample number -> (decoded image as the reference decodes it, pre-resized?)."""
    manifest = Manifest.load(root)
    reader = ShardReader(root, manifest.sets["all"])
    out = {}
    for i in range(len(reader)):
        data = reader.read(i)
        ids = unpack_ids(data["ids"])
        raw = is_raw(data[IMAGE_EXT])
        img = decode_raw(data[IMAGE_EXT], ids.height, ids.width) if raw else np.asarray(decode_rgb(data[IMAGE_EXT]))
        out[ids.sample_number] = (img, raw)
    reader.close()
    return out


def _dali(root: Path, levels: tuple[Level, ...], *, batch_size: int = N_IMAGES, shard_id: int = 0,
          num_shards: int = 1, seed: int = 0, device: str = "cpu") -> dict[int, list[np.ndarray]]:
    """Sample number -> the eval pipeline's uint8 output at every level (no normalisation)."""
    manifest = Manifest.load(root)
    pipe = create_eval_pipeline(ShardSource.from_manifest(root, manifest, "all"), device=device,
                                device_id=0 if device == "gpu" else None, batch_size=batch_size, crop=CROP,
                                shard_id=shard_id, num_shards=num_shards, num_threads=2, normalise=False,
                                levels=levels, seed=seed)
    pipe.build()
    out: dict[int, list[np.ndarray]] = {}
    try:
        while True:
            try:
                outputs = pipe.run()
            except StopIteration:
                break
            *images, ids = [o.as_cpu() if device == "gpu" else o for o in outputs]
            for j in range(len(ids)):
                out[int(np.array(ids[j])[2])] = [np.array(level[j]) for level in images]
    finally:
        pipe.source.close()
    return out


def _reference(root: Path, levels: tuple[Level, ...], seed: int = 0) -> dict[int, list[np.ndarray]]:
    """The same through the reference executor: perturb the decoded image, then eval preprocessing."""
    return {number: [eval_image(Image.fromarray(apply_reference(level, img, number, seed)), CROP, raw)
                     for level in levels]
            for number, (img, raw) in _stored(root).items()}


def _textured(root: Path) -> list[int]:
    """The sample numbers of the textured pictures (not the flat grey ones)."""
    return [n for n, (img, _) in _stored(root).items() if img.std() > 1]


def _hf_energy(img: np.ndarray) -> float:
    """Mean squared discrete Laplacian: the energy of the highest spatial frequencies."""
    f = img.astype(np.float64)
    lap = 4 * f[1:-1, 1:-1] - f[:-2, 1:-1] - f[2:, 1:-1] - f[1:-1, :-2] - f[1:-1, 2:]
    return float(np.mean(lap**2))


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


# ------------------------------------------------------------ what each family does


def test_blur_lowers_high_frequencies_more_with_larger_sigma(shards: dict[str, Path]) -> None:
    levels = parse_perturbations(["blur=4,1,2"])
    assert [lv.label for lv in levels] == ["clean", "blur=1", "blur=2", "blur=4"]  # mild to harsh
    out = _dali(shards["verbatim"], levels)
    for number in _textured(shards["verbatim"]):
        energy = [_hf_energy(img) for img in out[number]]
        assert energy[0] > energy[1] > energy[2] > energy[3] > 0, (number, energy)
        assert energy[1] < 0.5 * energy[0]  # sigma 1 before a 0.8x resize already halves it


def test_blur_kernel_has_the_stated_size_weights_and_borders() -> None:
    """An impulse comes out as the kernel itself: 2 * ceil(3 s) + 1 taps, exp(-x^2 / 2s^2),
    nothing beyond; at the border it is mirrored without repeating the edge (reflect-101)."""
    sigma = 1.5
    r = blur_radius(sigma)
    assert r == 5 and len(gaussian_kernel(sigma)) == 11
    x = np.arange(-r, r + 1)
    assert np.allclose(gaussian_kernel(sigma), np.exp(-x**2 / (2 * sigma**2)) / np.exp(-x**2 / (2 * sigma**2)).sum())
    centre = np.zeros((31, 31, 3), np.uint8)
    centre[15, 15] = 255
    edge = np.zeros((31, 31, 3), np.uint8)
    edge[1, 15] = 255
    k = gaussian_kernel(sigma)

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def impulses():
        img = fn.external_source(source=lambda: [centre, edge], batch=True, dtype=types.UINT8, layout="HWC")
        return apply_dali(Level("blur", sigma), img, GraphInputs(None, "cpu", 0))

    pipe = impulses()
    pipe.build()
    (dali,) = pipe.run()
    for j, image in enumerate((centre, edge)):
        ref = apply_reference(Level("blur", sigma), image, 0, 0)
        assert np.array_equal(np.array(dali[j]), ref)
    expected = np.floor(255 * np.outer(k, k) + 0.5)
    ref = apply_reference(Level("blur", sigma), centre, 0, 0)[..., 0].astype(float)
    assert np.array_equal(ref[10:21, 10:21], expected)
    assert ref.sum() == expected.sum()  # zero beyond the radius
    # reflect-101 at the top edge: row -1 is row 1, so row y also sees the impulse at distance y + 1
    # (row 0 gets 2 k(1); edge-repeating borders would give k(1) + k(0) there)
    ref = apply_reference(Level("blur", sigma), edge, 0, 0)[..., 0].astype(float)
    taps = [2 * k[r + 1], k[r] + k[r + 2], k[r + 1] + k[r + 3], k[r + 2] + k[r + 4]]
    column = np.floor(255 * np.array(taps) * k[r] + 0.5)
    assert np.array_equal(ref[:4, 15], column)


def test_jpeg_at_low_quality_changes_more(shards: dict[str, Path]) -> None:
    out = _dali(shards["verbatim"], parse_perturbations(["jpeg=30,95"]))
    for number in _textured(shards["verbatim"]):
        clean, q95, q30 = out[number]
        assert 0 < _mad(q95, clean) < _mad(q30, clean), number
        assert _hf_energy(q30) != _hf_energy(clean)


def test_jpeg_is_pil_at_4_2_0() -> None:
    """The reference is PIL's encoder at quality q with 4:2:0 chroma subsampling."""
    img = _scene(np.random.default_rng(0), 64, 80)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=50, subsampling="4:2:0")
    expected = np.asarray(Image.open(buf).convert("RGB"))
    assert np.array_equal(apply_reference(Level("jpeg", 50), img, 0, 0), expected)
    rsa_jpeg = np.asarray(apply_step(Jpeg(50, "pil"), Image.fromarray(img)))  # the RSA's JPEG op: the same
    assert np.array_equal(rsa_jpeg, expected)


def test_resize_loses_more_detail_at_a_smaller_factor(shards: dict[str, Path]) -> None:
    out = _dali(shards["verbatim"], parse_perturbations(["resize=0.5,0.75"]))
    for number in _textured(shards["verbatim"]):
        clean, f75, f50 = out[number]
        assert clean.shape == f75.shape == f50.shape
        assert _hf_energy(clean) > _hf_energy(f75) > _hf_energy(f50), number
        assert 0 < _mad(f75, clean) < _mad(f50, clean)


def test_resize_sizes_are_exact() -> None:
    assert downscaled_size(301, 257, 0.5) == (151, 129)  # 150.5 and 128.5 round up
    assert downscaled_size(5, 5, 0.3) == (2, 2)  # 1.5: exact decimal arithmetic, no float surprise
    assert downscaled_size(3, 400, 0.001) == (1, 1)  # never below one pixel
    img = _scene(np.random.default_rng(1), 41, 37)
    assert apply_reference(Level("resize", 0.5), img, 0, 0).shape == img.shape
    assert np.array_equal(apply_reference(Level("resize", 1.0), img, 0, 0), img)


def test_noise_has_the_stated_std_and_is_seeded_per_sample(shards: dict[str, Path]) -> None:
    """On pre-resized shards nothing resamples after the noise: a flat grey image comes out
    as 128 + round(n z), whose std is sqrt(n^2 + 1/12) (rounding adds 1/12)."""
    root = shards["preresized"]
    greys = [n for n, (img, _) in _stored(root).items() if img.std() == 0]
    levels = parse_perturbations(["noise=5,10"])
    out = _dali(root, levels, seed=7)
    for number in greys:
        for level, img in zip(levels[1:], out[number][1:]):
            noise = img.astype(np.float64) - GREY
            assert abs(noise.std() / math.sqrt(level.value**2 + 1 / 12) - 1) < 0.01, (level, noise.std())
            assert abs(noise.mean()) < 4 * level.value / math.sqrt(noise.size)
    five, ten = (out[greys[0]][i].astype(np.int16) - GREY for i in (1, 2))
    assert np.abs(ten - 2 * five).max() <= 1  # every noise level scales the same z (rounding aside)
    a, b = (out[n][1].astype(np.float64) - GREY for n in greys)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02  # different samples, different noise
    # the same seed: identical in another run, with other batches and ranks
    again = {k: v for rank in range(2) for k, v in _dali(root, levels, batch_size=3, shard_id=rank, num_shards=2,
                                                           seed=7).items()}
    assert sorted(again) == sorted(out)
    assert all(np.array_equal(x, y) for n in out for x, y in zip(out[n], again[n]))
    other_seed = _dali(root, levels, seed=8)
    assert not np.array_equal(other_seed[greys[0]][1], out[greys[0]][1])
    assert np.array_equal(other_seed[greys[0]][0], out[greys[0]][0])  # clean does not depend on the seed


def test_noise_field_is_standard_normal_and_clipped() -> None:
    z = standard_normal_field(noise_key(0, 12), 300, 400).astype(np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.005
    assert abs(np.mean(np.abs(z) > 2) - 0.0455) < 0.002  # Gaussian tails, not uniform sums
    assert abs(np.corrcoef(z[:, :-1].ravel(), z[:, 1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(z[:-1].ravel(), z[1:].ravel())[0, 1]) < 0.01
    white = np.full((50, 60, 3), 250, np.uint8)
    noisy = apply_reference(Level("noise", 20.0), white, 3, 0).astype(int)
    z = standard_normal_field(noise_key(0, 3), 50, 60)
    assert np.array_equal(noisy, np.clip(np.floor(250 + np.float32(20.0) * z + 0.5), 0, 255))
    assert noisy.max() == 255 and 0.35 < np.mean(noisy == 255) < 0.45  # P(20 z > 4.5) = 0.41


# ------------------------------------------------------------------------ parity

# Bounds per family (mean, 99.9th percentile, max) of |DALI CPU - reference| on
# pre-resized shards; the measured values are in the module docstring.
TOLERANCES = {
    "jpeg": (0.0, 0, 0),
    "blur": (0.0001, 0, 1),
    "noise": (0.0001, 0, 1),
    "resize": (0.3, 2, 3),
}
VERBATIM = (0.35, 2, 4)  # every family and clean, through the first resize
SPECS = {"jpeg": "jpeg=95,50,30", "blur": "blur=0.7,2,4", "resize": "resize=0.75,0.5,0.3", "noise": "noise=5,30"}


def _diffs(a: dict[int, list[np.ndarray]], b: dict[int, list[np.ndarray]], level: int) -> np.ndarray:
    assert sorted(a) == sorted(b)
    out = []
    for n in a:
        assert a[n][level].shape == b[n][level].shape == (CROP, CROP, 3)
        out.append(np.abs(a[n][level].astype(np.int16) - b[n][level].astype(np.int16)).ravel())
    return np.concatenate(out)


def _within(d: np.ndarray, bounds: tuple[float, float, int]) -> bool:
    mean, p999, most = bounds
    return d.mean() <= mean and np.percentile(d, 99.9) <= p999 and d.max() <= most


@pytest.mark.parametrize("family", sorted(SPECS))
def test_dali_matches_reference(shards: dict[str, Path], family: str) -> None:
    levels = parse_perturbations([SPECS[family]])
    root = shards["preresized"]
    dali, ref = _dali(root, levels, seed=5), _reference(root, levels, seed=5)
    assert _diffs(dali, ref, 0).max() == 0  # clean: a centre crop of the same pixels
    for i, level in enumerate(levels[1:], start=1):
        d = _diffs(dali, ref, i)
        assert _within(d, TOLERANCES[family]), (level.label, d.mean(), np.percentile(d, 99.9), d.max())


@pytest.mark.parametrize("family", sorted(SPECS))
def test_dali_matches_reference_through_the_first_resize(shards: dict[str, Path], family: str) -> None:
    """Verbatim shards: the perturbation, then the first resize (whose own difference is
    within the evaluation bounds, mean < 0.5 and 99.9th percentile <= 4)."""
    levels = parse_perturbations([SPECS[family]])
    root = shards["verbatim"]
    dali, ref = _dali(root, levels, seed=5), _reference(root, levels, seed=5)
    for i, level in enumerate(levels):
        d = _diffs(dali, ref, i)
        assert _within(d, VERBATIM), (level.label, d.mean(), np.percentile(d, 99.9), d.max())


def test_clean_level_is_the_plain_evaluation(shards: dict[str, Path]) -> None:
    root = shards["verbatim"]
    plain = _dali(root, ())
    with_levels = _dali(root, parse_perturbations(["noise=5", "jpeg=50"]))
    assert all(np.array_equal(plain[n][0], with_levels[n][0]) for n in plain)


def test_the_perturbed_graph_runs_on_the_gpu(shards: dict[str, Path]) -> None:
    """Traced for the GPU without one: every operator of every family has a GPU version."""
    levels = parse_perturbations(list(SPECS.values()))
    for kind in ("verbatim", "preresized"):
        root = shards[kind]
        pipe = create_eval_pipeline(ShardSource.from_manifest(root, Manifest.load(root), "all"), device="gpu",
                                    device_id=0, batch_size=2, crop=CROP, levels=levels)
        census = operator_census(pipe)
        assert missing_gpu_ops(census) == []
        gpu_ops = {name for name, device in census if device == "gpu"}
        assert {"JpegCompressionDistortion", "GaussianBlur", "Resize", "CropMirrorNormalize"} <= gpu_ops
        assert census[("decoders__Image", "mixed")] == (1 if kind == "verbatim" else 0)  # one decode for all levels
        pipe.source.close()


# On the GPU (stated before the first GPU run, to be confirmed there): blur, resize
# and the noise's integer hash are the same computations as on the CPU, so the CPU
# bounds hold (CUDA's float32 log and cos may move a few more roundings by one grey
# level); JPEG on the GPU is DALI's own CUDA codec, not libjpeg, so it is bounded like
# the RSA's GPU JPEG (tests/test_parity.py GPU_JPEG), not bit-exact.
GPU_TOLERANCES = {**TOLERANCES, "jpeg": (1.5, 12, 60), "noise": (0.001, 0, 2)}


@pytest.mark.gpu
@pytest.mark.parametrize("family", sorted(SPECS))
def test_gpu_matches_cpu_and_reference(shards: dict[str, Path], family: str, record_property) -> None:
    levels = parse_perturbations([SPECS[family]])
    root = shards["preresized"]
    gpu, cpu, ref = _dali(root, levels, seed=5, device="gpu"), _dali(root, levels, seed=5), \
        _reference(root, levels, seed=5)
    for i, level in enumerate(levels[1:], start=1):
        for name, other in (("cpu", cpu), ("reference", ref)):
            d = _diffs(gpu, other, i)
            # measured, into the JUnit XML, so a first GPU run reports the figures, not only pass or fail
            record_property(f"{level.label} gpu_vs_{name}",
                            f"mean {d.mean():.4f} p99.9 {np.percentile(d, 99.9):.1f} max {d.max()}")
            assert _within(d, GPU_TOLERANCES[family]), (level.label, d.mean(), np.percentile(d, 99.9), d.max())


def test_clean_needs_no_family() -> None:
    img = _scene(np.random.default_rng(2), 20, 30)
    assert apply_reference(CLEAN_LEVEL, img, 0, 0) is img
