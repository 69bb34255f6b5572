"""`isal` and `datasets` are optional: a GPU machine's image lacks both, and the package
must still convert there (zlib inflates; the dataset card is written unchecked)."""

from __future__ import annotations

import io
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from commfor_fast.convert import check
from commfor_fast.convert.card import write_dataset_card
from commfor_fast.imageio import BadImage
from commfor_fast.shards import Manifest, SetInfo


def _png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch):
    """`without(name)`: importing `name` (and its submodules) raises ImportError, as on
    a machine that lacks the package."""

    def hide(name: str) -> None:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, module)
        monkeypatch.setitem(sys.modules, name, None)

    check._zlib_module.cache_clear()
    yield hide
    check._zlib_module.cache_clear()


def test_png_check_falls_back_to_zlib_without_isal(without, capsys: pytest.CaptureFixture[str]) -> None:
    without("isal")
    assert check._zlib_module() is zlib
    data = _png()
    info = check.check_data(data, max_pixels=10**8)
    assert info is not None and (info.width, info.height) == (56, 40)
    # damage inside the compressed rows (CRCs recomputed, so only inflating finds it)
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8:start - 4], "big")
    body = bytearray(data[start:start + length])
    body[len(body) // 2:] = bytes(len(body) - len(body) // 2)
    crc = zlib.crc32(b"IDAT" + bytes(body)).to_bytes(4, "big")
    damaged = data[:start] + bytes(body) + crc + data[start + length + 4:]
    with pytest.raises(BadImage):
        check.check_data(damaged, max_pixels=10**8)
    notices = [line for line in capsys.readouterr().err.splitlines() if "isal" in line]
    assert len(notices) == 1 and "zlib" in notices[0]  # one line, once per process


def test_png_check_uses_isal_when_installed() -> None:
    pytest.importorskip("isal")
    check._zlib_module.cache_clear()
    assert check._zlib_module().__name__ == "isal.isal_zlib"


def _manifest(stored: dict[str, dict[str, int]], preresize: int | None) -> Manifest:
    return Manifest(package_version="0.1.0", command="commfor-fast convert", settings={}, seed=0,
                    preresize=preresize, generators=["a", "b"],
                    sets={"train": SetInfo(3, [], stored=stored), "val": SetInfo(1, [], stored=stored)})


@pytest.mark.parametrize("stored, preresize", [({"png": {}, "jpg": {}}, None), ({"ppm": {}}, 440)])
def test_dataset_card_without_datasets_is_the_same_card(without, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        stored: dict[str, dict[str, int]],
                                                        preresize: int | None) -> None:
    pytest.importorskip("datasets")
    manifest = _manifest(stored, preresize)
    for name in ("checked", "unchecked"):
        (tmp_path / name).mkdir()
    checked = write_dataset_card(tmp_path / "checked", manifest).read_text()
    assert "warning" not in capsys.readouterr().err
    without("datasets")
    unchecked = write_dataset_card(tmp_path / "unchecked", manifest).read_text()
    assert unchecked == checked and "dtype: json" in unchecked
    warnings = [line for line in capsys.readouterr().err.splitlines() if "datasets" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:")


def test_the_gpu_check_path_imports_without_isal_and_datasets() -> None:
    """What the GPU check and the converter import at import time needs neither package."""
    import subprocess

    code = ("import sys; sys.modules['isal'] = sys.modules['datasets'] = None\n"
            "import commfor_fast.cli, commfor_fast.convert.run, commfor_fast.convert.worker, "
            "commfor_fast.bench.gpu_check, commfor_fast.bench.gpu_steps, commfor_fast.bench.gpu_data, "
            "commfor_fast.pipelines.loader, commfor_fast.train, commfor_fast.evaluate")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
