"""The deterministic parts of preprocessing (SPEC section 2), shared by both executors.

Sizes, centre-crop offsets and ImageNet normalisation constants are computed here once,
on the host, so the DALI graph and the PIL reference cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import torch

from commfor_fast.errors import UserError
from commfor_fast.imageio import RESIZE_FOR_CROP

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZES = tuple(RESIZE_FOR_CROP)


def resize_size(crop: int) -> int:
    """Shorter side of the first resize for a crop size (384 -> 440, 224 -> 256)."""
    if crop not in RESIZE_FOR_CROP:
        raise UserError(f"--input-size {crop}: must be one of {', '.join(map(str, INPUT_SIZES))}")
    return RESIZE_FOR_CROP[crop]


def check_preresize(preresize: int | None, crop: int) -> None:
    """Pre-resized shards only fit the input size they were made for.

    `crop` is the model's input size: train's --input-size, or for eval the size
    stored in the checkpoint or the Hub model's config (eval has no such flag).
    """
    if preresize is not None and preresize != resize_size(crop):
        fits = [size for size, short in RESIZE_FOR_CROP.items() if short == preresize]
        raise UserError(
            f"these shards were pre-resized to a shorter side of {preresize}, but the model's input size {crop} "
            f"(train: --input-size; eval: the size of the --ckpt / --hf-model) needs {resize_size(crop)}; "
            f"convert again with --preresize {resize_size(crop)} (or without --preresize)"
            + (f", or use a model of input size {fits[0]}" if fits else "")
        )


def center_crop_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop: `int(round((H - crop) / 2))` (round half to even)."""
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


# (x / 255 - mean) / std for every uint8 value x, per channel: a lookup is exact to
# float32 rounding and about as fast as a copy, with no torch threads involved.
_NORMALISE_LUT = (
    np.arange(256, dtype=np.float64)[None, :] / 255.0 - np.array(IMAGENET_MEAN)[:, None]
) / np.array(IMAGENET_STD)[:, None]
_NORMALISE_LUT = _NORMALISE_LUT.astype(np.float32)


def normalise(hwc: np.ndarray) -> torch.Tensor:
    """uint8 HWC RGB -> float32 CHW, scaled to [0, 1] then ImageNet-normalised."""
    return torch.from_numpy(np.stack([_NORMALISE_LUT[c][hwc[..., c]] for c in range(3)]))

