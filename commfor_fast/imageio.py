"""Image decoding, checking and the deterministic first resize, shared by every stage.

There is one definition of "what the reference sees": PIL opens the bytes and converts
to RGB (EXIF orientation ignored, alpha dropped without compositing, palettes
expanded), as the original Community Forensics pipeline does (SPEC section 2). The
converter uses this module to check every image and to pre-resize; the reference
executor and `predict` use it to decode; the DALI pipelines are tested against it.

DALI's decoder was measured to give the same pixels as PIL for JPEG, PNG, WebP, BMP
and TIFF in the modes listed in `VERBATIM_MODES` (8-bit). Anything else PIL can read
(GIF, 16-bit, CMYK, multi-frame files) is stored as a lossless PNG of the RGB image
the reference would see, so a shard never holds bytes that DALI would decode
differently.

Whatever goes wrong while PIL opens or decodes bytes becomes `BadImage` with the
reason (`as_bad_image`), in every caller: a damaged image is a reject, never a crash.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from commfor_fast.shards import RAW_HEADER_BYTES

# File endings the original accepts for local folders (SPEC section 1), matched
# case-insensitively here; `.tif` is accepted as well since it is the same format.
SOURCE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tiff", ".tif", ".webp", ".gif")

# PIL format name -> the name of a verbatim stored form (the manifest's `stored` counts).
VERBATIM_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}
VERBATIM_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})

# PIL's own decompression-bomb warning threshold (about 89.5 megapixels).
DEFAULT_MAX_PIXELS = 89_478_485

# Resize target of the first (deterministic) preprocessing step, by crop size (SPEC 2).
RESIZE_FOR_CROP = {384: 440, 224: 256}

# How a pre-resized image member starts: PPM's binary RGB magic, then the comment that
# pads its header to RAW_HEADER_BYTES.
RAW_MAGIC = b"P6\n#"


class BadImage(ValueError):
    """The bytes are not an image the pipelines can use; the message is the reason."""


@dataclass(frozen=True)
class ImageInfo:
    """What checking an image found out about it."""

    format: str  # PIL's format name, e.g. "JPEG"
    mode: str  # PIL's mode before conversion, e.g. "RGBA"
    width: int
    height: int
    normalise_reason: str | None  # why it must be re-encoded as PNG; None if stored verbatim

    @property
    def stored_form(self) -> str:
        """How the image is stored when not pre-resized: its format ("png" when it gets normalised)."""
        return "png" if self.normalise_reason else VERBATIM_FORMATS[self.format]


def _png_bit_depth(data: bytes) -> int:
    # IHDR is always the first chunk: 8-byte signature, 8-byte chunk header, then
    # width (4), height (4), bit depth (1).
    return data[24] if len(data) > 24 else 8


def normalise_reason(img: Image.Image, data: bytes) -> str | None:
    """Why an opened image must be stored as PNG rather than verbatim; None if not."""
    fmt = img.format or "unknown"
    if fmt not in VERBATIM_FORMATS:
        return f"{fmt} is not decodable by DALI"
    if getattr(img, "n_frames", 1) > 1:
        return f"multi-frame {fmt} (first frame kept)"
    if img.mode not in VERBATIM_MODES:
        return f"{fmt} mode {img.mode} decodes differently in DALI"
    if fmt == "PNG" and _png_bit_depth(data) == 16:
        return "16-bit PNG decodes differently in DALI"
    return None


@contextmanager
def as_bad_image() -> Iterator[None]:
    """Turn any failure of opening or decoding image bytes into `BadImage`.

    Damaged files make PIL raise far more than `OSError`: `SyntaxError`, `EOFError`,
    `ValueError`, `struct.error`, and even `TypeError("Missing dimensions")` from a
    TIFF whose later frame has no size. Whatever the type, it is the image's fault, so
    it becomes a reject with a reason, never a traceback in a conversion worker or in
    `predict`. `MemoryError` is left alone: it is the machine's problem (rerun with
    fewer workers), and rejecting the image for it would lose data silently.
    """
    try:
        yield
    except (BadImage, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(f"decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise BadImage("cannot decode: not a recognised image format (damaged header or not an image)") from None
    except Exception as exc:  # noqa: BLE001 (deliberate: whatever PIL raises, the image is at fault)
        raise BadImage(f"cannot decode: {str(exc) or type(exc).__name__}") from None


@contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Let `max_pixels` alone decide what is a decompression bomb inside the block.

    PIL refuses images over twice its global `Image.MAX_IMAGE_PIXELS` (about 179 MP)
    while opening them, before our own check could accept them, so a larger
    `--max-pixels` would have no effect. The global limit is lifted only inside the
    block and restored after it; callers check `width * height` against `max_pixels`
    themselves. This changes a process-wide setting: use it in single-threaded
    checking code (conversion workers), not around decoding in threads.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # no check at all: neither PIL's error nor its warning
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Raise `BadImage` for an image over `max_pixels` (a decompression bomb)."""
    if width * height > max_pixels:
        raise BadImage(f"decompression bomb: {width}x{height} = {width * height} pixels "
                       f"exceeds the limit of {max_pixels}")


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[ImageInfo, Image.Image]:
    """Fully decode `data` and say how it must be stored.

    Returns the info and the decoded RGB image (as the reference sees it). Raises
    `BadImage` for empty, truncated or undecodable data and for images over
    `max_pixels` (decompression bombs, judged by `max_pixels` alone, not by PIL's
    global limit), so that no such image reaches a shard.
    """
    if not data:
        raise BadImage("empty file")
    with as_bad_image(), pixel_limit(max_pixels):
        img = Image.open(io.BytesIO(data))
        check_pixels(*img.size, max_pixels)
        img.load()
        info = ImageInfo(
            format=img.format or "unknown",
            mode=img.mode,
            width=img.width,
            height=img.height,
            normalise_reason=normalise_reason(img, data),
        )
        rgb = img.convert("RGB")
    return info, rgb


def decode_rgb(data: bytes) -> Image.Image:
    """Decode like the reference: PIL open + `.convert("RGB")` (no EXIF rotation).

    PIL's own decompression-bomb limit applies; any failure raises `BadImage`.
    """
    with as_bad_image():
        return Image.open(io.BytesIO(data)).convert("RGB")


def encode_png(img: Image.Image) -> bytes:
    """Lossless PNG of an RGB image (used for normalised images)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to `size`.

    The long side is `int(size * long / short)` (truncated), as torchvision's
    `Resize(size)` computes it.
    """
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resized_shapes(heights: np.ndarray, widths: np.ndarray, size: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    """`resized_shape` over arrays of sizes (int64 results)."""
    tall = widths <= heights
    long = (size * np.where(tall, heights, widths) / np.where(tall, widths, heights)).astype(np.int64)
    return np.where(tall, long, size), np.where(tall, size, long)


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size`: PIL bilinear (antialiased when shrinking)."""
    height, width = resized_shape(img.height, img.width, size)
    return img.resize((width, height), Image.BILINEAR)


def raw_header(height: int, width: int) -> bytes:
    """The binary PPM (P6) header of a height x width RGB image, padded with a comment
    line to `RAW_HEADER_BYTES`."""
    size = f"{width} {height}\n255\n".encode("ascii")
    return RAW_MAGIC + b" pre-resized pixels".ljust(RAW_HEADER_BYTES - len(RAW_MAGIC) - len(size) - 1) + b"\n" + size


def encode_raw(img: Image.Image) -> bytes:
    """HWC uint8 RGB pixels as a binary PPM with a fixed-size header: the pre-resized
    storage format. It decodes for free, and PIL (so `datasets`' Image column)
    and `numpy.frombuffer(data, offset=RAW_HEADER_BYTES)` both read it."""
    pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return raw_header(img.height, img.width) + pixels.tobytes()


def is_raw(data: bytes) -> bool:
    """Whether a stored image member holds pre-resized pixels: verbatim images never
    start as a PPM does (a PPM source is stored as PNG); damage past these two bytes is
    `decode_raw`'s to find."""
    return data[:2] == RAW_MAGIC[:2]


def decode_raw(data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of `encode_raw`; checks the header and that the byte count matches the shape."""
    expected = RAW_HEADER_BYTES + height * width * 3
    if len(data) != expected:
        raise BadImage(f"raw image has {len(data)} bytes, expected {expected} for {height}x{width}x3")
    if data[:RAW_HEADER_BYTES] != raw_header(height, width):
        raise BadImage(f"raw image header does not describe {height}x{width} RGB pixels")
    return np.frombuffer(data, dtype=np.uint8, offset=RAW_HEADER_BYTES).reshape(height, width, 3)
