"""Synthetic demo images: camera-like "real" sources and "generators" with real kinds of trace.

The demo has to show the whole chain (convert, train, evaluate) learning something on
a laptop in minutes, without downloading anything. So it needs data where "fake"
differs from "real" the way it does in the wild, only more strongly, and nowhere else.

Every image, real or fake, starts from the same procedural scene: a colour gradient,
optionally a horizon, 1/f ("pink") noise texture like foliage, ground or clouds,
overlapping shapes with their own texture and shading, some of them out of focus,
thin lines like branches or wires, and a vignette. The scene is white-balanced the way
a camera's auto white balance does it, so its average colour is grey. Content and
file formats are drawn from the same distributions for both labels, so neither is a
shortcut: both labels are saved as PNG, JPEG and WebP in similar proportions. Sizes
span the same range (sides 256 to 400 pixels), but as in the real world generators
emit a few fixed sizes (multiples of 16) while photos and scans come in many; after
the first resize only the aspect ratio is left of that, and it overlaps.

What differs is how the pixels were made:

Real sources
- ``demo-photos``: a camera. Optical blur, a small white-balance error, a Bayer colour
  filter mosaic, shot and read noise, demosaicing, gamma and a little sharpening.
- ``demo-scans``: scanned film. Scanner blur, film grain and faint row streaks.

Generators (SPEC architecture tag in brackets)
- ``demo/gan-tconv`` [GAN]: upsamples three times with transposed convolutions whose
  kernels are nearly but not exactly bilinear. The uneven overlap leaves a
  checkerboard, and the spectrum has peaks at 1/2, 1/4 and 1/8 cycles per pixel.
- ``demo/gan-upsample-nn`` [GAN]: nearest-neighbour upsampling with weak smoothing,
  plus noise injected at 1/8 and 1/4 resolution. The noise is carried up by pixel
  repetition, so the texture comes in 8x8 and 4x4 blocks.
- ``demo/latdiff-vae`` [LatDiff]: a latent diffusion model's VAE decoder. Fine texture
  is too smooth, there is no sensor noise, the decoder stamps a fixed 8-pixel
  pattern, and colours come out oversaturated.
- ``demo/pixdiff-cascade`` [PixDiff]: a pixel-space cascade. A quarter-resolution base
  is upsampled by a super-resolution stage that hallucinates only part of the fine
  detail and leaves sharpening halos and white residual noise.
- ``demo/vq-autoregressive`` [other]: a VQ tokeniser with 16x16 patches. Each patch
  keeps only its coarse structure, and the patch colours are quantised to a codebook,
  so seams appear every 16 pixels.

Each generator also shifts colour statistics in its own direction. It learned colour
from white-balanced photos but reproduces it with a bias (the last layer's bias, the
decoder's colour response), so its images average a tint of about 7% (about 19 of
255 levels) rather than grey. The tints are magenta, green, warm, cyan and blue.

The traces are stronger than in today's generators, because they must survive the
first resize, JPEG re-compression, rotation and the other augmentations, and be learnt
from scratch within a few hundred iterations. Measured on CPU with the full
augmentation, a ViT-Tiny/16 trained from random initialisation for 300 iterations at
batch 16 learns mainly the colour shift: after augmentation, the spatial traces were
too weak for it within that budget. The spatial traces are there for longer runs,
pre-trained models and the tests. Every image comes from its own seed, so a sample
depends only on (seed, source, index).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- records

# File extension of each output format, as it appears in file names and shards.
FORMAT_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}

# Quality range of the lossy formats, the same for every source so it is no shortcut.
JPEG_QUALITY = (80, 97)
WEBP_QUALITY = (80, 95)


@dataclass(frozen=True)
class DemoImage:
    """One generated, encoded image with the metadata a dataset row needs."""

    name: str  # source: real dataset name or generator id
    label: int  # 0 = real, 1 = fake
    architecture: str  # "real", or the generator's tag: LatDiff, PixDiff, GAN, other
    format: str  # PIL format name of `data`: PNG, JPEG or WEBP
    width: int
    height: int
    data: bytes  # the encoded file
    index: int  # position within its source

    @property
    def file_name(self) -> str:
        """A unique, filesystem-safe file name, e.g. ``demo-gan-tconv-00007.png``."""
        return f"{self.name.replace('/', '-')}-{self.index:05d}.{FORMAT_EXTENSIONS[self.format]}"


# --------------------------------------------------------------------------- scenes


def _pink_noise(rng: np.random.Generator, height: int, width: int, exponent: float) -> np.ndarray:
    """Zero-mean, unit-variance noise whose amplitude falls as 1/f**exponent.

    Natural images have roughly a 1/f amplitude spectrum, so this one field gives
    texture at every scale, from clouds down to fine grain.
    """
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    freq = np.sqrt(fy * fy + fx * fx)
    freq[0, 0] = 1.0
    shape = (height, width // 2 + 1)
    white = rng.standard_normal(shape, np.float32) + 1j * rng.standard_normal(shape, np.float32)
    spectrum = white / freq**exponent
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(height, width)).astype(np.float32)
    return field / (field.std() + 1e-8)


def _colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` RGB colours in [0, 1] from one scene palette.

    The palette is analogous hues around a base hue, sometimes with a complementary
    accent, and mostly muted saturation, like outdoor and indoor photos.
    """
    base = rng.uniform(0.0, 360.0)
    hue = (base + rng.normal(0.0, 35.0, count) + 180.0 * (rng.random(count) < 0.25)) % 360.0
    sat = rng.beta(2.0, 3.0, count) * 0.85
    val = rng.uniform(0.2, 0.95, count)
    hsv = np.stack([hue, sat, val], axis=-1).astype(np.float32)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def _ramp(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """A linear ramp in a random direction over coordinates in [-1, 1]."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return np.cos(angle) * xs + np.sin(angle) * ys


def _shape_mask(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """An anti-aliased mask (float32 in [0, 1]) of one random ellipse, polygon or box.

    Also returns the mask's bounding box, so compositing touches only those pixels.
    """
    canvas = np.zeros((height, width), np.uint8)
    size = min(height, width)
    cx, cy = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
    radius = size * rng.uniform(0.05, 0.35)
    kind = rng.integers(3)
    if kind == 0:
        axes = (int(radius), int(radius * rng.uniform(0.3, 1.0)))
        cv2.ellipse(canvas, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA)
    else:
        if kind == 1:  # a rotated box: corners at right angles, two half-diagonals
            angles = np.arange(4) * np.pi / 2 + rng.uniform(0, np.pi)
            radii = radius * rng.uniform(0.6, 1.4, 2)[np.arange(4) % 2]
        else:  # an irregular polygon
            corners = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
            radii = radius * rng.uniform(0.5, 1.0, corners)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=-1)
        cv2.fillPoly(canvas, [np.round(points * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    mask = canvas.astype(np.float32) / 255.0
    margin = 0
    if rng.random() < 0.3:  # out of focus
        sigma = rng.uniform(1.0, 4.0)
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
        margin = int(3 * sigma) + 1
    x, y, w, h = cv2.boundingRect(canvas)
    box = (slice(max(y - margin, 0), y + h + margin), slice(max(x - margin, 0), x + w + margin))
    return mask, box


def render_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The shared content of every demo image: float32 HWC RGB in [0, 1], display-referred.

    Real sources and generators both start here, so content never tells the labels
    apart; only the way the pixels are then formed does.
    """
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    palette = _colours(rng, 12)
    texture = _pink_noise(rng, height, width, rng.uniform(0.9, 1.4))
    detail = _pink_noise(rng, height, width, rng.uniform(0.6, 1.0))

    t = np.clip(0.5 + 0.5 * rng.uniform(0.5, 1.5) * _ramp(rng, ys, xs), 0.0, 1.0)[..., None]
    img = palette[0] * (1.0 - t) + palette[1] * t
    if rng.random() < 0.5:  # horizon with a wavy edge and a textured ground
        edge = rng.uniform(-0.3, 0.6) + 0.1 * _pink_noise(rng, 1, width, 1.5)
        ground = np.clip((ys - edge) * height / 4.0, 0.0, 1.0)[..., None]
        img = img + ground * (palette[2] * (1.0 + 0.25 * texture[..., None]) - img)
    img = img * (1.0 + rng.uniform(0.02, 0.1) * texture[..., None])

    for i in range(int(rng.integers(3, 12))):
        mask, (rows, cols) = _shape_mask(rng, height, width)
        shading = 1.0 + rng.uniform(0.0, 0.4) * _ramp(rng, ys[rows], xs[:, cols])
        grain = (
            1.0
            + rng.uniform(-0.12, 0.12) * detail[rows, cols]
            + rng.uniform(-0.08, 0.08) * texture[rows, cols]
        )
        fill = palette[3 + i % 9] * (shading * grain)[..., None]
        img[rows, cols] += mask[rows, cols, None] * (fill - img[rows, cols])

    lines = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        points = (rng.uniform(0, 1, (int(rng.integers(2, 6)), 2)) * (width, height) * 16).astype(np.int32)
        cv2.polylines(lines, [points], False, 255, int(rng.integers(1, 4)), cv2.LINE_AA, shift=4)
    line_mask = (lines.astype(np.float32) / 255.0)[..., None]
    img = img + line_mask * (palette[int(rng.integers(12))] * 0.6 - img)

    img = img * (1.0 - rng.uniform(0.0, 0.35) * (xs * xs + ys * ys)[..., None] / 2.0)
    # White-balanced like a photo (grey world): the average colour is neutral.
    means = img.reshape(-1, 3).mean(axis=0)
    img = img * (means.mean() / np.maximum(means, 1e-3))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- helpers


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigma)


def _down(img: np.ndarray, factor: int) -> np.ndarray:
    """Area downsampling by an integer factor (sizes are multiples of it)."""
    height, width = img.shape[:2]
    return cv2.resize(img, (width // factor, height // factor), interpolation=cv2.INTER_AREA)


def _name_rng(name: str) -> np.random.Generator:
    """A generator seeded by a source's name, for things fixed per generator (its "weights")."""
    return np.random.default_rng(zlib.crc32(name.encode()))


# --------------------------------------------------------------------------- real sources


def _camera(rng: np.random.Generator, scene: np.ndarray) -> np.ndarray:
    """A raw camera pipeline: optics, Bayer mosaic, shot + read noise, demosaic, gamma, sharpen."""
    height, width = scene.shape[:2]
    white_balance_error = 1.0 + rng.normal(0.0, 0.02, 3).astype(np.float32)
    linear = _blur(scene**2.2 * white_balance_error, rng.uniform(0.5, 0.9))
    raw = np.empty((height, width), np.float32)
    raw[0::2, 0::2] = linear[0::2, 0::2, 0]
    raw[0::2, 1::2] = linear[0::2, 1::2, 1]
    raw[1::2, 0::2] = linear[1::2, 0::2, 1]
    raw[1::2, 1::2] = linear[1::2, 1::2, 2]
    shot, read = rng.uniform(1e-3, 4e-3), rng.uniform(3e-3, 8e-3)
    raw = raw + rng.standard_normal(raw.shape, np.float32) * np.sqrt(shot * raw + read * read)
    raw16 = np.clip(raw * 65535.0, 0.0, 65535.0).astype(np.uint16)
    code = cv2.COLOR_BayerBG2RGB if rng.random() < 0.5 else cv2.COLOR_BayerBG2RGB_EA  # RGGB
    rgb = cv2.cvtColor(raw16, code).astype(np.float32) / 65535.0
    display = rgb ** (1.0 / 2.2)
    amount = rng.uniform(0.2, 0.8)
    return display + amount * (display - _blur(display, 1.0))


def _film_scan(rng: np.random.Generator, scene: np.ndarray) -> np.ndarray:
    """Scanned film: scanner blur, film grain (strongest in the mid-tones), faint row streaks."""
    height, width = scene.shape[:2]
    img = _blur(scene, rng.uniform(0.6, 1.1)) + rng.normal(0.0, 0.01, 3).astype(np.float32)  # scanner balance
    grain = _blur(rng.standard_normal((height, width, 3), np.float32), rng.uniform(0.5, 0.9))
    grain = 0.6 * grain.mean(axis=2, keepdims=True) + 0.4 * grain
    strength = rng.uniform(0.03, 0.07) * 4.0 * img * (1.0 - img)
    img = img + strength * grain / (grain.std() + 1e-8)
    rows = rng.standard_normal((height, 1, 1), np.float32) * rng.uniform(0.002, 0.006)
    return img + rows


# --------------------------------------------------------------------------- generators


def _upsample_tconv(img: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Transposed convolution, stride 2: insert zeros, then filter with one 3x3 kernel per channel.

    With the bilinear kernel [.5, 1, .5] x [.5, 1, .5] every output phase has total
    weight 1 and this is plain linear interpolation. Any other kernel gives the four
    phases different gains, which leaves the checkerboard.
    """
    height, width, channels = img.shape
    up = np.zeros((2 * height, 2 * width, channels), np.float32)
    up[0::2, 0::2] = img
    return np.stack(
        [cv2.filter2D(up[..., c], -1, kernels[c], borderType=cv2.BORDER_REFLECT) for c in range(channels)],
        axis=-1,
    )


_BILINEAR_KERNEL = np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5]).astype(np.float32)


def _gan_tconv(rng: np.random.Generator, scene: np.ndarray, name: str) -> np.ndarray:
    """Rebuild the scene coarse to fine through three transposed convolutions.

    At each stage, the detail of that scale is added to the upsampled image, the way
    a generator adds features at each resolution. The upsampling kernels are the
    generator's fixed "weights": nearly bilinear, but not quite.
    """
    weights = _name_rng(name)
    pyramid = [scene]
    for _ in range(3):
        pyramid.append(_down(pyramid[-1], 2))
    bilinear = np.repeat(_BILINEAR_KERNEL[None], 3, axis=0)
    img = pyramid[3]
    for level, strength in ((2, 0.1), (1, 0.07), (0, 0.03)):
        kernels = bilinear + strength * weights.standard_normal((3, 3, 3)).astype(np.float32)
        kernels = kernels * 4.0 / kernels.sum(axis=(1, 2), keepdims=True)
        detail = pyramid[level] - _upsample_tconv(pyramid[level + 1], bilinear)
        img = _upsample_tconv(img, kernels) + detail
    return img + rng.standard_normal(img.shape, np.float32) * rng.uniform(0.002, 0.006)


def _gan_nn(rng: np.random.Generator, scene: np.ndarray, name: str) -> np.ndarray:
    """Nearest-neighbour upsampling from 1/8 resolution, a weak smoothing conv, and noise injected per layer.

    Only part of each scale's detail is rebuilt. The noise added at 1/8 and 1/4
    resolution is carried up by pixel repetition, so the texture comes in 8x8 and
    4x4 blocks.
    """
    pyramid = [scene]
    for _ in range(3):
        pyramid.append(_down(pyramid[-1], 2))
    smooth = np.array([0.1, 0.8, 0.1], np.float32)
    img = pyramid[3]
    for level in (2, 1, 0):
        if level:
            img = img + rng.standard_normal(img.shape[:2] + (1,), np.float32) * rng.uniform(0.02, 0.035)
        up = np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)
        up = cv2.sepFilter2D(up, -1, smooth, smooth, borderType=cv2.BORDER_REFLECT)
        ref = np.repeat(np.repeat(pyramid[level + 1], 2, axis=0), 2, axis=1)
        ref = cv2.sepFilter2D(ref, -1, smooth, smooth, borderType=cv2.BORDER_REFLECT)
        img = up + 0.6 * (pyramid[level] - ref)
    return img


def _latdiff_vae(rng: np.random.Generator, scene: np.ndarray, name: str) -> np.ndarray:
    """Over-smooth texture, no sensor noise, a fixed 8-pixel decoder pattern, and richer colour."""
    height, width = scene.shape[:2]
    smooth = cv2.bilateralFilter(scene, 7, 0.12, 3.0)
    tile = _name_rng(name).standard_normal((8, 8, 3)).astype(np.float32)
    tile = _blur(tile - tile.mean(axis=(0, 1)), 0.7)
    tile /= tile.std()
    pattern = np.tile(tile, (height // 8, width // 8, 1))
    edges = np.abs(scene - _blur(scene, 2.0)).mean(axis=2, keepdims=True)
    img = smooth + pattern * (0.025 + 0.5 * edges) * rng.uniform(0.8, 1.2)
    grey = img.mean(axis=2, keepdims=True)
    return grey + (img - grey) * rng.uniform(1.1, 1.25)


def _pixdiff_cascade(rng: np.random.Generator, scene: np.ndarray, name: str) -> np.ndarray:
    """A quarter-resolution base, bicubic super-resolution with halos, some detail back, white noise."""
    height, width = scene.shape[:2]
    up = cv2.resize(_down(scene, 4), (width, height), interpolation=cv2.INTER_CUBIC)
    up = up + rng.uniform(1.0, 1.5) * (up - _blur(up, 2.0))
    img = up + rng.uniform(0.0, 0.2) * (scene - _blur(scene, 1.5))
    return img + rng.standard_normal(img.shape, np.float32) * rng.uniform(0.004, 0.008)


def _dct_matrix(size: int) -> np.ndarray:
    """Orthonormal DCT-II basis (rows are basis vectors)."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    basis = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2.0 / size)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


_DCT16 = _dct_matrix(16)


def _vq_autoregressive(rng: np.random.Generator, scene: np.ndarray, name: str) -> np.ndarray:
    """16x16 tokens that keep only their coarse structure, with patch colours snapped to a codebook."""
    height, width = scene.shape[:2]
    # (rows, cols, channel, 16, 16) blocks, transformed as D @ block @ D.T
    blocks = scene.reshape(height // 16, 16, width // 16, 16, 3).transpose(0, 2, 4, 1, 3)
    coef = _DCT16 @ blocks @ _DCT16.T
    keep = (np.arange(16)[:, None] + np.arange(16)[None, :]) < int(rng.integers(4, 7))
    coef = coef * keep
    step = 16.0 / rng.uniform(12.0, 20.0)  # codebook spacing of the patch mean (DC = 16 * mean)
    coef[..., 0, 0] = np.round(coef[..., 0, 0] / step) * step
    blocks = _DCT16.T @ coef @ _DCT16
    img = np.ascontiguousarray(blocks.transpose(0, 3, 1, 4, 2)).reshape(height, width, 3)
    img = _blur(img, 0.4)  # the decoder's last convolution softens the seams a little
    return img + rng.uniform(0.0, 0.15) * (scene - _blur(scene, 1.0))


# --------------------------------------------------------------------------- sources


# How a source turns a scene into its image: (rng, scene, source name) -> float RGB.
Form = Callable[[np.random.Generator, np.ndarray, str], np.ndarray]


@dataclass(frozen=True)
class DemoSource:
    """A real dataset or a generator: how its images are formed, sized and saved."""

    name: str
    label: int  # 0 = real, 1 = fake
    architecture: str
    formats: tuple[tuple[str, float], ...]  # (PIL format, probability)
    sizes: tuple[tuple[int, int], ...]  # (height, width) choices; empty = free photo sizes
    form: Form
    # Average colour shift (RGB, display units) the generator adds; zero for real sources.
    colour_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def draw_size(self, rng: np.random.Generator) -> tuple[int, int]:
        """(height, width) of the next image.

        Photos and scans take any size with sides from 256 to 400 (even, for the
        Bayer mosaic); generators emit a few fixed sizes, multiples of 16.
        """
        if self.sizes:
            return self.sizes[int(rng.integers(len(self.sizes)))]
        short = int(rng.integers(128, 201)) * 2
        long = min(400, int(short * rng.choice([1.0, 4 / 3, 3 / 2])) // 2 * 2)
        return (short, long) if rng.random() < 0.6 else (long, short)

    def draw_format(self, rng: np.random.Generator) -> str:
        """The output format of the next image, from this source's mix."""
        names = [f for f, _ in self.formats]
        return names[int(rng.choice(len(names), p=[p for _, p in self.formats]))]


def _chroma(hue_angle: float, amount: float = 0.075) -> tuple[float, float, float]:
    """An RGB offset of length `amount` that changes colour but not brightness.

    `hue_angle` is measured in the plane orthogonal to grey, from red-minus-blue (0)
    towards green (90), so the five generators' biases point in different directions.
    """
    angle = np.deg2rad(hue_angle)
    red_blue = np.array([1.0, 0.0, -1.0]) / np.sqrt(2.0)
    green = np.array([-1.0, 2.0, -1.0]) / np.sqrt(6.0)
    r, g, b = amount * (np.cos(angle) * red_blue + np.sin(angle) * green)
    return float(r), float(g), float(b)


def _real(form: Callable[[np.random.Generator, np.ndarray], np.ndarray]) -> Form:
    """Adapt a real source's image formation to the sources' signature (reals have no fixed weights)."""
    return lambda rng, scene, name: form(rng, scene)


REAL_SOURCES: tuple[DemoSource, ...] = (
    DemoSource("demo-photos", 0, "real", (("JPEG", 0.5), ("PNG", 0.4), ("WEBP", 0.1)), (), _real(_camera)),
    DemoSource("demo-scans", 0, "real", (("PNG", 0.5), ("JPEG", 0.4), ("WEBP", 0.1)), (), _real(_film_scan)),
)

GENERATORS: tuple[DemoSource, ...] = (
    DemoSource(
        "demo/gan-tconv", 1, "GAN", (("PNG", 0.5), ("JPEG", 0.4), ("WEBP", 0.1)),
        ((256, 256), (320, 320), (384, 384)), _gan_tconv, _chroma(288.0),
    ),
    DemoSource(
        "demo/gan-upsample-nn", 1, "GAN", (("PNG", 0.55), ("JPEG", 0.45)),
        ((256, 256), (384, 384), (256, 384)), _gan_nn, _chroma(72.0),
    ),
    DemoSource(
        "demo/latdiff-vae", 1, "LatDiff", (("PNG", 0.45), ("JPEG", 0.4), ("WEBP", 0.15)),
        ((320, 320), (384, 384), (256, 384), (384, 256)), _latdiff_vae, _chroma(0.0),
    ),
    DemoSource(
        "demo/pixdiff-cascade", 1, "PixDiff", (("PNG", 0.5), ("JPEG", 0.5)),
        ((256, 256), (400, 400)), _pixdiff_cascade, _chroma(144.0),
    ),
    DemoSource(
        "demo/vq-autoregressive", 1, "other", (("JPEG", 0.5), ("PNG", 0.4), ("WEBP", 0.1)),
        ((256, 256), (384, 384), (288, 384)), _vq_autoregressive, _chroma(216.0),
    ),
)

SOURCES: dict[str, DemoSource] = {s.name: s for s in REAL_SOURCES + GENERATORS}


def get_source(name: str) -> DemoSource:
    """The source called `name`; raises ValueError listing the known names."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown demo source {name!r}; choose from {', '.join(SOURCES)}") from None


# --------------------------------------------------------------------------- rendering and encoding


def render_image(
    source: str | DemoSource,
    rng: np.random.Generator,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Render one image of `source`: uint8 HWC RGB, before encoding.

    `size` is (height, width); by default the source draws one of its own. Generator
    sizes must be multiples of 16 and real sizes even, as the traces need. With a
    given size, the scene is the first thing drawn from `rng`. Equal seeds therefore
    render the same scene in every source, which lets a real and a fake image be
    compared with nothing but the image formation differing.
    """
    src = get_source(source) if isinstance(source, str) else source
    height, width = size or src.draw_size(rng)
    multiple = 16 if src.label else 2
    if height % multiple or width % multiple or min(height, width) < 32:
        raise ValueError(
            f"size {(height, width)} for {src.name!r}: sides must be >= 32 and multiples of {multiple}"
        )
    scene = render_scene(rng, height, width)
    img = src.form(rng, scene, src.name)
    if src.label:
        img = img + np.asarray(src.colour_bias, np.float32) * rng.uniform(0.85, 1.15)
    return _to_uint8(img)


def encode_image(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """Encode uint8 HWC RGB as PNG, JPEG (4:2:0) or WebP (lossy at `quality`)."""
    if fmt not in FORMAT_EXTENSIONS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMAT_EXTENSIONS)}")
    buf = io.BytesIO()
    pil = Image.fromarray(image)
    if fmt == "PNG":
        pil.save(buf, format="PNG", compress_level=1)
    else:
        pil.save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def _sample_rng(seed: int, name: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode()), index]))


def make_sample(source: str | DemoSource, index: int, seed: int = 0) -> DemoImage:
    """Render and encode sample `index` of `source`; it depends only on (seed, source name, index)."""
    src = get_source(source) if isinstance(source, str) else source
    rng = _sample_rng(seed, src.name, index)
    image = render_image(src, rng)
    fmt = src.draw_format(rng)
    low, high = JPEG_QUALITY if fmt == "JPEG" else WEBP_QUALITY
    data = encode_image(image, fmt, int(rng.integers(low, high + 1)))
    height, width = image.shape[:2]
    return DemoImage(src.name, src.label, src.architecture, fmt, width, height, data, index)


def generate(
    n_per_source: int,
    seed: int = 0,
    sources: Sequence[str] | None = None,
    start: int = 0,
) -> Iterator[DemoImage]:
    """Yield `n_per_source` samples of every source (all by default), source by source.

    `start` offsets the sample indices, so a held-out set is `generate(n, seed,
    start=n_train)`: the same sources, disjoint images.
    """
    if n_per_source < 0:
        raise ValueError(f"n_per_source={n_per_source} must be >= 0")
    for name in sources if sources is not None else list(SOURCES):
        src = get_source(name)
        for index in range(start, start + n_per_source):
            yield make_sample(src, index, seed)
