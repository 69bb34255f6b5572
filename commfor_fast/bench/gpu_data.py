"""The GPU check's benchmark data, rendered in parallel and written only in the forms its
steps read: 1024-px JPEG shards (verbatim) and pre-resized shards (440-px pixels).

Each worker renders one demo image (`demo.synth`), writes it as a JPEG at full size and
as a 440-px PNG made from the same array; the converter then stores the JPEGs as they
are and the PNGs as raw pixels. There is no 1024-px PNG set and nothing is timed here:
the figures come from the steps that read the shards.
"""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from commfor_fast.demo import synth
from commfor_fast.imageio import resized_shape

PRERESIZE = 440  # the shorter side the pipelines resize to first for 384 crops


def _render(folder: Path, i: int, size: int) -> None:
    """Image i (real when even, fake when odd) into folder/{jpeg,small}/<source>/<label>/."""
    src = (synth.REAL_SOURCES[0], synth.GENERATORS[0])[i % 2]
    image = synth.render_image(src, np.random.default_rng([0, i]), (size, size))
    label = "fake" if src.label else "real"
    for kind, data in (("jpeg", synth.encode_image(image, "JPEG", quality=95)), ("small", _small_png(image))):
        path = folder / kind / src.name.replace("/", "-") / label / f"{i:05d}.{'jpg' if kind == 'jpeg' else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _small_png(image: np.ndarray) -> bytes:
    """The image at a shorter side of `PRERESIZE` (what pre-resized shards store), as PNG."""
    h, w = resized_shape(*image.shape[:2], PRERESIZE)
    buf = io.BytesIO()
    Image.fromarray(image).resize((w, h), Image.BILINEAR).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def build(work: Path, n_images: int, size: int, workers: int) -> dict[str, Path]:
    """{"jpeg": shards, "preresized": shards} for `n_images` images of `size` px under
    `work`, rendered and converted with `workers` processes; kept for a rerun."""
    from commfor_fast.convert.run import convert
    from commfor_fast.convert.settings import ConvertSettings

    sources = work / f"sources-{n_images}-{size}"
    if not (sources / "done").exists():
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_render, [sources] * n_images, range(n_images), [size] * n_images))
        (sources / "done").write_text("")
    shards = {}
    for label, folder, preresize in (("jpeg", "jpeg", None), ("preresized", "small", PRERESIZE)):
        out = work / f"shards-{n_images}-{size}-{label}"
        if not (out / "manifest.json").exists():
            convert(ConvertSettings(folders=[sources / folder], out=out, val_frac=0.0, preresize=preresize,
                                    workers=workers, quiet=True, shard_size="64MB", partition_size="256MB"))
        shards[label] = out
    return shards
