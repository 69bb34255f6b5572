"""Scaling the converter and `verify` (issue 25 items 3, 5, 9; issue 23 item 21).

Hashing on several threads and split across ranks; the process group's timeout; the
folder scan recorded once and read by reruns; linear partition clean-up; validation
samples packed into full shards; every node in the manifest; balancing from the fakes
that pass the image checks.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import FOLDER_LAYOUT, run_convert, write_folder_tree

from commfor_fast.convert.listing import LISTING_NAME
from commfor_fast.convert.parts import CHECKS_NAME, clear_partitions
from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.distributed import COLLECTIVE_TIMEOUT, Dist, setup_distributed
from commfor_fast.errors import UserError
from commfor_fast.progress import Progress
from commfor_fast.shards import MANIFEST_NAME, Manifest, ShardInfo, read_index
from commfor_fast.sources import folders
from commfor_fast.sources.folders import RACY_NS
from commfor_fast.threads import map_threads
from commfor_fast.verify import verify_for_training, verify_shards


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, folder_tree: Path) -> Path:
    """A small conversion of the local folder tree, several shards in one set. Read-only."""
    out = tmp_path_factory.mktemp("scale") / "shards"
    run_convert(out, folders=[folder_tree], shard_size="4KB", balance=False, val_frac=0)
    return out


@pytest.fixture
def damaged(shards: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of `shards` with one bit flipped in its second shard; (folder, that shard's tar)."""
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    shard = Manifest.load(copy).sets["all"].shards[1]
    flip_byte(copy / shard.tar, 700)
    return copy, shard.tar


# ------------------------------------------------------------------ hashing in parallel (25.3)


def test_map_threads_keeps_the_order_and_counts_every_item() -> None:
    names: set[str] = set()

    def work(n: int) -> int:
        names.add(threading.current_thread().name)
        threading.Event().wait(0.01 * (5 - n))  # later items finish first
        return n * n

    with Progress(5, "t", enabled=False) as bar:
        assert map_threads(work, [1, 2, 3, 4], threads=4, progress=bar, nbytes=lambda n: 10 * n) == [1, 4, 9, 16]
        assert (bar.count, bar.nbytes) == (4, 100)
    assert len(names) > 1  # really on several threads


def test_map_threads_raises_an_items_error() -> None:
    def work(n: int) -> int:
        if n == 3:
            raise UserError("three")
        return n

    with pytest.raises(UserError, match="three"):
        map_threads(work, [1, 2, 3, 4], threads=2)


def test_threads_find_what_one_thread_finds(damaged: tuple[Path, str]) -> None:
    folder, tar = damaged
    one = verify_shards(folder, progress=False, threads=1)
    many = verify_shards(folder, progress=False, threads=4)
    assert one == many and [d.shard for d in many[1]] == [tar]
    assert many[0] == len(Manifest.load(folder).sets["all"].shards) > 2


def test_ranks_share_the_shards(damaged: tuple[Path, str]) -> None:
    folder, tar = damaged
    total = len(Manifest.load(folder).sets["all"].shards)
    parts = [verify_shards(folder, progress=False, rank=r, world_size=2) for r in range(2)]
    assert parts[0][0] + parts[1][0] == total and abs(parts[0][0] - parts[1][0]) <= 1
    assert [d.shard for d in parts[1][1]] == [tar] and parts[0][1] == []  # shard 1 is rank 1's


def _rank_verifies(rank: int, init: str, data: str, said: mp.Queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        verify_for_training(Path(data), Dist(rank, rank, 2))
        said.put((rank, "intact"))
    except UserError as exc:
        said.put((rank, str(exc)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_verify_their_shares_and_both_stop(damaged: tuple[Path, str], tmp_path: Path) -> None:
    folder, tar = damaged
    ctx = mp.get_context("spawn")
    said = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    ranks = [ctx.Process(target=_rank_verifies, args=(r, init, str(folder), said)) for r in range(2)]
    for p in ranks:
        p.start()
    results = dict(said.get(timeout=120) for _ in ranks)
    for p in ranks:
        p.join(timeout=60)
    total = len(Manifest.load(folder).sets["all"].shards)
    # rank 0 found nothing in its share, yet both stop with the same line, counting every shard
    assert results[0] == results[1]
    assert results[0].startswith(f"--verify-hashes: 1 of {total} shards in {folder} are damaged, e.g. {tar}: ")


def test_the_process_group_waits_longer_than_nccl_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import torch.distributed as dist

    calls: list[dict] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    setup_distributed(torch.device("cpu"), Dist(0, 0, 2))
    assert calls == [{"backend": "gloo", "timeout": COLLECTIVE_TIMEOUT}]
    assert COLLECTIVE_TIMEOUT.total_seconds() > 3600  # NCCL's default is 10 minutes


def test_convert_verify_hashes_checks_partitions_on_threads(folder_tree: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from commfor_fast.convert import run

    out = tmp_path / "out"
    run_convert(out, folders=[folder_tree], balance=False, val_frac=0, verify_hashes=True, workers=2)
    seen: list[int] = []
    real = run.map_threads
    monkeypatch.setattr(run, "map_threads", lambda fn, items, threads, bar: seen.append(threads) or
                        real(fn, items, threads, bar))
    manifest = run_convert(out, folders=[folder_tree], balance=False, val_frac=0, verify_hashes=True, workers=2)
    assert seen == [2] and manifest is not None


# ------------------------------------------------------------------ the folder scan, recorded once (25.5)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A fresh copy of the folder layout, old enough for its folders' stamps to be trusted."""
    root = write_folder_tree(tmp_path / "local", FOLDER_LAYOUT)
    time.sleep(2 * RACY_NS / 1e9)
    return root


def _count_walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    listed: list[str] = []
    real = folders._Walk.entries
    monkeypatch.setattr(folders._Walk, "entries", lambda self, folder: listed.append(folder) or real(self, folder))
    return listed


def _data(manifest: Manifest) -> tuple:
    return manifest.to_json()["sets"], manifest.generators, manifest.sources


def test_a_rerun_reads_the_listing_instead_of_walking(tree: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    first = run_convert(out, folders=[tree], seed=1)
    assert (out / LISTING_NAME).is_file()
    (out / MANIFEST_NAME).unlink()  # the rerun must rebuild it, from the recorded scan
    listed = _count_walks(monkeypatch)
    again = run_convert(out, folders=[tree], seed=1)
    assert listed == [] and first is not None and again is not None
    assert _data(again) == _data(first)
    # another node (a fresh output folder given the listing) plans the same without walking
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(out / "plan.json", other / "plan.json")
    shutil.copy(out / LISTING_NAME, other / LISTING_NAME)
    assert _data(run_convert(other, folders=[tree], seed=1)) == _data(first) and listed == []


def test_a_changed_folder_is_walked_again(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    run_convert(out, folders=[tree], seed=1)
    shutil.copy(tree / "coco-extra" / "real" / "img002.png", tree / "coco-extra" / "real" / "img100.png")
    listed = _count_walks(monkeypatch)
    capsys.readouterr()
    with pytest.raises(UserError, match="holds a conversion with other settings or other source files"):
        run_convert(out, folders=[tree], seed=1, dry_run=True, quiet=False)
    assert listed  # the label folder's ctime changed: everything is walked again
    assert "plan: 17 samples (all 17) of 17 found" in capsys.readouterr().err  # 16 before


def test_a_damaged_listing_or_other_settings_mean_a_new_walk(tree: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    first = run_convert(out, folders=[tree], seed=1)
    (out / LISTING_NAME).write_bytes(b"\x1f\x8b not gzip")
    listed = _count_walks(monkeypatch)
    assert _data(run_convert(out, folders=[tree], seed=1)) == _data(first)
    assert listed
    listed.clear()
    with pytest.raises(UserError, match="other settings or other source files"):  # it finds fewer images
        run_convert(out, folders=[tree], seed=1, discovery="original", dry_run=True)
    assert listed  # another discovery rule finds other files: never the recorded scan


def test_the_walk_resolves_real_paths_of_links_only(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / "coco-extra" / "real" / "link.png").symlink_to(tree / "ffhq-extra" / "real" / "img000.png")
    resolved: list[str] = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: resolved.append(str(p)) or real(p, **kw))
    source, units = folders.scan_folder(tree, {"real": 0, "fake": 1}, 0)
    label_folders = 4  # coco-extra/real, ffhq-extra/real, mygan/fake, mygan/real: base and walk each
    assert len(resolved) == 2 * label_folders + 1 and resolved.count(str(tree / "coco-extra" / "real" / "link.png"))
    assert len(units) == 16  # the link's image is taken once, in its own folder
    # the folder changed just now is never trusted; the others are stamped with their ctime
    changed = str(tree / "coco-extra" / "real")
    assert source.stamps[changed] == -1 and all(v > 0 for k, v in source.stamps.items() if k != changed)
    assert len(source.stamps) == 1 + 3 + label_folders  # the root, its datasets, their label folders


# ------------------------------------------------------------------ smaller scaling points (25.9)


def test_clearing_partitions_lists_each_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    names: dict[str, list[str]] = {"parts": [], "train": [], "parts/val": []}  # val pieces: OUT/parts/val/
    for p in range(12):
        names["parts"] += [f"part-{p:05d}.json", f".part-{p:05d}.json.{p:032x}.tmp"]
        for folder in ("train", "parts/val"):
            names[folder] += [f"shard-{p:05d}-{n:03d}.tar{ext}" for n in range(3) for ext in ("", ".idx")]
            names[folder].append(f".shard-{p:05d}-003.tar.{p:032x}.tmp")
    names["train"] += [".shard-00002-000.tar", "notes.txt"]  # not ours: a hidden file that is no temporary
    for folder, files in names.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            (out / folder / name).write_bytes(b"x")
    (out / "val").mkdir()
    listed: list[str] = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listed.append(str(path)) or real(path))
    clear_partitions(out, [2, 10], ("train", "val"))
    assert len(listed) == 4  # parts, train, val, parts/val: once each, for any number of partitions
    for folder, files in names.items():
        left = sorted(p.name for p in (out / folder).iterdir() if p.is_file())
        gone = {n for n in files if "-00002" in n or "-00010" in n} - {".shard-00002-000.tar"}
        assert left == sorted(set(files) - gone)
        assert len(left) == {"parts": 20, "train": 10 * 7 + 2, "parts/val": 10 * 7}[folder]


def test_the_manifest_names_every_node(tmp_path: Path, folder_tree: Path) -> None:
    def node(rank: int, command: str) -> Manifest | None:
        return convert(ConvertSettings(out=tmp_path / "out", folders=[folder_tree], quiet=True, workers=1,
                                       partition_size="60KB", num_nodes=3, node_rank=rank), command=command)

    assert node(2, "third") is None and node(0, "first") is None
    manifest = node(1, "second")  # the last node merges
    assert manifest is not None
    assert [(n["node_rank"], n["command"], n["partitions"][:1]) for n in manifest.nodes] == [
        (0, "first", [0]), (1, "second", [1]), (2, "third", [2])]
    assert all(n["host"] and n["workers"] == 1 and n["num_nodes"] == 3 for n in manifest.nodes)
    assert Manifest.load(tmp_path / "out").nodes == manifest.nodes


# ------------------------------------------------------------------ balancing from the images written (23.21)


def _written(manifest: Manifest) -> dict[str, int]:
    counts = {"0": 0, "1": 0}
    for info in manifest.sets.values():
        for by_label in info.counts.values():
            for label, n in by_label.items():
                counts[label] += n
    return counts


def test_balancing_can_count_only_the_images_that_pass_the_checks(tmp_path: Path, hf_replica: Path,
                                                                   folder_tree: Path, extra_real: Path) -> None:
    sources = {"hf_repo": str(hf_replica), "hf_split": "Systematic+Manual", "folders": [folder_tree, extra_real]}
    # every row counted, as the original does: 24 fakes - 9 HF reals = 15 local reals (test_convert.py),
    # but 3 fakes (a truncated and a garbage HF image, a truncated local one) and 1 HF real (empty) are
    # rejected: 23 reals are written against 21 fakes
    rows = run_convert(tmp_path / "rows", **sources)
    assert rows is not None and rows.balance["limit"] == 15 and _written(rows) == {"0": 23, "1": 21}
    # counted after the checks: 21 fakes - 8 HF reals = 13, water-filled over mygan 2, ffhq-extra 3,
    # coco-extra 6, celeba-extra 8: mygan and ffhq whole, quota ceil((13 - 5) / 2) = 4 for the others
    checked = run_convert(tmp_path / "checked", **sources, balance_checked=True, workers=2)
    b = checked.balance
    assert (b["fakes"], b["hf_reals"], b["limit"], b["unwritten_fakes"], b["unwritten_hf_reals"]) == (21, 8, 13, 3, 1)
    assert {name: d["kept"] for name, d in b["datasets"].items()} == {
        "celeba-extra": 4, "coco-extra": 4, "ffhq-extra": 3, "mygan": 2}
    assert _written(checked) == {"0": 21, "1": 21}  # reals no longer outnumber fakes
    assert (tmp_path / "checked" / CHECKS_NAME).is_file()


def test_the_checks_for_balancing_are_recorded_for_reruns(tmp_path: Path, hf_replica: Path, folder_tree: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from commfor_fast.convert import balance_checks

    sources = {"hf_repo": str(hf_replica), "hf_split": "Systematic+Manual", "folders": [folder_tree]}
    first = run_convert(tmp_path / "out", **sources, balance_checked=True)
    monkeypatch.setattr(balance_checks, "_failing_rows", lambda unit: pytest.fail("checked again"))
    (tmp_path / "out" / MANIFEST_NAME).unlink()
    again = run_convert(tmp_path / "out", **sources, balance_checked=True)
    assert again is not None and first is not None and again.balance == first.balance
    with pytest.raises(UserError, match="other settings"):  # the option changes what is written
        run_convert(tmp_path / "out", **sources)


def _keys(out: Path, shards: list) -> list[str]:
    return [next(iter(s.values())).filename.split(".")[0] for shard in shards for s in read_index(out / shard.index)]


def test_validation_samples_are_packed_into_full_shards(tmp_path: Path, hf_replica: Path, folder_tree: Path) -> None:
    out = tmp_path / "out"
    manifest = run_convert(out, hf_repo=str(hf_replica), hf_split="Systematic+Manual", folders=[folder_tree],
                           val_frac=0.3, shard_size="60KB", partition_size="30KB")
    markers = [json.loads(p.read_text()) for p in sorted((out / "parts").glob("part-*.json"))]
    pieces = [ShardInfo(**s) for m in markers for s in m["sets"]["val"]["shards"]]
    val = manifest.sets["val"].shards
    assert len(pieces) > len(val) >= 2  # one piece per partition; fewer, fuller packed shards
    assert sorted(p.name for p in (out / "val").iterdir()) == sorted(
        n for i in range(len(val)) for n in (f"shard-val-{i:05d}.tar", f"shard-val-{i:05d}.tar.idx"))
    # the same samples, numbers and order as the pieces, member for member
    assert _keys(out, val) == _keys(out, pieces) == sorted(_keys(out, pieces))
    assert sum(s.num_samples for s in val) == manifest.sets["val"].num_samples
    assert all(s.bytes <= 60_000 for s in val[:-1]) and val[0].bytes > max(p.bytes for p in pieces)
    assert verify_shards(out, progress=False)[1] == []


def test_a_rerun_keeps_packed_shards_and_repacks_lost_ones(tmp_path: Path, folder_tree: Path) -> None:
    out = tmp_path / "out"
    settings = {"folders": [folder_tree], "val_frac": 0.3, "shard_size": "30KB", "partition_size": "20KB"}
    first = run_convert(out, **settings)
    shards = first.sets["val"].shards
    stamp = (out / shards[0].tar).stat().st_mtime_ns
    (out / "README.md").unlink()  # makes the rerun write something: the card
    assert run_convert(out, **settings).sets["val"].shards == shards
    assert (out / shards[0].tar).stat().st_mtime_ns == stamp  # kept, not packed again
    (out / shards[-1].tar).unlink()
    again = run_convert(out, **settings)
    assert again.sets["val"].shards == shards and (out / shards[-1].tar).is_file()  # the same bytes again
