"""The detector: a timm Vision Transformer with a one-logit head (SPEC section 4).

`CommForDetector` is laid out exactly like the original `ViTClassifier` (the timm model
lives in `vit`, the head is `Linear(width, 1)`, the constructor takes `model_size`,
`input_size`, `patch_size`, `freeze_backbone`), so the released Hugging Face weights
(`OwensLab/commfor-model-384`, `-224`) and the original's local checkpoints load
unchanged. Three ways in:

- `create_detector`: a new model for training, optionally starting from timm's
  ImageNet weights (the only place that may download anything);
- `load_detector`: a trained model from a local checkpoint (ours, the original's dict,
  or a plain state dict) or from the Hub, for eval, predict and resume;
- `clean_state_dict`: the state dict to save, from a compiled and/or DDP-wrapped model.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from commfor_fast.errors import UserError

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
        # A fresh nn.Linear (PyTorch's default init), as the original swaps the head in.
        self.vit.head = nn.Linear(self.vit.embed_dim, 1)
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
    """timm's ImageNet weights of the detector's backbone: from the Hub (timm's own
    download), or read from a local file through timm's loader and its ViT key filter."""
    timm_name = detector.timm_name
    if pretrained_path is None:
        try:
            return timm.create_model(timm_name, pretrained=True, num_classes=0).state_dict()
        except OSError as exc:  # hub errors, offline mode and connection errors are OSErrors
            raise UserError(
                f"cannot fetch the ImageNet weights of {timm_name} from the Hugging Face Hub "
                f"({type(exc).__name__}: {exc}); {OFFLINE_ADVICE}"
            ) from None
    if not pretrained_path.is_file():
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


def load_detector(
    ckpt: Path | None = None,
    hf_model: str | None = None,
    map_location: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
) -> tuple[CommForDetector, dict[str, Any]]:
    """Load a trained detector (in eval mode) from a local checkpoint or the Hub.

    A local `ckpt` may be a training checkpoint of ours (a dict with `model` and
    `model_args`), the original's dict (`model`, `optimizer`, ..., no model arguments)
    or a plain state dict; keys may carry `_orig_mod.` / `module.` prefixes. Without
    stored arguments the shape options are read off the weights. `hf_model` is a Hub
    id (or a folder written by `save_pretrained`) whose `config.json` holds them.
    Never downloads ImageNet weights. A local file is loaded tensors-only unless
    `trust_checkpoint` allows full unpickling (`read_checkpoint`).

    Returns the model on `map_location` and an info dict: `source` ("checkpoint" or
    "hf"), `path` / `hf_model`, `format` and `model_args`.
    """
    if ckpt is None and hf_model is None:
        raise UserError("no model given: pass --ckpt FILE (a local checkpoint) or --hf-model ID (a Hugging Face "
                        "model id such as OwensLab/commfor-model-384, or a save_pretrained folder)")
    if ckpt is not None and hf_model is not None:
        raise UserError(f"--ckpt {ckpt} / --hf-model {hf_model}: give one of them, not both")
    if hf_model is not None:
        model = _load_from_hub(hf_model)
        check_finite(model, f"--hf-model {hf_model}")
        info: dict[str, Any] = {"source": "hf", "hf_model": hf_model, "format": "hf"}
    else:
        model, fmt = _load_checkpoint(Path(ckpt), trust_checkpoint)
        info = {"source": "checkpoint", "path": str(ckpt), "format": fmt}
    info["model_args"] = model.model_args
    return model.to(map_location).eval(), info


def _load_from_hub(hf_model: str) -> CommForDetector:
    try:
        # The mixin prints "Loading weights from local directory" on stdout, where
        # `predict` writes its table; send it to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            return CommForDetector.from_pretrained(hf_model, map_location="cpu", strict=True)
    except UserError as exc:
        raise UserError(f"--hf-model {hf_model}: its config.json is not a detector: {exc}") from None
    except (OSError, ValueError) as exc:  # not found, offline, invalid id
        raise UserError(
            f"--hf-model {hf_model}: cannot load it ({type(exc).__name__}: {exc}); check the "
            f"id (e.g. OwensLab/commfor-model-384). Offline, download it once where the Hub is "
            f"reachable, copy the Hugging Face cache (~/.cache/huggingface) over and set "
            f"HF_HUB_OFFLINE=1, or use a local checkpoint with --ckpt"
        ) from None
    except RuntimeError as exc:  # weights that do not fit the configured model
        raise UserError(f"--hf-model {hf_model}: the weights do not fit its config.json: {exc}") from None


def _unreadable(path: Path, exc: Exception) -> UserError:
    return UserError(
        f"--ckpt {path}: not a readable torch checkpoint ({type(exc).__name__}: {exc}); "
        f"give a .pt file written by training or the original's checkpoint"
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


def read_checkpoint(path: Path, trust: bool = False, older: list[Path] | None = None) -> Any:
    """`torch.load` the file with tensors and plain containers only.

    Full unpickling runs whatever code the file names, so it happens only with `trust`
    (`--trust-checkpoint`); without it a file holding other Python objects is a
    `UserError` that says so. A file that is no `torch.save` output at all (random
    bytes, a truncated archive) is a `UserError` too. `older` is given when `path` is
    the newest checkpoint of a run folder being resumed (not a `--ckpt`): the older
    checkpoints there, the last of which the error then offers instead.
    """
    try:
        return _read_checkpoint(path, trust)
    except UserError as exc:
        if older is None:
            raise
        why = str(exc).removeprefix(f"--ckpt {path}: ").split("; ")[0]
        fix = (f"delete it to resume from the checkpoint before it, {older[-1].name}" if older else
               "delete it to start the run again")
        raise UserError(f"{path}: the newest checkpoint of this run cannot be resumed from ({why}); {fix}") from None


def _read_checkpoint(path: Path, trust: bool) -> Any:
    if path.is_dir():
        raise UserError(f"--ckpt {path}: is a folder; for a folder written by save_pretrained "
                        f"use --hf-model {path}, else give the checkpoint file (.pt)")
    if not path.is_file():
        raise UserError(f"--ckpt {path}: no such file; give a checkpoint written by training (.pt)")
    try:
        if not _is_torch_file(path):
            raise UserError(f"--ckpt {path}: not a torch checkpoint (it does not start like a file written by "
                            f"torch.save; truncated, or another kind of file); give a .pt file written by "
                            f"training or the original's checkpoint")
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust or not str(exc).startswith("Weights only load failed"):
            raise _unreadable(path, exc) from None
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        raise UserError(
            f"--ckpt {path}: holds Python objects besides tensors"
            + (f" ({found.group(1)})" if found else "")
            + "; loading them would run code stored in the file. Pass --trust-checkpoint only if you "
              "trust where the file comes from, or save its state dict alone with torch.save"
        ) from None
    except UserError:
        raise
    except Exception as exc:  # truncated, damaged archive, ...: the file is the problem
        raise _unreadable(path, exc) from None


def _load_checkpoint(path: Path, trust: bool) -> tuple[CommForDetector, str]:
    return detector_from_checkpoint(read_checkpoint(path, trust), path)


def detector_from_checkpoint(obj: Any, path: Path) -> tuple[CommForDetector, str]:
    """The detector in a loaded checkpoint object, and its format: "commfor-fast" (our
    training checkpoints), "original" (the original's dict) or "state_dict"."""
    stored_args: Mapping[str, Any] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        state_dict, stored_args = obj["model"], obj.get("model_args") or {}
        fmt = "commfor-fast" if stored_args else "original"
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict, fmt = obj, "state_dict"
    else:
        found = f"keys {list(obj)[:8]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise UserError(
            f"--ckpt {path}: not a detector checkpoint (found {found}); expected a dict with a "
            f"'model' state dict, or a plain state dict with 'vit.*' keys"
        )
    state_dict = strip_wrapper_prefixes(state_dict)
    args = infer_model_args(state_dict, path)
    args.update({k: stored_args[k] for k in MODEL_ARG_NAMES if k in stored_args})
    model = CommForDetector(**args)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise UserError(
            f"--ckpt {path}: the weights do not fit a {model.timm_name} detector: "
            f"{' '.join(str(exc).split())[:600]}; give a checkpoint of a CommForDetector"
        ) from None
    check_finite(model, f"--ckpt {path}")
    return model, fmt


def check_finite(model: nn.Module, source: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged run): every score would be NaN,
    which reads as the verdict "real" and breaks the metrics. `source` names the flag."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{source}: the weight {name} holds NaN or infinite values (a training run that "
                            f"diverged?); give a checkpoint saved before that, or retrain with a lower --lr")


def infer_model_args(state_dict: Mapping[str, torch.Tensor], path: Path | str) -> dict[str, Any]:
    """Read model_size / input_size / patch_size off the weights' shapes.

    `vit.patch_embed.proj.weight` is (width, 3, patch, patch) and `vit.pos_embed` is
    (1, 1 + grid², width), so input_size = grid * patch. `freeze_backbone` cannot be
    seen in weights and is False (it only matters for training).
    """
    proj, pos = state_dict.get("vit.patch_embed.proj.weight"), state_dict.get("vit.pos_embed")
    if proj is None or pos is None or proj.ndim != 4 or pos.ndim != 3:
        raise UserError(
            f"--ckpt {path}: no 'vit.patch_embed.proj.weight' / 'vit.pos_embed' tensors "
            f"(first keys: {sorted(state_dict)[:5]}); give a checkpoint of a CommForDetector"
        )
    width, patch = int(proj.shape[0]), int(proj.shape[-1])
    sizes = [size for size, w in _WIDTHS.items() if w == width]
    n_patches = int(pos.shape[1]) - 1  # minus the class token
    grid = math.isqrt(max(n_patches, 0))
    if not sizes or grid * grid != n_patches or (sizes[0], grid * patch, patch) not in _TIMM_NAMES:
        raise UserError(
            f"--ckpt {path}: width {width}, patch {patch} and {int(pos.shape[1])} position "
            f"embeddings are not a known detector (allowed model_size/input_size/patch_size: "
            f"{allowed_configs()}); give a checkpoint of a CommForDetector"
        )
    return {"model_size": sizes[0], "input_size": grid * patch, "patch_size": patch,
            "freeze_backbone": False}
