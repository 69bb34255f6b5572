"""The Hub both ways against a local stand-in (no network): fail-fast fetching, `push`, loading what was pushed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import huggingface_hub.constants
import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import filter_repo_objects
from typer.testing import CliRunner

import commfor_fast.hub as hub
from commfor_fast.cli import app
from commfor_fast.errors import UserError
from commfor_fast.hub import hub_file, push
from commfor_fast.model import CommForDetector, load_detector
from commfor_fast.modelcard import model_card
from commfor_fast.portable import portable_command
from commfor_fast.settings import PushSettings, TrainSettings
from commfor_fast.shards import Manifest
from test_model import TINY, tiny  # noqa: F401 (tiny is a fixture)

FIX = "the fix"


def http_error(cls: type[HfHubHTTPError], status: int) -> HfHubHTTPError:
    """A Hub error as huggingface_hub raises it after an HTTP answer."""
    return cls(f"{status} Client Error", response=SimpleNamespace(status_code=status, headers={}, request=None))


class StandIn:
    """The Hub as a dict of repo id -> local folder: HEAD and download of its files, counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, repos: dict[str, Path]) -> None:
        self.repos, self.heads, self.downloads = repos, 0, 0
        monkeypatch.setattr(hub, "hf_hub_url", lambda repo_id, filename, **_: f"{repo_id}::{filename}")
        monkeypatch.setattr(hub, "get_hf_file_metadata", self.head)
        monkeypatch.setattr(hub, "hf_hub_download", self.download)
        monkeypatch.setattr(timm.models._hub, "hf_hub_download", self.download)  # timm's own hub loader

    def head(self, url: str, timeout: float | None = None) -> None:
        self.heads += 1
        repo, name = url.split("::")
        if repo not in self.repos:
            raise http_error(RepositoryNotFoundError, 404)
        if not (self.repos[repo] / name).is_file():
            raise http_error(RemoteEntryNotFoundError, 404)

    def download(self, repo_id: str, filename: str, **_: Any) -> str:
        self.downloads += 1
        path = self.repos[repo_id.split("@")[0]] / filename
        if not path.is_file():
            raise http_error(RemoteEntryNotFoundError, 404)
        return str(path)


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return cache


def cache_file(cache: Path, repo_id: str, filename: str, text: str) -> None:
    """Put a file in the Hugging Face cache layout, as an earlier download leaves it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / filename).write_text(text)


# --------------------------------------------------------------------------- fetching, failing fast


def test_no_network_fails_after_one_request_and_says_so(monkeypatch: pytest.MonkeyPatch, empty_cache: Path) -> None:
    calls = []

    def unreachable(url: str, timeout: float | None = None) -> None:
        calls.append(url)
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(hub, "get_hf_file_metadata", unreachable)
    monkeypatch.setattr(hub, "hf_hub_download", lambda *a, **k: pytest.fail("no download without an answer"))
    with pytest.raises(UserError) as err:
        hub_file("OwensLab/commfor-model-384", "config.json", subject="--hf-model OwensLab/commfor-model-384", fix=FIX)
    assert str(err.value) == (
        "--hf-model OwensLab/commfor-model-384: cannot reach the Hub at https://huggingface.co (ConnectionError: "
        "[Errno -2] Name or service not known), and config.json is not in the local cache; the fix")
    assert len(calls) == 1  # no retries
    # the same, with the file cached by an earlier download: the cache serves it
    cache_file(empty_cache, "OwensLab/commfor-model-384", "config.json", "{}")
    path = hub_file("OwensLab/commfor-model-384", "config.json", subject="s", fix=FIX)
    assert path is not None and path.read_text() == "{}"


@pytest.mark.parametrize(("error", "says"), [
    (http_error(RepositoryNotFoundError, 404), "s: no such repo on the Hub (or a private one: log in with "),
    (http_error(GatedRepoError, 403), "s: the repo is gated: accept its conditions on its Hub page, then log in"),
    (http_error(RemoteEntryNotFoundError, 404), "s: the repo has no file model.safetensors; the fix"),
    (http_error(HfHubHTTPError, 503), "s: the Hub answered HTTP 503; the fix"),
])
def test_the_hubs_answer_is_named(monkeypatch: pytest.MonkeyPatch, empty_cache: Path, error: Exception,
                                  says: str) -> None:
    def answer(url: str, timeout: float | None = None) -> None:
        raise error

    monkeypatch.setattr(hub, "get_hf_file_metadata", answer)
    with pytest.raises(UserError) as err:
        hub_file("me/det", "model.safetensors", subject="s", fix=FIX)
    assert str(err.value).startswith(says) and "\n" not in str(err.value)
    if isinstance(error, RemoteEntryNotFoundError):  # an optional file the repo lacks
        assert hub_file("me/det", "model.safetensors", subject="s", fix=FIX, required=False) is None


def test_offline_mode_reads_the_cache_only(monkeypatch: pytest.MonkeyPatch, empty_cache: Path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "get_hf_file_metadata", lambda *a, **k: pytest.fail("no request offline"))
    with pytest.raises(UserError, match=r"^s: config.json is not in the local Hugging Face cache \(.*hub-cache\) "
                                        r"and HF_HUB_OFFLINE=1 forbids downloading it; the fix$"):
        hub_file("me/det", "config.json", subject="s", fix=FIX)
    cache_file(empty_cache, "me/det", "config.json", "{}")
    assert hub_file("me/det", "config.json", subject="s", fix=FIX) is not None
    with pytest.raises(UserError, match=r"^s: no such folder, and not a Hugging Face id \(owner/name, e\.g\. "):
        hub_file("not an id!", "config.json", subject="s", fix=FIX)


def test_pretrained_weights_offline_fail_fast_with_the_offline_advice(monkeypatch: pytest.MonkeyPatch,
                                                                     empty_cache: Path) -> None:
    from commfor_fast.model import create_detector

    monkeypatch.setattr(hub, "get_hf_file_metadata", lambda *a, **k: (_ for _ in ()).throw(TimeoutError("timed out")))
    with pytest.raises(UserError) as err:
        create_detector(**TINY, pretrained=True)
    message = str(err.value)
    assert message.startswith("the ImageNet weights of vit_tiny_patch16_224.augreg_in21k_ft_in1k "
                              "(timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k): cannot reach the Hub")
    assert "TimeoutError: timed out" in message and "--no-pretrained" in message and "HF_HUB_OFFLINE=1" in message


# --------------------------------------------------------------------------- push, and loading what was pushed


class Uploads:
    """HfApi.create_repo / upload_folder, recorded; the upload copied as the Hub would keep it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, remote: Path, fail: Exception | None = None) -> None:
        self.remote, self.fail, self.calls = remote, fail, []
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", self.upload_folder)

    def create_repo(self, repo_id: str, **kwargs: Any) -> SimpleNamespace:
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail is not None:
            raise self.fail
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id: str, folder_path: Path, repo_type: str, commit_message: str,
                      allow_patterns: list[str] | None = None) -> SimpleNamespace:
        self.calls.append(("upload_folder", repo_id, {"repo_type": repo_type, "message": commit_message}))
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        target = self.remote / repo_type / repo_id
        for name in filter_repo_objects(files, allow_patterns=allow_patterns):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder_path) / name, target / name)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/1")


def test_a_pushed_model_loads_with_ours_and_with_timms_hub_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                 tiny: CommForDetector) -> None:
    tiny.save_pretrained(tmp_path / "final")
    (tmp_path / "final" / "README.md").write_text("---\nlibrary_name: timm\n---\n# card\n")
    uploads = Uploads(monkeypatch, tmp_path / "remote")
    url = push(PushSettings(folder=tmp_path / "final", repo_id="me/det", private=True))
    assert url == "https://huggingface.co/me/det/commit/1"
    assert uploads.calls[0] == ("create_repo", "me/det", {"repo_type": "model", "private": True, "exist_ok": True})
    assert uploads.calls[1][2] == {"repo_type": "model", "message": "Upload model with commfor-fast"}
    pushed = tmp_path / "remote" / "model" / "me/det"
    assert sorted(p.name for p in pushed.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    stand_in = StandIn(monkeypatch, {"me/det": pushed})
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    ours, info = load_detector(hf_model="me/det")
    by_timm = timm.create_model("hf-hub:me/det", pretrained=True).eval()  # without this package
    with torch.inference_mode():
        assert torch.equal(ours(x), tiny(x)) and torch.equal(by_timm(x), tiny(x))
    assert info["format"] == "safetensors" and info["model_args"] == tiny.model_args
    assert stand_in.heads >= 2 and stand_in.downloads >= 2


def test_a_folder_of_the_original_layout_goes_up_in_timms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         tiny: CommForDetector) -> None:
    (tmp_path / "old").mkdir()
    safetensors.torch.save_file(tiny.state_dict(), tmp_path / "old" / "model.safetensors")  # keys vit.*
    (tmp_path / "old" / "config.json").write_text(json.dumps({**TINY, "freeze_backbone": False}))
    (tmp_path / "old" / "README.md").write_text("# the card\n")
    Uploads(monkeypatch, tmp_path / "remote")
    push(PushSettings(folder=tmp_path / "old", repo_id="me/old"))
    pushed = tmp_path / "remote" / "model" / "me/old"
    assert json.loads((pushed / "config.json").read_text())["architecture"] == "vit_tiny_patch16_224"
    assert "pos_embed" in safetensors.torch.load_file(pushed / "model.safetensors")
    assert (pushed / "README.md").read_text() == "# the card\n"


def test_shards_go_up_as_a_dataset_without_their_bookkeeping(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    for name in ("README.md", "manifest.json", "plan.json", "parts/part-00000.json", "train/shard-00000-000.tar",
                 "train/shard-00000-000.tar.idx", "val/shard-00001-000.tar", "val/shard-00001-000.tar.idx",
                 "train/.shard-00000-001.tar.1234.tmp"):
        (shards / name).parent.mkdir(parents=True, exist_ok=True)
        (shards / name).write_text(name)
    uploads = Uploads(monkeypatch, tmp_path / "remote")
    push(PushSettings(folder=shards, repo_id="me/shards", commit_message="v1"))
    assert uploads.calls[1][2] == {"repo_type": "dataset", "message": "v1"}
    pushed = tmp_path / "remote" / "dataset" / "me/shards"
    assert sorted(str(p.relative_to(pushed)) for p in pushed.rglob("*") if p.is_file()) == [
        "README.md", "manifest.json", "train/shard-00000-000.tar", "train/shard-00000-000.tar.idx",
        "val/shard-00001-000.tar", "val/shard-00001-000.tar.idx"]


@pytest.mark.parametrize(("error", "says"), [
    (http_error(HfHubHTTPError, 401), "not allowed (HTTP 401): log in with `hf auth login` or set HF_TOKEN"),
    (ConnectionError("Name or service not known"), "cannot reach the Hub at https://huggingface.co (ConnectionError"),
])
def test_push_failures_are_one_line_through_the_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    tiny: CommForDetector, error: Exception, says: str) -> None:
    tiny.save_pretrained(tmp_path / "final")
    Uploads(monkeypatch, tmp_path / "remote", fail=error)
    result = CliRunner().invoke(app, ["push", str(tmp_path / "final"), "--repo-id", "me/det"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: push {tmp_path / 'final'} to me/det: {says}")


def test_push_names_what_a_folder_is_not(tmp_path: Path) -> None:
    (tmp_path / "run" / "final").mkdir(parents=True)
    with pytest.raises(UserError, match=r"run: neither a model folder .*; the run's model is in .*final"):
        push(PushSettings(folder=tmp_path / "run", repo_id="me/det"))
    with pytest.raises(UserError, match=r"nothing: no such folder"):
        push(PushSettings(folder=tmp_path / "nothing", repo_id="me/det"))
    with pytest.raises(UserError, match=r"^--repo-id me/a/b: not a Hugging Face id \(owner/name"):
        push(PushSettings(folder=tmp_path / "run", repo_id="me/a/b"))
    diverged = CommForDetector(**TINY)
    diverged.vit.head.bias.data.fill_(float("nan"))
    diverged.save_pretrained(tmp_path / "nan")
    with pytest.raises(UserError, match=r"nan: the weight vit.head.bias holds NaN"):  # never uploaded
        push(PushSettings(folder=tmp_path / "nan", repo_id="me/det"))


# --------------------------------------------------------------------------- the model card, portable


def test_the_model_card_is_portable_and_has_the_hubs_metadata(tmp_path: Path) -> None:
    manifest = Manifest.from_json({
        "package_version": "0", "command": "/home/me/.venv/bin/commfor-fast convert --hf-repo OwensLab/CommunityForensics "
                                           "--out /data/shards", "settings": {}, "seed": 0, "preresize": None,
        "generators": ["g"], "sets": {"train": {"num_samples": 2, "shards": [], "counts": {"g": {"0": 1, "1": 1}}}},
        "sources": [{"kind": "hf", "repo": "OwensLab/CommunityForensics"}, {"kind": "hf", "repo": str(tmp_path)},
                    {"kind": "folders", "root": "/data/mine"}]})
    settings = TrainSettings(data=Path("/data/shards"), out=Path("/home/me/run"),
                             command="/home/me/commfor_fast/__main__.py train --data /data/shards --out=/home/me/run")
    card = model_card(model_args={**TINY, "freeze_backbone": False}, timm_name="vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                      settings=settings, manifest=manifest, train_set="train",
                      schedule={"total_itrs": 1, "warmup": 0, "world_size": 1}, validation=None)
    meta = card.split("---")[1]
    assert "license: apache-2.0" in meta and "base_model: timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in meta
    assert "datasets:\n- OwensLab/CommunityForensics\n" in meta and "library_name: timm" in meta
    assert "pipeline_tag: image-classification" in meta
    assert "/home/me" not in card and "/data/" not in card
    assert "| command | `commfor-fast train --data shards --out=run` |" in card
    assert "`commfor-fast convert --hf-repo OwensLab/CommunityForensics --out shards`" in card
    assert portable_command("train 'a b") == "train 'a b"  # not a command line: as it was
