"""The RandomStateAugmentation ops: each op's ranges, draws and size rule, registered once.

Each op is one registration (`rsa_op`) in this file, holding side by side its
parameter ranges (SPEC section 3), its per-image draw, its per-batch draw and, when it
changes the image size, its size rule. The per-image draw is a plain function
`(rng, height, width, crop) -> steps` that draws one application's parameters for an
image of the given size, the way torchvision's transforms draw them; `plan.py` builds
per-sample plans from it, which both executors run (`reference.py` with
PIL/torchvision, `dali.py` through `slots.lower_plans`), so a test can build steps by
hand (inject parameters) and run the same augmentation in both. The per-batch draw
gives the same distribution for all of a batch's applications at once, as step
columns (`BatchDraw`); `batch_plan.py` places them and `slots.fill_slot` writes them,
the same writer `lower_plans` uses.

Steps are small frozen dataclasses. Each knows the image size it produces, so a plan
can be drawn on the host with exact sizes before any pixel is touched. A step's fields
are scalars for one image, or equal-length arrays in a batch draw's columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Union

import numpy as np

from commfor_fast.imageio import resized_shape, resized_shapes


class Interp(str, Enum):
    """Resampling filters, named as in torchvision's InterpolationMode."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"
    HAMMING = "hamming"
    BOX = "box"


INTERPS = tuple(Interp)  # array code carries interpolations as indices into this tuple


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


def affine_matrices(h: np.ndarray, w: np.ndarray, rotation: np.ndarray | float = 0.0,
                    translate_x: np.ndarray | int = 0, translate_y: np.ndarray | int = 0,
                    shear_x: np.ndarray | float = 0.0, shear_y: np.ndarray | float = 0.0) -> np.ndarray:
    """`Affine`'s output->input matrices (as torchvision computes them for PIL) for
    arrays of images: (n, 2, 3) float32.

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


# ---------------------------------------------------------------- the op registry
#
# An op is one registration: its parameter ranges (the constants above its draws),
# its per-image draw, its per-batch draw and, when it changes the image size, its
# size rule. `plan.draw_rsa` runs the per-image draws; `batch_plan.draw_train_slots`
# runs the per-batch ones.

SampleFn = Callable[..., list[Step]]  # (rng, h, w, crop, *, fix_quirks) -> steps


@dataclass
class Apps:
    """Every application of one op in a batch: step index, sample, size in and out."""

    k: np.ndarray
    b: np.ndarray
    h: np.ndarray
    w: np.ndarray
    out_h: np.ndarray
    out_w: np.ndarray

    def __len__(self) -> int:
        return len(self.b)


@dataclass
class BatchDraw:
    """One op's applications in a batch, drawn, as step columns (steps whose fields
    are arrays with one entry per round; `slots.fill_slot` writes them).

    Application i is `rounds[i]` rounds (0: it drew a no-op, which takes no slot);
    round j belongs to application `app[j]` (an application's rounds in order) and
    sees an image of (h[j], w[j]). A round is a geometric step (`geometry`), a JPEG
    (`jpeg`), or a geometric step then a JPEG, which ends its stage (`batch_plan`
    places these three shapes). JPEG codecs are not drawn: DALI's libjpeg gives what
    both PIL and OpenCV give.
    """

    rounds: np.ndarray
    app: np.ndarray
    h: np.ndarray
    w: np.ndarray
    geometry: Step | None = None
    jpeg: Jpeg | None = None

    @classmethod
    def once(cls, a: Apps, geometry: Step | None = None, jpeg: Jpeg | None = None,
             applied: np.ndarray | None = None) -> BatchDraw:
        """One round per application (where `applied`; the columns hold only those)."""
        if applied is None:
            return cls(np.ones(len(a), np.int64), np.arange(len(a)), a.h, a.w, geometry, jpeg)
        app = np.nonzero(applied)[0]
        return cls(applied.astype(np.int64), app, a.h[app], a.w[app], geometry, jpeg)


BatchFn = Callable[..., BatchDraw]  # (rng, apps, crop, the op's size rule or None) -> BatchDraw
# (rng, n applications, crop, fix_quirks) -> out(h, w, sel) -> (out_h, out_w) for the
# applications `sel`. A size rule makes the draws that decide the output size, before
# the batch's sizes are traced; the other draws wait for the op's batch draw, which
# receives the rule (to reuse what it drew).
SizeRule = Callable[[np.random.Generator, int, int, bool], Callable[..., tuple]]


@dataclass(frozen=True)
class OpSpec:
    """One RSA op: its per-image and per-batch draws, its size rule (None: the op
    keeps the size), the most steps one application can produce and how many of those
    can be JPEG steps (the DALI graph's length depends on both)."""

    sample: SampleFn
    batch: BatchFn
    size: SizeRule | None = None
    max_steps: int = 1
    max_jpegs: int = 0


# Names are the original's `--rsa_ops` names.
OPS: dict[str, OpSpec] = {}


def rsa_op(name: str, *, batch: BatchFn, size: SizeRule | None = None, max_steps: int = 1,
           max_jpegs: int = 0) -> Callable[[SampleFn], SampleFn]:
    """Register the decorated per-image draw as op `name` with its per-batch twin.

    Both draws must follow one distribution (tests/test_batch_plan.py compares them).
    """

    def register(sample: SampleFn) -> SampleFn:
        if name in OPS:
            raise ValueError(f"RSA op {name!r} is registered twice")
        OPS[name] = OpSpec(sample, batch, size, max_steps, max_jpegs)
        return sample

    return register


# ---------------------------------------------------------------- shared draws

ATTEMPTS = 10  # torchvision's RandomResizedCrop and RandomErasing
JPEG_QUALITY = (75, 100)  # inclusive
RRC_RATIO = (3 / 4, 4 / 3)


def _randint(rng: np.random.Generator, low: int, high_exclusive: int) -> int:
    return int(rng.integers(low, high_exclusive))


def _jpeg_codec(rng: np.random.Generator) -> str:
    return "pil" if rng.random() < 0.5 else "cv2"


def _jpeg_qualities(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, n)


def _random_resized_box(
    rng: np.random.Generator, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: 10 attempts, then a centre-crop fallback."""
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(ATTEMPTS):
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


def _first_valid(ok: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Whether any attempt (axis 1) is valid, and each value at the first valid attempt."""
    rows, first = np.arange(len(ok)), ok.argmax(1)
    return (ok[rows, first],) + tuple(v[rows, first] for v in values)


def _resized_box_shapes(rng: np.random.Generator, n: int, scale: tuple[float, float],
                        ratio: tuple[float, float]) -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`_random_resized_box`'s shape for n applications: the ten attempts are drawn
    now; the returned function gives (height, width, found) for the input sizes of the
    applications `sel` (the centre-crop fallback's shape where no attempt fits)."""
    frac = rng.uniform(scale[0], scale[1], (n, ATTEMPTS))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, ATTEMPTS)))

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


def _square_size_rule(rng: np.random.Generator, n: int, crop: int, fix: bool) -> Callable[..., tuple]:
    return lambda h, w, sel: (crop, crop)


# ---------------------------------------------------------------- the ops
# Each op: its ranges, its batch draw (and size rule), then its per-image draw,
# registered together.

# JPEGinMemory: JPEG at quality UniformInt[75, 100], with PIL or OpenCV (a coin).


def _jpeg_in_memory_batch(rng: np.random.Generator, a: Apps, crop: int, sized: None) -> BatchDraw:
    return BatchDraw.once(a, jpeg=Jpeg(_jpeg_qualities(rng, len(a))))


@rsa_op("JPEGinMemory", batch=_jpeg_in_memory_batch, max_jpegs=1)
def jpeg_in_memory(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    quality = _randint(rng, JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)
    return [Jpeg(quality, _jpeg_codec(rng))]


# RandomResizeWithRandomIntpl: shorter side to UniformInt[C + 1, round(1.228 C)],
# bilinear or bicubic (a coin).
RESIZE_SCALE = 1.228


def _resize_size_rule(rng: np.random.Generator, n: int, crop: int, fix: bool) -> Callable[..., tuple]:
    side = rng.integers(crop + 1, round(RESIZE_SCALE * crop) + 1, n)
    return lambda h, w, sel: resized_shapes(h, w, side[sel])


def _random_resize_batch(rng: np.random.Generator, a: Apps, crop: int, sized: object) -> BatchDraw:
    interp = np.where(rng.random(len(a)) < 0.5, INTERPS.index(Interp.BILINEAR), INTERPS.index(Interp.BICUBIC))
    return BatchDraw.once(a, Resize(a.out_h, a.out_w, interp))


@rsa_op("RandomResizeWithRandomIntpl", batch=_random_resize_batch, size=_resize_size_rule)
def random_resize(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    side = _randint(rng, crop + 1, round(RESIZE_SCALE * crop) + 1)
    interp = Interp.BILINEAR if rng.random() < 0.5 else Interp.BICUBIC
    return [Resize(*resized_shape(h, w, side), interp)]


# RandomCrop: a C x C box at a uniform position.


def _random_crop_batch(rng: np.random.Generator, a: Apps, crop: int, sized: object) -> BatchDraw:
    top, left = rng.integers(0, a.h - crop + 1), rng.integers(0, a.w - crop + 1)
    return BatchDraw.once(a, Crop(top, left, a.out_h, a.out_w))


@rsa_op("RandomCrop", batch=_random_crop_batch, size=_square_size_rule)
def random_crop(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    return [Crop(_randint(rng, 0, h - crop + 1), _randint(rng, 0, w - crop + 1), crop, crop)]


# RandomHorizontalFlip, RandomVerticalFlip: each with p = 0.5.


def _flip_batch(horizontal: bool) -> BatchFn:
    def draw(rng: np.random.Generator, a: Apps, crop: int, sized: None) -> BatchDraw:
        applied = rng.random(len(a)) < 0.5
        return BatchDraw.once(a, Flip(horizontal, np.ones(applied.sum(), bool)), applied=applied)

    return draw


@rsa_op("RandomHorizontalFlip", batch=_flip_batch(horizontal=True))
def random_hflip(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    return [Flip(horizontal=True, applied=bool(rng.random() < 0.5))]


@rsa_op("RandomVerticalFlip", batch=_flip_batch(horizontal=False))
def random_vflip(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    return [Flip(horizontal=False, applied=bool(rng.random() < 0.5))]


# RRCWithRandomIntpl: torchvision's box (scale 0.9-1, ratio 3/4-4/3), then the box's
# shorter side to C keeping its aspect ratio, with one of six filters.
RRC_INTERPS = (Interp.NEAREST, Interp.BILINEAR, Interp.BICUBIC, Interp.LANCZOS, Interp.HAMMING, Interp.BOX)
RRC_SCALE = (0.9, 1.0)
_RRC_CODES = np.array([INTERPS.index(i) for i in RRC_INTERPS])


class _RRCSizeRule:
    """RRCWithRandomIntpl's box shape per application, kept for its batch draw."""

    def __init__(self, rng: np.random.Generator, n: int, crop: int, fix: bool) -> None:
        self.crop = crop
        self.shapes = _resized_box_shapes(rng, n, RRC_SCALE, RRC_RATIO)
        self.box_h, self.box_w = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.found = np.zeros(n, bool)

    def __call__(self, h: np.ndarray, w: np.ndarray, sel: slice) -> tuple[np.ndarray, np.ndarray]:
        self.box_h[sel], self.box_w[sel], self.found[sel] = self.shapes(h, w, sel)
        return resized_shapes(self.box_h[sel], self.box_w[sel], self.crop)


def _random_resized_crop_batch(rng: np.random.Generator, a: Apps, crop: int, sized: _RRCSizeRule) -> BatchDraw:
    top, left = _box_corners(rng, a.h, a.w, sized.box_h, sized.box_w, sized.found)
    interp = _RRC_CODES[rng.integers(0, len(RRC_INTERPS), len(a))]
    return BatchDraw.once(a, ResizedCrop(top, left, sized.box_h, sized.box_w, a.out_h, a.out_w, interp))


@rsa_op("RRCWithRandomIntpl", batch=_random_resized_crop_batch, size=_RRCSizeRule)
def random_resized_crop(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    """torchvision's box, then the box's shorter side to C keeping its aspect ratio: the
    original passes the int C as `resized_crop`'s size (a 4:3 box becomes 384 x 512)."""
    top, left, ch, cw = _random_resized_box(rng, h, w, RRC_SCALE, RRC_RATIO)
    interp = RRC_INTERPS[_randint(rng, 0, len(RRC_INTERPS))]
    return [ResizedCrop(top, left, ch, cw, *resized_shape(ch, cw, crop), interp)]


# RandomRotation: U(-15, 15) degrees.
ROTATION_DEGREES = 15.0


def _random_rotation_batch(rng: np.random.Generator, a: Apps, crop: int, sized: None) -> BatchDraw:
    return BatchDraw.once(a, Affine(rotation=rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES, len(a))))


@rsa_op("RandomRotation", batch=_random_rotation_batch)
def random_rotation(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    return [Affine(rotation=float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES)))]


# RandomTranslate: whole pixels, round(U(-0.1 W, 0.1 W)) and round(U(-0.1 H, 0.1 H)).
TRANSLATE_FRACTION = 0.1


def _random_translate_batch(rng: np.random.Generator, a: Apps, crop: int, sized: None) -> BatchDraw:
    max_dx, max_dy = TRANSLATE_FRACTION * a.w, TRANSLATE_FRACTION * a.h
    tx, ty = np.rint(rng.uniform(-max_dx, max_dx)), np.rint(rng.uniform(-max_dy, max_dy))
    return BatchDraw.once(a, Affine(translate_x=tx, translate_y=ty))


@rsa_op("RandomTranslate", batch=_random_translate_batch)
def random_translate(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    max_dx, max_dy = TRANSLATE_FRACTION * w, TRANSLATE_FRACTION * h
    tx = int(round(rng.uniform(-max_dx, max_dx)))
    ty = int(round(rng.uniform(-max_dy, max_dy)))
    return [Affine(translate_x=tx, translate_y=ty)]


# RandomShear: U(-15, 15) degrees along x and along y.
SHEAR_DEGREES = 15.0


def _random_shear_batch(rng: np.random.Generator, a: Apps, crop: int, sized: None) -> BatchDraw:
    sx, sy = (rng.uniform(-SHEAR_DEGREES, SHEAR_DEGREES, len(a)) for _ in range(2))
    return BatchDraw.once(a, Affine(shear_x=sx, shear_y=sy))


@rsa_op("RandomShear", batch=_random_shear_batch)
def random_shear(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    sx = float(rng.uniform(-SHEAR_DEGREES, SHEAR_DEGREES))
    sy = float(rng.uniform(-SHEAR_DEGREES, SHEAR_DEGREES))
    return [Affine(shear_x=sx, shear_y=sy)]


# RandomPadding: left and right int(U(0, 0.05) W), top and bottom int(U(0, 0.05) H),
# grey UniformInt[0, 255], then a bilinear resize back.
PAD_FRACTION = 0.05


def _padding_size_rule(rng: np.random.Generator, n: int, crop: int, fix: bool) -> Callable[..., tuple]:
    return lambda h, w, sel: (h, w) if fix else (w, h)


def _random_padding_batch(rng: np.random.Generator, a: Apps, crop: int, sized: object) -> BatchDraw:
    n = len(a)
    left, right = ((rng.uniform(0, PAD_FRACTION, n) * a.w).astype(np.int64) for _ in range(2))
    top, bottom = ((rng.uniform(0, PAD_FRACTION, n) * a.h).astype(np.int64) for _ in range(2))
    fill = rng.integers(0, 256, n)
    return BatchDraw.once(a, Pad(left, top, right, bottom, fill, a.out_h, a.out_w))


@rsa_op("RandomPadding", batch=_random_padding_batch, size=_padding_size_rule)
def random_padding(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    """Four independent amounts (left, right of the width; top, bottom of the height)."""
    left, right = (int(rng.uniform(0, PAD_FRACTION) * w) for _ in range(2))
    top, bottom = (int(rng.uniform(0, PAD_FRACTION) * h) for _ in range(2))
    fill = _randint(rng, 0, 256)
    # Quirk of the original: it resizes back to (height = old width, width = old height).
    out_h, out_w = (h, w) if fix_quirks else (w, h)
    return [Pad(left, top, right, bottom, fill, out_h, out_w)]


# RandomCutout: torchvision RandomErasing(p = 0.5, scale 0.02-0.06, ratio 0.3-3.3)
# with one grey UniformInt[0, 255].
CUTOUT_P, CUTOUT_SCALE, CUTOUT_RATIO = 0.5, (0.02, 0.06), (0.3, 3.3)


def _random_cutout_batch(rng: np.random.Generator, a: Apps, crop: int, sized: None) -> BatchDraw:
    n = len(a)
    coin = rng.random(n) < CUTOUT_P
    fill = rng.integers(0, 256, n)
    area = (a.h * a.w)[:, None] * rng.uniform(*CUTOUT_SCALE, (n, ATTEMPTS))
    aspect = np.exp(rng.uniform(math.log(CUTOUT_RATIO[0]), math.log(CUTOUT_RATIO[1]), (n, ATTEMPTS)))
    eh = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    ew = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    found, eh, ew = _first_valid((eh < a.h[:, None]) & (ew < a.w[:, None]), eh, ew)
    eh, ew = np.where(found, eh, 0), np.where(found, ew, 0)
    top, left = rng.integers(0, a.h - eh + 1), rng.integers(0, a.w - ew + 1)
    applied = coin & found & (eh * ew > 0)
    box = Erase(top[applied], left[applied], eh[applied], ew[applied], fill[applied], np.ones(applied.sum(), bool))
    return BatchDraw.once(a, box, applied=applied)


@rsa_op("RandomCutout", batch=_random_cutout_batch)
def random_cutout(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    """torchvision RandomErasing(p, scale, ratio) with one random grey value."""
    if not rng.random() < CUTOUT_P:
        return [Erase(0, 0, 0, 0, 0, applied=False)]
    fill = _randint(rng, 0, 256)
    area = h * w
    log_lo, log_hi = math.log(CUTOUT_RATIO[0]), math.log(CUTOUT_RATIO[1])
    for _ in range(ATTEMPTS):
        erase_area = area * rng.uniform(*CUTOUT_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        eh = int(round(math.sqrt(erase_area * aspect)))
        ew = int(round(math.sqrt(erase_area / aspect)))
        if eh < h and ew < w:
            return [Erase(_randint(rng, 0, h - eh + 1), _randint(rng, 0, w - ew + 1), eh, ew, fill, applied=True)]
    return [Erase(0, 0, 0, 0, fill, applied=False)]


# singleJPEG (not a default op): shorter side to C (bilinear), then JPEG at quality 95.
SINGLE_JPEG_QUALITY = 95


def _shorter_to_crop_rule(rng: np.random.Generator, n: int, crop: int, fix: bool) -> Callable[..., tuple]:
    return lambda h, w, sel: resized_shapes(h, w, crop)


def _single_jpeg_batch(rng: np.random.Generator, a: Apps, crop: int, sized: object) -> BatchDraw:
    return BatchDraw.once(a, Resize(a.out_h, a.out_w, Interp.BILINEAR), Jpeg(SINGLE_JPEG_QUALITY))


@rsa_op("singleJPEG", batch=_single_jpeg_batch, size=_shorter_to_crop_rule, max_steps=2, max_jpegs=1)
def single_jpeg(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    """Shorter side to C (bilinear), then JPEG at quality 95."""
    return [Resize(*resized_shape(h, w, crop), Interp.BILINEAR), Jpeg(SINGLE_JPEG_QUALITY, _jpeg_codec(rng))]


# StochasticJPEG (not a default op): rounds of a random resized crop to C x C
# (scale 0.75-1, bilinear) + JPEG at quality UniformInt[75, 100] with PIL or OpenCV.
# As the original's loop runs: one round, then while fewer than 5, another with
# p = 0.5, else stop. So P(k rounds) = 2^-k for k < 5 and 2^-4 for 5 (mean 1.9375).
STOCHASTIC_JPEG_ROUNDS, STOCHASTIC_JPEG_P, STOCHASTIC_JPEG_SCALE = 5, 0.5, (0.75, 1.0)


def _stochastic_jpeg_batch(rng: np.random.Generator, a: Apps, crop: int, sized: object) -> BatchDraw:
    """Round 1 crops the input; each later round crops the C x C result."""
    n = len(a)
    more = np.cumprod(rng.random((n, STOCHASTIC_JPEG_ROUNDS - 1)) < STOCHASTIC_JPEG_P, 1).sum(1)
    rounds = np.arange(STOCHASTIC_JPEG_ROUNDS) <= more[:, None]
    app, round_no = np.nonzero(rounds)
    first = round_no == 0
    h, w = np.where(first, a.h[app], crop), np.where(first, a.w[app], crop)
    ch, cw, found = _resized_box_shapes(rng, len(app), STOCHASTIC_JPEG_SCALE, RRC_RATIO)(h, w, slice(None))
    top, left = _box_corners(rng, h, w, ch, cw, found)
    quality = _jpeg_qualities(rng, len(app))
    square = np.full_like(h, crop)
    return BatchDraw(rounds.sum(1), app, h, w, ResizedCrop(top, left, ch, cw, square, square, Interp.BILINEAR),
                     Jpeg(quality))


@rsa_op("StochasticJPEG", batch=_stochastic_jpeg_batch, size=_square_size_rule,
        max_steps=2 * STOCHASTIC_JPEG_ROUNDS, max_jpegs=STOCHASTIC_JPEG_ROUNDS)
def stochastic_jpeg(rng: np.random.Generator, h: int, w: int, crop: int, *, fix_quirks: bool) -> list[Step]:
    """StochasticJPEG as the original's loop runs once its crash is fixed: a round of
    torchvision's `RandomResizedCrop(C)` (scale 0.75-1, bilinear) + JPEG at quality
    75-100, then further rounds while a p = 0.5 coin says so, at most 5 in all."""
    steps: list[Step] = []
    for round_no in range(STOCHASTIC_JPEG_ROUNDS):
        if round_no and not rng.random() < STOCHASTIC_JPEG_P:
            break
        top, left, ch, cw = _random_resized_box(rng, h, w, STOCHASTIC_JPEG_SCALE, RRC_RATIO)
        steps.append(ResizedCrop(top, left, ch, cw, crop, crop, Interp.BILINEAR))
        h = w = crop
        steps.append(Jpeg(_randint(rng, JPEG_QUALITY[0], JPEG_QUALITY[1] + 1), _jpeg_codec(rng)))
    return steps


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
