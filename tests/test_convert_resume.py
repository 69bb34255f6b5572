"""Resume, parallelism and nodes: whatever the path to a finished folder, it holds the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import image_bytes, read_all_samples

from commfor_fast.convert.listing import LISTING_NAME
from commfor_fast.convert.parts import PLAN_NAME, marker_path
from commfor_fast.errors import UserError
from commfor_fast.fileio import is_temporary
from commfor_fast.shards import MANIFEST_NAME, Manifest

SETTINGS = {"val_frac": 0.2, "seed": 5}


def snapshot(out: Path) -> dict[str, str]:
    """sha256 of every file in a conversion folder; the manifest without command, settings and
    nodes, the markers without the node and the source hash that only `--verify-hashes` records;
    not the folder listing (a cache of the scan, holding the folders' ctimes)."""
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != LISTING_NAME:
            data = path.read_bytes()
            if path.name == MANIFEST_NAME:
                manifest = json.loads(data)
                manifest.pop("command")
                manifest.pop("settings")
                manifest.pop("nodes")
                data = json.dumps(manifest, sort_keys=True).encode()
            elif path.parent.name == "parts":
                marker = json.loads(data)
                marker.pop("inputs_sha256")
                marker.pop("node")
                data = json.dumps(marker, sort_keys=True).encode()
            files[path.relative_to(out).as_posix()] = hashlib.sha256(data).hexdigest()
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory, hf_replica, folder_tree, convert_into) -> tuple[Path, dict[str, str]]:
    """One uninterrupted single-process run, the baseline for the others."""
    out = tmp_path_factory.mktemp("reference") / "out"
    convert_into(out, hf_repo=str(hf_replica), hf_split="Systematic+Manual", folders=[folder_tree], **SETTINGS)
    return out, snapshot(out)


def run_same(out: Path, hf_replica: Path, folder_tree: Path, convert_into, **overrides):
    return convert_into(out, hf_repo=str(hf_replica), hf_split="Systematic+Manual", folders=[folder_tree],
                        **{**SETTINGS, **overrides})


def test_reference_has_several_partitions_and_shards(reference):
    _, files = reference
    assert sum(name.startswith("parts/") for name in files) >= 4
    assert sum(name.endswith(".tar") for name in files) >= 8
    assert not [name for name in files if "/." in name or name.startswith(".")]  # no temporary files left


def test_resume_after_damage_redoes_only_what_is_broken(tmp_path, reference, hf_replica, folder_tree, convert_into):
    _, ref_files = reference
    out = tmp_path / "out"
    run_same(out, hf_replica, folder_tree, convert_into)
    marker_path(out, 1).unlink()  # partition 1 lost its marker
    marker = json.loads(marker_path(out, 2).read_text())
    damaged = out / marker["sets"]["train"]["shards"][0]["tar"]
    damaged.write_bytes(damaged.read_bytes()[:1000])  # partition 2: a shard cut short
    (out / "train" / ".shard-00001-007.tar.0123abcd.tmp").write_bytes(b"half a shard")  # a crash's leftovers
    (out / "parts" / ".part-00001.json.4567cdef.tmp").write_bytes(b"half a marker")
    (out / MANIFEST_NAME).unlink()
    untouched = marker_path(out, 0).stat().st_mtime_ns
    run_same(out, hf_replica, folder_tree, convert_into)
    assert snapshot(out) == ref_files
    assert marker_path(out, 0).stat().st_mtime_ns == untouched  # finished partitions are not redone


def test_verify_hashes_finds_a_flipped_byte(tmp_path, reference, hf_replica, folder_tree, convert_into):
    _, ref_files = reference
    out = tmp_path / "out"
    run_same(out, hf_replica, folder_tree, convert_into)
    shard = out / Manifest.load(out).sets["train"].shards[0].tar
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    run_same(out, hf_replica, folder_tree, convert_into)  # sizes still match: considered complete
    assert snapshot(out) != ref_files
    run_same(out, hf_replica, folder_tree, convert_into, verify_hashes=True)
    assert snapshot(out) == ref_files


KILLER = """
import os, signal, sys
from pathlib import Path
from commfor_fast.convert import tarshard
from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings

# Die like `kill -9` in the middle of writing a tar, after `limit` samples were added.
added = {"n": 0}
original_add = tarshard.ShardWriter.add
def add(self, key, members):
    original_add(self, key, members)
    added["n"] += 1
    if added["n"] == int(sys.argv[1]):
        self._file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
tarshard.ShardWriter.add = add
settings = ConvertSettings(**{k: (Path(v) if k == "out" else [Path(p) for p in v] if k == "folders" else v)
                              for k, v in __import__("json").loads(sys.argv[2]).items()})
convert(settings, command="killed")
"""


def test_resume_after_kill_gives_the_same_folder(tmp_path, reference, hf_replica, folder_tree, convert_into):
    _, ref_files = reference
    out = tmp_path / "out"
    options = {"out": str(out), "hf_repo": str(hf_replica), "hf_split": "Systematic+Manual",
               "folders": [str(folder_tree)], "quiet": True, "workers": 1, "shard_size": "40KB",
               "partition_size": "60KB", **SETTINGS}
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    done = subprocess.run([sys.executable, str(script), "20", json.dumps(options)], capture_output=True, check=False)
    assert done.returncode == -9, done.stderr.decode()
    assert not (out / MANIFEST_NAME).exists()
    assert list((out / "parts").glob("*.json")), "the kill came before any partition finished"
    assert list(out.glob("*/.shard-*.tmp*")), "the kill came outside a tar write"
    run_same(out, hf_replica, folder_tree, convert_into)
    assert snapshot(out) == ref_files


DYING_WORKER = """
import json, os, signal, sys
from pathlib import Path
from commfor_fast.convert import run
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.convert.worker import run_in_pool
from commfor_fast.errors import UserError

def die_on_partition_1(task):
    # Killed like the kernel's OOM killer does it: no exception, no message.
    if task.index == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return run_in_pool(task)

if __name__ == "__main__":  # spawned workers import this file too
    run.run_in_pool = die_on_partition_1
    settings = ConvertSettings(**{k: (Path(v) if k == "out" else [Path(p) for p in v] if k == "folders" else v)
                                  for k, v in json.loads(sys.argv[1]).items()})
    try:
        run.convert(settings, command="dying")
    except UserError as exc:
        sys.exit(f"error: {exc}")
"""


def test_a_dead_worker_stops_the_run_instead_of_hanging(tmp_path, reference, hf_replica, folder_tree, convert_into):
    out = tmp_path / "out"
    options = {"out": str(out), "hf_repo": str(hf_replica), "hf_split": "Systematic+Manual",
               "folders": [str(folder_tree)], "quiet": True, "workers": 2, "shard_size": "40KB",
               "partition_size": "60KB", **SETTINGS}
    script = tmp_path / "dying.py"
    script.write_text(DYING_WORKER)
    done = subprocess.run([sys.executable, str(script), json.dumps(options)], capture_output=True, check=False,
                          timeout=180)
    assert done.returncode == 1, done.stderr.decode()
    assert done.stderr.decode().strip() == (
        "error: a conversion worker died (out of memory?): rerun the same command to resume; "
        "lower --workers or --partition-size")
    assert not marker_path(out, 1).exists() and not (out / MANIFEST_NAME).exists()
    run_same(out, hf_replica, folder_tree, convert_into, workers=2)
    assert snapshot(out) == reference[1]


def test_relative_and_absolute_paths_are_the_same_sources(tmp_path, reference, hf_replica, folder_tree,
                                                          convert_into, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.chdir(folder_tree.parent)
    relative = {"hf_repo": os.path.relpath(hf_replica), "folders": [Path(folder_tree.name)]}
    convert_into(out, hf_split="Systematic+Manual", **relative, **SETTINGS)
    marker_path(out, 1).unlink()
    (out / MANIFEST_NAME).unlink()
    manifest = run_same(out, hf_replica, folder_tree, convert_into)  # absolute paths: resumes, is not refused
    assert manifest.settings["folders"] == [folder_tree.name]  # resolved, then recorded by its last component
    assert snapshot(out) == reference[1]


def test_temporary_files_are_not_foreign(tmp_path, folder_tree, convert_into):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".plan.json.0123abcd.tmp").write_text("{")  # another node was killed while writing plan.json
    assert convert_into(out, folders=[folder_tree], val_frac=0) is not None
    (out / ".manifest.json.4567cdef.tmp").write_text("{")
    assert convert_into(out, folders=[folder_tree], val_frac=0, seed=9, overwrite=True).seed == 9
    assert not list(out.glob(".*"))  # --overwrite deleted the leftovers with the old conversion


def test_two_workers_give_the_same_folder(tmp_path, reference, hf_replica, folder_tree, convert_into):
    run_same(tmp_path / "out", hf_replica, folder_tree, convert_into, workers=2)
    assert snapshot(tmp_path / "out") == reference[1]


def test_two_nodes_then_merge_give_the_same_folder(tmp_path, reference, hf_replica, folder_tree, convert_into, capsys):
    out = tmp_path / "out"
    assert run_same(out, hf_replica, folder_tree, convert_into, num_nodes=2, node_rank=0) is None  # quiet
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1 and said[0].startswith("node 0/2 is done, but manifest.json is not written yet: ")
    assert said[0].endswith("the last node to finish writes it (re-running this command also does)")
    assert not (out / MANIFEST_NAME).exists()
    assert all(int(p.stem.split("-")[1]) % 2 == 0 for p in (out / "parts").glob("*.json"))
    manifest = run_same(out, hf_replica, folder_tree, convert_into, num_nodes=2, node_rank=1)
    assert manifest is not None
    assert snapshot(out) == reference[1]
    partitions = len(list((out / "parts").glob("*.json")))  # both nodes are named, each with its partitions
    assert [(n["node_rank"], n["num_nodes"], n["command"], n["partitions"]) for n in manifest.nodes] == [
        (0, 2, "pytest", list(range(0, partitions, 2))), (1, 2, "pytest", list(range(1, partitions, 2)))]


def test_other_settings_into_the_same_folder_are_refused(tmp_path, hf_replica, folder_tree, convert_into):
    out = tmp_path / "out"
    run_same(out, hf_replica, folder_tree, convert_into)
    with pytest.raises(UserError, match="--overwrite"):
        run_same(out, hf_replica, folder_tree, convert_into, seed=6)
    manifest = run_same(out, hf_replica, folder_tree, convert_into, seed=6, overwrite=True)
    assert manifest.seed == 6
    assert json.loads((out / PLAN_NAME).read_text())["fingerprint"]
    # settings that only change speed are not "other settings"
    assert run_same(out, hf_replica, folder_tree, convert_into, seed=6, workers=2) is not None


def test_a_folder_of_other_files_is_refused(tmp_path, folder_tree, convert_into):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and holds no plan.json"):
        convert_into(out, folders=[folder_tree])
    assert (out / "precious.txt").read_text() == "keep me"
    assert os.listdir(out) == ["precious.txt"]


SLOW_CLI = """
import os, sys, time
from commfor_fast.convert import worker

checked = worker.store_image
def slow_store_image(data, config):  # slow enough that Ctrl-C lands in the middle of the run
    # 0.1 s per image, and 1 s once the test has seen a partition done: on a loaded
    # machine the others could otherwise finish before the signal arrives
    time.sleep(1.0 if os.path.exists(os.environ["SLOW_FLAG"]) else 0.1)
    return checked(data, config)
worker.store_image = slow_store_image  # at the top: the spawned workers import this file too

if __name__ == "__main__":
    from commfor_fast.cli import main
    sys.argv[0] = "commfor-fast"
    main()
"""


def test_ctrl_c_with_workers_stops_at_once_and_resumes(tmp_path, reference, hf_replica, folder_tree, convert_into):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it (it once hung in 3 of 6 trials)."""
    out = tmp_path / "out"
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    args = ["convert", "--quiet", "--workers", "2", "--hf-repo", str(hf_replica), "--hf-split", "Systematic+Manual",
            "--folder", str(folder_tree), "--val-frac", str(SETTINGS["val_frac"]), "--seed", str(SETTINGS["seed"]),
            "--shard-size", "40KB", "--partition-size", "60KB", "--out", str(out)]
    flag = tmp_path / "slower"
    proc = subprocess.Popen([sys.executable, str(script), *args], stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "SLOW_FLAG": str(flag)})
    try:
        deadline = time.monotonic() + 120
        while not list((out / "parts").glob("part-*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)  # interrupt once a partition is done and others are under way
        flag.touch()
        time.sleep(0.2)
        assert proc.poll() is None, "the conversion ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        stopped_after = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr.decode()
    assert stopped_after < 5
    assert stderr.decode().strip().splitlines()[-1].startswith("interrupted: rerun the same command")
    assert not (out / MANIFEST_NAME).exists()
    assert not [p for p in out.rglob("*") if is_temporary(p.name)]
    finished = {p.name for p in (out / "parts").iterdir()}
    assert finished and len(finished) < sum(n.startswith("parts/") for n in reference[1])
    run_same(out, hf_replica, folder_tree, convert_into, workers=2)
    assert snapshot(out) == reference[1]


def test_verify_hashes_finds_a_source_edited_in_place(tmp_path, folder_tree, convert_into, capsys):
    """Same name, same size, other bytes: only a hash of the sources can tell."""
    src = Path(shutil.copytree(folder_tree, tmp_path / "src"))
    out = tmp_path / "out"
    convert_into(out, folders=[src], val_frac=0)
    convert_into(out, folders=[src], val_frac=0, verify_hashes=True, quiet=False)  # records the source hashes
    assert "were converted without --verify-hashes" in capsys.readouterr().err
    edited = src / "coco-extra" / "real" / "img000.JPG"
    before = {key: members["image"] for key, members in read_all_samples(out)["all"]}
    assert edited.read_bytes() in before.values()
    size = edited.stat().st_size
    smaller = next(b for b in (image_bytes("jpeg", seed) for seed in range(900, 1000)) if len(b) < size)
    data = smaller.ljust(size, b"\0")  # another valid JPEG (zeros after its end), the same size
    edited.write_bytes(data)
    convert_into(out, folders=[src], val_frac=0)  # names and sizes match: considered complete
    assert data not in [m["image"] for _, m in read_all_samples(out)["all"]]
    convert_into(out, folders=[src], val_frac=0, verify_hashes=True)
    stored = [m["image"] for _, m in read_all_samples(out)["all"]]
    assert data in stored
