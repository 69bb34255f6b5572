"""The detector: a timm Vision Transformer with a one-logit head (SPEC section 4).

`CommForDetector` is laid out exactly like the original `ViTClassifier` (the timm model
lives in `vit`, the head is `Linear(width, 1)`, the constructor takes `model_size`,
`input_size`, `patch_size`, `freeze_backbone`), so the released Hugging Face weights
(`OwensLab/commfor-model-384`, `-224`) and the original's local checkpoints load
unchanged. Three ways in:

- `create_detector`: a new model for training, optionally starting from timm's
  ImageNet weights;
- `load_detector`: a trained model in any form users hold: a `.pt` (ours, the
  original's dict, or a plain state dict), a `.safetensors` file, a model folder, or
  a Hub id, for eval, predict and robustness (training reads the same forms through
  `read_checkpoint` and `detector_from_checkpoint`);
- `clean_state_dict`: the state dict to save, from a compiled and/or DDP-wrapped model.

`save_pretrained` writes timm's layout (plain keys, a `config.json` with
`architecture`, `num_classes` and the preprocessing), so timm alone loads a trained
model; the keys of the original's layout (`vit.*`) load as well, everywhere.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from commfor_fast.errors import UserError
from commfor_fast.hub import hub_file
from commfor_fast.imageio import RESIZE_FOR_CROP
from commfor_fast.pipelines.preprocess import IMAGENET_MEAN, IMAGENET_STD

# (model_size, input_size, patch_size) -> timm model with ImageNet-21k pre-training and
# ImageNet-1k fine-tuning: the six backbones the original offers.
_TIMM_NAMES: dict[tuple[str, int, int], str] = {
    ("small", 224, 16): "vit_small_patch16_224.augreg_in21k_ft_in1k",
    ("small", 384, 16): "vit_small_patch16_384.augreg_in21k_ft_in1k",
    ("small", 224, 32): "vit_small_patch32_224.augreg_in21k_ft_in1k",
    ("small", 384, 32): "vit_small_patch32_384.augreg_in21k_ft_in1k",
    ("tiny", 224, 16): "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    ("tiny", 384, 16): "vit_tiny_patch16_384.augreg_in21k_ft_in1k",
}
# Embedding width of each model size; read back from checkpoints to infer the size.
_WIDTHS = {"small": 384, "tiny": 192}
MODEL_ARG_NAMES = ("model_size", "input_size", "patch_size", "freeze_backbone")
# Prefixes that torch.compile (`_orig_mod.`) and DDP (`module.`) put on state-dict keys.
_WRAPPER_PREFIXES = re.compile(r"^(?:_orig_mod\.|module\.)+")
# A model folder's files (save_pretrained, a Hub repo): its settings, and its weights in the
# first of these names found (timm and the hub mixin write the first).
CONFIG_NAME = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

OFFLINE_ADVICE = (
    "to run without network access, train from scratch with --no-pretrained, or pass a "
    "local timm weights file with --pretrained-path, or download the weights once on a "
    "machine with access (they land in the Hugging Face cache, ~/.cache/huggingface), copy "
    "that cache over and set HF_HUB_OFFLINE=1"
)


def allowed_configs() -> str:
    """The allowed (model_size, input_size, patch_size) combinations, for messages."""
    return ", ".join(f"{size}/{inp}/{patch}" for size, inp, patch in _TIMM_NAMES)


def get_timm_name(model_size: str, input_size: int, patch_size: int) -> str:
    """Resolve the timm model name of a configuration; `UserError` for any other one."""
    name = _TIMM_NAMES.get((model_size, input_size, patch_size))
    if name is None:
        raise UserError(
            f"model_size={model_size!r}, input_size={input_size!r}, patch_size={patch_size!r}: "
            f"no such detector; allowed model_size/input_size/patch_size: {allowed_configs()}. "
            f"Pick one of these with --model-size, --input-size and --patch-size"
        )
    return name


class CommForDetector(nn.Module, PyTorchModelHubMixin):
    """ViT backbone + `Linear(width, 1)` head; `forward` returns one logit per image.

    The constructor never downloads weights (timm `pretrained=False`): loading a trained
    checkpoint overwrites every tensor anyway, and a run on an offline machine must not
    stall on the network. Use `create_detector` to start from ImageNet weights. The
    argument names and defaults match the original, so `from_pretrained` reads them
    from a released `config.json`.
    """

    def __init__(
        self,
        model_size: str = "small",
        input_size: int = 384,
        patch_size: int = 16,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.timm_name = get_timm_name(model_size, input_size, patch_size)
        self.model_size, self.input_size, self.patch_size = model_size, input_size, patch_size
        self.freeze_backbone = freeze_backbone
        self.vit = timm.create_model(self.timm_name, pretrained=False)
        # A fresh nn.Linear (PyTorch's default init, the same draws as the original's
        # swapped-in head), through timm's own call so that the ViT knows num_classes=1.
        self.vit.reset_classifier(1)
        self.set_freeze_backbone(freeze_backbone)

    def set_freeze_backbone(self, freeze: bool) -> None:
        """Train only the head (`freeze`) or everything; recorded in `model_args`."""
        self.freeze_backbone = freeze
        for name, param in self.vit.named_parameters():
            param.requires_grad_(not freeze or name.startswith("head."))

    @property
    def model_args(self) -> dict[str, Any]:
        """The constructor arguments: stored in checkpoints so loading needs no flags."""
        return {name: getattr(self, name) for name in MODEL_ARG_NAMES}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, 1) logits (sigmoid = P(fake))."""
        return self.vit(x)

    @property
    def data_config(self) -> dict[str, Any]:
        """The evaluation preprocessing in timm's terms (`timm.data.create_transform` builds
        it): shorter side to input_size / crop_pct (bilinear), centre crop, ImageNet mean/std."""
        size = self.input_size
        return {"input_size": (3, size, size), "interpolation": "bilinear", "crop_pct": size / RESIZE_FOR_CROP[size],
                "crop_mode": "center", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}

    def _save_pretrained(self, save_directory: Path) -> None:
        """The hub mixin's hook, in timm's layout: timm's `save_for_hf` of the ViT (plain keys
        in model.safetensors; config.json with architecture, num_classes and `data_config`),
        this class's arguments added to the config for `from_pretrained` and `load_detector`."""
        from timm.models import save_for_hf

        save_for_hf(self.vit, str(save_directory), model_config=self.model_args, safe_serialization=True,
                    data_config=self.data_config)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         map_location: str = "cpu", strict: bool = True, **model_kwargs: Any) -> CommForDetector:
        """The hub mixin's hook: model.safetensors of a folder or Hub repo, in timm's layout
        or the original's (`vit.*` keys, the released detectors)."""
        import safetensors.torch
        from huggingface_hub import hf_hub_download

        model = cls(**model_kwargs)
        file = (os.path.join(model_id, WEIGHT_FILES[0]) if os.path.isdir(model_id) else
                hf_hub_download(model_id, WEIGHT_FILES[0], revision=revision, cache_dir=cache_dir,
                                force_download=force_download, token=token, local_files_only=local_files_only))
        model.load_state_dict(detector_keys(safetensors.torch.load_file(file)), strict=strict)
        return model.to(map_location)


def create_detector(
    *,
    model_size: str = "small",
    input_size: int = 384,
    patch_size: int = 16,
    freeze_backbone: bool = False,
    pretrained: bool = True,
    pretrained_path: Path | None = None,
) -> CommForDetector:
    """A new detector for training, with the backbone from ImageNet weights by default.

    Args:
        model_size: "small" (width 384) or "tiny" (width 192).
        input_size: 224 or 384.
        patch_size: 16 or 32 (32 only for "small").
        freeze_backbone: train only the head.
        pretrained: start the backbone from timm's `augreg_in21k_ft_in1k` weights
            (downloaded from the Hugging Face Hub unless cached); the head is always new.
        pretrained_path: a local timm weights file (.safetensors, .pth, .bin) to use
            instead of the download.
    """
    if pretrained_path is not None and not pretrained:
        raise UserError(
            f"--pretrained-path {pretrained_path} was given together with --no-pretrained; "
            f"drop one of the two"
        )
    detector = CommForDetector(
        model_size=model_size,
        input_size=input_size,
        patch_size=patch_size,
        freeze_backbone=freeze_backbone,
    )
    if not pretrained:
        return detector
    source = f"--pretrained-path {pretrained_path}" if pretrained_path else "the downloaded file"
    _load_backbone(detector, _imagenet_weights(detector, pretrained_path), source)
    return detector


def _load_backbone(detector: CommForDetector, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every backbone tensor of `detector` from `weights` (the head stays new), or
    raise a `UserError` naming what did not match: never a silent random init."""
    expected = {k: v.shape for k, v in detector.vit.state_dict().items() if not k.startswith("head.")}
    given = {k: v for k, v in weights.items() if not k.startswith("head.")}
    missing = [k for k in expected if k not in given]
    wrong = [f"{k} {tuple(given[k].shape)} (needs {tuple(shape)})" for k, shape in expected.items()
             if k in given and given[k].shape != shape]
    unexpected = [k for k in given if k not in expected]
    if missing or wrong or unexpected:
        def first(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

        parts = [f"missing {first(missing)}" if missing else "", f"wrong shape {first(wrong)}" if wrong else "",
                 f"unexpected {first(unexpected)}" if unexpected else ""]
        fits = len(expected) - len(missing) - len(wrong)
        hint = ("; it looks like a trained detector (keys 'vit.*'): fine-tune from it with --hf-model FOLDER "
                "(a save_pretrained folder) or --ckpt FILE" if any(k.startswith("vit.") for k in unexpected)
                else f"; give the ImageNet weights of {detector.timm_name}")
        raise UserError(
            f"{source}: only {fits} of the {len(expected)} backbone tensors of {detector.timm_name} fit "
            f"({'; '.join(p for p in parts if p)}){hint}"
        )
    detector.vit.load_state_dict(given, strict=False)


def _imagenet_weights(detector: CommForDetector, pretrained_path: Path | None) -> dict[str, torch.Tensor]:
    """timm's ImageNet weights of the detector's backbone, read through timm's loader and
    its ViT key filter: from a local file, or from the file timm itself downloads (its Hub
    repo's model.safetensors), fetched here so that no network fails fast, on one line."""
    timm_name = detector.timm_name
    if pretrained_path is None:
        repo = detector.vit.pretrained_cfg["hf_hub_id"]
        pretrained_path = hub_file(repo, WEIGHT_FILES[0], subject=f"the ImageNet weights of {timm_name} ({repo})",
                                   fix=OFFLINE_ADVICE)
    elif not pretrained_path.is_file():
        raise UserError(
            f"--pretrained-path {pretrained_path}: no such file; give a timm weights file "
            f"(.safetensors, .pth or .bin) of {timm_name}"
        )
    from timm.models import load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        return checkpoint_filter_fn(load_state_dict(str(pretrained_path)), detector.vit)
    except Exception as exc:  # any failure to read or convert the file is the file's fault
        raise UserError(
            f"--pretrained-path {pretrained_path}: cannot read it as timm weights "
            f"({type(exc).__name__}: {exc}); give a timm weights file of {timm_name}"
        ) from None


# --------------------------------------------------------------------------- saving


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside `torch.compile` and DDP wrappers (in any nesting)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove leading `_orig_mod.` / `module.` from every key, however they are stacked."""
    return {_WRAPPER_PREFIXES.sub("", key): value for key, value in state_dict.items()}


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to put in a checkpoint: unwrapped, keys as `CommForDetector` has them."""
    return strip_wrapper_prefixes(unwrap_model(model).state_dict())


# --------------------------------------------------------------------------- loading

HUB_OFFLINE_FIX = ("offline, download it once where the Hub is reachable, copy the Hugging Face cache "
                   "(~/.cache/huggingface) over and set HF_HUB_OFFLINE=1, or give a local model with --ckpt")


def load_detector(
    ckpt: Path | None = None,
    hf_model: str | None = None,
    map_location: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
) -> tuple[CommForDetector, dict[str, Any]]:
    """Load a trained detector (in eval mode) from a local checkpoint or the Hub.

    A local `ckpt` may be a `.pt` (a training checkpoint of ours: a dict with `model`
    and `model_args`; the original's dict: `model`, `optimizer`, ..., no model
    arguments; a plain state dict), a `.safetensors` file, or a model folder (what
    `save_pretrained` writes, e.g. RUN/final); keys may carry `_orig_mod.` / `module.`
    prefixes, and be timm's (no `vit.`). The shape comes from stored arguments (the
    checkpoint's, or the `config.json` beside a safetensors file) or else off the
    weights. `hf_model` is a Hub id, or a model folder too. Never downloads ImageNet
    weights. A `.pt` is loaded tensors-only unless `trust_checkpoint` allows full
    unpickling (`read_checkpoint`); safetensors hold tensors only.

    Returns the model on `map_location` and an info dict: `source` ("checkpoint" or
    "hf"), `path` / `hf_model`, `format` and `model_args`.
    """
    if ckpt is None and hf_model is None:
        raise UserError("no model given: pass --ckpt FILE (a .pt or .safetensors checkpoint, or a model folder such "
                        "as RUN/final) or --hf-model ID (a Hugging Face model id such as OwensLab/commfor-model-384)")
    if ckpt is not None and hf_model is not None:
        raise UserError(f"--ckpt {ckpt} / --hf-model {hf_model}: give one of them, not both")
    if hf_model is not None:
        subject = f"--hf-model {hf_model}"
        model, fmt = _load_checkpoint(_hub_weights(hf_model, subject), trust_checkpoint, subject)
        info: dict[str, Any] = {"source": "hf", "hf_model": hf_model, "format": fmt}
    else:
        model, fmt = _load_checkpoint(Path(ckpt), trust_checkpoint, f"--ckpt {ckpt}")
        info = {"source": "checkpoint", "path": str(ckpt), "format": fmt}
    info["model_args"] = model.model_args
    return model.to(map_location).eval(), info


def _hub_weights(hf_model: str, subject: str) -> Path:
    """The weights of `--hf-model`: the folder itself, or the Hub repo's weights file
    downloaded (its config.json first, so that it lies beside them in the cache)."""
    if Path(hf_model).is_dir():
        return Path(hf_model)
    hub_file(hf_model, CONFIG_NAME, subject=subject, fix=HUB_OFFLINE_FIX, required=False)
    *first, last = WEIGHT_FILES
    for name in first:
        found = hub_file(hf_model, name, subject=subject, fix=HUB_OFFLINE_FIX, required=False)
        if found is not None:
            return found
    return hub_file(hf_model, last, subject=subject, fix=HUB_OFFLINE_FIX)


def _unreadable(subject: str, exc: Exception, kind: str = "torch checkpoint") -> UserError:
    return UserError(
        f"{subject}: not a readable {kind} ({type(exc).__name__}: {exc}); give a .pt or .safetensors "
        f"file written by training (or the original's checkpoint), or a model folder such as RUN/final"
    )


# What `torch.save` files start with: a zip archive (the default since PyTorch 1.6), or
# the legacy format's pickled magic number.
_TORCH_HEADERS = (b"PK\x03\x04", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19")
# How torch's tensors-only unpickler names the object it refused.
_UNSUPPORTED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def _is_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(max(len(h) for h in _TORCH_HEADERS))
    return any(head.startswith(h) for h in _TORCH_HEADERS)


def _is_safetensors(path: Path) -> bool:
    """Whether the file starts like safetensors: the header's length (8 bytes, little
    endian, within the file) and the header's opening brace."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def weights_file(path: Path, subject: str | None = None) -> Path:
    """The file holding the weights: `path` itself, or the weights file of a model folder."""
    subject = subject or f"--ckpt {path}"
    if not path.is_dir():
        return path
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    hint = (f"; the run's model is {path / 'final'} (or {path / 'model.pt'})" if (path / "final").is_dir() else
            "; give a checkpoint file (.pt or .safetensors), or a folder written by save_pretrained")
    raise UserError(f"{subject}: the folder holds no model weights ({' or '.join(WEIGHT_FILES)}){hint}")


def read_checkpoint(path: Path, trust: bool = False, older: list[Path] | None = None,
                    subject: str | None = None) -> Any:
    """What a checkpoint holds: a `.pt` `torch.load`ed with tensors and plain containers
    only; a `.safetensors` file (or a model folder's weights) as its state dict.

    Full unpickling runs whatever code the file names, so it happens only with `trust`
    (`--trust-checkpoint`); without it a file holding other Python objects is a
    `UserError` that says so. A file that is neither `torch.save` output nor
    safetensors (random bytes, a truncated archive) is a `UserError` too. `older` is
    given when `path` is the newest checkpoint of a run folder being resumed (not a
    `--ckpt`): the older checkpoints there, the last of which the error then offers
    instead. `subject` starts the error lines (default: `--ckpt PATH`).
    """
    subject = subject or f"--ckpt {path}"
    try:
        return _read_checkpoint(path, trust, subject)
    except UserError as exc:
        if older is None:
            raise
        why = str(exc).removeprefix(f"{subject}: ").split("; ")[0]
        fix = (f"delete it to resume from the checkpoint before it, {older[-1].name}" if older else
               "delete it to start the run again")
        raise UserError(f"{path}: the newest checkpoint of this run cannot be resumed from ({why}); {fix}") from None


def _read_checkpoint(path: Path, trust: bool, subject: str) -> Any:
    if not path.exists():
        raise UserError(f"{subject}: no such file or folder; give a checkpoint written by training (.pt or "
                        f".safetensors) or a model folder such as RUN/final")
    path = weights_file(path, subject)
    try:
        if _is_safetensors(path):
            import safetensors.torch

            return safetensors.torch.load_file(path)
        if not _is_torch_file(path):
            raise UserError(f"{subject}: not a torch checkpoint or safetensors file (it starts like neither; "
                            f"truncated, or another kind of file); give a .pt or .safetensors file written by "
                            f"training (or the original's checkpoint), or a model folder such as RUN/final")
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust or not str(exc).startswith("Weights only load failed"):
            raise _unreadable(subject, exc) from None
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        raise UserError(
            f"{subject}: holds Python objects besides tensors"
            + (f" ({found.group(1)})" if found else "")
            + "; loading them would run code stored in the file. Pass --trust-checkpoint only if you "
              "trust where the file comes from, or save its state dict alone with torch.save"
        ) from None
    except UserError:
        raise
    except Exception as exc:  # truncated, damaged archive or header, ...: the file is the problem
        raise _unreadable(subject, exc, "safetensors file" if _is_safetensors(path) else "torch checkpoint") from None


def _load_checkpoint(path: Path, trust: bool, subject: str) -> tuple[CommForDetector, str]:
    return detector_from_checkpoint(read_checkpoint(path, trust, subject=subject), path, subject=subject)


def _config_args(path: Path, subject: str) -> dict[str, Any]:
    """The detector's arguments in the `config.json` of a model folder (or beside a
    safetensors file): ours as `save_pretrained` writes them; {} when there is none."""
    config = (path if path.is_dir() else path.parent) / CONFIG_NAME
    if not config.is_file():
        return {}
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{subject}: {config} is not readable JSON ({exc}); repair or delete it (the shape "
                        f"is then read off the weights)") from None
    return {k: values[k] for k in MODEL_ARG_NAMES if isinstance(values, dict) and k in values}


def detector_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys as `CommForDetector` has them: wrapper prefixes (`_orig_mod.`, `module.`) removed,
    and `vit.` put before timm's plain keys (the layout `save_pretrained` writes)."""
    state_dict = strip_wrapper_prefixes(state_dict)
    if "vit.pos_embed" not in state_dict and "pos_embed" in state_dict:
        return {f"vit.{key}": value for key, value in state_dict.items()}
    return state_dict


def detector_from_checkpoint(obj: Any, path: Path, subject: str | None = None) -> tuple[CommForDetector, str]:
    """The detector in a loaded checkpoint object (`read_checkpoint`), and its format:
    "commfor-fast" (our training checkpoints), "original" (the original's dict),
    "safetensors" (a safetensors file or model folder) or "state_dict"."""
    subject = subject or f"--ckpt {path}"
    stored_args: Mapping[str, Any] = {}
    is_safetensors = path.exists() and _is_safetensors(weights_file(path, subject))
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        state_dict, stored_args = obj["model"], obj.get("model_args") or {}
        fmt = "commfor-fast" if stored_args else "original"
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict, fmt = obj, "safetensors" if is_safetensors else "state_dict"
        if is_safetensors or path.is_dir():
            stored_args = _config_args(path, subject)
    else:
        found = f"keys {list(obj)[:8]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise UserError(
            f"{subject}: not a detector checkpoint (found {found}); expected a dict with a "
            f"'model' state dict, or a plain state dict with 'vit.*' keys"
        )
    state_dict = detector_keys(state_dict)
    args = infer_model_args(state_dict, path, subject)
    args.update({k: stored_args[k] for k in MODEL_ARG_NAMES if k in stored_args})
    model = CommForDetector(**args)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise UserError(
            f"{subject}: the weights do not fit a {model.timm_name} detector: "
            f"{' '.join(str(exc).split())[:600]}; give a checkpoint of a CommForDetector"
        ) from None
    check_finite(model, subject)
    return model, fmt


def check_finite(model: nn.Module, source: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged run): every score would be NaN,
    which reads as the verdict "real" and breaks the metrics. `source` names the flag."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{source}: the weight {name} holds NaN or infinite values (a training run that "
                            f"diverged?); give a checkpoint saved before that, or retrain with a lower --lr")


def infer_model_args(state_dict: Mapping[str, torch.Tensor], path: Path | str,
                     subject: str | None = None) -> dict[str, Any]:
    """Read model_size / input_size / patch_size off the weights' shapes.

    `vit.patch_embed.proj.weight` is (width, 3, patch, patch) and `vit.pos_embed` is
    (1, 1 + grid², width), so input_size = grid * patch. `freeze_backbone` cannot be
    seen in weights and is False (it only matters for training). `subject` starts the
    error lines (default: `--ckpt PATH`).
    """
    subject = subject or f"--ckpt {path}"
    proj, pos = state_dict.get("vit.patch_embed.proj.weight"), state_dict.get("vit.pos_embed")
    if proj is None or pos is None or proj.ndim != 4 or pos.ndim != 3:
        raise UserError(
            f"{subject}: no 'vit.patch_embed.proj.weight' / 'vit.pos_embed' tensors "
            f"(first keys: {sorted(state_dict)[:5]}); give a checkpoint of a CommForDetector"
        )
    width, patch = int(proj.shape[0]), int(proj.shape[-1])
    sizes = [size for size, w in _WIDTHS.items() if w == width]
    n_patches = int(pos.shape[1]) - 1  # minus the class token
    grid = math.isqrt(max(n_patches, 0))
    if not sizes or grid * grid != n_patches or (sizes[0], grid * patch, patch) not in _TIMM_NAMES:
        raise UserError(
            f"{subject}: width {width}, patch {patch} and {int(pos.shape[1])} position "
            f"embeddings are not a known detector (allowed model_size/input_size/patch_size: "
            f"{allowed_configs()}); give a checkpoint of a CommForDetector"
        )
    return {"model_size": sizes[0], "input_size": grid * patch, "patch_size": patch,
            "freeze_backbone": False}
