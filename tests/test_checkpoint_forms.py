"""Checkpoints in the forms users hold (.pt, .safetensors, a model folder), timm's layout, and resume's shape check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from PIL import Image
from typer.testing import CliRunner

from commfor_fast.checkpoint import TrainCheckpoint, resume_changes
from commfor_fast.cli import app
from commfor_fast.errors import UserError
from commfor_fast.model import CommForDetector, detector_from_checkpoint, load_detector, read_checkpoint
from commfor_fast.settings import TrainSettings, settings_dict
from test_model import TINY, tiny  # noqa: F401 (tiny is a fixture)



@pytest.fixture(scope="module")
def final(tiny: CommForDetector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as training leaves it: model.pt and final/ (save_pretrained)."""
    run = tmp_path_factory.mktemp("run")
    torch.save(tiny.state_dict(), run / "model.pt")
    tiny.save_pretrained(run / "final")
    return run / "final"


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def test_the_head_is_the_original_swap_and_timm_knows_one_class() -> None:
    torch.manual_seed(7)
    ours = CommForDetector(**TINY)
    torch.manual_seed(7)
    original = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False)
    original.head = torch.nn.Linear(original.embed_dim, 1)  # what the original does
    for (k, a), b in zip(ours.vit.state_dict().items(), original.state_dict().values()):
        assert torch.equal(a, b), k
    assert ours.vit.num_classes == 1


@pytest.mark.parametrize("form", ["file", "folder", "hf-folder"])
def test_safetensors_and_model_folders_load(final: Path, tiny: CommForDetector, x: torch.Tensor, form: str) -> None:
    kwargs = {"file": {"ckpt": final / "model.safetensors"}, "folder": {"ckpt": final},
              "hf-folder": {"hf_model": str(final)}}[form]
    model, info = load_detector(**kwargs)
    assert info["format"] == "safetensors" and info["model_args"] == tiny.model_args
    assert torch.equal(logits(model, x), logits(tiny, x))


def test_save_pretrained_is_timm_layout_and_timm_alone_loads_it(final: Path, tiny: CommForDetector,
                                                               x: torch.Tensor) -> None:
    config = json.loads((final / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 1
    assert {k: config[k] for k in TINY} == TINY  # ours, for from_pretrained and load_detector
    keys = list(safetensors.torch.load_file(final / "model.safetensors"))
    assert "pos_embed" in keys and "head.weight" in keys and not any(k.startswith("vit.") for k in keys)
    # timm alone, offline, from the folder (the hub loader "hf-hub:ID" reads the same files: test_hub.py)
    by_folder = timm.create_model(f"local-dir:{final}", pretrained=True).eval()
    assert torch.equal(logits(by_folder, x), logits(tiny, x))
    # timm's transform from the folder's config is our evaluation preprocessing
    data = timm.data.resolve_data_config({}, model=by_folder)
    assert data["interpolation"] == "bilinear" and data["crop_mode"] == "center"
    assert tuple(data["mean"]) == (0.485, 0.456, 0.406) and tuple(data["std"]) == (0.229, 0.224, 0.225)
    resize = timm.data.create_transform(**data).transforms[0]
    assert resize.size == 256  # shorter side 256, then the 224 centre crop (RESIZE_FOR_CROP)
    assert CommForDetector.from_pretrained(final).model_args == tiny.model_args


def test_the_original_layout_folder_still_loads(tiny: CommForDetector, x: torch.Tensor, tmp_path: Path) -> None:
    """A folder of the released detectors' layout: `vit.*` keys and a config of our arguments only."""
    (tmp_path / "released").mkdir()
    safetensors.torch.save_file(tiny.state_dict(), tmp_path / "released" / "model.safetensors")
    (tmp_path / "released" / "config.json").write_text(json.dumps({**TINY, "freeze_backbone": True}))
    model, info = load_detector(ckpt=tmp_path / "released")
    assert info["model_args"]["freeze_backbone"] is True  # from the config.json beside the weights
    assert torch.equal(logits(model, x), logits(tiny, x))
    assert torch.equal(logits(CommForDetector.from_pretrained(tmp_path / "released").eval(), x), logits(tiny, x))


def test_safetensors_without_config_infers_the_shape(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = CommForDetector(model_size="small", input_size=224, patch_size=32).eval()
    safetensors.torch.save_file(model.state_dict(), tmp_path / "weights.bin")  # any name: read by content
    loaded, info = load_detector(ckpt=tmp_path / "weights.bin")
    assert info["format"] == "safetensors"
    assert info["model_args"] == {"model_size": "small", "input_size": 224, "patch_size": 32, "freeze_backbone": False}


def test_training_reads_the_same_forms(final: Path, tiny: CommForDetector, x: torch.Tensor) -> None:
    """train --ckpt goes through read_checkpoint + detector_from_checkpoint: a folder starts from its weights."""
    for path in (final, final / "model.safetensors", final.parent / "model.pt"):
        model, fmt = detector_from_checkpoint(read_checkpoint(path), path)
        assert fmt in ("safetensors", "state_dict") and torch.equal(logits(model.eval(), x), logits(tiny, x))


def test_bad_forms_are_one_line_naming_the_fix(final: Path, tiny: CommForDetector, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"holds no model weights .*the run's model is .*final"):
        load_detector(ckpt=final.parent)  # the run folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: the folder holds no model weights"):
        load_detector(ckpt=tmp_path / "empty")
    data = (final / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut.safetensors: not a readable safetensors file"):
        load_detector(ckpt=tmp_path / "cut.safetensors")
    nan = dict(tiny.state_dict())
    nan["vit.blocks.1.attn.qkv.weight"] = torch.full_like(nan["vit.blocks.1.attn.qkv.weight"], float("nan"))
    safetensors.torch.save_file(nan, tmp_path / "nan.safetensors")
    with pytest.raises(UserError, match=r"nan.safetensors: the weight vit.blocks.1.attn.qkv.weight holds NaN"):
        load_detector(ckpt=tmp_path / "nan.safetensors")
    with pytest.raises(UserError, match=r"^--hf-model .*nowhere: no such folder, and not a Hugging Face id"):
        load_detector(hf_model=str(tmp_path / "nowhere"))


def test_cli_predict_takes_our_own_safetensors(final: Path, tmp_path: Path) -> None:
    Image.new("RGB", (300, 260), (200, 30, 30)).save(tmp_path / "a.png")
    for ckpt in (final / "model.safetensors", final):
        result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--ckpt", str(ckpt), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert "1 files:" in result.output


def _record(model_args: dict, settings: TrainSettings) -> TrainCheckpoint:
    return TrainCheckpoint(model={}, model_args=model_args, optimizer={}, scaler={}, epoch=0, itr=4,
                           schedule={"world_size": 1, "total_itrs": 8, "warmup": 1, "data": "f"},
                           data=[{}], settings=settings_dict(settings), version="")


def test_resume_refuses_shape_flags_that_contradict_the_checkpoint() -> None:
    then = TrainSettings(data=Path("d"), out=Path("o"), **TINY)
    shape = {"world_size": 1, "total_itrs": 8, "warmup": 1, "data": "f"}
    record = _record({**TINY, "freeze_backbone": False}, then)
    assert resume_changes(record, then, shape)[0] == []  # the same command resumes
    with pytest.raises(UserError, match=r"^--model-size small: the checkpoint resumed from holds another model "
                                        r"\(--model-size tiny\); .*give --model-size tiny$"):
        resume_changes(record, TrainSettings(data=Path("d"), out=Path("o"), input_size=224, patch_size=16), shape)
    # a run started from a tiny --ckpt under the default (small) flags resumes with those flags or with tiny's
    started = TrainSettings(data=Path("d"), out=Path("o"))
    record = _record({**TINY, "freeze_backbone": False}, started)
    assert resume_changes(record, started, shape)[0] == []
    assert resume_changes(record, TrainSettings(data=Path("d"), out=Path("o"), model_size="tiny"), shape)[0] == []
    with pytest.raises(UserError, match=r"^--input-size 384: .*\(--input-size 224\)"):
        resume_changes(_record({**TINY, "freeze_backbone": False}, then),
                       TrainSettings(data=Path("d"), out=Path("o"), model_size="tiny", patch_size=16), shape)
