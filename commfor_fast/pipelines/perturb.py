"""Robustness perturbations (`eval --perturb`): each family defined once, for both executors.

A family is one row of `FAMILIES`: how its levels are parsed and checked, its exact
definition (printed in the README and stored in report.json), its DALI implementation
and its reference implementation (numpy/PIL). Every perturbation is applied to the
decoded RGB image, before the first resize, as a distribution shift would reach the
detector; on pre-resized shards the decoded image is the stored pixels (shorter side
already 440 or 256), and the report says so.

- jpeg q: encode with quality q (1-100, 4:2:0 chroma subsampling), decode. Reference:
  PIL's encoder, as the RSA's JPEG op; DALI: `jpeg_compression_distortion` (libjpeg on
  the CPU, the same bytes; its own CUDA codec on the GPU, not bit-exact).
- blur s: Gaussian blur with sigma s pixels, kernel size 2 * ceil(3 s) + 1, separable,
  borders mirrored without repeating the edge pixel (reflect-101: d c b | a b c d),
  rounded to nearest (halves up).
- resize f: downscale to (max(1, round(f H)), max(1, round(f W))) (halves up; f has at
  most 4 decimals, so the size is exact integer arithmetic), bilinear with
  antialiasing, then back up to (H, W) bilinear.
- noise n: add n * z per pixel and channel, z standard normal, rounded to nearest
  (halves away from zero) and clipped to [0, 255]. z comes from a counter-based hash
  of (seed, sample number, pixel, channel), so it is the same on every rank, in every
  run, for any batch size and in both executors, and differs between samples.

The noise, with mix the 32-bit integer hash "lowbias32" (x ^= x >> 16; x *= 0x7feb352d;
x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16; arithmetic modulo 2^32):
key = mix(mix(seed) ^ sample number); row(y) = mix(mix(y + 0x9e3779b9) ^ key);
col_i(x, c) = mix(mix(2 (3 x + c) + i) ^ key); u_i = (top 24 bits of
mix(row(y) ^ col_i(x, c)) + 0.5) / 2^24 for i = 0, 1; z = sqrt(-2 ln u_0) cos(2 pi u_1)
in float32 (Box-Muller). Hashing rows and columns first leaves one hash per uniform
per pixel (DALI runs every arithmetic step as its own operator). Every noise level of
a sample scales the same z (the levels differ only in sigma), so the DALI graph
computes the field once for all of them. The integer part is exact in both
executors; float32 log and cos may differ in the last bit, which can move a rounding
by one grey level on a few pixels in a million.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from commfor_fast.errors import UserError
from commfor_fast.pipelines.resampling import resize_renormalised

FLAG = "--perturb"
CLEAN = "clean"
MAX_SIDE = 1 << 16  # longest image side the DALI noise handles (the coordinate ramps' length)
RESIZE_DECIMALS = 4
_RESIZE_SCALE = 10 ** RESIZE_DECIMALS
_MIX = (16, 0x7FEB352D, 15, 0x846CA68B, 16)  # lowbias32: shift, multiply, shift, multiply, shift
_ROW_OFFSET = 0x9E3779B9  # keeps the row hashes apart from the column hashes


@dataclass(frozen=True)
class Level:
    """One evaluated condition: `clean`, or a family at one level (`jpeg=30`)."""

    family: str
    value: float | None = None

    @property
    def label(self) -> str:
        return CLEAN if self.family == CLEAN else f"{self.family}={self.value:g}"

    @property
    def slug(self) -> str:
        """The label as a file-name part: `jpeg_30`, `resize_0.5`."""
        return CLEAN if self.family == CLEAN else f"{self.family}_{self.value:g}"


CLEAN_LEVEL = Level(CLEAN)


# ---------------------------------------------------------------- the noise field


def _mix(x: np.ndarray) -> np.ndarray:
    """lowbias32 over a uint32 array (multiplication wraps modulo 2^32)."""
    x = x ^ (x >> np.uint32(_MIX[0]))
    x = x * np.uint32(_MIX[1])
    x = x ^ (x >> np.uint32(_MIX[2]))
    x = x * np.uint32(_MIX[3])
    return x ^ (x >> np.uint32(_MIX[4]))


def _seed_mixed(seed: int) -> int:
    return int(_mix(np.array([seed % 2**32], np.uint32))[0])


def noise_key(seed: int, sample_number: int) -> int:
    """The per-sample key of the noise field: mix(mix(seed) ^ sample number), uint32."""
    return int(_mix(np.array([_seed_mixed(seed) ^ sample_number % 2**32], np.uint32))[0])


def _uniforms(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(top 24 bits of mix(row ^ col) + 0.5) / 2^24: float32 in (0, 1), broadcast over rows x cols."""
    bits = _mix(rows ^ cols) >> np.uint32(8)
    return (bits.astype(np.float32) + np.float32(0.5)) * np.float32(2.0 ** -24)


def standard_normal_field(key: int, height: int, width: int) -> np.ndarray:
    """The (height, width, 3) float32 field z of one sample (see the module docstring)."""
    key_u32 = np.uint32(key)
    rows = _mix(_mix(np.arange(height, dtype=np.uint32) + np.uint32(_ROW_OFFSET)) ^ key_u32).reshape(-1, 1, 1)
    cells = 3 * np.arange(width, dtype=np.uint32).reshape(1, -1, 1) + np.arange(3, dtype=np.uint32)
    u = [_uniforms(rows, _mix(_mix(2 * cells + np.uint32(i)) ^ key_u32)) for i in (0, 1)]
    return np.sqrt(np.float32(-2.0) * np.log(u[0])) * np.cos(np.float32(2 * math.pi) * u[1])


def _round_clip(values: np.ndarray) -> np.ndarray:
    """Nearest integer, halves away from zero (as DALI's saturating cast), clipped to uint8."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------- reference versions


def _jpeg_reference(arr: np.ndarray, quality: float, sample_number: int, seed: int) -> np.ndarray:
    """PIL's encoder as the RSA's JPEG op calls it (its default subsampling is 4:2:0)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def blur_radius(sigma: float) -> int:
    """Kernel radius ceil(3 sigma): the kernel has 2 * radius + 1 taps."""
    return math.ceil(3 * sigma)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D kernel, exp(-x^2 / (2 sigma^2)) for x in [-r, r], float64."""
    x = np.arange(-blur_radius(sigma), blur_radius(sigma) + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def _blur_reference(arr: np.ndarray, sigma: float, sample_number: int, seed: int) -> np.ndarray:
    kernel, r = gaussian_kernel(sigma), blur_radius(sigma)
    out = arr.astype(np.float64)
    for axis in (0, 1):  # separable: rows, then columns
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect")  # reflect-101: the edge pixel is not repeated
        n = out.shape[axis]
        window = [slice(None)] * 3
        out = np.zeros_like(out)
        for i, k in enumerate(kernel):
            window[axis] = slice(i, i + n)
            out += k * padded[tuple(window)]
    return _round_clip(out)


def downscaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(max(1, round(f H)), max(1, round(f W))), halves up, in exact integer arithmetic."""
    m = round(factor * _RESIZE_SCALE)
    return max(1, (height * m + _RESIZE_SCALE // 2) // _RESIZE_SCALE), \
        max(1, (width * m + _RESIZE_SCALE // 2) // _RESIZE_SCALE)


def _resize_reference(arr: np.ndarray, factor: float, sample_number: int, seed: int) -> np.ndarray:
    height, width = arr.shape[:2]
    down_h, down_w = downscaled_size(height, width, factor)
    small = Image.fromarray(arr).resize((down_w, down_h), Image.BILINEAR)  # PIL antialiases when shrinking
    return np.asarray(small.resize((width, height), Image.BILINEAR))


def _noise_reference(arr: np.ndarray, sigma: float, sample_number: int, seed: int) -> np.ndarray:
    z = standard_normal_field(noise_key(seed, sample_number), *arr.shape[:2])
    return _round_clip(arr.astype(np.float32) + np.float32(sigma) * z)


# ----------------------------------------------------------------- DALI versions


@dataclass(frozen=True)
class GraphInputs:
    """What a DALI implementation may read besides the image: the batch's `.ids`
    records (label, generator, sample number, height, width), the device, the seed,
    and a cache of nodes that several levels of one graph share (the noise field)."""

    ids: Any
    device: str
    seed: int
    shared: dict[str, Any] = field(default_factory=dict)


def _u32(value: int) -> Any:
    from nvidia.dali import types

    return types.Constant(np.uint32(value), dtype=types.UINT32)


def _dali_mix(x: Any) -> Any:
    """lowbias32 on a DALI uint32 node (one operator per arithmetic step: DALI does not fuse them)."""
    x = x ^ (x >> _u32(_MIX[0]))
    x = x * _u32(_MIX[1])
    x = x ^ (x >> _u32(_MIX[2]))
    x = x * _u32(_MIX[3])
    return x ^ (x >> _u32(_MIX[4]))


def _on(node: Any, device: str) -> Any:
    return node.gpu() if device == "gpu" else node


def _jpeg_dali(img: Any, quality: float, inputs: GraphInputs) -> Any:
    from nvidia.dali import fn

    return fn.jpeg_compression_distortion(img, quality=int(quality))


def _blur_dali(img: Any, sigma: float, inputs: GraphInputs) -> Any:
    from nvidia.dali import fn

    return fn.gaussian_blur(img, sigma=float(sigma), window_size=2 * blur_radius(sigma) + 1)


def _resize_dali(img: Any, factor: float, inputs: GraphInputs) -> Any:
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    height, width = inputs.ids[3], inputs.ids[4]
    m, half, scale = round(factor * _RESIZE_SCALE), _RESIZE_SCALE // 2, _RESIZE_SCALE
    down_h = dmath.max((height * m + half) // scale, 1)
    down_w = dmath.max((width * m + half) // scale, 1)
    small = resize_renormalised(img, fn.cast(fn.stack(down_h, down_w), dtype=types.FLOAT))  # PIL's borders
    return fn.resize(small, size=fn.cast(fn.stack(height, width), dtype=types.FLOAT),
                     interp_type=types.INTERP_LINEAR, antialias=True)


def _noise_field_dali(inputs: GraphInputs) -> Any:
    """The float32 field z of every sample of the batch (`standard_normal_field`)."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    device = inputs.device
    ids = fn.cast(inputs.ids, dtype=types.UINT32)
    key = _on(_dali_mix(_u32(_seed_mixed(inputs.seed)) ^ ids[2]), device)  # noise_key, per sample
    ramp = types.Constant(np.arange(MAX_SIDE, dtype=np.uint32), device=device)
    height, width = fn.cast(inputs.ids[3], dtype=types.INT32), fn.cast(inputs.ids[4], dtype=types.INT32)
    start = types.Constant(np.zeros(1, np.int32), device="cpu")  # a GPU anchor would cost a host sync
    ys = fn.expand_dims(fn.slice(ramp, start, fn.stack(height), axes=[0]), axes=[1, 2])  # (H, 1, 1)
    xs = fn.expand_dims(fn.slice(ramp, start, fn.stack(width), axes=[0]), axes=[0, 2])  # (1, W, 1)
    rows = _dali_mix(_dali_mix(ys + _u32(_ROW_OFFSET)) ^ key)
    cells = xs * _u32(3) + types.Constant(np.arange(3, dtype=np.uint32).reshape(1, 1, 3), device=device)
    u = []
    for i in (0, 1):
        cols = _dali_mix(_dali_mix(cells * _u32(2) + _u32(i)) ^ key)
        bits = fn.cast(_dali_mix(rows ^ cols) >> _u32(8), dtype=types.FLOAT)
        u.append((bits + np.float32(0.5)) * np.float32(2.0 ** -24))
    return dmath.sqrt(np.float32(-2.0) * dmath.log(u[0])) * dmath.cos(np.float32(2 * math.pi) * u[1])


def _noise_dali(img: Any, sigma: float, inputs: GraphInputs) -> Any:
    from nvidia.dali import fn, types

    if "noise" not in inputs.shared:  # one field per graph: every noise level scales the same z
        inputs.shared["noise"] = (_noise_field_dali(inputs), fn.cast(img, dtype=types.FLOAT))
    z, pixels = inputs.shared["noise"]
    return fn.cast(pixels + np.float32(sigma) * z, dtype=types.UINT8)


# ------------------------------------------------------------------- the table


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _quality(text: str) -> float:
    if not re.fullmatch(r"\s*\d+\s*", text) or not 1 <= int(text) <= 100:
        raise ValueError(text)
    return int(text)


def _positive(upper: float) -> Callable[[str], float]:
    """A parser of levels in [SMALLEST_LEVEL, upper]: smaller ones are degenerate (a blur
    sigma of 1e-200 squares to 0 and turns the image black, and none of them changes a
    pixel)."""
    def check(text: str) -> float:
        value = _number(text)
        if not SMALLEST_LEVEL <= value <= upper:
            raise ValueError(text)
        return value

    return check


def _factor(text: str) -> float:
    value = _number(text)
    if not 0 < value <= 1 or abs(value * _RESIZE_SCALE - round(value * _RESIZE_SCALE)) > 1e-9 * _RESIZE_SCALE:
        raise ValueError(text)
    return round(value * _RESIZE_SCALE) / _RESIZE_SCALE


SMALLEST_LEVEL = 0.01  # the least blur or noise sigma accepted
BLUR_MAX_SIGMA = 16.0
NOISE_MAX_SIGMA = 255.0
ReferenceFn = Callable[[np.ndarray, float, int, int], np.ndarray]
DaliFn = Callable[[Any, float, GraphInputs], Any]


@dataclass(frozen=True)
class Family:
    """One perturbation family: its level parser, definition and two implementations."""

    parameter: str  # what a level is, for tables and axes
    allowed: str  # the levels accepted, for error messages
    example: str  # a good flag value
    parse: Callable[[str], float]  # one level from text; ValueError when not allowed
    harsher_when: str  # "lower" or "higher": the order of levels from mild to harsh
    definition: str  # the exact definition (README, report.json)
    reference: ReferenceFn  # (HWC uint8, level, sample number, seed) -> HWC uint8
    dali: DaliFn  # (DALI uint8 HWC node, level, graph inputs) -> node


FAMILIES: dict[str, Family] = {
    "jpeg": Family(
        "JPEG quality q", "whole numbers from 1 to 100", "jpeg=95,75,50,30", _quality, "lower",
        "encode as JPEG at quality q with 4:2:0 chroma subsampling and decode (reference: PIL's encoder, as the "
        "RSA's JPEG op; DALI: jpeg_compression_distortion, libjpeg on the CPU, DALI's CUDA codec on the GPU)",
        _jpeg_reference, _jpeg_dali),
    "blur": Family(
        "Gaussian blur sigma (px)", f"numbers above 0 (from {SMALLEST_LEVEL:g}), at most {BLUR_MAX_SIGMA:g} (0 is the clean level)",
        "blur=1,2,4", _positive(BLUR_MAX_SIGMA), "higher",
        "Gaussian blur with sigma s pixels: separable kernel exp(-x^2 / 2s^2), normalised, 2 * ceil(3s) + 1 taps, "
        "borders mirrored without repeating the edge pixel (reflect-101), rounded to nearest",
        _blur_reference, _blur_dali),
    "resize": Family(
        "downscale factor f", f"numbers in (0, 1] with at most {RESIZE_DECIMALS} decimals", "resize=0.75,0.5",
        _factor, "lower",
        "downscale to (max(1, round(f H)), max(1, round(f W))) (halves up) with antialiased bilinear, then back up "
        "to H x W with bilinear",
        _resize_reference, _resize_dali),
    "noise": Family(
        "Gaussian noise sigma (grey levels)", f"numbers above 0 (from {SMALLEST_LEVEL:g}), at most {NOISE_MAX_SIGMA:g} (0 is the clean level)",
        "noise=5,10", _positive(NOISE_MAX_SIGMA), "higher",
        "add sigma * z per pixel and channel, z standard normal from a counter-based hash of (seed, sample number, "
        "pixel, channel) (identical on every rank and run), rounded to nearest (halves away from zero), clipped to "
        "[0, 255]",
        _noise_reference, _noise_dali),
}


def _families_hint() -> str:
    return "; ".join(f"{name}: {f.allowed}" for name, f in FAMILIES.items())


def parse_perturbations(specs: Sequence[str] | None) -> tuple[Level, ...]:
    """`--perturb FAMILY=L1,L2,...` flags -> the levels to evaluate, `clean` first, then
    each family's levels from mild to harsh, families in the order given.

    Every problem (no `=`, an unknown family, a level that is not a number or out of
    range, a family or level given twice) is one `UserError` naming the flag, the
    value, what is allowed and the fix.
    """
    levels: list[Level] = [CLEAN_LEVEL]
    seen: set[str] = set()
    for spec in specs or ():
        name, sep, values = spec.partition("=")
        name = name.strip().lower()
        if not sep:
            raise UserError(f"{FLAG} {spec!r}: write FAMILY=LEVEL[,LEVEL...], e.g. {FLAG} jpeg=95,75,50,30 "
                            f"(families: {', '.join(FAMILIES)})")
        if name == CLEAN:
            raise UserError(f"{FLAG} {spec!r}: clean is always evaluated; give only the perturbations "
                            f"({', '.join(FAMILIES)})")
        family = FAMILIES.get(name)
        if family is None:
            raise UserError(f"{FLAG} {spec!r}: unknown family {name!r}; use one of: {_families_hint()}")
        if name in seen:
            raise UserError(f"{FLAG} {spec!r}: the family {name} is given twice; put all its levels in one flag, "
                            f"e.g. {FLAG} {family.example}")
        seen.add(name)
        texts = [t.strip() for t in values.split(",")]
        parsed: list[float] = []
        for text in texts:
            try:
                parsed.append(family.parse(text))
            except ValueError:
                raise UserError(f"{FLAG} {spec!r}: {text!r} is not a {name} level; {name} levels are "
                                f"{family.allowed}, e.g. {FLAG} {family.example}") from None
        labels = [Level(name, value).label for value in parsed]  # names the report's rows and files
        if len(set(labels)) != len(labels):
            twice = next(label for label in labels if labels.count(label) > 1)
            raise UserError(f"{FLAG} {spec!r}: a level is given twice ({twice}: levels are told apart by 6 "
                            f"significant digits); list each {name} level once, e.g. {FLAG} {family.example}")
        harsh_last = sorted(parsed, reverse=family.harsher_when == "lower")
        levels += [Level(name, value) for value in harsh_last]
    return tuple(levels)


def check_sides(levels: Sequence[Level], resolutions: Sequence[str], preresize: int | None, loader: str) -> None:
    """Refuse `noise` levels on the DALI loader when an image (`WxH` from the manifest's
    resolutions, scaled to the stored size when pre-resized) has a side longer than the
    noise field's coordinates reach (`MAX_SIDE`)."""
    if loader != "dali" or not any(level.family == "noise" for level in levels):
        return
    for size in resolutions:
        short, long = sorted(int(side) for side in size.split("x"))
        if (long * preresize // max(short, 1) if preresize else long) > MAX_SIDE:
            raise UserError(f"{FLAG} noise: the data holds an image of {size} px, longer than the {MAX_SIDE} px "
                            f"the DALI loader's noise reaches; use --loader reference, or convert with --preresize")


def apply_reference(level: Level, arr: np.ndarray, sample_number: int, seed: int) -> np.ndarray:
    """`level` on one decoded image (HWC uint8 RGB) with the reference implementation."""
    if level.family == CLEAN:
        return arr
    return FAMILIES[level.family].reference(np.ascontiguousarray(arr), level.value, sample_number, seed)


def apply_dali(level: Level, img: Any, inputs: GraphInputs) -> Any:
    """`level` on a batch of decoded images in a DALI graph (uint8 HWC)."""
    if level.family == CLEAN:
        return img
    return FAMILIES[level.family].dali(img, level.value, inputs)
