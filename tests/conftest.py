"""Shared fixtures: a tiny Hugging Face replica, a local folder tree, and converted shards made from them.

Everything is built locally (no network): small images (40-120 px) in the formats
and modes the real data has (PNG, JPEG, WebP, GIF, greyscale, RGBA, palette,
16-bit) plus corrupt ones (truncated, garbage, empty), so the converter's accept,
normalise and reject paths all run. Session-scoped fixtures are built once; tests
must not modify them (copy first).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.demo.hf_replica import write_hf_replica
from commfor_fast.shards import Manifest, ShardReader

HF_SPLITS = ("Systematic", "Manual", "PublicEval")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need a CUDA device: skipped (and said so) without one."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
LABEL_DIRS = {0: "real", 1: "fake"}


def picture(seed: int, width: int, height: int) -> np.ndarray:
    """A smooth random RGB picture (uint8 HWC): gradients plus a little noise, like a photo."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [rng.uniform(40, 200) + rng.uniform(-80, 80) * xs + rng.uniform(-80, 80) * ys for _ in range(3)]
    img = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def image_bytes(kind: str, seed: int) -> bytes:
    """Encoded test image of one kind: a format/mode combination, or a kind of damage."""
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(40, 121, size=2))
    rgb = Image.fromarray(picture(seed, width, height))
    if kind == "png":
        return encode(rgb, "PNG")
    if kind == "jpeg":
        return encode(rgb, "JPEG", quality=90)
    if kind == "webp":
        return encode(rgb, "WEBP", quality=85)
    if kind == "grey":
        return encode(rgb.convert("L"), "PNG")
    if kind == "rgba":
        alpha = Image.fromarray(picture(seed + 1, width, height)[..., 0])
        return encode(Image.merge("RGBA", (*rgb.split(), alpha)), "PNG")
    if kind == "palette":
        return encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG")
    if kind == "gif":
        frames = [rgb.convert("P", palette=Image.Palette.ADAPTIVE), rgb.rotate(90).convert("P")]
        buf = io.BytesIO()
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
        return buf.getvalue()
    if kind == "png16":
        grey16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        return encode(Image.fromarray(grey16), "PNG")
    if kind == "truncated":
        data = encode(rgb, "PNG")
        return data[: len(data) // 2]
    if kind == "damaged_tiff":  # frame 2's IFD has no size: PIL raises TypeError("Missing dimensions")
        data = bytearray(encode(rgb, "TIFF"))
        ifd = struct.unpack("<I", data[4:8])[0]
        next_ifd = ifd + 2 + 12 * struct.unpack("<H", data[ifd : ifd + 2])[0]
        data[next_ifd : next_ifd + 4] = struct.pack("<I", len(data))
        return bytes(data) + struct.pack("<HHHII", 1, 258, 3, 1, 8) + struct.pack("<I", 0)  # BitsPerSample only
    if kind == "garbage":
        return rng.integers(0, 256, size=300, dtype=np.uint8).tobytes()
    if kind == "empty":
        return b""
    raise ValueError(f"unknown test image kind {kind!r}")


BAD_KINDS = ("truncated", "garbage", "empty", "damaged_tiff")

# (generator, label, architecture, kinds) per split; kinds are cycled through.
HF_LAYOUT = {
    "Systematic": [
        ("stabilityai/sd-a", 1, "LatDiff", ("png", "png", "jpeg", "webp", "truncated", "png", "rgba", "png")),
        ("runwayml/sd-b", 1, "LatDiff", ("png", "palette", "grey", "png", "garbage", "png")),
        ("real-laion", 0, "real", ("jpeg", "jpeg", "png", "jpeg", "empty", "jpeg")),
    ],
    "Manual": [
        ("gan/stylegan", 1, "GAN", ("png", "gif", "png16", "jpeg", "png")),
        ("real-coco", 0, "real", ("jpeg", "png", "jpeg")),
    ],
    "PublicEval": [
        ("public/dalle", 1, "Commercial", ("png", "jpeg", "png")),
        ("real-imagenet", 0, "real", ("jpeg", "png")),
    ],
}


def hf_rows(layout: dict[str, list[tuple[str, int, str, tuple[str, ...]]]], seed: int = 0) -> dict[str, list[dict]]:
    """Rows in the hub's schema for a layout like HF_LAYOUT."""
    rows: dict[str, list[dict]] = {}
    for split, groups in layout.items():
        rows[split] = []
        for g, (generator, label, architecture, kinds) in enumerate(groups):
            for i, kind in enumerate(kinds):
                data = image_bytes(kind, seed * 100_000 + zlib.crc32(f"{split}/{g}".encode()) % 1000 * 100 + i)
                fmt = {"jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}.get(kind, "PNG")
                rows[split].append({
                    "image_name": f"{i:08d}.{fmt.lower()}", "format": fmt, "resolution": "[64, 64]",
                    "image_data": data, "model_name": generator, "prompt": f"a picture number {i}",
                    "subset": split if split != "PublicEval" else "Systematic", "label": label,
                    "architecture": architecture,
                })
    return rows


def write_folder_tree(root: Path, layout: dict[str, dict[str, tuple[str, ...]]], seed: int = 0) -> Path:
    """ROOT/<dataset>/<label dir>/<file>; kinds name images, or "txt" for a non-image file."""
    for d, (dataset, by_label) in enumerate(layout.items()):
        for label_dir, kinds in by_label.items():
            folder = root / dataset / label_dir
            folder.mkdir(parents=True, exist_ok=True)
            for i, kind in enumerate(kinds):
                if kind == "txt":
                    (folder / f"notes{i}.txt").write_text("not an image\n")
                    continue
                ext = {"jpeg": ".JPG", "webp": ".webp", "gif": ".gif", "damaged_tiff": ".tiff"}.get(kind, ".png")
                if kind == "jpeg" and i % 2:
                    ext = ".jpeg"
                (folder / f"img{i:03d}{ext}").write_bytes(image_bytes(kind, seed * 100_000 + d * 1000 + i))
    return root


FOLDER_LAYOUT = {
    "coco-extra": {"real": ("jpeg", "jpeg", "png", "jpeg", "png", "jpeg")},
    "ffhq-extra": {"real": ("png", "png", "jpeg")},
    "mygan": {"fake": ("png", "gif", "truncated", "png", "jpeg", "txt"), "real": ("jpeg", "png")},
}


# A second root holding only real images (the usual "extra real data" case).
EXTRA_REAL_LAYOUT = {"celeba-extra": {"real": ("jpeg",) * 5 + ("png",) * 3}}


@pytest.fixture(scope="session")
def hf_replica(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub-like repo folder: splits Systematic, Manual, PublicEval; several files and row groups."""
    root = tmp_path_factory.mktemp("hf") / "CommunityForensics"
    return write_hf_replica(root, hf_rows(HF_LAYOUT), rows_per_file=7, row_group_size=3)


@pytest.fixture(scope="session")
def folder_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local root: two real-only datasets and a generator with both labels, a GIF, a corrupt file, a .txt."""
    return write_folder_tree(tmp_path_factory.mktemp("folders") / "local", FOLDER_LAYOUT)


@pytest.fixture(scope="session")
def extra_real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local root with one real-only dataset of 8 images."""
    return write_folder_tree(tmp_path_factory.mktemp("extra") / "extra_real", EXTRA_REAL_LAYOUT, seed=7)


def run_convert(out: Path, **settings: Any) -> Manifest | None:
    """`convert` with quiet, small-shard defaults; keyword arguments override ConvertSettings fields."""
    options = {"quiet": True, "workers": 1, "shard_size": "40KB", "partition_size": "60KB", "seed": 3,
               **settings}
    return convert(ConvertSettings(out=out, **options), command="pytest")


@pytest.fixture(scope="session")
def convert_into() -> Callable[..., Manifest | None]:
    """The `run_convert` helper: `convert_into(out, hf_repo=..., folders=[...], ...)`."""
    return run_convert


CONVERTED_SETTINGS = {"hf_split": "Systematic+Manual", "val_frac": 0.2}


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory, hf_replica: Path, folder_tree: Path, extra_real: Path) -> Path:
    """Shards of HF Systematic+Manual plus both local roots (balanced, val_frac 0.2). Read-only."""
    out = tmp_path_factory.mktemp("converted") / "shards"
    run_convert(out, **CONVERTED_SETTINGS, hf_repo=str(hf_replica), folders=[folder_tree, extra_real])
    return out


def read_all_samples(out: Path) -> dict[str, list[tuple[str, dict[str, bytes]]]]:
    """Set name -> (key, members by extension) of every sample in shard order, read through the indexes."""
    manifest = Manifest.load(out)
    samples = {}
    for name, info in manifest.sets.items():
        reader = ShardReader(out, info)
        samples[name] = [(next(iter(reader.members(i).values())).filename.split(".")[0], reader.read(i))
                         for i in range(len(reader))]
        reader.close()
    return samples
