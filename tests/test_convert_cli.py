"""`commfor-fast convert` through the CLI: bad input is one `error:` line with exit code 2; the hub path downloads only what it needs."""

from __future__ import annotations

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_folder_tree
from typer.testing import CliRunner

from commfor_fast.cli import app
from commfor_fast.convert.settings import labels_hint
from commfor_fast.demo.hf_replica import SCHEMA
from commfor_fast.shards import Manifest

runner = CliRunner()


def convert_cli(*args: str):
    return runner.invoke(app, ["convert", "--quiet", "--workers", "1", *args])


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_convert_via_cli(tmp_path, folder_tree):
    result = convert_cli("--folder", str(folder_tree), "--out", str(tmp_path / "out"), "--val-frac", "0",
                         "--shard-size", "50KB", "--seed", "1")
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.settings["shard_size"] == "50KB" and manifest.seed == 1
    assert manifest.sets["all"].num_samples == 15  # 16 images, one of them corrupt


def test_no_source(tmp_path):
    assert_user_error(convert_cli("--out", str(tmp_path / "out")), "no source", "--hf-repo", "--folder")


def test_wrong_folder_path(tmp_path):
    missing = tmp_path / "nowhere"
    assert_user_error(convert_cli("--folder", str(missing), "--out", str(tmp_path / "out")),
                      f"--folder {missing}", "no such folder")


def test_wrong_hf_path(tmp_path):
    assert_user_error(convert_cli("--hf-repo", str(tmp_path / "no" / "such" / "repo"), "--out", str(tmp_path / "o")),
                      "no such file or folder", "hub dataset id")


def test_unknown_label_folder(tmp_path):
    root = write_folder_tree(tmp_path / "root", {"gen": {"fake": ("png",), "synthetic": ("png",)}})
    assert_user_error(convert_cli("--folder", str(root), "--out", str(tmp_path / "out")),
                      "gen/synthetic", "not a label folder", "--labels")


def test_the_label_hint_guesses_the_label_by_name(tmp_path):
    root = write_folder_tree(tmp_path / "root", {"gen": {"real": ("png",), "fake": ("png",)}})
    result = convert_cli("--folder", str(root), "--labels", "0_real:0,1_fake:1", "--out", str(tmp_path / "out"))
    assert_user_error(result, "gen/fake", "e.g. --labels 0_real:0,fake:1)")  # the fake folder is met first
    root = write_folder_tree(tmp_path / "reals", {"gen": {"real": ("png",)}})
    result = convert_cli("--folder", str(root), "--labels", "0_real:0,1_fake:1", "--out", str(tmp_path / "out"))
    assert_user_error(result, "gen/real", "e.g. --labels real:0,1_fake:1)")
    assert "0_real:0,real:1" not in result.stderr


@pytest.mark.parametrize("folder, hint", [
    ("real", "--labels real:0,fake:1"),
    ("Real_Images", "--labels Real_Images:0,fake:1"),
    ("ai-generated", "--labels real:0,ai-generated:1"),
    ("misc", "--labels misc:0,fake:1 if it holds real images, --labels real:0,misc:1 if fake"),
    ("real_vs_fake", "--labels real_vs_fake:0,fake:1 if it holds real images, --labels real:0,real_vs_fake:1 if fake"),
])
def test_labels_hint(folder, hint):
    assert labels_hint({"real": 0, "fake": 1}, folder) == hint


def test_unknown_split(tmp_path, hf_replica):
    assert_user_error(convert_cli("--hf-repo", str(hf_replica), "--hf-split", "Systematic+Bogus", "--out",
                                  str(tmp_path / "out")), "'Bogus'", "Systematic, Manual, PublicEval")


def test_split_needed_when_the_repo_has_several(tmp_path, hf_replica):
    assert_user_error(convert_cli("--hf-repo", str(hf_replica), "--out", str(tmp_path / "out")),
                      "--hf-split is needed", "Systematic, Manual, PublicEval")


def test_empty_result(tmp_path):
    root = write_folder_tree(tmp_path / "root", {"gen": {"fake": ("txt", "txt")}})
    assert_user_error(convert_cli("--folder", str(root), "--out", str(tmp_path / "out")), "holds no images")


@pytest.mark.parametrize("flag, value, fragment", [
    ("--labels", "real:0,fake:0", "--labels 'real:0,fake:0'"),
    ("--labels", "real:0", "exactly two"),
    ("--shard-size", "lots", "--shard-size 'lots'"),
    ("--val-frac", "1.5", "--val-frac 1.5"),
    ("--check", "thorough", "'thorough' is not one of 'full', 'fast'"),
    ("--node-rank", "3", "--node-rank 3"),
    ("--preresize", "64", "--preresize 64: the pipelines can only use 440 (crop 384) or 256 (crop 224)"),
])
def test_bad_options(tmp_path, folder_tree, flag, value, fragment):
    assert_user_error(convert_cli("--folder", str(folder_tree), "--out", str(tmp_path / "out"), flag, value), fragment)


def test_hub_id_downloads_only_the_readme_and_the_chosen_splits(tmp_path, hf_replica, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        return str(hf_replica)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    result = convert_cli("--hf-repo", "OwensLab/CommunityForensics", "--hf-split", "Manual+PublicEval",
                         "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert [c["repo_id"] for c in calls] == ["OwensLab/CommunityForensics"] * 2
    assert all(c["repo_type"] == "dataset" and c["cache_dir"] == tmp_path / "cache" for c in calls)
    assert calls[0]["allow_patterns"] == ["README.md"]
    assert calls[1]["allow_patterns"] == ["README.md", "data/manual/*.parquet", "data/publicEval/*.parquet"]
    manifest = Manifest.load(tmp_path / "out")
    assert list(manifest.sources[0]["splits"]) == ["Manual", "PublicEval"]
    assert manifest.sets["all"].num_samples == 13  # 8 + 5 rows, 0 corrupt; no val set: floor(13 x 0.01) = 0


def test_hub_errors_become_user_errors(tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert_user_error(convert_cli("--hf-repo", "OwensLab/CommunityForensics", "--out", str(tmp_path / "out")),
                      "--hf-repo OwensLab/CommunityForensics", "download failed")


def test_help_lists_the_options():
    result = runner.invoke(app, ["convert", "--help"])
    assert result.exit_code == 0
    for flag in ("--hf-repo", "--hf-split", "--cache-dir", "--folder", "--labels", "--val-frac", "--no-balance",
                 "--shard-size", "--partition-size", "--preresize", "--workers", "--num-nodes", "--node-rank",
                 "--max-pixels", "--check", "--overwrite"):
        assert flag in result.output


def test_empty_result_after_balancing(tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=SCHEMA), empty)
    reals = write_folder_tree(tmp_path / "reals", {"photos": {"real": ("png", "jpeg")}})
    assert_user_error(convert_cli("--hf-repo", str(empty), "--folder", str(reals), "--out", str(tmp_path / "out")),
                      "no sample is left after balancing", "--no-balance")
    result = convert_cli("--hf-repo", str(empty), "--folder", str(reals), "--out", str(tmp_path / "out"),
                         "--no-balance", "--val-frac", "0")
    assert result.exit_code == 0, result.output
    assert Manifest.load(tmp_path / "out").balance == {"applied": False, "reason": "--no-balance"}


@pytest.mark.parametrize("front_matter, fragment", [
    ("configs: [unclosed", "expected ',' or ']'"),
    ("configs:\n- data_files: x", "must include `config_name`"),
])
def test_a_malformed_dataset_card_is_one_error_line(tmp_path, front_matter, fragment):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text(f"---\n{front_matter}\n---\n")
    assert_user_error(convert_cli("--hf-repo", str(repo), "--out", str(tmp_path / "out")),
                      f"{repo / 'README.md'}: cannot read its `configs` front matter", fragment)
