"""The reference executor: SPEC sections 2 and 3 in plain PIL/torchvision.

It is the oracle of the parity tests and the baseline of the benchmarks, and it can
also feed training (`--loader reference`). Every random choice comes from a plan
(`pipelines.plan`), so the same plan can be replayed here and in DALI.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from commfor_fast.imageio import resize_shorter
from commfor_fast.pipelines.preprocess import center_crop_offsets, resize_size


def eval_image(img: Image.Image, crop: int, preresized: bool = False) -> np.ndarray:
    """Evaluation preprocessing up to normalisation: resize shorter side, centre crop.

    `img` is RGB as `imageio.decode_rgb` returns it; with `preresized` the first resize
    was already done by the converter. Returns HWC uint8 of shape (crop, crop, 3).
    """
    if not preresized:
        img = resize_shorter(img, resize_size(crop))
    top, left = center_crop_offsets(img.height, img.width, crop)
    return np.asarray(img.crop((left, top, left + crop, top + crop)))
