"""The Hugging Face Hub both ways: fetch a file failing fast on one line that says why, and push a folder.

Fetching (`hub_file`): left to itself, `huggingface_hub` retries a connection that
fails five times with backoff (half a minute of warnings) before it says the file is
neither online nor cached, in words that do not tell "no network" from "no such
repo". Here one HEAD request without retries decides: no answer means the local
cache or "cannot reach the Hub"; an answer means the download, or "no such repo",
"gated", "no such file", "not allowed"; `HF_HUB_OFFLINE=1` means the cache only.

Pushing (`push`): a trained model folder (`config.json` + `model.safetensors`, as
training writes `final/`) goes to a model repo in the timm layout, a `commfor-fast
convert` output folder (`manifest.json`, written last) to a dataset repo without its
bookkeeping files, through `HfApi.create_repo` and `HfApi.upload_folder`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import huggingface_hub.constants as hub_constants
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from commfor_fast.errors import UserError
from commfor_fast.settings import PushSettings

PROBE_TIMEOUT_S = 10.0  # the one HEAD request that tells "no network" from the Hub's answer
LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN"
# What a dataset repo gets from a convert output folder: the card, the manifest and the
# shards with their indexes; not plan.json, parts/ (resume bookkeeping) or temporaries.
DATASET_FILES = ["README.md", "manifest.json", "*/*.tar", "*/*.tar.idx"]


def check_repo_id(repo_id: str, subject: str, *, or_folder: bool = True) -> None:
    """A `UserError` unless `repo_id` is spelled like a Hub id (`owner/name`); `or_folder`:
    a folder was as welcome (and there is none of that name)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise UserError(f"{subject}: {'no such folder, and ' if or_folder else ''}not a Hugging Face id (owner/name, "
                        f"e.g. OwensLab/commfor-model-384)") from None


def is_hub_failure(exc: BaseException) -> bool:
    """Whether `exc` is the Hub's answer or the lack of one (no network: sockets and
    requests raise OSErrors, httpx its own transport errors); anything else is a bug,
    left to show its traceback."""
    return isinstance(exc, (HfHubHTTPError, OSError)) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2")


def why_hub_failed(exc: BaseException, filename: str | None = None) -> str:
    """What a failed Hub call means, in a few words: the Hub's answer when there was one,
    else that the Hub could not be reached (no network, a proxy, a firewall)."""
    if isinstance(exc, GatedRepoError):
        return f"the repo is gated: accept its conditions on its Hub page, then {LOGIN_HINT}"
    if isinstance(exc, RepositoryNotFoundError):
        return f"no such repo on the Hub (or a private one: {LOGIN_HINT})"
    if isinstance(exc, RevisionNotFoundError):
        return "the repo has no such revision"
    if isinstance(exc, EntryNotFoundError):
        return f"the repo has no file {filename}" if filename else "the repo has no such file"
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            return f"not allowed (HTTP {status}): {LOGIN_HINT} (to push: a token with write access)"
        return f"the Hub answered HTTP {status}"
    reason = (str(exc).splitlines() or [""])[0][:160]
    return f"cannot reach the Hub at {hub_constants.ENDPOINT} ({type(exc).__name__}: {reason})"


def hub_file(repo_id: str, filename: str, *, subject: str, fix: str, required: bool = True) -> Path | None:
    """The local path of `filename` in the model repo `repo_id`, downloaded or cached.

    Args:
        repo_id: a Hub model id.
        filename: the file in the repo.
        subject: what the error line starts with (the flag and its value).
        fix: what the error line ends with (how to do without the Hub).
        required: when False, a repo that has no such file gives None instead of an error.
    """
    check_repo_id(repo_id, subject)
    cached = try_to_load_from_cache(repo_id, filename)
    if hub_constants.HF_HUB_OFFLINE:
        if isinstance(cached, str):
            return Path(cached)
        if cached is not None and not required:  # cached as "not in the repo"
            return None
        raise UserError(f"{subject}: {filename} is not in the local Hugging Face cache ({hub_constants.HF_HUB_CACHE}) "
                        f"and HF_HUB_OFFLINE=1 forbids downloading it; {fix}")
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=PROBE_TIMEOUT_S)
    except Exception as exc:
        if not is_hub_failure(exc):
            raise
        answered = isinstance(exc, HfHubHTTPError)
        if answered and isinstance(exc, EntryNotFoundError) and not required:
            return None
        if not answered and isinstance(cached, str):  # offline with a warm cache, as hf_hub_download does
            return Path(cached)
        where = "" if answered else f", and {filename} is not in the local cache"
        raise UserError(f"{subject}: {why_hub_failed(exc, filename)}{where}; {fix}") from None
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:
        if not is_hub_failure(exc):
            raise
        raise UserError(f"{subject}: downloading {filename} failed ({why_hub_failed(exc, filename)}); {fix}") from None


# --------------------------------------------------------------------------- push


def folder_kind(folder: Path) -> str:
    """"model" for a trained model folder, "dataset" for a convert output folder; else a `UserError`."""
    if (folder / "manifest.json").is_file():
        return "dataset"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return "model"
    if not folder.is_dir():
        raise UserError(f"FOLDER {folder}: no such folder; give a trained model folder (RUN/final) or a "
                        f"`commfor-fast convert` output folder")
    hint = (f"; the run's model is in {folder / 'final'}" if (folder / "final").is_dir() else
            "; a conversion that is not finished has no manifest.json yet: rerun its convert command")
    raise UserError(f"FOLDER {folder}: neither a model folder (config.json + model.safetensors, as training "
                    f"writes RUN/final) nor a convert output folder (manifest.json){hint}")


def _is_timm_layout(folder: Path) -> bool:
    config = json.loads((folder / "config.json").read_text())
    return isinstance(config, dict) and "architecture" in config and "num_classes" in config


def _timm_layout(folder: Path, staging: Path) -> Path:
    """The model folder to upload, once its model loads (finite weights of a detector):
    `folder` itself when it is in the timm layout; else (a folder of an earlier version,
    keys `vit.*`) a copy written again by `save_pretrained` in `staging`, its card kept."""
    from commfor_fast.model import load_detector

    model, _ = load_detector(ckpt=folder)
    if _is_timm_layout(folder):
        return folder
    model.save_pretrained(staging)
    card = folder / "README.md"
    if card.is_file():
        (staging / "README.md").write_text(card.read_text())
    return staging


def push(settings: PushSettings) -> str:
    """Upload `settings.folder` to the Hub repo `settings.repo_id` (created if need be);
    returns the URL of the commit. The kind of repo follows the folder (`folder_kind`)."""
    subject = f"push {settings.folder} to {settings.repo_id}"
    check_repo_id(settings.repo_id, f"--repo-id {settings.repo_id}", or_folder=False)
    kind = folder_kind(settings.folder)
    message = settings.commit_message or f"Upload {kind} with commfor-fast"
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="commfor-push-") as staging:
        folder = _timm_layout(settings.folder, Path(staging)) if kind == "model" else settings.folder
        try:
            repo = api.create_repo(settings.repo_id, repo_type=kind, private=settings.private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo.repo_id, folder_path=folder, repo_type=kind,
                                       commit_message=message,
                                       allow_patterns=DATASET_FILES if kind == "dataset" else None)
        except Exception as exc:
            if not is_hub_failure(exc):
                raise
            raise UserError(f"{subject}: {why_hub_failed(exc)}; fix that and rerun the same command (the upload is "
                            f"one commit: a failed one leaves the repo as it was)") from None
    return str(commit.commit_url)
