"""The detector: layout, construction, saving/loading in every checkpoint format, offline errors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch

from commfor_fast.errors import UserError
from commfor_fast.model import (
    CommForDetector,
    clean_state_dict,
    create_detector,
    get_timm_name,
    infer_model_args,
    load_detector,
    read_checkpoint,
)

TINY = {"model_size": "tiny", "input_size": 224, "patch_size": 16}


@pytest.fixture(scope="module")
def tiny() -> CommForDetector:
    torch.manual_seed(0)
    return CommForDetector(**TINY).eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty Hub cache, so nothing can be fetched or found."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_state_dict_layout_matches_the_original(tiny: CommForDetector) -> None:
    sd = tiny.state_dict()
    keys = list(sd)
    assert keys[:3] == ["vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight"]
    assert keys[-2:] == ["vit.head.weight", "vit.head.bias"]
    assert all(k.startswith("vit.") for k in keys)
    assert sd["vit.patch_embed.proj.weight"].shape == (192, 3, 16, 16)
    assert sd["vit.pos_embed"].shape == (1, 1 + 14 * 14, 192)
    assert sd["vit.head.weight"].shape == (1, 192)
    assert sd["vit.head.bias"].shape == (1,)
    assert isinstance(tiny.vit.head, torch.nn.Linear)
    assert tiny.model_args == {**TINY, "freeze_backbone": False}


def test_forward_gives_one_logit_per_image(tiny: CommForDetector, batch: torch.Tensor) -> None:
    with torch.inference_mode():
        out = tiny(batch)
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("size", "inp", "patch", "width", "tokens"), [
    ("tiny", 224, 16, 192, 1 + 14 * 14),
    ("tiny", 384, 16, 192, 1 + 24 * 24),
    ("small", 224, 16, 384, 1 + 14 * 14),
    ("small", 224, 32, 384, 1 + 7 * 7),
    ("small", 384, 32, 384, 1 + 12 * 12),
    ("small", 384, 16, 384, 1 + 24 * 24),
])
def test_every_allowed_configuration_builds(size: str, inp: int, patch: int, width: int, tokens: int) -> None:
    model = CommForDetector(model_size=size, input_size=inp, patch_size=patch)
    assert model.timm_name == f"vit_{size}_patch{patch}_{inp}.augreg_in21k_ft_in1k"
    assert model.vit.pos_embed.shape == (1, tokens, width)
    assert model.vit.head.weight.shape == (1, width)
    # The shapes alone identify the configuration again.
    assert infer_model_args(model.state_dict(), "x.pt") == {
        "model_size": size, "input_size": inp, "patch_size": patch, "freeze_backbone": False}


@pytest.mark.parametrize(("size", "inp", "patch"), [("tiny", 224, 32), ("base", 224, 16), ("small", 256, 16)])
def test_unknown_configuration_lists_the_allowed_ones(size: str, inp: int, patch: int) -> None:
    with pytest.raises(UserError, match="allowed model_size/input_size/patch_size: small/224/16"):
        get_timm_name(size, inp, patch)
    with pytest.raises(UserError, match=f"model_size={size!r}"):
        CommForDetector(model_size=size, input_size=inp, patch_size=patch)


def test_frozen_backbone_trains_only_the_head() -> None:
    model = create_detector(**TINY, freeze_backbone=True, pretrained=False)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["vit.head.weight", "vit.head.bias"]
    loss = model(torch.randn(1, 3, 224, 224)).sum()
    loss.backward()
    assert model.vit.head.weight.grad is not None
    assert model.vit.patch_embed.proj.weight.grad is None
    unfrozen = create_detector(**TINY, pretrained=False)
    assert all(p.requires_grad for p in unfrozen.parameters())


def test_save_pretrained_round_trip(tiny: CommForDetector, batch: torch.Tensor, tmp_path: Path,
                                    offline: None) -> None:
    tiny.save_pretrained(tmp_path / "repo")
    model, info = load_detector(hf_model=str(tmp_path / "repo"))
    assert info["source"] == "hf" and info["model_args"] == tiny.model_args
    assert not model.training
    with torch.inference_mode():
        assert torch.equal(model(batch), tiny(batch))
    # The mixin's own loader reads the constructor arguments from config.json too.
    direct = CommForDetector.from_pretrained(tmp_path / "repo")
    assert direct.model_args == tiny.model_args


def test_original_format_checkpoint_with_compile_prefix(tiny: CommForDetector, batch: torch.Tensor,
                                                       tmp_path: Path) -> None:
    ckpt = {
        "model": {f"_orig_mod.{k}": v for k, v in tiny.state_dict().items()},
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {"last_epoch": 3},
        "scaler": {"scale": 65536.0},
        "epoch": 2,
        "itr": 1234,
    }
    torch.save(ckpt, tmp_path / "orig.pt")
    model, info = load_detector(ckpt=tmp_path / "orig.pt")
    assert info["format"] == "original"
    assert info["model_args"] == {**TINY, "freeze_backbone": False}
    with torch.inference_mode():
        assert torch.equal(model(batch), tiny(batch))


def test_plain_state_dict_with_ddp_prefix_infers_the_shape(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = CommForDetector(model_size="small", input_size=224, patch_size=32).eval()
    torch.save({f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}, tmp_path / "final.pt")
    loaded, info = load_detector(ckpt=tmp_path / "final.pt")
    assert info["format"] == "state_dict"
    assert info["model_args"] == {"model_size": "small", "input_size": 224, "patch_size": 32,
                                  "freeze_backbone": False}
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


def test_training_checkpoint_uses_stored_model_args(tiny: CommForDetector, tmp_path: Path) -> None:
    compiled_like = torch.nn.Module()
    compiled_like._orig_mod = tiny  # what torch.compile's wrapper exposes
    state = clean_state_dict(compiled_like)
    assert list(state) == list(tiny.state_dict())
    torch.save({"model": state, "model_args": {**TINY, "freeze_backbone": True}, "step": 5},
               tmp_path / "ckpt.pt")
    model, info = load_detector(ckpt=tmp_path / "ckpt.pt")
    assert info["format"] == "commfor-fast"
    assert model.freeze_backbone and info["model_args"]["freeze_backbone"]


def test_bad_checkpoints_name_the_file(tiny: CommForDetector, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.pt: no such file"):
        load_detector(ckpt=tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="garbage.pt: not a torch checkpoint"):
        load_detector(ckpt=tmp_path / "garbage.pt")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UserError, match="random.pt: not a torch checkpoint"):
        load_detector(ckpt=tmp_path / "random.pt")
    buf = io.BytesIO()
    torch.save(tiny.state_dict(), buf)
    (tmp_path / "truncated.pt").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UserError, match="truncated.pt: not a readable torch checkpoint"):
        load_detector(ckpt=tmp_path / "truncated.pt")
    torch.save({"epoch": 3}, tmp_path / "nomodel.pt")
    with pytest.raises(UserError, match="nomodel.pt: not a detector checkpoint"):
        load_detector(ckpt=tmp_path / "nomodel.pt")
    broken = dict(tiny.state_dict())
    del broken["vit.head.bias"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(UserError, match="broken.pt: the weights do not fit"):
        load_detector(ckpt=tmp_path / "broken.pt")
    with pytest.raises(UserError, match="^no model given: pass --ckpt FILE"):
        load_detector()
    with pytest.raises(UserError, match="give one of them, not both"):
        load_detector(ckpt=tmp_path / "broken.pt", hf_model="OwensLab/commfor-model-384")


class _RunsCode:
    """Unpickling this calls `os.makedirs(marker)`: a stand-in for a hostile payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.makedirs, (str(self.marker),)


def test_a_checkpoint_never_runs_code_unless_trusted(tiny: CommForDetector, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"model": tiny.state_dict(), "model_args": TINY, "extra": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"evil.pt: holds Python objects besides tensors \(os.makedirs\).*"
                                        r"--trust-checkpoint"):
        load_detector(ckpt=tmp_path / "evil.pt")
    with pytest.raises(UserError, match="--trust-checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    model, info = load_detector(ckpt=tmp_path / "evil.pt", trust_checkpoint=True)  # the user's explicit choice
    assert marker.is_dir() and info["format"] == "commfor-fast"


def test_pretrained_offline_explains_how_to_run_offline(offline: None) -> None:
    with pytest.raises(UserError) as err:
        create_detector(**TINY, pretrained=True)
    message = str(err.value)
    assert "vit_tiny_patch16_224.augreg_in21k_ft_in1k" in message
    assert "--no-pretrained" in message and "--pretrained-path" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_pretrained_path_loads_a_local_timm_file(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(5)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)  # 1000-class head
    torch.save(source.state_dict(), tmp_path / "in1k.pth")
    model = create_detector(**TINY, pretrained=True, pretrained_path=tmp_path / "in1k.pth")
    assert torch.equal(model.vit.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    assert model.vit.head.weight.shape == (1, 192)  # the head stays new
    with pytest.raises(UserError, match="nothere.pth: no such file"):
        create_detector(**TINY, pretrained=True, pretrained_path=tmp_path / "nothere.pth")
    with pytest.raises(UserError, match="drop one"):
        create_detector(**TINY, pretrained=False, pretrained_path=tmp_path / "in1k.pth")


def test_missing_hub_model_offline_is_a_user_error(offline: None) -> None:
    with pytest.raises(UserError, match=r"^--hf-model OwensLab/commfor-model-384: config.json is not in the local "
                                        r"Hugging Face cache .* HF_HUB_OFFLINE=1 forbids downloading it; offline, "):
        load_detector(hf_model="OwensLab/commfor-model-384")


def test_pretrained_path_that_does_not_fit_names_what_did_not_match(tiny: CommForDetector, tmp_path: Path) -> None:
    """A released detector's model.safetensors (keys `vit.*`) is not a timm backbone file: an error, not a random init."""
    import safetensors.torch
    import timm

    (tmp_path / "released").mkdir()
    safetensors.torch.save_file(tiny.state_dict(), tmp_path / "released" / "model.safetensors")
    with pytest.raises(UserError) as err:
        create_detector(**TINY, pretrained=True, pretrained_path=tmp_path / "released" / "model.safetensors")
    message = str(err.value)
    assert message.startswith(f"--pretrained-path {tmp_path / 'released' / 'model.safetensors'}: only 0 of the")
    assert "of the 150 backbone tensors" in message and "unexpected vit.blocks.0." in message and "--hf-model FOLDER" in message
    # one tensor short, one of the wrong shape: both named
    weights = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).state_dict()
    del weights["blocks.5.mlp.fc2.bias"]
    weights["norm.weight"] = torch.ones(100)
    safetensors.torch.save_file(weights, tmp_path / "partial.safetensors")
    with pytest.raises(UserError, match=r"fit \(missing blocks\.5\.mlp\.fc2\.bias; wrong shape norm\.weight "
                                        r"\(100,\) \(needs \(192,\)\)\); give the ImageNet weights"):
        create_detector(**TINY, pretrained=True, pretrained_path=tmp_path / "partial.safetensors")
    with pytest.raises(UserError, match="garbage.pth: cannot read it as timm weights"):
        (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
        create_detector(**TINY, pretrained=True, pretrained_path=tmp_path / "garbage.pth")
