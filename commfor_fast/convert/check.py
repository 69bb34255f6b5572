"""How each image is checked before it may enter a shard.

`--check full` (the default) decodes all of every image's compressed data, so that
whatever a decoder would refuse is rejected here. Images that must be decoded anyway
(`--preresize`, formats and modes that are normalised to PNG) and formats other than
PNG and JPEG go through PIL's full decode (`imageio.check_image`). The bulk of the
data, verbatim PNG and JPEG, is checked the same way but without the work that
cannot fail (`check_data`):
- PNG: every chunk's CRC and the final IEND chunk, then the whole zlib stream is
  inflated and must hold every row, each with a valid filter type. That is all that
  decoding checks (undoing the filters and expanding the pixels cannot fail), and the
  CRCs are more than PIL checks. Interlaced PNGs are decoded by PIL. Inflating with
  ISA-L rather than zlib makes this 1.7 times faster; without the `isal` package (a
  GPU machine's image may lack it) zlib inflates, after a one-line notice.
- JPEG: decoded by libjpeg at 1/8 scale (PIL's `draft`). The entropy-coded data is
  still decoded in full, which is where damage shows; only the inverse DCT and the
  colour conversion are cut short.
`tests/test_convert.py` checks on many damaged files that this rejects everything
PIL's full decode rejects. It costs about a quarter of PIL's full decode for
PNG and about 40 % of it for JPEG (steps table of `commfor_fast/bench/convert_bench.py`).

`--check fast` is for trusted sources: it parses the header (format, mode, size,
frames, bit depth, decompression bombs) and checks the file's structure without
decoding any data:
- PNG: every chunk's CRC and the final IEND chunk (PIL's `verify`), which catches
  truncated files and flipped bytes, but not a damaged compressed stream whose CRCs
  were recomputed;
- JPEG: walks the marker segments and the entropy-coded scans up to the end-of-image
  marker, which catches truncated files, but not garbage inside a scan.

`--dali-check` (either mode) also decodes every image stored verbatim with DALI's
CPU decoder (`pipelines.decode_check`) and rejects what it refuses. On the damage
tried here (bad CRCs, truncation, zero runs and flipped bits in JPEG scans) PIL and
DALI's CPU decoder agreed, and it costs about one more full decode, so it is off
by default.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import sys
import zlib
from collections.abc import Callable
from types import ModuleType

import numpy as np
from PIL import Image

from commfor_fast.imageio import BadImage, ImageInfo, as_bad_image, check_pixels, normalise_reason, pixel_limit

FAST_FORMATS = ("PNG", "JPEG")
# In a JPEG scan, 0xFF is followed by 0x00 (stuffing) or a restart marker; anything else is a marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_EOI, _SOS = 0xD9, 0xDA


def jpeg_is_complete(data: bytes) -> bool:
    """True when the marker segments and scans of a JPEG run up to its end-of-image marker."""
    pos = 2  # after the start-of-image marker
    while pos + 1 < len(data):
        if data[pos] != 0xFF:
            return False
        code = data[pos + 1]
        if code == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if code == _EOI:
            return True
        if code in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > len(data):
            return False
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > len(data):
            return False
        if code == _SOS:
            found = _NEXT_MARKER.search(data, end)
            if found is None:
                return False
            end = found.start()
        pos = end
    return False


def _checked(data: bytes, max_pixels: int, check: Callable[[Image.Image, bytes], bool]) -> ImageInfo | None:
    """Open `data` and, if it is a PNG/JPEG stored as it is, run `check` on it.

    Returns the image's info, or None when the image needs PIL's full decode instead
    (another format, an image to normalise, or `check` declines). Raises `BadImage`
    like `imageio.check_image` (the same exception mapping and `max_pixels` rule).
    """
    with as_bad_image(), pixel_limit(max_pixels):
        if not data:
            raise BadImage("empty file")
        img = Image.open(io.BytesIO(data))
        if img.format not in FAST_FORMATS or normalise_reason(img, data) is not None:
            return None
        check_pixels(*img.size, max_pixels)
        info = ImageInfo(format=img.format, mode=img.mode, width=img.width, height=img.height, normalise_reason=None)
        return info if check(img, data) else None


def _structure_intact(img: Image.Image, data: bytes) -> bool:
    if img.format == "PNG":
        img.verify()
    elif not jpeg_is_complete(data):
        raise BadImage("cannot decode: truncated JPEG (no end-of-image marker after the last scan)")
    return True


def check_structure(data: bytes, max_pixels: int) -> ImageInfo | None:
    """`--check fast`: the info of a verbatim PNG/JPEG checked without decoding; None when a
    full decode is needed. Raises `BadImage` for data that is certainly bad."""
    return _checked(data, max_pixels, _structure_intact)


@functools.cache
def _zlib_module() -> ModuleType:
    """ISA-L's zlib-compatible inflater (1.7x zlib's speed here), else zlib with a notice
    on stderr, once per process."""
    try:
        from isal import isal_zlib
    except ImportError:
        print("notice: the isal package is missing: the PNG check inflates with zlib (1.7x slower); "
              "pip install isal for full speed", file=sys.stderr, flush=True)
        return zlib
    return isal_zlib


# PNG colour type -> samples per pixel (grey, -, RGB, palette, grey+alpha, -, RGBA).
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_rows_complete(data: bytes, width: int, height: int) -> bool:
    """Inflate a PNG's image data and check it holds every row with a valid filter type.

    Returns False for interlaced images (their rows are laid out in seven passes; the
    caller decodes them fully). Raises `BadImage` (or the inflater's error) for bad data.
    """
    # IHDR is the first chunk: width, height, bit depth, colour type, compression, filter, interlace.
    bit_depth, colour_type, interlace = data[24], data[25], data[28]
    if interlace or colour_type not in _PNG_SAMPLES:
        return False
    row = (width * _PNG_SAMPLES[colour_type] * bit_depth + 7) // 8 + 1  # filter byte + samples
    expected = row * height
    inflate = _zlib_module().decompressobj()
    rows = bytearray()
    pos = 8  # after the signature
    while pos + 8 <= len(data) and len(rows) < expected:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            rows += inflate.decompress(data[pos + 8 : pos + 8 + length], expected - len(rows))
        elif kind == b"IEND":
            break
        pos += 12 + length
    if len(rows) < expected:
        raise BadImage(f"cannot decode: truncated PNG data ({len(rows) // row} of {height} rows)")
    if np.frombuffer(rows, np.uint8).reshape(height, row)[:, 0].max() > 4:
        raise BadImage("cannot decode: PNG row with an unknown filter type")
    return True


def _data_decodes(img: Image.Image, data: bytes) -> bool:
    if img.format == "PNG":
        img.verify()
        return _png_rows_complete(data, img.width, img.height)
    img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))  # libjpeg's 1/8 DCT scaling
    img.load()
    return True


def check_data(data: bytes, max_pixels: int) -> ImageInfo | None:
    """`--check full` for a verbatim PNG/JPEG: all compressed data decoded, see the module
    docstring. Returns None when the image needs PIL's full decode instead. Raises
    `BadImage` for what a full decode would reject."""
    return _checked(data, max_pixels, _data_decodes)
