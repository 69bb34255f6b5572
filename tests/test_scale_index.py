"""The shard index as flat arrays (`shard_index.py`): the same answers as the `.idx` text,
one cache entry per set mapped by every reader, damage still refused in one line, and an
evaluation part that reads only its own shards when there is no cache; and the scale
benchmark (`bench/scale_bench.py`): its extrapolation, and its plumbing at a tiny size."""

from __future__ import annotations

import errno
import json
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from commfor_fast import shard_index
from commfor_fast.errors import UserError
from commfor_fast.shards import Manifest, ShardReader, read_index, shard_range
from test_reliability import pristine, shards, source  # noqa: F401 (fixtures)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary folder, so the cache entries of this test are its own."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _listed(root: Path) -> list[dict]:
    info = Manifest.load(root).sets["all"]
    return [members for shard in info.shards for members in read_index(root / shard.index)]


def test_the_index_answers_as_the_idx_files(pristine: Path, cache: Path) -> None:
    info = Manifest.load(pristine).sets["all"]
    reader = ShardReader(pristine, info)
    listed = _listed(pristine)
    shard_of = [shard.tar for shard in info.shards for _ in range(shard.num_samples)]
    assert len(reader) == len(listed) == 16 and len(info.shards) > 2
    for i, members in enumerate(listed):
        assert reader.members(i) == members
        assert reader.shard_of(i) == shard_of[i]
        assert reader.position(next(iter(members.values())).filename.split(".")[0]) == i
        tar = (pristine / shard_of[i]).read_bytes()
        assert reader.read(i) == {ext: tar[m.offset: m.offset + m.size] for ext, m in members.items()}
    assert reader.position("9999999999") is None and reader.position("x") is None


def test_both_parsers_agree(pristine: Path) -> None:
    for shard in Manifest.load(pristine).sets["all"].shards:
        fast = shard_index._parse_fast(pristine / shard.index)
        checked = shard_index._parse_checked(pristine / shard.index)
        assert fast is not None
        assert [fast[0][k] for k in fast[1]] == [checked[0][k] for k in checked[1]]
        assert (fast[2] == checked[2]).all()


def test_one_mapped_cache_entry_per_set(pristine: Path, cache: Path) -> None:
    info = Manifest.load(pristine).sets["all"]
    first, second = ShardReader(pristine, info), ShardReader(pristine, info)
    assert first.index.cache == second.index.cache is not None
    assert isinstance(second.index.records, np.memmap) and second.index.records.dtype.itemsize == 29
    assert sorted(p.suffix for p in first.index.cache.parent.iterdir()) == [".json", ".npy"]
    copy = pickle.loads(pickle.dumps(first))  # a worker's copy: the file's name, not the records
    assert isinstance(copy.index.records, np.memmap) and copy.index.records.filename == first.index.records.filename
    assert [copy.members(i) for i in range(16)] == _listed(pristine)


def test_a_cache_that_cannot_be_written_or_read_is_done_without(pristine: Path, cache: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    info, listed = Manifest.load(pristine).sets["all"], _listed(pristine)
    write = shard_index._write_cache

    def disk_full(stem: Path, index: shard_index.SetIndex, described: list) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shard_index, "_write_cache", disk_full)
    alone = ShardReader(pristine, info)
    assert alone.index.cache is None and [alone.members(i) for i in range(16)] == listed
    monkeypatch.setattr(shard_index, "_write_cache", write)
    entry = ShardReader(pristine, info).index.cache
    entry.with_suffix(".json").write_text("{")  # damaged by something else
    again = ShardReader(pristine, info)
    assert again.index.cache is None and [again.members(i) for i in range(16)] == listed


def test_a_new_entry_removes_the_stale_ones(pristine: Path, shards: Path, cache: Path) -> None:
    """Converting again (other index files) leaves one entry per current set: the old
    entry, a deleted set's, one of another layout and a killed writer's files go;
    another set's stays."""
    kept = ShardReader(pristine, Manifest.load(pristine).sets["all"]).index.cache
    info = Manifest.load(shards).sets["all"]
    old = ShardReader(shards, info).index.cache
    folder = old.parent
    gone = Path(shutil.copytree(pristine, shards.parent / "gone"))
    ShardReader(gone, info)  # a set deleted since: its entry goes too
    shutil.rmtree(gone)
    (folder / ("0" * 32 + ".json")).write_text(json.dumps({"version": 0, "patterns": []}))
    (folder / ("1" * 32 + ".npy")).write_bytes(b"records of an entry whose json was never written")
    (folder / ".x.npy.0123.tmp").write_bytes(b"")
    assert len(list(folder.iterdir())) == 9
    index = shards / info.shards[0].index
    index.write_text(index.read_text())  # the same text, written again: another entry
    new = ShardReader(shards, info)
    assert new.index.cache not in (old, kept) and [new.members(i) for i in range(16)] == _listed(shards)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        entry.with_suffix(suffix).name for entry in (kept, new.index.cache) for suffix in (".json", ".npy"))


def _rewrite_line_2(index: Path, edit) -> None:
    lines = index.read_text().split("\n")
    lines[1] = edit(lines[1])
    index.write_text("\n".join(lines))


def test_an_index_damaged_after_caching_is_read_again(shards: Path, cache: Path) -> None:
    info = Manifest.load(shards).sets["all"]
    ShardReader(shards, info)
    _rewrite_line_2(shards / info.shards[0].index, lambda line: line.replace(" ", " x", 1)[:-1])
    with pytest.raises(UserError, match="damaged index line 2") as caught:
        ShardReader(shards, info)
    assert "\n" not in str(caught.value)


def test_an_offset_off_the_tar_layout_is_a_damaged_line(shards: Path, cache: Path) -> None:
    info = Manifest.load(shards).sets["all"]
    index = shards / info.shards[0].index

    def shift_second_member(line: str) -> str:
        fields = line.split(" ")
        fields[5] = str(int(fields[5]) + 512)
        return " ".join(fields)

    _rewrite_line_2(index, shift_second_member)
    assert len(read_index(index)) == info.shards[0].num_samples  # the text alone looks whole
    with pytest.raises(UserError, match=f"{index}: damaged index line 2 .*tar layout"):
        ShardReader(shards, info)


def test_without_a_cache_an_evaluation_part_reads_only_its_shards(pristine: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shard_index, "_cache_folder", lambda: None)
    info = Manifest.load(pristine).sets["all"]
    start, end = shard_range(16, 1, 2)
    part = ShardReader(pristine, info, (start, end))
    assert part.index.cache is None and 0 < part.index.first <= start and len(part.index.records) < 16
    listed = _listed(pristine)
    assert [part.members(i) for i in range(start, end)] == listed[start:end]
    with pytest.raises(IndexError):
        part.members(0)


# ----------------------------------------------------------- the scale benchmark


def _linear_rows(step: str, cpu_per: float, mb_per: float, fixed_mb: float) -> list[dict]:
    return [{"step": step, "samples": n, "cpu_s": 1 + cpu_per * n, "peak_rss_mb": fixed_mb + mb_per * n,
             "pss_mb": fixed_mb + mb_per * n, "index_cpu_s": cpu_per * n / 2, "index_mb": mb_per * n / 2}
            for n in (1000, 3000)]


def test_the_extrapolation_follows_the_slope() -> None:
    from commfor_fast.bench import scale_bench

    rows = (_linear_rows("verify", 1e-5, 1e-4, 300) + _linear_rows("loader dali, 1 rank(s)", 0, 1e-5, 500) +
            _linear_rows("loader dali, 2 rank(s)", 2e-6, 1e-5, 900))
    rows += [{"step": f"eval {k} images", "samples": 3000, "scored": k, "cpu_s": 1.0, "peak_rss_mb": 400 + k / 1000}
             for k in (150, 1500)]
    found = {r["step"]: r for r in scale_bench.extrapolate(rows)}
    full, per_rank, per_node = scale_bench.FULL_SCALE, scale_bench.EXTRA_COLUMNS[3], scale_bench.EXTRA_COLUMNS[4]
    assert found["verify"]["cpu_us/sample"] == pytest.approx(10)
    assert found["verify"]["bytes/sample"] == pytest.approx(1e-4 * 2**20)
    assert found["verify"][per_rank] == pytest.approx(1 + 1e-5 * full)
    assert found["loader dali, 2 rank(s)"]["cpu_us/sample"] == pytest.approx(1)  # the index's share: half
    one, two = 500 + 1e-5 * 3000, 900 + 1e-5 * 3000  # MB at 3000 samples: one rank, two ranks
    assert found["loader dali, 2 rank(s)"][per_node] == pytest.approx(
        (one + 7 * (two - one) + 0.5e-5 * (full - 3000)) * 2**20 / 1e9)
    assert found["loader dali, 1 rank(s)"][per_node] is None
    assert found["eval, per scored image"]["bytes/sample"] == pytest.approx(2**20 / 1000)


@pytest.mark.slow
def test_the_scale_benchmark_measures_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its plumbing at a tiny size (no figure is checked but for being there)."""
    from commfor_fast.bench import scale_bench

    monkeypatch.setattr(scale_bench, "GENERATORS", 20)
    results = json.loads(json.dumps(scale_bench.run(tmp_path, (120, 240))))["scale"]
    steps = {(r["step"], r["samples"]) for r in results["steps"]}
    for n in (120, 240):
        assert {"dry run", "convert", "verify", "loader reference, 1 rank(s)", "loader reference, 2 rank(s)",
                "loader dali, 1 rank(s)", "loader dali, 2 rank(s)"} <= {step for step, size in steps if size == n}
        scored = [r["scored"] for r in results["steps"] if r["samples"] == n and "scored" in r]
        assert len(scored) == 2 and 0 < scored[0] < scored[1]
    assert all(r["cpu_s"] > 0 and r["pss_mb"] > 0 for r in results["steps"])
    assert len(results["extrapolated"]) == 8 and (tmp_path / "scale.md").exists()
