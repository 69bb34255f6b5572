"""The dataset card convert writes, as Hugging Face `datasets` and the hub read it: columns
(labels as `ClassLabel`), split names, a cache identity per conversion, hub metadata, a
generator summary with the full list beside it, and no local paths (issue 24 items 3
and 10, issue 25 item 6). Everything offline: `datasets` reads local folders only."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from commfor_fast.convert.card import SPLIT_NAMES, write_dataset_card
from commfor_fast.portable import portable_command, portable_path, portable_source_meta
from commfor_fast.shards import CARD_NAME, GENERATORS_NAME, IMAGE_EXT, Manifest, SetInfo, unpack_ids

from conftest import read_all_samples, write_folder_tree

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _front_matter(folder: Path) -> dict:
    return yaml.safe_load((folder / CARD_NAME).read_text().split("---\n")[1])


def _load(folder: Path, cache: Path):
    return datasets.load_dataset(str(folder), cache_dir=str(cache))


def _image_of(row: dict) -> np.ndarray:
    return np.asarray(row["image"].convert("RGB"))


def test_two_folders_of_the_same_name_load_their_own_rows(tmp_path: Path, convert_into) -> None:
    """Same folder name, same formats and counts (so the same columns and splits), other
    pixels: `datasets` used to serve the second folder the first one's cached rows."""
    layout = {"gen": {"fake": ("png", "png", "png"), "real": ("png", "png")}}
    cache = tmp_path / "hf-cache"  # shared by both loads
    loaded_keys = []
    for seed in (1, 2):
        root = write_folder_tree(tmp_path / f"src{seed}", layout, seed=seed)
        out = tmp_path / f"run{seed}" / "shards"
        convert_into(out, folders=[root], val_frac=0)
        rows = _load(out, cache)["test"]
        stored = {key: members for key, members in read_all_samples(out)["all"]}
        assert len(rows) == len(stored) == 5
        for row in rows:
            members = stored[row["__key__"]]
            assert unpack_ids(row["ids"]) == unpack_ids(members["ids"])
            assert np.array_equal(_image_of(row), np.asarray(Image.open(io.BytesIO(members[IMAGE_EXT])).convert("RGB")))
        loaded_keys.append(rows["__key__"])
    assert loaded_keys[0] == loaded_keys[1]  # the same keys: only the content tells the folders apart
    fingerprints = {_front_matter(tmp_path / f"run{s}" / "shards")["configs"][0]["description"] for s in (1, 2)}
    assert len(fingerprints) == 2


def test_labels_are_class_labels_and_a_whole_set_is_the_test_split(converted: Path, tmp_path: Path,
                                                                  folder_tree: Path, convert_into) -> None:
    loaded = _load(converted, tmp_path / "cache")
    assert set(loaded) == {"train", "validation"}
    features = loaded["train"].features
    assert isinstance(features["cls"], datasets.ClassLabel) and features["cls"].names == ["real", "fake"]
    for row in loaded["train"]:
        assert features["cls"].int2str(row["cls"]) == ("fake" if row["json"]["label"] else "real")
        assert row["json"]["generator"]  # the generator is in the metadata of every row
    whole = tmp_path / "whole"
    convert_into(whole, folders=[folder_tree], val_frac=0)
    assert SPLIT_NAMES["all"] == "test" and set(_load(whole, tmp_path / "cache")) == {"test"}


def test_the_card_the_manifest_and_the_samples_name_no_local_path(tmp_path: Path, hf_replica: Path,
                                                                 folder_tree: Path, convert_into) -> None:
    out = tmp_path / "out"
    command = f"/opt/venv/lib/python3.11/site-packages/commfor_fast/__main__.py convert --out={out} " \
              f"--hf-repo {hf_replica} --hf-split Systematic --folder {folder_tree}"
    from commfor_fast.convert.run import convert
    from commfor_fast.convert.settings import ConvertSettings

    convert(ConvertSettings(out=out, hf_repo=str(hf_replica), hf_split="Systematic", folders=[folder_tree],
                            quiet=True, workers=1, val_frac=0), command=command)
    typed = f"commfor-fast convert --out=out --hf-repo {hf_replica.name} --hf-split Systematic --folder local"
    assert Manifest.load(out).command == typed
    card = (out / CARD_NAME).read_text()
    assert f"`{typed}`" in card
    for text in (card, (out / GENERATORS_NAME).read_text()):
        assert str(tmp_path) not in text and "/opt/" not in text
    metas = [json.loads(members["json"]) for _, members in read_all_samples(out)["all"]]
    assert {m.get("root") for m in metas if m["source"] == "folder"} == {folder_tree.name}
    assert {m.get("repo") for m in metas if m["source"] == "hf"} == {hf_replica.name}
    assert not any(str(tmp_path) in json.dumps(m) for m in metas)
    # hub metadata: the replica's card says cc-by-4.0, a local folder says nothing
    front = _front_matter(out)
    assert front["license"] == ["cc-by-4.0", "unknown"] and "source_datasets" not in front
    assert "hf `CommunityForensics`: cc-by-4.0; folder `local`: unknown" in card


def _manifest(generators: list[str], sources: list[dict]) -> Manifest:
    counts = {g: ({"1": i % 7 + 1} if i % 2 else {"0": 3}) for i, g in enumerate(generators)}
    return Manifest(package_version="0.1.0", command="commfor-fast convert", settings={}, seed=0, preresize=None,
                    generators=generators, sources=sources,
                    sets={"all": SetInfo(sum(sum(c.values()) for c in counts.values()), [], counts=counts,
                                         stored={"png": {}})})


def test_thousands_of_generators_are_summarised_and_listed_beside_the_card(tmp_path: Path) -> None:
    names = [f"org-{i}/model-{i}" for i in range(5000)]
    manifest = _manifest(names, [])
    card = write_dataset_card(tmp_path, manifest).read_text()
    assert len(card.encode()) < 4000 and "org-4999" not in card
    assert "5000 generators and real sources: 2500 with fake images, 2500 with real images" in card
    assert "images per name: 1 to 7" in card and f"[`{GENERATORS_NAME}`]({GENERATORS_NAME})" in card
    with open(tmp_path / GENERATORS_NAME, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["generator"] for row in rows] == names and [int(row["id"]) for row in rows] == list(range(5000))
    for row, name in zip(rows, names):
        expected = manifest.sets["all"].counts[name]
        assert (int(row["real"]), int(row["fake"])) == (expected.get("0", 0), expected.get("1", 0))
        assert (row["all_real"], row["all_fake"]) == (row["real"], row["fake"])


def test_a_hub_source_gives_its_license_and_is_named_as_source_dataset(tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"  # as the hub download leaves the repo's card
    snapshot.mkdir()
    (snapshot / "README.md").write_text("---\nlicense: cc-by-nc-sa-4.0\n---\n# small\n")
    hub = {"kind": "hf", "repo": "OwensLab/CommunityForensics-Small", "root": str(snapshot)}
    (tmp_path / "out").mkdir()
    write_dataset_card(tmp_path / "out", _manifest(["a", "b"], [hub]))
    front = _front_matter(tmp_path / "out")
    assert front["license"] == "cc-by-nc-sa-4.0"
    assert front["source_datasets"] == ["OwensLab/CommunityForensics-Small"]
    assert str(tmp_path) not in (tmp_path / "out" / CARD_NAME).read_text()
    # parquet files given by path, beside a README.md that is no hub card: licence unknown
    (snapshot / "README.md").write_text("---\nlicense: [cc-by\n---\nnotes\n")
    write_dataset_card(tmp_path / "out", _manifest(["a"], [{**hub, "repo": str(snapshot / "*.parquet")}]))
    front = _front_matter(tmp_path / "out")
    assert front["license"] == "unknown" and "source_datasets" not in front


def test_portable_commands_and_paths() -> None:
    assert portable_command("/home/me/.venv/bin/commfor-fast train --data /data/shards --out run") == \
        "commfor-fast train --data shards --out run"
    assert portable_command("python -m pytest /tmp/x") == "python -m pytest x"
    assert portable_command("commfor-fast convert --labels a:0,b:1 --out='/a b/c d'") == \
        "commfor-fast convert --labels a:0,b:1 '--out=c d'"
    assert portable_path("OwensLab/CommunityForensics") == "OwensLab/CommunityForensics"
    assert portable_path("/data/*.parquet") == "*.parquet" and portable_path("rel/dir") == "rel/dir"
    meta = {"source": "folder", "root": "/home/me/imgs", "path": "gen/fake/1.png", "prompt": "/not/a/location"}
    assert portable_source_meta(meta) == {**meta, "root": "imgs"}
