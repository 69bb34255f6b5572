"""Source kinds as a registry: a new kind is one module plus its row in `sources._KINDS`.

The kind registered here (images inside a zip archive) is known to nothing else: the
converter scans, reads, balances, names its rejects and describes it, and evaluation
names its samples' origins, only through the registry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import image_bytes, read_all_samples

from commfor_fast import sources
from commfor_fast.evaluate import sample_origins
from commfor_fast.shards import Manifest
from commfor_fast.sources.units import Source, Unit


def _zip_kind(archive: Path) -> types.ModuleType:
    """A source kind reading `archive`: one unit per member `<generator>/<label>/<name>`."""
    kind = types.ModuleType("zip_kind_for_tests")
    kind.KIND, kind.BALANCED = "zip", True

    def scan(settings: Any, limits: Any, first_index: int) -> list[tuple[Source, list[Unit]]]:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
        units = [Unit(source=first_index, path=str(archive), name=m.filename, row_group=-1, first_row=0,
                      nbytes=m.file_size, labels=(limits.labels[m.filename.split("/")[1]],),
                      generators=(m.filename.split("/")[0],)) for m in members]
        summary = {"kind": kind.KIND, "samples": len(units)}
        return [(Source(kind=kind.KIND, given=str(archive), root=str(archive), summary=summary), units)]

    def read(unit: Unit, given: str, root: str) -> Iterator[tuple[bytes | str, dict[str, Any]]]:
        with zipfile.ZipFile(unit.path) as z:
            yield z.read(unit.name), {"source": kind.KIND, "archive": root, "member": unit.name}

    def item(unit: Unit, row: int, root: str) -> str:
        return f"{unit.path}!{unit.name}"

    def describe(source: Source) -> list[str]:
        return [f"  zip {source.given}: {source.summary['samples']} images"]

    def origin(meta: dict[str, Any]) -> tuple[str, str]:
        return meta["member"], meta["archive"]

    kind.scan, kind.read, kind.item, kind.describe, kind.origin = scan, read, item, describe, origin
    return kind


@pytest.fixture()
def zip_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An archive of 6 images and a damaged one, and its kind, registered for this test only."""
    archive = tmp_path / "extra.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(6):
            z.writestr(f"zipgen/{'fake' if i % 2 else 'real'}/{i}.png", image_bytes("png", 500 + i))
        z.writestr("zipgen/fake/broken.png", image_bytes("truncated", 506))
    module = _zip_kind(archive)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(sources._KINDS, module.KIND, module.__name__)
    return archive


def test_a_registered_kind_is_scanned_read_described_and_traced(tmp_path: Path, zip_kind: Path,
                                                                 folder_tree: Path, convert_into, capsys) -> None:
    convert_into(tmp_path / "dry", folders=[folder_tree], dry_run=True)
    assert f"  zip {zip_kind}: 7 images" in capsys.readouterr().out.splitlines()

    out = tmp_path / "out"
    manifest = convert_into(out, folders=[folder_tree], val_frac=0)
    assert [s["kind"] for s in manifest.sources] == ["folder", "zip"]
    assert [r["item"] for r in manifest.rejects if "zip" in r["item"]] == [f"{zip_kind}!zipgen/fake/broken.png"]
    samples = read_all_samples(out)["all"]
    metas = {int(key): json.loads(members["json"]) for key, members in samples}
    from_zip = {key: meta for key, meta in metas.items() if meta["source"] == "zip"}
    assert sorted(meta["member"] for meta in from_zip.values()) == sorted(
        f"zipgen/{'fake' if i % 2 else 'real'}/{i}.png" for i in range(6))
    assert all(meta["label"] == int(meta["member"].split("/")[1] == "fake") for meta in from_zip.values())

    keys = sorted(from_zip)
    names, origins = sample_origins(out, manifest, ["all"] * len(keys), np.asarray(keys))
    assert names == [from_zip[k]["member"] for k in keys] and set(origins) == {str(zip_kind)}


def test_origins_come_from_the_kind_that_wrote_the_sample() -> None:
    hf = {"source": "hf", "repo": "OwensLab/CommunityForensics", "file": "data/a.parquet", "row": 7}
    assert sources.sample_origin(hf) == ("data/a.parquet#row 7", "OwensLab/CommunityForensics")
    assert sources.sample_origin({**hf, "image_name": "00000007.png"})[0] == "00000007.png"
    assert sources.sample_origin({"source": "folder", "root": "/data", "path": "gen/fake/1.png"}) == \
        ("gen/fake/1.png", "/data")
    assert sources.sample_origin({}) == ("", "")  # no metadata: nothing to name, and never a guess


def test_evaluation_traces_origins_without_importing_the_converter() -> None:
    code = ("import sys\n"
            "from commfor_fast.evaluate import sample_origins\n"
            "from commfor_fast.sources import sample_origin\n"
            "sample_origin({'source': 'hf', 'repo': 'r', 'file': 'f', 'row': 0})\n"
            "sample_origin({'source': 'folder', 'root': '/r', 'path': 'p'})\n"
            "print(sorted(m for m in sys.modules if m.startswith('commfor_fast.convert')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
