"""`convert` on real small data: completeness, round-trips, balancing, split, shuffling, checks."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import hf_rows, image_bytes, picture, read_all_samples, write_folder_tree
from PIL import Image

from commfor_fast.convert import settings as convert_settings
from commfor_fast.convert.balance import water_fill
from commfor_fast.convert.check import check_data, check_structure, jpeg_is_complete
from commfor_fast.convert.settings import default_workers
from commfor_fast.errors import UserError
from commfor_fast.demo.hf_replica import write_hf_replica
from commfor_fast.imageio import BadImage, check_image, decode_raw, decode_rgb, encode_raw, resize_shorter
from commfor_fast.shards import IMAGE_EXT, RAW_FORMAT, RAW_HEADER_BYTES, Manifest, unpack_ids

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def source_bytes(meta: dict, roots: list[Path]) -> bytes:
    """The original bytes of a sample, read back from its source: its metadata names the
    folder by its last component (no local paths), one of `roots` is that folder."""
    root = next(r for r in roots if r.name == (meta["repo"] if meta["source"] == "hf" else meta["root"]))
    if meta["source"] == "hf":
        table = pq.read_table(root / meta["file"], columns=["image_data"])
        return table.column("image_data")[meta["row"]].as_py()
    return (root / meta["path"]).read_bytes()


def identity(meta: dict) -> str:
    """A sample's source as the manifest's rejects name it (no local paths)."""
    if meta["source"] == "hf":
        return f"{meta['file']}#row {meta['row']}"
    return f"{meta['root']}/{meta['path']}"


def expected_sources(hf_replica: Path, roots: list[Path], splits: tuple[str, ...]) -> set[str]:
    items = set()
    for split in splits:
        for path in sorted((hf_replica / "data" / (split[0].lower() + split[1:])).glob("*.parquet")):
            file = path.relative_to(hf_replica).as_posix()
            items.update(f"{file}#row {r}" for r in range(pq.ParquetFile(path).metadata.num_rows))
    for root in roots:
        items.update(f"{root.name}/{p.relative_to(root).as_posix()}" for p in root.rglob("*")
                     if p.is_file() and p.suffix.lower() != ".txt")
    return items


@pytest.fixture(scope="module")
def manifest(converted: Path) -> Manifest:
    return Manifest.load(converted)


@pytest.fixture(scope="module")
def samples(converted: Path) -> dict[str, list[tuple[str, dict[str, bytes]]]]:
    return read_all_samples(converted)


def test_every_sample_exactly_once(manifest, samples, hf_replica, folder_tree, extra_real):
    stored = [identity(json.loads(m["json"])) for s in samples.values() for _, m in s]
    rejected = [r["item"] for r in manifest.rejects]
    everything = expected_sources(hf_replica, [folder_tree, extra_real], ("Systematic", "Manual"))
    assert len(stored) == len(set(stored)), "a sample is stored twice"
    assert not set(stored) & set(rejected)
    dropped = everything - set(stored) - set(rejected)
    assert len(stored) + len(rejected) + len(dropped) == len(everything)
    assert set(stored) | set(rejected) <= everything
    assert len(dropped) == sum(d["dropped"] for d in manifest.balance["datasets"].values()) == 4
    assert all("extra" in item for item in dropped)  # only balanced local reals go missing
    assert sum(s.num_samples for s in manifest.sets.values()) == len(stored) == 44


def test_balancing_numbers_by_hand(manifest):
    # HF: 19 fakes, 9 reals; local fakes: 5 -> limit = 24 - 9 = 15 spread over the
    # local real datasets mygan 2, ffhq-extra 3, coco-extra 6, celeba-extra 8:
    # quota 4 keeps mygan (2), quota 5 keeps ffhq (3), quota 5 cuts coco to 5, quota 5 cuts celeba to 5.
    b = manifest.balance
    assert (b["fakes"], b["hf_reals"], b["limit"], b["local_reals_kept"]) == (24, 9, 15, 15)
    assert b["datasets"] == {
        "celeba-extra": {"available": 8, "kept": 5, "dropped": 3},
        "coco-extra": {"available": 6, "kept": 5, "dropped": 1},
        "ffhq-extra": {"available": 3, "kept": 3, "dropped": 0},
        "mygan": {"available": 2, "kept": 2, "dropped": 0},
    }


def test_water_fill_cases():
    # the original's rule: one quota ceil((12 - 5) / 2) = 4 for every dataset past the whole ones
    assert water_fill({"A": 2, "gen": 3, "C": 7, "B": 10}, 12) == {"A": 2, "gen": 3, "C": 4, "B": 4}
    assert water_fill({"A": 2, "B": 10}, 0) == {"A": 0, "B": 0}
    assert water_fill({"A": 2, "B": 10}, 100) == {"A": 2, "B": 10}
    assert water_fill({"A": 9, "B": 9, "C": 9}, 10) == {"A": 4, "B": 4, "C": 4}  # may overshoot by < datasets


def test_labels_ids_metadata_and_bytes_round_trip(manifest, samples, hf_replica, folder_tree, extra_real):
    gen_ids = {name: i for i, name in enumerate(manifest.generators)}
    normalised = 0
    for set_name, items in samples.items():
        numbers = [int(key) for key, _ in items]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
        for key, m in items:
            meta = json.loads(m["json"])
            ids = unpack_ids(m["ids"])
            assert meta["set"] == set_name
            assert m["cls"] == str(meta["label"]).encode()
            assert ids.label == meta["label"] and ids.sample_number == int(key)
            assert ids.generator_id == gen_ids[meta["generator"]]
            assert (ids.height, ids.width) == (meta["decoded"]["height"], meta["decoded"]["width"])
            original = source_bytes(meta, [hf_replica, folder_tree, extra_real])
            if "normalised" in meta:
                normalised += 1
                assert m[IMAGE_EXT].startswith(PNG_SIGNATURE)
                assert np.array_equal(np.asarray(decode_rgb(m[IMAGE_EXT])), np.asarray(decode_rgb(original)))
            else:
                assert m[IMAGE_EXT] == original
            if meta["source"] == "hf":
                assert meta["model_name"] == meta["generator"] and meta["prompt"].startswith("a picture")
                assert meta["split"] in ("Systematic", "Manual")
            else:
                assert meta["path"].split("/")[0] == meta["generator"]
    assert normalised == sum(manifest.normalised.values()) == 3


def test_normalised_gif_is_the_first_frame(samples, folder_tree):
    gif = next(folder_tree.rglob("*.gif"))
    stored = [m for s in samples.values() for _, m in s if json.loads(m["json"]).get("path", "").endswith(".gif")]
    assert len(stored) == 1 and stored[0][IMAGE_EXT].startswith(PNG_SIGNATURE)
    assert json.loads(stored[0]["json"])["normalised"].startswith("GIF")
    first = np.asarray(Image.open(gif).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored[0][IMAGE_EXT]))), first)


def test_rejects_have_reasons(manifest, hf_replica, folder_tree):
    reasons = {r["item"]: r["reason"] for r in manifest.rejects}
    assert len(reasons) == 4
    assert reasons[f"{folder_tree.name}/mygan/fake/img002.png"].startswith("cannot decode")
    assert sorted(r.split(":")[0] for r in reasons.values()) == ["cannot decode"] * 3 + ["empty file"]
    assert sum(item.startswith("data/") and "#row " in item for item in reasons) == 3  # HF rows: file#row N


def test_members_are_image_cls_ids_json_in_order(converted, manifest):
    with tarfile.open(converted / manifest.sets["train"].shards[0].tar) as tar:
        names = tar.getnames()
    exts = [name.split(".", 1)[1] for name in names]
    assert len(exts) % 4 == 0
    for i in range(0, len(exts), 4):
        assert exts[i : i + 4] == [IMAGE_EXT, "cls", "ids", "json"]
        assert len({name.split(".")[0] for name in names[i : i + 4]}) == 1


def test_manifest_stats_and_sources(manifest, samples):
    for set_name, info in manifest.sets.items():
        assert sum(n for by_label in info.counts.values() for n in by_label.values()) == info.num_samples
        assert sum(n for by_label in info.formats.values() for n in by_label.values()) == info.num_samples
        assert sum(s.num_samples for s in info.shards) == info.num_samples == len(samples[set_name])
        assert [s.tar for s in info.shards] == sorted(s.tar for s in info.shards)
    assert set(manifest.sets) == {"train", "val"}
    assert manifest.sets["val"].num_samples > 0
    folder = next(s for s in manifest.sources if s["kind"] == "folder" and s["ignored_files"])
    assert folder["ignored_examples"] == ["mygan/fake/notes5.txt"]
    assert any("ignored 1 file" in w for w in manifest.warnings)
    assert manifest.command == "pytest" and manifest.settings["val_frac"] == 0.2


def test_shards_are_cut_by_size(converted, manifest):
    limit = 40_000
    for info in manifest.sets.values():
        for shard in info.shards:
            assert shard.bytes == (converted / shard.tar).stat().st_size
            assert shard.num_samples == 1 or shard.bytes <= limit + 1024


def folder_only(out: Path, roots: list[Path], run, **settings):
    return run(out, folders=roots, val_frac=0.25, **settings)


def test_split_and_order_reproducible_per_seed(tmp_path, folder_tree, extra_real, convert_into):
    a = folder_only(tmp_path / "a", [folder_tree, extra_real], convert_into)
    b = folder_only(tmp_path / "b", [folder_tree, extra_real], convert_into)
    folder_only(tmp_path / "c", [folder_tree, extra_real], convert_into, seed=4)

    def layout(out: Path) -> dict[str, list[tuple[str, str]]]:
        return {name: [(key, json.loads(m["json"])["path"]) for key, m in items]
                for name, items in read_all_samples(out).items()}

    assert [s.sha256 for s in a.sets["train"].shards] == [s.sha256 for s in b.sets["train"].shards]
    assert layout(tmp_path / "a") == layout(tmp_path / "b")
    assert {p for _, p in layout(tmp_path / "a")["val"]} != {p for _, p in layout(tmp_path / "c")["val"]}
    assert layout(tmp_path / "a")["train"] != layout(tmp_path / "c")["train"]


def test_folder_data_is_shuffled_globally(tmp_path, folder_tree, extra_real, convert_into):
    manifest = convert_into(tmp_path / "out", folders=[folder_tree, extra_real], val_frac=0, partition_size="1GB")
    assert set(manifest.sets) == {"all"}
    paths = [json.loads(m["json"])["path"] for _, m in read_all_samples(tmp_path / "out")["all"]]
    assert paths != sorted(paths)
    assert len({p.split("/")[0] for p in paths[:8]}) > 1  # datasets are interleaved, not in blocks


def test_preresize_stores_resized_raw_pixels(tmp_path, folder_tree, convert_into):
    manifest = convert_into(tmp_path / "out", folders=[folder_tree], val_frac=0, preresize=256)
    assert manifest.preresize == 256
    items = read_all_samples(tmp_path / "out")["all"]
    assert items
    for _, m in items:
        meta, ids = json.loads(m["json"]), unpack_ids(m["ids"])
        assert min(ids.height, ids.width) == 256
        assert (meta["stored"]["height"], meta["stored"]["width"]) == (ids.height, ids.width)
        expected = encode_raw(resize_shorter(decode_rgb(source_bytes(meta, [folder_tree])), 256))
        assert m[IMAGE_EXT] == expected and meta["stored"]["format"].startswith(RAW_FORMAT)
        pixels = decode_raw(m[IMAGE_EXT], ids.height, ids.width)
        assert pixels.shape == (ids.height, ids.width, 3)
        with Image.open(io.BytesIO(m[IMAGE_EXT])) as ppm:  # a plain PPM, which PIL reads
            assert ppm.format == "PPM" and np.array_equal(np.asarray(ppm), pixels)
        # the same header size for every image: DALI skips it as a constant
        assert m[IMAGE_EXT][:RAW_HEADER_BYTES].endswith(f"\n{ids.width} {ids.height}\n255\n".encode())
        assert (meta["decoded"]["width"], meta["decoded"]["height"]) == Image.open(
            io.BytesIO(source_bytes(meta, [folder_tree]))).size
    assert set(manifest.sets["all"].stored) == {RAW_FORMAT}


def test_fast_check_gives_the_same_shards(tmp_path, converted, hf_replica, folder_tree, extra_real, convert_into):
    fast = convert_into(tmp_path / "fast", hf_repo=str(hf_replica), hf_split="Systematic+Manual",
                        folders=[folder_tree, extra_real], val_frac=0.2, check="fast")
    full = Manifest.load(converted)
    for name in full.sets:
        assert [s.sha256 for s in fast.sets[name].shards] == [s.sha256 for s in full.sets[name].shards]
    assert [r["item"] for r in fast.rejects] == [r["item"] for r in full.rejects]


def test_structural_check_of_jpeg_and_png():
    img = Image.fromarray(picture(1, 96, 64))
    jpeg = io.BytesIO()
    img.save(jpeg, format="JPEG", quality=90)
    data = jpeg.getvalue()
    progressive = io.BytesIO()
    img.save(progressive, format="JPEG", progressive=True)
    assert jpeg_is_complete(data) and jpeg_is_complete(progressive.getvalue())
    assert jpeg_is_complete(data + b"trailing bytes after the image")
    assert not jpeg_is_complete(data[: len(data) * 2 // 3])
    with pytest.raises(BadImage, match="truncated JPEG"):
        check_structure(data[: len(data) - 10], 10**8)
    png = image_bytes("png", 3)
    flipped = png[:60] + bytes([png[60] ^ 0xFF]) + png[61:]
    with pytest.raises(BadImage):
        check_structure(flipped, 10**8)
    with pytest.raises(BadImage, match="decompression bomb"):
        check_structure(png, 100)
    assert check_structure(png, 10**8).stored_form == "png"
    assert check_structure(image_bytes("gif", 3), 10**8) is None  # needs the full decode


def _damaged(data: bytes, seed: int) -> list[bytes]:
    """Truncations, flipped bytes and zeroed runs all over `data` (past the 8-byte signature)."""
    rng = np.random.default_rng(seed)
    cuts = [data[:n] for n in np.linspace(9, len(data) - 1, 20).astype(int)]
    flips = [data[:p] + bytes([data[p] ^ 0x5A]) + data[p + 1:] for p in rng.integers(8, len(data), 40)]
    zeros = [data[:p] + bytes(48) + data[p + 48:] for p in rng.integers(8, len(data) - 48, 12)]
    return cuts + flips + zeros


def _verdict(check, data: bytes) -> bool:
    try:
        check(data)
        return True
    except BadImage:
        return False


def _encoded(kind: str) -> bytes:
    rgb = Image.fromarray(picture(7, 120, 88))
    buf = io.BytesIO()
    if kind.startswith("jpeg"):
        img = rgb.convert("L") if kind == "jpeg-grey" else rgb
        img.save(buf, format="JPEG", quality=90, progressive=kind == "jpeg-progressive")
    else:
        img = {"png": rgb, "png-grey": rgb.convert("L"), "png-palette": rgb.convert("P", colors=16),
               "png-rgba": rgb.convert("RGBA"), "png-1bit": rgb.convert("1")}[kind]
        img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["png", "png-grey", "png-palette", "png-rgba", "png-1bit",
                                  "jpeg", "jpeg-progressive", "jpeg-grey"])
def test_full_check_rejects_whatever_a_full_decode_rejects(kind):
    """`--check full` skips the pixel work of a full decode, never a check that can fail."""
    good = _encoded(kind)
    assert check_data(good, 10**8) is not None  # the cheaper path is the one under test
    variants = _damaged(good, seed=len(kind))
    outcomes = [(_verdict(check_image, v), _verdict(lambda d: check_data(d, 10**8), v)) for v in variants]
    assert any(not full for full, _ in outcomes) and any(full for full, _ in outcomes)  # both kinds occur
    for variant, (full, ours) in zip(variants, outcomes):
        assert ours <= full  # whatever the full decode rejects, the check rejects
        if ours != full:  # stricter only where a PNG chunk's CRC is wrong, which PIL does not always check
            assert kind.startswith("png") and not _verdict(lambda d: check_structure(d, 10**8), variant)


def test_full_check_leaves_interlaced_png_to_the_full_decode():
    data = bytearray(_encoded("png"))
    data[28] = 1  # IHDR interlace method: Adam7
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    assert check_data(bytes(data), 10**8) is None
    # intact chunks (right CRCs) around bad compressed data: found only by inflating it
    with pytest.raises(BadImage, match=r"^cannot decode: truncated PNG data \(0 of 20 rows\)$"):
        check_data(png_header(20, 20), 10**8)
    with pytest.raises(BadImage, match="^cannot decode: PNG row with an unknown filter type$"):
        check_data(png_header(3, 2, rows=b"\0" + bytes(9) + b"\7" + bytes(9)), 10**8)
    assert check_data(png_header(3, 2, rows=b"\4" + bytes(9) + b"\1" + bytes(9)), 10**8) is not None


def test_format_bias_warning(tmp_path, convert_into):
    root = write_folder_tree(tmp_path / "bias", {"gen": {"fake": ("png",) * 20}, "photos": {"real": ("jpeg",) * 20}})
    manifest = convert_into(tmp_path / "out", folders=[root], val_frac=0)
    assert any(w.startswith("format bias: 100% of the 20 PNG images are fake") for w in manifest.warnings)
    assert any(w.startswith("format bias: 100% of the 20 JPEG images are real") for w in manifest.warnings)


def test_hf_parquet_files_given_directly(tmp_path, hf_replica, convert_into):
    manifest = convert_into(tmp_path / "out", hf_repo=str(hf_replica / "data" / "manual" / "*.parquet"), val_frac=0)
    assert manifest.sets["all"].num_samples == 8
    assert list(manifest.sources[0]["splits"]) == ["files"]


def test_hf_repo_without_configs_uses_the_hubs_default_layout(tmp_path, hf_replica, convert_into):
    """A card without `configs`: the splits are what `datasets` infers from file names (train-*, test-*)."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "README.md").write_text("---\nlicense: cc-by-4.0\n---\nno configs\n")
    for split, name in (("train", "systematic"), ("test", "publicEval")):
        for i, part in enumerate(sorted((hf_replica / "data" / name).glob("*.parquet"))):
            (repo / "data" / f"{split}-{i:05d}.parquet").write_bytes(part.read_bytes())
    rows = {name: sum(pq.ParquetFile(p).metadata.num_rows for p in (hf_replica / "data" / name).glob("*.parquet"))
            for name in ("systematic", "publicEval")}
    manifest = convert_into(tmp_path / "out", hf_repo=str(repo), hf_split="test", val_frac=0, balance=False)
    assert manifest.sources[0]["splits"]["test"]["samples"] == rows["publicEval"]
    with pytest.raises(UserError, match="--hf-split 'validation': unknown split 'validation'; .* has train, test "):
        convert_into(tmp_path / "out2", hf_repo=str(repo), hf_split="validation")


def test_decompression_bomb_is_rejected(tmp_path, convert_into):
    root = write_folder_tree(tmp_path / "root", {"gen": {"fake": ("png", "png")}})
    manifest = convert_into(tmp_path / "out", folders=[root], val_frac=0, max_pixels=30 * 30)
    assert len(manifest.rejects) == 2 and all("decompression bomb" in r["reason"] for r in manifest.rejects)
    assert manifest.sets["all"].num_samples == 0 and manifest.sets["all"].shards == []
    assert any(w.startswith("no image passed the checks") for w in manifest.warnings)


@pytest.mark.parametrize("check", ["full", "fast"])
def test_damaged_tiff_is_rejected_not_a_crash(tmp_path, convert_into, check):
    root = write_folder_tree(tmp_path / "root", {"gen": {"fake": ("png", "damaged_tiff", "jpeg")}})
    manifest = convert_into(tmp_path / "out", folders=[root], val_frac=0, check=check)
    assert manifest.sets["all"].num_samples == 2
    assert manifest.rejects == [{"item": "root/gen/fake/img001.tiff",
                                 "reason": "cannot decode: Missing dimensions"}]


def png_header(width: int, height: int, rows: bytes = b"\0" * 10) -> bytes:
    """An 8-bit RGB PNG with intact chunks around the given (by default too little) row data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_every_decoding_failure_becomes_bad_image(monkeypatch):
    with pytest.raises(BadImage, match="^cannot decode: Missing dimensions$"):
        check_image(image_bytes("damaged_tiff", 1))
    with pytest.raises(BadImage, match="^decompression bomb: "):  # PIL's own limit still applies here
        decode_rgb(png_header(20_000, 20_000))

    def fail(self, *args, **kwargs):
        raise TypeError()

    monkeypatch.setattr(Image.Image, "convert", fail)
    with pytest.raises(BadImage, match="^cannot decode: TypeError$"):  # an empty message names the type
        decode_rgb(image_bytes("png", 1))


def test_max_pixels_alone_decides_over_pil_limit(monkeypatch):
    # 20000 x 20000 = 400 MP is over twice PIL's default limit: PIL alone would refuse it while opening.
    with pytest.raises(BadImage, match="^decompression bomb: 20000x20000 = 400000000 pixels exceeds the limit of"):
        check_image(png_header(20_000, 20_000))
    with pytest.raises(BadImage, match="^cannot decode"):  # allowed by --max-pixels; then found to hold no pixels
        check_image(png_header(20_000, 20_000), max_pixels=10**9)

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses images over 200 pixels
    png = image_bytes("png", 2)
    info, rgb = check_image(png, max_pixels=10**6)
    assert rgb.size == (info.width, info.height) and info.width * info.height > 200
    assert check_structure(png, 10**6).format == "PNG"
    with pytest.raises(BadImage, match="exceeds the limit of 1000$"):
        check_image(png, max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored: other callers keep PIL's limit
    with pytest.raises(BadImage, match="^decompression bomb: "):
        decode_rgb(png)


def test_folder_walk_skips_hidden_folders_and_symlink_cycles(tmp_path, convert_into):
    root = write_folder_tree(tmp_path / "root", {"gen": {"fake": ("png", "png"), "real": ("jpeg",)}})
    fake = root / "gen" / "fake"
    (fake / "sub").mkdir()
    (fake / "sub" / "a.png").write_bytes(image_bytes("png", 5))
    (fake / "sub" / "loop").symlink_to(fake, target_is_directory=True)  # a cycle
    (fake / "sub2").symlink_to(fake / "sub", target_is_directory=True)  # the same folder again
    (fake / ".thumbnails").mkdir()  # hidden, like the hidden files beside it
    (fake / ".thumbnails" / "t.png").write_bytes(image_bytes("png", 6))
    (fake / ".t.png").write_bytes(image_bytes("png", 7))
    elsewhere = write_folder_tree(tmp_path / "elsewhere", {"more": {"fake": ("png",)}}) / "more" / "fake"
    (fake / "linked").symlink_to(elsewhere, target_is_directory=True)  # leaves the root
    (root / "gen2").symlink_to(elsewhere.parent, target_is_directory=True)  # a dataset linked into the root
    manifest = convert_into(tmp_path / "out", folders=[root], val_frac=0)
    paths = sorted(json.loads(m["json"])["path"] for _, m in read_all_samples(tmp_path / "out")["all"])
    assert paths == ["gen/fake/img000.png", "gen/fake/img001.png", "gen/fake/sub/a.png", "gen/real/img000.JPG",
                     "gen2/fake/img000.png"]
    source = manifest.sources[0]
    assert source["ignored_examples"] == ["gen/fake/.t.png", "gen/fake/.thumbnails/", "gen/fake/sub2/"]
    assert source["skipped_links"] == ["gen/fake/linked (leads out of gen/fake)", "gen/fake/sub/loop (loops)"]
    assert any("gen/fake/sub/loop (loops)" in w for w in manifest.warnings)


def test_a_link_never_gives_an_image_a_second_or_wrong_label(tmp_path, convert_into):
    """`gen/real/loop -> ..` once stored every fake again as real/loop/fake/... with label 0."""
    root = write_folder_tree(tmp_path / "root", {"gen": {"fake": ("png", "png", "garbage"), "real": ("jpeg",)},
                                                 "other": {"fake": ("png",)}})
    (root / "gen" / "real" / "loop").symlink_to("..", target_is_directory=True)
    (root / "gen" / "real" / "fakes").symlink_to("../fake", target_is_directory=True)
    (root / "gen" / "real" / "one.png").symlink_to("../fake/img000.png")
    (root / "gen" / "real" / "same.JPG").symlink_to("img000.JPG")  # inside its label folder: the same file
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "other").symlink_to(root / "other", target_is_directory=True)  # already in root
    (tmp_path / "again" / "new").mkdir()
    (tmp_path / "again" / "new" / "fake").mkdir()
    (tmp_path / "again" / "new" / "fake" / "n.png").write_bytes(image_bytes("png", 8))
    manifest = convert_into(tmp_path / "out", folders=[root, tmp_path / "again"], val_frac=0)
    samples = [json.loads(m["json"]) for _, m in read_all_samples(tmp_path / "out")["all"]]
    by_path = {s["path"]: s["label"] for s in samples}
    assert by_path == {"gen/fake/img000.png": 1, "gen/fake/img001.png": 1, "gen/real/img000.JPG": 0,
                       "other/fake/img000.png": 1, "new/fake/n.png": 1}  # each real file once, across roots
    assert len(samples) == 5 and len(manifest.rejects) == 1  # the bad file is rejected once
    with pytest.raises(UserError, match="reached already through another --folder"):
        convert_into(tmp_path / "out2", folders=[root, root / ".." / "root"], val_frac=0)
    assert manifest.sources[0]["skipped_links"] == [
        "gen/real/fakes (leads out of gen/real)", "gen/real/loop (loops)", "gen/real/one.png (leads out of gen/real)"]


def test_non_utf8_file_names_are_converted_with_an_escaped_name(tmp_path, convert_into):
    root = write_folder_tree(tmp_path / "root", {"gen": {"fake": ("png",), "real": ("jpeg",)}})
    fake = os.fsencode(root / "gen" / "fake")
    with open(os.path.join(fake, b"caf\xe9 \\ \xff.png"), "wb") as f:  # Latin-1 bytes: not UTF-8
        f.write(image_bytes("png", 11))
    os.mkdir(os.path.join(os.fsencode(root), b"gen\xff"))
    os.mkdir(os.path.join(os.fsencode(root), b"gen\xff", b"fake"))
    with open(os.path.join(os.fsencode(root), b"gen\xff", b"fake", b"x.png"), "wb") as f:
        f.write(image_bytes("png", 12))
    manifest = convert_into(tmp_path / "out", folders=[root], val_frac=0)
    metas = {m["path"]: m for m in (json.loads(s["json"]) for _, s in read_all_samples(tmp_path / "out")["all"])}
    escaped = "gen/fake/caf\\xe9 \\\\ \\xff.png"
    assert set(metas) == {"gen/fake/img000.png", "gen/real/img000.JPG", escaped, "gen\\xff/fake/x.png"}
    assert metas[escaped]["path_escaped"] and "path_escaped" not in metas["gen/fake/img000.png"]
    assert manifest.generators == ["gen", "gen\\xff"]


def test_an_unreadable_folder_is_named_not_silently_lost(tmp_path, convert_into, monkeypatch):
    root = write_folder_tree(tmp_path / "root", {"gen": {"fake": ("png", "png"), "real": ("jpeg",)}})
    locked = root / "gen" / "fake" / "locked"
    locked.mkdir()
    (locked / "a.png").write_bytes(image_bytes("png", 3))
    scandir = os.scandir

    def refuse(path):  # root ignores permissions, so refuse the way a chmod 000 folder would
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    manifest = convert_into(tmp_path / "out", folders=[root], val_frac=0)
    assert manifest.sets["all"].num_samples == 3
    assert manifest.sources[0]["unreadable_folders"] == ["gen/fake/locked/ (Permission denied)"]
    assert any("cannot be read: gen/fake/locked/ (Permission denied)" in w for w in manifest.warnings)


def test_balancing_is_reported(tmp_path, hf_replica, extra_real, convert_into, capsys):
    # HF Manual: 5 fakes, 3 reals -> limit 2 of the 8 local reals
    convert_into(tmp_path / "out", hf_repo=str(hf_replica), hf_split="Manual", folders=[extra_real], val_frac=0,
                 quiet=False)
    lines = capsys.readouterr().err.splitlines()
    assert "balance: kept 2 of 8 local real images (limit 2 = fakes 5 - HF reals 3); see manifest.json balance" in lines
    assert any(line.startswith("note: with --val-frac 0") and "--no-balance" in line for line in lines)
    convert_into(tmp_path / "kept", hf_repo=str(hf_replica), hf_split="Manual", folders=[extra_real], val_frac=0,
                 balance=False, quiet=False)
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith(("balance", "note"))]


@pytest.mark.parametrize(("hf_fakes", "kept"), [(2, 8), (4, 0)])
def test_balancing_is_skipped_only_when_hf_reals_outnumber_all_fakes(tmp_path, extra_real, convert_into, capsys,
                                                                     hf_fakes, kept):
    # 4 HF reals against 2 fakes: limit 2 - 4 < 0, the original keeps all 8 local reals and we warn;
    # against 4 fakes the limit is exactly 0 and, as in the original, every local real is dropped
    layout = {"Systematic": [("gen/a", 1, "GAN", ("png",) * hf_fakes), ("real-x", 0, "real", ("jpeg",) * 4)]}
    replica = write_hf_replica(tmp_path / f"hf{hf_fakes}", hf_rows(layout), rows_per_file=3, row_group_size=2)
    manifest = convert_into(tmp_path / "out", hf_repo=str(replica), hf_split="Systematic", folders=[extra_real],
                            val_frac=0, quiet=False)
    stored = [json.loads(m["json"]) for _, m in read_all_samples(tmp_path / "out")["all"]]
    assert sum(meta["source"] == "folder" for meta in stored) == manifest.balance["local_reals_kept"] == kept
    assert manifest.balance["limit"] == hf_fakes - 4
    warned = [w for w in manifest.warnings if w.startswith("reals already outnumber fakes")]
    printed = [line for line in capsys.readouterr().err.splitlines() if "reals already outnumber fakes" in line]
    if kept:
        assert manifest.balance["applied"] is False
        assert warned == ["reals already outnumber fakes (12 to 2): the HF reals alone (4) exceed all fakes, so "
                          "balancing is skipped and all 8 local real image(s) are kept, as the original does"]
        assert printed == [f"warning: {warned[0]}"]  # once, before converting
    else:
        assert manifest.balance["applied"] is True and not warned and not printed


def test_default_workers_respect_the_cgroup_memory_limit(monkeypatch, tmp_path):
    files: dict[str, str] = {}
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(convert_settings, "host_memory", lambda: 256 * 10**9)
    monkeypatch.setattr(convert_settings, "read_cgroup_file", lambda path: files.get(path.name))
    partition = 2 * 10**9  # a worker needs about 3 x 2 GB
    assert default_workers(partition) == 16  # no cgroup
    files["memory.max"] = "max\n"
    assert default_workers(partition) == 16  # cgroup v2 without a limit
    files["memory.max"] = f"{12 * 10**9}\n"
    assert default_workers(partition) == 2
    files.clear()
    files["memory.limit_in_bytes"] = "9223372036854771712\n"  # cgroup v1 "unlimited"
    assert default_workers(partition) == 16
    files["memory.limit_in_bytes"] = f"{30 * 10**9}\n"
    assert default_workers(partition) == 5
    files["memory.limit_in_bytes"] = "1000\n"
    assert default_workers(partition) == 1
    assert convert_settings.cgroup_memory_limit() == 1000
    monkeypatch.undo()
    assert convert_settings.read_cgroup_file(tmp_path / "memory.max") is None



def test_parallel_conversion_stops_its_workers_before_returning(tmp_path, folder_tree, convert_into):
    """A worker still starting when the last partition is done must not outlive the pool's queues
    (it would print a `SemLock ... FileNotFoundError` traceback): convert joins every worker."""
    import multiprocessing

    for run in range(2):
        manifest = convert_into(tmp_path / f"out{run}", folders=[folder_tree], val_frac=0, workers=2,
                                partition_size="8KB", check="fast")
        assert manifest.sets["all"].num_samples > 0
        assert multiprocessing.active_children() == []
