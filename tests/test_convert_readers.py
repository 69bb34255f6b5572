"""The shards `convert` writes are read by DALI (with the index files), by `webdataset`, by Hugging Face
`datasets` (through the dataset card, one `image` column) and, pre-resized pixels, by PIL and `numpy`."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from commfor_fast.convert.card import SPLIT_NAMES
from PIL import Image

from commfor_fast.imageio import decode_raw, decode_rgb
from commfor_fast.shards import IDS_EXT, IMAGE_EXT, RAW_HEADER_BYTES, Manifest, SampleIds, unpack_ids

dali = pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def, types

BATCH = 4


@pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, prefetch_queue_depth=1)
def _reader(tars: list[str], indexes: list[str]):
    image, ids = fn.readers.webdataset(
        paths=tars, index_paths=indexes, ext=[IMAGE_EXT, IDS_EXT],
        dtypes=[types.UINT8, types.INT32], missing_component_behavior="error",
        pad_last_batch=True, name="reader",
    )
    return image, ids


def _dali_samples(root: Path, manifest: Manifest, set_name: str) -> list[tuple[SampleIds, bytes]]:
    shards = manifest.sets[set_name].shards
    pipe = _reader([str(root / s.tar) for s in shards], [str(root / s.index) for s in shards])
    pipe.build()
    size = pipe.epoch_size("reader")
    out = []
    for _ in range(math.ceil(size / BATCH)):
        images, ids = pipe.run()
        for i in range(BATCH):
            out.append((SampleIds(*np.asarray(ids.at(i)).tolist()), np.asarray(images.at(i)).tobytes()))
    return out[:size]


def test_dali_reads_every_sample_with_the_index(converted):
    manifest = Manifest.load(converted)
    for set_name, info in manifest.sets.items():
        samples = _dali_samples(converted, manifest, set_name)
        assert len(samples) == info.num_samples
        numbers = [ids.sample_number for ids, _ in samples]
        assert len(set(numbers)) == len(numbers)
        with_webdataset = _webdataset_samples(converted, manifest, set_name)
        for ids, image in samples:
            key = f"{ids.sample_number:010d}"
            assert with_webdataset[key]["ids"] == ids
            assert with_webdataset[key]["image"] == image
            assert ids.label in (0, 1) and 0 <= ids.generator_id < len(manifest.generators)


@pytest.fixture(scope="module")
def preresized(tmp_path_factory, folder_tree, convert_into) -> Path:
    out = tmp_path_factory.mktemp("preresized") / "out"
    convert_into(out, folders=[folder_tree], val_frac=0, preresize=256)
    return out


def test_dali_reads_preresized_pixels(preresized):
    manifest = Manifest.load(preresized)
    samples = _dali_samples(preresized, manifest, "all")
    assert len(samples) == manifest.sets["all"].num_samples > 0
    for ids, ppm in samples:
        assert min(ids.height, ids.width) == 256
        assert decode_raw(ppm, ids.height, ids.width).shape == (ids.height, ids.width, 3)


def _hf_load(root: Path, cache: Path):
    import datasets

    return datasets.load_dataset(str(root), cache_dir=str(cache))


def test_preresized_pixels_are_read_by_pil_numpy_webdataset_and_hf_datasets(preresized, tmp_path):
    import webdataset as wds

    manifest = Manifest.load(preresized)
    urls = [str(preresized / s.tar) for s in manifest.sets["all"].shards]
    by_key = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode(
            wds.imagehandler("rgb8", [IMAGE_EXT])):  # webdataset decodes by suffix: name ours
        ids = unpack_ids(sample["ids"])
        pixels = sample[IMAGE_EXT]
        assert isinstance(pixels, np.ndarray) and pixels.shape == (ids.height, ids.width, 3)
        by_key[sample["__key__"]] = pixels
    raw = _webdataset_samples(preresized, manifest, "all")
    assert by_key.keys() == raw.keys() and len(by_key) == manifest.sets["all"].num_samples
    for key, sample in raw.items():
        ids = sample["ids"]
        pixels = np.frombuffer(sample["image"], np.uint8, offset=RAW_HEADER_BYTES).reshape(ids.height, ids.width, 3)
        assert np.array_equal(pixels, by_key[key])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sample["image"]))), pixels)  # a plain PPM
    rows = _hf_load(preresized, tmp_path)[SPLIT_NAMES["all"]]
    assert len(rows) == len(by_key)
    for row in rows:
        assert np.array_equal(np.asarray(row["image"]), by_key[row["__key__"]])
        assert row["cls"] == row["json"]["label"] == raw[row["__key__"]]["cls"]


def test_the_hf_load_benchmark_reads_every_image(preresized, tmp_path):
    from commfor_fast.bench.hf_load_bench import load_all

    assert load_all(preresized, tmp_path / "cache") == Manifest.load(preresized).sets["all"].num_samples


def test_hf_datasets_loads_a_conversion_of_mixed_formats(converted, tmp_path):
    manifest = Manifest.load(converted)
    stored = {form for info in manifest.sets.values() for form in info.stored}
    assert {"png", "jpg", "webp"} <= stored  # one column for them all: v2 made one per format
    loaded = _hf_load(converted, tmp_path)
    assert set(loaded) == {SPLIT_NAMES[name] for name in manifest.sets}
    assert list(loaded[SPLIT_NAMES["train"]].features) == ["__key__", "image", "cls", "ids", "json"]
    for set_name, info in manifest.sets.items():
        rows = loaded[SPLIT_NAMES[set_name]]
        assert len(rows) == info.num_samples
        raw = _webdataset_samples(converted, manifest, set_name)
        for row in rows:
            sample = raw[row["__key__"]]
            expected = np.asarray(decode_rgb(sample["image"]))
            assert np.array_equal(np.asarray(row["image"].convert("RGB")), expected)
            assert row["cls"] == sample["cls"] and row["json"] == sample["meta"]
            assert unpack_ids(row["ids"]) == sample["ids"]


def _webdataset_samples(root: Path, manifest: Manifest, set_name: str) -> dict[str, dict]:
    import webdataset as wds

    urls = [str(root / s.tar) for s in manifest.sets[set_name].shards]
    found = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        found[sample["__key__"]] = {"ids": unpack_ids(sample["ids"]), "image": sample[IMAGE_EXT],
                                    "cls": int(sample["cls"]), "meta": meta}
        assert int(sample["cls"]) == meta["label"]
    return found


def test_webdataset_reads_the_shards(converted):
    manifest = Manifest.load(converted)
    for set_name, info in manifest.sets.items():
        found = _webdataset_samples(converted, manifest, set_name)
        assert len(found) == info.num_samples
        assert all(int(key) == s["ids"].sample_number for key, s in found.items())


def test_tars_are_plain_ustar_with_fixed_headers(converted):
    shard = Manifest.load(converted).sets["train"].shards[0]
    with tarfile.open(converted / shard.tar) as tar:
        members = tar.getmembers()
    assert all(m.isfile() and m.mtime == 0 and m.mode == 0o644 and not m.uname for m in members)
