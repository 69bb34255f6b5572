"""Benchmark data: 1024-px demo images as PNG and JPEG folders, converted three ways.

The images come from the demo's renderer (camera-like scenes with generator traces),
so codecs see realistic content, not noise. Shards: PNG verbatim, JPEG verbatim, and
PNG pre-resized to a shorter side of 440 (PPM pixels) for 384 crops.
"""

from __future__ import annotations

from pathlib import Path

import torch

from commfor_fast.bench.common import say
from commfor_fast.demo import synth
from commfor_fast.errors import UserError
from commfor_fast.progress import Progress
from commfor_fast.shards import Manifest

SIZE = 1024
TINY_SIZE, TINY_IMAGES = 480, 16  # `tiny`: the smallest set every benchmark still runs on (384 crops)


def write_sources(root: Path, n_images: int, seed: int = 0, size: int = SIZE) -> dict[str, Path]:
    """n_images per format (half real, half fake) under root/{png,jpeg}/<source>/<label>/."""
    roots = {"PNG": root / "png", "JPEG": root / "jpeg"}
    if all((r / "done").exists() for r in roots.values()):
        return {k.lower(): v for k, v in roots.items()}
    sources = [synth.REAL_SOURCES[0], synth.GENERATORS[0]]
    with Progress(n_images, f"bench: render {size}-px images") as progress:
        for i in range(n_images):
            src = sources[i % 2]
            rng = synth.np.random.default_rng([seed, i])
            image = synth.render_image(src, rng, (size, size))
            for fmt, folder in roots.items():
                label = "fake" if src.label else "real"
                path = folder / src.name.replace("/", "-") / label / f"{i:05d}.{fmt.lower()}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(synth.encode_image(image, fmt, quality=95))
            progress.update()
    for r in roots.values():
        (r / "done").write_text("")
    return {k.lower(): v for k, v in roots.items()}


def converted_sources(work: Path, n_images: int, fmt: str, preresize: int | None, size: int = SIZE) -> Path:
    """The convert output of `n_images` benchmark images of `size` px in format `fmt`
    ("png" or "jpeg"), verbatim or pre-resized; converted on first use (and after a
    change of the shard format), kept in `work`."""
    from commfor_fast.convert.run import convert
    from commfor_fast.convert.settings import ConvertSettings

    sources = write_sources(work / f"sources-{n_images}-{size}", n_images, size=size)
    label = f"{fmt}-{size}" + (" preresized" if preresize else "")
    out = work / f"shards-{n_images}-{label.replace(' ', '-')}"
    try:
        Manifest.load(out)
    except UserError:  # not converted yet, or in an older shard format: (again) from scratch
        say(f"converting the {label} benchmark shards")
        convert(ConvertSettings(folders=[sources[fmt]], out=out, val_frac=0.0, preresize=preresize, quiet=True,
                                shard_size="64MB", partition_size="256MB", overwrite=True))
    return out


def bench_shards(work: Path, quick: bool, tiny: bool = False) -> dict[str, Path]:
    """{label: convert output} for the pipeline, host and training benchmarks; `tiny`
    makes 16 images of 480 px (a dry run of the scripts, not a measurement)."""
    n_images, size = (48 if quick else 160), SIZE
    if torch.cuda.is_available():  # GPU runs train at batch 128: give them a few batches per epoch
        n_images = 256 if quick else 1024
    if tiny:
        n_images, size = TINY_IMAGES, TINY_SIZE
    return {f"{fmt}-{size}" + (" preresized" if preresize else ""): converted_sources(work, n_images, fmt, preresize,
                                                                                     size)
            for fmt, preresize in (("png", None), ("jpeg", None), ("png", 440))}
