"""PIL's resampling where DALI's resize differs, built from DALI operators.

DALI's `resize` has no box filter, and when it shrinks with an antialiased filter it
repeats the border pixels under the part of the filter that falls outside the image,
where PIL drops that part and renormalises the weights. Both differences are large
on real photos (commfor_fast/bench/filters_bench.py measures them); the functions
here rebuild PIL's result from operators DALI runs on the CPU and the GPU. DALI is
imported inside them, so importing this module needs no DALI: the host side
(`slots.py`) computes the box filter's regions of interest here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np


# `box_regions`' columns: per pass, the regions of interest of its two nearest-neighbour
# resizes as (y, x) pairs, then (horizontal pass only) its output size.
BOX_REGION_COLUMNS = 18
_H_PASS, _V_PASS = slice(0, 10), slice(10, 18)


def box_regions(in_h: np.ndarray, in_w: np.ndarray, out_h: np.ndarray, out_w: np.ndarray) -> np.ndarray:
    """The arguments of `box_from_regions` for resizing (in_h, in_w) images to (out_h,
    out_w): float32 (n, BOX_REGION_COLUMNS), computed on the host so the graph spends
    no operators on them.

    PIL's box filter gives output pixel j (centre c = (j + 1/2) S in input pixels, S =
    input / output size) the mean of the input pixels whose centres lie in
    (c - s, c + s], s = max(S, 1) / 2. While S < 2 that is one pixel or two neighbours,
    first a = floor(c - s + 1/2), last b = floor(c + s - 1/2): a nearest-neighbour
    resize reads pixel floor(roi_start + (j + 1/2) S), so the two are nearest-neighbour
    resizes with the region of interest shifted by -/+ (s - 1/2). A shift of
    1/(4 x output size) keeps float32 rounding off the ties (centres exactly on a
    window edge), where PIL's double rounding decides. Factors below 1/2 (three or more
    pixels per window) are not covered: `covers_box` says where these regions apply.
    Layout per row: horizontal pass: start and end of the first resize, of the second,
    output size (in_h, out_w); vertical pass: start and end of the first, of the second.
    """
    in_h, in_w, out_h, out_w = (np.atleast_1d(np.asarray(v, np.float64)) for v in (in_h, in_w, out_h, out_w))
    zero = np.zeros_like(in_h)

    def ends(n_in: np.ndarray, n_out: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        shift, nudge = (np.maximum(n_in / n_out, 1.0) - 1.0) * 0.5, 0.25 / n_out
        return [(nudge - shift, n_in + nudge - shift), (nudge + shift, n_in + nudge + shift)]

    (xa0, xa1), (xb0, xb1) = ends(in_w, out_w)
    (ya0, ya1), (yb0, yb1) = ends(in_h, out_h)
    columns = [zero, xa0, in_h, xa1, zero, xb0, in_h, xb1, in_h, out_w,
               ya0, zero, ya1, out_w, yb0, zero, yb1, out_w]
    return np.stack(columns, 1).astype(np.float32)


def covers_box(in_h: np.ndarray, in_w: np.ndarray, out_h: np.ndarray, out_w: np.ndarray) -> np.ndarray:
    """Where `box_regions` rebuild PIL's box filter: every window holds at most two pixels."""
    return (np.asarray(in_h) < 2 * np.asarray(out_h)) & (np.asarray(in_w) < 2 * np.asarray(out_w))


def box_from_regions(images: Any, regions: Any, size: Any, **resize_kwargs: Any) -> Any:
    """PIL's box filter from DALI operators, `box_regions` given: per axis the mean of two
    nearest-neighbour resizes, rounded half up, which is PIL's fixed-point result for
    a mean of one or two pixels. PIL resizes horizontally, rounds to uint8, then
    vertically; so does this (in float32, exact for these integers). `regions` is a
    float32 (BOX_REGION_COLUMNS,) tensor per sample, `size` the output (h, w);
    `resize_kwargs` go to every resize (the executor's `resize_kwargs`). Four resizes,
    two arithmetic operators, one cast and nine slices of `regions`."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    def mean_of_pair(img: Any, cols: slice, out_size: Any) -> Any:
        a0, a1, b0, b1 = (regions[cols.start + 2 * k: cols.start + 2 * k + 2] for k in range(4))
        pair = [fn.resize(img, size=out_size, roi_start=lo, roi_end=hi, roi_relative=False,
                          interp_type=types.INTERP_NN, antialias=False, dtype=types.FLOAT, **resize_kwargs)
                for lo, hi in ((a0, a1), (b0, b1))]
        return dmath.floor((pair[0] + pair[1]) * 0.5 + 0.5)

    across = mean_of_pair(images, _H_PASS, regions[_H_PASS.start + 8: _H_PASS.stop])
    return fn.cast(mean_of_pair(across, _V_PASS, size), dtype=types.UINT8)


def resize_renormalised(img: Any, down_size: Any) -> Any:
    """Antialiased bilinear downscale that renormalises the filter at the borders, as PIL
    does (DALI clamps there: it repeats the border pixels under the part of the filter
    outside the image): the image and a plane of ones, both padded with zeros by the
    filter's reach, are resized over the original extent, and divided."""
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    shape = img.shape(dtype=types.FLOAT)[0:2]
    reach = fn.cast(shape / down_size + 2.0, dtype=types.INT32)  # the triangle's radius (in / out), and a margin
    pad_start, pad_shape = reach * -1, fn.cast(shape, dtype=types.INT32) + 2 * reach

    def padded(x: Any) -> Any:
        return fn.slice(x, start=pad_start, shape=pad_shape, axes=[0, 1], out_of_bounds_policy="pad", fill_values=0.0)

    pixels = fn.cast(img, dtype=types.FLOAT)
    roi = fn.cast(reach, dtype=types.FLOAT)
    kwargs = {"size": down_size, "roi_start": roi, "roi_end": roi + shape, "roi_relative": False,
              "interp_type": types.INTERP_LINEAR, "antialias": True, "dtype": types.FLOAT}
    value, weight = fn.resize(padded(pixels), **kwargs), fn.resize(padded(pixels * 0.0 + 1.0), **kwargs)
    return fn.cast(dmath.clamp(dmath.floor(value / weight + 0.5), 0.0, 255.0), dtype=types.UINT8)
