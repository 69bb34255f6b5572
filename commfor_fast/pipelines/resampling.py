"""PIL's resampling where DALI's resize differs, built from DALI operators.

DALI's `resize` has no box filter, and when it shrinks with an antialiased filter it
repeats the border pixels under the part of the filter that falls outside the image,
where PIL drops that part and renormalises the weights. Both differences are large
on real photos (commfor_fast/bench/filters_bench.py measures them); the functions
here rebuild PIL's result from operators DALI runs on the CPU and the GPU. DALI is
imported inside them, so importing this module needs no DALI.
"""

from __future__ import annotations

from typing import Any


def box_by_nearest(images: Any, size: Any) -> Any:
    """PIL's box filter from DALI operators: per axis, the mean of two nearest-neighbour resizes.

    PIL's box filter gives output pixel j (centre c = (j + 1/2) S in input pixels, S =
    input / output size) the mean of the input pixels whose centres lie in
    (c - s, c + s], s = max(S, 1) / 2. While S < 2 that is one pixel or two neighbours,
    first a = floor(c - s + 1/2), last b = floor(c + s - 1/2): a nearest-neighbour
    resize reads pixel floor(roi_start + (j + 1/2) S), so the two are nearest-neighbour
    resizes with the region of interest shifted by -/+ (s - 1/2), and their mean,
    rounded half up in integers, is PIL's fixed-point result. PIL resizes horizontally,
    rounds to uint8, then vertically; so does this. A shift of 1/(4 x output size)
    keeps float32 rounding off the ties (centres exactly on a window edge), where PIL's
    double rounding decides. Factors below 1/2 (three or more pixels per window) are
    not covered.
    """
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, types

    shape = images.shape(dtype=types.FLOAT)
    height, width, out_h, out_w = shape[0], shape[1], size[0], size[1]

    def axis(img: Any, n_in: Any, n_out: Any, other: Any, horizontal: bool) -> Any:
        shift = (dmath.max(n_in / n_out, 1.0) - 1.0) * 0.5
        nudge = 0.25 / n_out
        ends = []
        for offset in (nudge - shift, nudge + shift):
            start, end = (fn.stack(0.0 * other, offset), fn.stack(other, n_in + offset)) if horizontal else \
                (fn.stack(offset, 0.0 * other), fn.stack(n_in + offset, other))
            out_size = fn.stack(other, n_out) if horizontal else fn.stack(n_out, other)
            ends.append(fn.cast(fn.resize(img, size=out_size, roi_start=start, roi_end=end, roi_relative=False,
                                          interp_type=types.INTERP_NN, antialias=False), dtype=types.INT32))
        return fn.cast((ends[0] + ends[1] + 1) // 2, dtype=types.UINT8)

    return axis(axis(images, width, out_w, height, True), height, out_h, out_w, False)


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
