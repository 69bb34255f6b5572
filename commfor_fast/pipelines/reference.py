"""The reference executor: SPEC sections 2 and 3 in plain PIL/torchvision.

It is the oracle of the parity tests and the baseline of the benchmarks, and it can
also feed training (`--loader reference`). Every random choice comes from a plan
(`pipelines.plan`), so the same plan can be replayed here and in DALI. Each step is
applied the way the original's torchvision transforms apply it to a PIL image.
"""

from __future__ import annotations

import io
from functools import singledispatch

import cv2
import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from commfor_fast.pipelines.ops import Affine, Crop, Erase, Flip, Interp, Jpeg, Pad, Resize, ResizedCrop, Step
from commfor_fast.pipelines.plan import Plan, eval_plan

PIL_FILTERS = {
    Interp.NEAREST: Image.NEAREST,
    Interp.BILINEAR: Image.BILINEAR,
    Interp.BICUBIC: Image.BICUBIC,
    Interp.LANCZOS: Image.LANCZOS,
    Interp.HAMMING: Image.HAMMING,
    Interp.BOX: Image.BOX,
}


@singledispatch
def apply_step(step: Step, img: Image.Image) -> Image.Image:
    raise TypeError(f"no reference implementation for {type(step).__name__}")


@apply_step.register
def _(step: Resize, img: Image.Image) -> Image.Image:
    return img.resize((step.width, step.height), PIL_FILTERS[step.interp])


@apply_step.register
def _(step: Crop, img: Image.Image) -> Image.Image:
    return img.crop((step.left, step.top, step.left + step.width, step.top + step.height))


@apply_step.register
def _(step: ResizedCrop, img: Image.Image) -> Image.Image:
    box = img.crop((step.left, step.top, step.left + step.width, step.top + step.height))
    return box.resize((step.out_width, step.out_height), PIL_FILTERS[step.interp])


@apply_step.register
def _(step: Flip, img: Image.Image) -> Image.Image:
    if not step.applied:
        return img
    return TF.hflip(img) if step.horizontal else TF.vflip(img)


@apply_step.register
def _(step: Affine, img: Image.Image) -> Image.Image:
    bilinear = InterpolationMode.BILINEAR
    if (step.translate_x, step.translate_y, step.shear_x, step.shear_y) == (0, 0, 0.0, 0.0):
        return TF.rotate(img, step.rotation, interpolation=bilinear, fill=0)
    return TF.affine(
        img,
        angle=-step.rotation,
        translate=[step.translate_x, step.translate_y],
        scale=1.0,
        shear=[step.shear_x, step.shear_y],
        interpolation=bilinear,
        fill=0,
    )


@apply_step.register
def _(step: Pad, img: Image.Image) -> Image.Image:
    padded = TF.pad(img, [step.left, step.top, step.right, step.bottom], fill=step.fill)
    return padded.resize((step.width, step.height), Image.BILINEAR)


@apply_step.register
def _(step: Erase, img: Image.Image) -> Image.Image:
    if not step.applied:
        return img
    arr = np.array(img)
    arr[step.top : step.top + step.height, step.left : step.left + step.width] = step.fill
    return Image.fromarray(arr)


@apply_step.register
def _(step: Jpeg, img: Image.Image) -> Image.Image:
    if step.codec == "cv2":
        ok, enc = cv2.imencode(".jpg", np.asarray(img)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, step.quality])
        return Image.fromarray(cv2.imdecode(enc, cv2.IMREAD_COLOR)[:, :, ::-1])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=step.quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def run_plan(img: Image.Image, plan: Plan) -> np.ndarray:
    """Apply every step of `plan` to an RGB image; HWC uint8 (before normalisation)."""
    for step in plan.steps():
        img = apply_step(step, img)
    return np.asarray(img)


def eval_image(img: Image.Image, crop: int, preresized: bool = False) -> np.ndarray:
    """Evaluation preprocessing up to normalisation: resize shorter side, centre crop.

    `img` is RGB as `imageio.decode_rgb` returns it; with `preresized` the first resize
    was already done by the converter. Returns HWC uint8 of shape (crop, crop, 3).
    """
    return run_plan(img, eval_plan(img.height, img.width, crop, preresized))
