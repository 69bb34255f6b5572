"""The dataset card (`README.md`) written into every output folder, for Hugging Face `datasets`.

HF's webdataset builder infers its columns from the first few samples, which fails
on a conversion that mixes PNG, JPEG and WebP (the image member's name differs per
sample). The card declares the columns (`dataset_info.features`, every stored image
format a column of its own, empty where a sample has another format) and the splits
(`configs`), so `datasets.load_dataset(OUT)` reads the folder and it can be pushed to
the hub as it is. Sets map to splits as `SPLIT_NAMES` says (`all` is a reserved split
name in `datasets`). The card's YAML is written here; `datasets`, when installed, checks
that it reads the features back unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from commfor_fast.fileio import atomic_write
from commfor_fast.shards import CARD_NAME, IDS_EXT, LABEL_EXT, META_EXT, RAW_EXT, RAW_HEADER_BYTES, Manifest

SPLIT_NAMES = {"train": "train", "val": "validation", "all": "train"}  # set -> split


def _features(manifest: Manifest) -> list[dict[str, Any]]:
    """The columns of a sample as the card's YAML lists them: its key, every stored
    image format, cls, ids, json."""
    stored = sorted({ext for info in manifest.sets.values() for ext in info.stored})
    columns: list[dict[str, Any]] = [{"name": "__key__", "dtype": "string"}]
    for ext in stored:
        columns.append({"name": ext, "list": {"list": {"list": "uint8"}}} if ext == RAW_EXT
                       else {"name": ext, "dtype": "image"})
    columns += [{"name": LABEL_EXT, "dtype": "int64"}, {"name": IDS_EXT, "dtype": "binary"},
                {"name": META_EXT, "dtype": "json"}]
    return columns


def _validated(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`features`, after `datasets` has parsed them back as it will when loading the
    folder; without `datasets` (a GPU machine's image may lack it), unchecked, with a
    warning on stderr."""
    try:
        from datasets import Features
    except ImportError:
        print("warning: the datasets package is missing: the dataset card is written without checking its "
              "features with datasets; pip install datasets to check them", file=sys.stderr, flush=True)
        return features
    parsed = Features._from_yaml_list(features)._to_yaml_list()  # how `datasets` reads a card's features
    if parsed != features:
        raise RuntimeError(f"datasets reads the card's features as {parsed}, not {features}")
    return features


def _body(manifest: Manifest) -> str:
    splits = ", ".join(f"`{SPLIT_NAMES[name]}` ({info.num_samples} images, set `{name}`)"
                       for name, info in manifest.sets.items())
    image = (f"`npy`: the pixels resized to a shorter side of {manifest.preresize}, uint8 HWC\n  "
             f"(a `.npy` file whose header is always {RAW_HEADER_BYTES} bytes)" if manifest.preresize else
             "one column per stored format (`png`, `jpg`, ...): the image bytes as the\n  source held "
             "them (or a lossless PNG), empty when the sample has another format")
    generators = ", ".join(f"`{g}`" for g in manifest.generators)
    return f"""
# Community Forensics shards

WebDataset tar shards written by `commfor-fast convert` for training and evaluating
fake-image detectors ([Community Forensics](https://arxiv.org/abs/2411.04125)).

```python
import datasets
ds = datasets.load_dataset("path/to/this/folder")  # or the hub id once pushed
```

Splits: {splits}.

Columns:
- `__key__`: the sample number within its set;
- {image};
- `cls`: the label, 0 real, 1 fake;
- `ids`: five little-endian int32 (label, generator id, sample number, stored height,
  stored width);
- `json`: the metadata (generator, source, original name, format and size).

Generators (generator id = position): {generators}.

`manifest.json` holds the counts per generator, label and format, the rejected
images, the command and the seed; `commfor-fast inspect` summarises it. Written by
commfor-fast {manifest.package_version}: `{manifest.command}`.
"""


def write_dataset_card(out: Path, manifest: Manifest) -> Path:
    """Write `OUT/README.md` (YAML `configs` + `dataset_info`, then a short description)."""
    from huggingface_hub import DatasetCardData

    data_files = [{"split": SPLIT_NAMES[name], "path": f"{name}/*.tar"} for name in manifest.sets]
    data = DatasetCardData(tags=["webdataset", "image-classification", "ai-generated-image-detection"],
                           configs=[{"config_name": "default", "data_files": data_files}],
                           dataset_info={"features": _validated(_features(manifest))})
    path = Path(out) / CARD_NAME
    with atomic_write(path, "w") as f:
        f.write(f"---\n{data.to_yaml()}\n---\n{_body(manifest)}")
    return path
