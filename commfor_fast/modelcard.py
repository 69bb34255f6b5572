"""The model card of a trained detector: `README.md` in the run's `final/` folder.

A Hugging Face model card (YAML metadata, then Markdown): what the model does, the
input it expects, the data and settings it was trained with, its last validation
metrics and how to load it. The folder can be pushed to the Hub as it is
(`commfor-fast push`): the card is portable (commands as `commfor-fast ...`, paths by
their last part only, never the machine's absolute paths) and its metadata says what
the Hub indexes: `license`, `base_model`, `datasets`, `library_name: timm` (the
folder is in timm's layout) and `pipeline_tag: image-classification`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from commfor_fast import __version__
from commfor_fast.fileio import atomic_write
from commfor_fast.imageio import RESIZE_FOR_CROP
from commfor_fast.metrics import THRESHOLD
from commfor_fast.pipelines.preprocess import IMAGENET_MEAN, IMAGENET_STD
from commfor_fast.portable import portable_command, portable_path
from commfor_fast.safetext import printable
from commfor_fast.settings import TrainSettings
from commfor_fast.shards import Manifest

CARD_NAME = "README.md"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _code(text: object) -> str:
    """`text` (a path or a command line, which may hold anything) as a Markdown code span
    that survives in a table cell: printable, fenced by more backticks than it holds in
    a row, its `|` escaped (GitHub's tables split on `|` even inside code spans)."""
    body = printable(str(text)).replace("|", "\\|")
    fence = "`" * (max(map(len, re.findall("`+", body)), default=0) + 1)
    pad = " " if body[:1] == "`" or body[-1:] == "`" else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def base_model(settings: TrainSettings, timm_name: str) -> str | None:
    """What training started from, as a Hub id: a released detector, or timm's ImageNet
    weights (downloaded, or the same given with --pretrained-path); None otherwise."""
    if settings.hf_model is not None:
        return None if Path(settings.hf_model).exists() else settings.hf_model
    if settings.ckpt is None and settings.pretrained:
        return f"timm/{timm_name}"
    return None


def base_license(base: str | None, timm_name: str) -> str:
    """The license timm declares for the ImageNet weights when training started from them
    (apache-2.0 for these backbones), else "unknown": the card's owner says which. The
    training data's terms may add conditions either way."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name) if base == f"timm/{timm_name}" else None
    return getattr(cfg, "license", None) or "unknown"


def model_card(*, model_args: dict[str, Any], timm_name: str, settings: TrainSettings, manifest: Manifest,
               train_set: str, schedule: dict[str, int], validation: dict[str, Any] | None) -> str:
    """The card's text.

    Args:
        model_args: the detector's constructor arguments (`CommForDetector.model_args`).
        timm_name: its timm backbone.
        settings: the training run's settings.
        manifest: the training data's manifest.
        train_set: the set trained on ("train" or "all").
        schedule: processes, iterations in all and warmup iterations of the run.
        validation: the last validation record (itr, val_loss, val_acc, val_ap, val_n), or None.
    """
    size = model_args["input_size"]
    counts = manifest.sets[train_set].counts
    n_real = sum(c.get("0", 0) for c in counts.values())
    n_fake = sum(c.get("1", 0) for c in counts.values())
    n_generators = sum(1 for c in counts.values() if c.get("1", 0))
    n_real_sources = sum(1 for c in counts.values() if c.get("0", 0))
    start = (f"the detector {_code(portable_path(str(settings.hf_model)))}" if settings.hf_model else
             f"the checkpoint {_code(portable_path(str(settings.ckpt)))}" if settings.ckpt else
             f"the ImageNet weights of `{timm_name}`" if settings.pretrained else "random initialisation")
    base = base_model(settings, timm_name)
    meta = ModelCardData(license=base_license(base, timm_name),
                         base_model=base, datasets=manifest.hub_datasets() or None, library_name="timm",
                         pipeline_tag="image-classification",
                         tags=["ai-generated-image-detection", "community-forensics", "vision-transformer",
                               "commfor-fast"],
                         metrics=["accuracy", "average_precision"])
    if validation is None:
        val_text = "No validation ran (the data has no `val` set, or `--no-validate`)."
    else:
        val_text = (f"At iteration {validation['itr']}, on {validation['val_n']} held-out images: loss "
                    f"{_fmt(validation['val_loss'])}, accuracy {_fmt(validation['val_acc'])} (at P(fake) > "
                    f"{THRESHOLD}), average precision {_fmt(validation['val_ap'])}.")
    rows = {
        "backbone": f"`{timm_name}` ({model_args['model_size']}, patch {model_args['patch_size']})",
        "started from": start,
        "iterations": f"{schedule['total_itrs']} ({schedule['warmup']} warmup), "
                      f"{schedule['world_size']} process(es) x batch {settings.batch_size}",
        "optimiser": f"AdamW, lr {settings.lr}, weight decay {settings.weight_decay}, gradient clipping "
                     f"{settings.grad_clip}, "
                     + ("constant lr" if settings.no_lr_schedule else
                        f"cosine towards lr x 1e-3 (`--lr-schedule {settings.lr_schedule}`)"),
        "precision": settings.amp_dtype if settings.use_amp else "fp32",
        "augmentation": f"RandomStateAugmentation: {settings.rsa_ops.replace(',', ', ')} "
                        f"(each {settings.rsa_min_num_ops} to {settings.rsa_max_num_ops} times)",
        "frozen backbone": str(model_args["freeze_backbone"]).lower(),
        "seed": str(settings.seed),
        "command": _code(portable_command(settings.command)),
    }
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    return f"""---
{meta.to_yaml()}
---

# Community Forensics detector: ViT {model_args['model_size']}/{model_args['patch_size']} at {size} px

A binary detector of AI-generated images, trained with commfor-fast {__version__} as in
[Community Forensics](https://arxiv.org/abs/2411.04125) (Park & Owens, CVPR 2025). It returns
one logit per image; its sigmoid is P(fake), and the image counts as fake when P(fake) >
{THRESHOLD}.

## Input

RGB images (decoded as PIL's `open().convert("RGB")`), shorter side resized to
{RESIZE_FOR_CROP.get(size, size)} (bilinear, antialiased), centre crop {size} x {size}, scaled to [0, 1] and
normalised with mean {IMAGENET_MEAN} and std {IMAGENET_STD}. `commfor-fast predict` and
`commfor-fast eval` do exactly this.

## Training data

{_code(portable_path(str(settings.data)))} (set `{train_set}`): {n_real + n_fake} images, {n_real} real and {n_fake} fake, from
{n_real_sources} real source(s) and {n_generators} generator(s); converted by {_code(portable_command(manifest.command))}.

## Training settings

| setting | value |
|---|---|
{table}

## Validation

{val_text}

## How to load

With timm alone (the folder is in timm's layout; its config holds the preprocessing above):

```python
import timm

model = timm.create_model("hf-hub:HUB_ID", pretrained=True).eval()  # or "local-dir:PATH"
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
```

With commfor-fast:

```python
from commfor_fast.model import CommForDetector

model = CommForDetector.from_pretrained("PATH_OR_HUB_ID").eval()  # logits = model(images)
```

```bash
commfor-fast predict IMAGES --hf-model PATH_OR_HUB_ID
commfor-fast eval --data SHARDS --hf-model PATH_OR_HUB_ID --out REPORT
commfor-fast train --data SHARDS --out RUN --hf-model PATH_OR_HUB_ID   # fine-tune it
```
"""


def write_model_card(folder: Path, **card: Any) -> Path:
    """Write `model_card(**card)` as `folder/README.md` (replacing the mixin's generic card)."""
    path = Path(folder) / CARD_NAME
    with atomic_write(path, "w") as f:
        f.write(model_card(**card))
    return path
