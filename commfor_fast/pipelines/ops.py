"""The RandomStateAugmentation op table: every op, its parameter ranges and sampling.

This is the one place where RSA's randomness is defined (SPEC section 3). Each op is a
plain function `(rng, height, width, crop) -> steps` that draws one application's
parameters for an image of the given size, the way torchvision's transforms draw
them, and returns the primitive steps that apply them. Both executors read these
steps: `reference.py` runs them with PIL/torchvision, `dali.py` lowers them to DALI
operators. A test can therefore build steps by hand (inject parameters) and run the
same augmentation in both.

Steps are small frozen dataclasses. Each knows the image size it produces, so a plan
can be drawn on the host with exact sizes before any pixel is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Union

import numpy as np

from commfor_fast.imageio import resized_shape


class Interp(str, Enum):
    """Resampling filters, named as in torchvision's InterpolationMode."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"
    HAMMING = "hamming"
    BOX = "box"


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Resize:
    """Resize to (height, width) with `interp` (antialiased when shrinking, as PIL does)."""

    height: int
    width: int
    interp: Interp = Interp.BILINEAR

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return self.height, self.width


@dataclass(frozen=True)
class Crop:
    """Cut the box (top, left, height, width), which lies inside the image."""

    top: int
    left: int
    height: int
    width: int

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return self.height, self.width


@dataclass(frozen=True)
class ResizedCrop:
    """Crop the box (top, left, height, width), then resize it to (out_height,
    out_width) with `interp` (torchvision's `resized_crop`)."""

    top: int
    left: int
    height: int
    width: int
    out_height: int
    out_width: int
    interp: Interp

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return self.out_height, self.out_width


@dataclass(frozen=True)
class Flip:
    """Mirror left-right (`horizontal`) or top-bottom; `applied` False is a no-op draw."""

    horizontal: bool
    applied: bool

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return h, w


@dataclass(frozen=True)
class Affine:
    """Bilinear affine warp about the image centre, same canvas, fill 0.

    `rotation` is counter-clockwise degrees (torchvision `rotate`); `translate` in
    pixels; `shear` in degrees along x and y (torchvision `affine`).
    """

    rotation: float = 0.0
    translate_x: int = 0
    translate_y: int = 0
    shear_x: float = 0.0
    shear_y: float = 0.0

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return h, w

    def inverse_matrix(self, h: int, w: int) -> list[float]:
        """Output->input 2x3 matrix (row-major), as torchvision computes it for PIL."""
        matrices = affine_matrices(np.array([h]), np.array([w]), self.rotation, self.translate_x, self.translate_y,
                                   self.shear_x, self.shear_y)
        return [float(v) for v in matrices[0].ravel()]


def affine_matrices(h: np.ndarray, w: np.ndarray, rotation: np.ndarray | float = 0.0,
                    translate_x: np.ndarray | int = 0, translate_y: np.ndarray | int = 0,
                    shear_x: np.ndarray | float = 0.0, shear_y: np.ndarray | float = 0.0) -> np.ndarray:
    """`Affine`'s output->input matrices for arrays of images: (n, 2, 3) float32.

    torchvision's `rotate(angle)` uses the affine matrix of `-angle`; the centre is
    (w/2, h/2) in a coordinate frame where pixel centres are at half-integers.
    """
    rot, sx, sy = np.radians(-np.asarray(rotation, np.float64)), np.radians(shear_x), np.radians(shear_y)
    cx, cy = w * 0.5, h * 0.5
    a = np.cos(rot - sy) / np.cos(sy)
    b = -np.cos(rot - sy) * np.tan(sx) / np.cos(sy) - np.sin(rot)
    c = np.sin(rot - sy) / np.cos(sy)
    d = -np.sin(rot - sy) * np.tan(sx) / np.cos(sy) + np.cos(rot)
    m0, m1, m3, m4 = np.broadcast_arrays(d, -b, -c, a, cx)[:4]
    m2 = m0 * (-cx - translate_x) + m1 * (-cy - translate_y) + cx
    m5 = m3 * (-cx - translate_x) + m4 * (-cy - translate_y) + cy
    return np.stack([np.stack([m0, m1, m2], -1), np.stack([m3, m4, m5], -1)], -2).astype(np.float32)


@dataclass(frozen=True)
class Pad:
    """Pad each side by its own amount with grey `fill`, then resize bilinearly to
    (height, width)."""

    left: int
    top: int
    right: int
    bottom: int
    fill: int
    height: int
    width: int

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return self.height, self.width


@dataclass(frozen=True)
class Erase:
    """Fill the box (top, left, height, width) with grey `fill`; `applied` False is a no-op."""

    top: int
    left: int
    height: int
    width: int
    fill: int
    applied: bool

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return h, w


@dataclass(frozen=True)
class Jpeg:
    """Encode as JPEG at `quality` (4:2:0) with PIL or OpenCV, decode back to RGB."""

    quality: int
    codec: str = "pil"  # "pil" or "cv2"

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        return h, w


Step = Union[Resize, Crop, ResizedCrop, Flip, Affine, Pad, Erase, Jpeg]


def trace_sizes(steps: list[Step], h: int, w: int) -> list[tuple[int, int]]:
    """Image size before each step and after the last one (len(steps) + 1 entries)."""
    sizes = [(h, w)]
    for step in steps:
        h, w = step.out_size(h, w)
        sizes.append((h, w))
    return sizes


# ---------------------------------------------------------------- parameter draws


def _randint(rng: np.random.Generator, low: int, high_exclusive: int) -> int:
    return int(rng.integers(low, high_exclusive))


def _random_resized_box(
    rng: np.random.Generator, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: 10 attempts, then a centre-crop fallback."""
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return _randint(rng, 0, h - ch + 1), _randint(rng, 0, w - cw + 1), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _jpeg_codec(rng: np.random.Generator) -> str:
    return "pil" if rng.random() < 0.5 else "cv2"


RRC_INTERPS = (Interp.NEAREST, Interp.BILINEAR, Interp.BICUBIC, Interp.LANCZOS, Interp.HAMMING, Interp.BOX)
JPEG_QUALITY = (75, 100)  # inclusive
RESIZE_SCALE = 1.228  # RandomResize: shorter side in [C + 1, round(1.228 C)]
RRC_SCALE, RRC_RATIO = (0.9, 1.0), (3 / 4, 4 / 3)
ROTATION_DEGREES = 15.0
TRANSLATE_FRACTION = 0.1
SHEAR_DEGREES = 15.0
PAD_FRACTION = 0.05
CUTOUT_P, CUTOUT_SCALE, CUTOUT_RATIO = 0.5, (0.02, 0.06), (0.3, 3.3)
STOCHASTIC_JPEG_ROUNDS, STOCHASTIC_JPEG_SCALE = 5, (0.75, 1.0)
SINGLE_JPEG_QUALITY = 95


def jpeg_in_memory(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    quality = _randint(rng, JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)
    return [Jpeg(quality, _jpeg_codec(rng))]


def random_resize(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    side = _randint(rng, crop + 1, round(RESIZE_SCALE * crop) + 1)
    interp = Interp.BILINEAR if rng.random() < 0.5 else Interp.BICUBIC
    return [Resize(*resized_shape(h, w, side), interp)]


def random_crop(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    return [Crop(_randint(rng, 0, h - crop + 1), _randint(rng, 0, w - crop + 1), crop, crop)]


def random_hflip(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    return [Flip(horizontal=True, applied=bool(rng.random() < 0.5))]


def random_vflip(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    return [Flip(horizontal=False, applied=bool(rng.random() < 0.5))]


def random_resized_crop(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    """torchvision's box, then the box's shorter side to C keeping its aspect ratio: the
    original passes the int C as `resized_crop`'s size (a 4:3 box becomes 384 x 512)."""
    top, left, ch, cw = _random_resized_box(rng, h, w, RRC_SCALE, RRC_RATIO)
    interp = RRC_INTERPS[_randint(rng, 0, len(RRC_INTERPS))]
    return [ResizedCrop(top, left, ch, cw, *resized_shape(ch, cw, crop), interp)]


def random_rotation(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    return [Affine(rotation=float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES)))]


def random_translate(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    max_dx, max_dy = TRANSLATE_FRACTION * w, TRANSLATE_FRACTION * h
    tx = int(round(rng.uniform(-max_dx, max_dx)))
    ty = int(round(rng.uniform(-max_dy, max_dy)))
    return [Affine(translate_x=tx, translate_y=ty)]


def random_shear(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    sx = float(rng.uniform(-SHEAR_DEGREES, SHEAR_DEGREES))
    sy = float(rng.uniform(-SHEAR_DEGREES, SHEAR_DEGREES))
    return [Affine(shear_x=sx, shear_y=sy)]


def random_padding(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    """Four independent amounts (left, right of the width; top, bottom of the height)."""
    left, right = (int(rng.uniform(0, PAD_FRACTION) * w) for _ in range(2))
    top, bottom = (int(rng.uniform(0, PAD_FRACTION) * h) for _ in range(2))
    fill = _randint(rng, 0, 256)
    # Quirk of the original: it resizes back to (height = old width, width = old height).
    out_h, out_w = (h, w) if fix_quirks else (w, h)
    return [Pad(left, top, right, bottom, fill, out_h, out_w)]


def random_cutout(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    """torchvision RandomErasing(p, scale, ratio) with one random grey value."""
    if not rng.random() < CUTOUT_P:
        return [Erase(0, 0, 0, 0, 0, applied=False)]
    fill = _randint(rng, 0, 256)
    area = h * w
    log_lo, log_hi = math.log(CUTOUT_RATIO[0]), math.log(CUTOUT_RATIO[1])
    for _ in range(10):
        erase_area = area * rng.uniform(*CUTOUT_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        eh = int(round(math.sqrt(erase_area * aspect)))
        ew = int(round(math.sqrt(erase_area / aspect)))
        if eh < h and ew < w:
            return [Erase(_randint(rng, 0, h - eh + 1), _randint(rng, 0, w - ew + 1), eh, ew, fill, applied=True)]
    return [Erase(0, 0, 0, 0, fill, applied=False)]


def single_jpeg(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    """Shorter side to C (bilinear), then JPEG at quality 95."""
    return [Resize(*resized_shape(h, w, crop), Interp.BILINEAR), Jpeg(SINGLE_JPEG_QUALITY, _jpeg_codec(rng))]


def stochastic_jpeg(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    """The intended StochasticJPEG (the original crashes): 1 to 5 rounds of a random
    resized crop to C x C (torchvision's `RandomResizedCrop(C)`, scale 0.75-1, bilinear)
    + JPEG at quality 75-100, every round after the first with p = 0.5."""
    steps: list[Step] = []
    for round_no in range(STOCHASTIC_JPEG_ROUNDS):
        if round_no and not rng.random() < 0.5:
            continue
        top, left, ch, cw = _random_resized_box(rng, h, w, STOCHASTIC_JPEG_SCALE, RRC_RATIO)
        steps.append(ResizedCrop(top, left, ch, cw, crop, crop, Interp.BILINEAR))
        h = w = crop
        steps.append(Jpeg(_randint(rng, JPEG_QUALITY[0], JPEG_QUALITY[1] + 1), "pil"))
    return steps


OpFn = Callable[..., list[Step]]


@dataclass(frozen=True)
class OpSpec:
    """One RSA op: its sampler, the most steps one application can produce, and how
    many of those can be JPEG steps (the DALI graph's length depends on both)."""

    sample: OpFn
    max_steps: int = 1
    max_jpegs: int = 0


# The table. Names are the original's `--rsa_ops` names.
OPS: dict[str, OpSpec] = {
    "JPEGinMemory": OpSpec(jpeg_in_memory, max_jpegs=1),
    "RandomResizeWithRandomIntpl": OpSpec(random_resize),
    "RandomCrop": OpSpec(random_crop),
    "RandomHorizontalFlip": OpSpec(random_hflip),
    "RandomVerticalFlip": OpSpec(random_vflip),
    "RRCWithRandomIntpl": OpSpec(random_resized_crop),
    "RandomRotation": OpSpec(random_rotation),
    "RandomTranslate": OpSpec(random_translate),
    "RandomShear": OpSpec(random_shear),
    "RandomPadding": OpSpec(random_padding),
    "RandomCutout": OpSpec(random_cutout),
    "singleJPEG": OpSpec(single_jpeg, max_steps=2, max_jpegs=1),
    "StochasticJPEG": OpSpec(stochastic_jpeg, max_steps=2 * STOCHASTIC_JPEG_ROUNDS,
                             max_jpegs=STOCHASTIC_JPEG_ROUNDS),
}

DEFAULT_OPS = (
    "JPEGinMemory",
    "RandomResizeWithRandomIntpl",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomVerticalFlip",
    "RRCWithRandomIntpl",
    "RandomRotation",
    "RandomTranslate",
    "RandomShear",
    "RandomPadding",
    "RandomCutout",
)
