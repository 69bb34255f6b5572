"""The dataset card (`README.md`) and generator list written into every output folder.

`datasets.load_dataset(OUT)` reads the folder through the card with its WebDataset
builder, which makes one column per tar member suffix (`KEY.cls` -> column `cls`) and
infers their types from the first few samples, from the suffix (an `.image` member is
not known as an image). The card therefore declares:

- the columns (`dataset_info.features`): `image` as `Image` (whatever its format, and
  pre-resized pixels too: a PPM, which PIL reads without decoding), `cls` as
  `ClassLabel(names=[real, fake])`, `ids`, and `json` (generator, source, ...). The
  builder names columns by suffix and decodes integers only from `.cls`-like suffixes,
  so the label cannot be a `label` column nor the generator a string column of its own
  without a member more per sample (a tar block of 1 KiB); the card's body shows
  `rename_column` and `json`'s `generator`;
- the splits (`configs`): sets map to splits as `SPLIT_NAMES` says; `all`, a set
  kept whole (`--val-frac 0`, the evaluation form), is `test`;
- a cache identity: `datasets` caches a folder's rows under its folder name and a
  hash of the card's YAML, so two conversions with the same folder name and the same
  columns shared one cache entry and the second loaded the first one's rows. The
  config's `description` carries `Manifest.fingerprint()` (every shard's sha256), so
  other shards give another hash;
- hub metadata: `license` (each source's, as its hub card says; `unknown` for local
  folders) and `source_datasets` (the hub datasets converted).

The card names no local path and summarises the generators; `generators.csv` beside it
lists every one with its counts. `datasets`, when installed, checks that it reads the
features back unchanged.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path
from typing import Any

from commfor_fast.fileio import atomic_write
from commfor_fast.portable import portable_command, portable_path
from commfor_fast.safetext import spreadsheet_safe
from commfor_fast.shards import (CARD_NAME, GENERATORS_NAME, IDS_EXT, IMAGE_EXT, LABEL_EXT, META_EXT,
                                 RAW_HEADER_BYTES, Manifest)

SPLIT_NAMES = {"train": "train", "val": "validation", "all": "test"}  # set -> split
LABEL_NAMES = ("real", "fake")  # label 0, label 1 (the `cls` column's ClassLabel names)
UNKNOWN_LICENSE = "unknown"  # the hub's id for a licence not stated


def _features() -> list[dict[str, Any]]:
    """The columns of a sample as the card's YAML lists them: its key, image, cls, ids, json."""
    labels = {"class_label": {"names": {str(label): name for label, name in enumerate(LABEL_NAMES)}}}
    return [{"name": "__key__", "dtype": "string"}, {"name": IMAGE_EXT, "dtype": "image"},
            {"name": LABEL_EXT, "dtype": labels}, {"name": IDS_EXT, "dtype": "binary"},
            {"name": META_EXT, "dtype": "json"}]


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


def _source_licenses(source: dict[str, Any]) -> list[str]:
    """A source's licences: the `license` of its hub card (downloaded, or the local
    replica's README.md), `unknown` for a folder or a card that states none."""
    card = Path(str(source.get("root", ""))) / CARD_NAME
    if source.get("kind") != "hf" or not card.is_file():
        return [UNKNOWN_LICENSE]
    import yaml
    from huggingface_hub import DatasetCard

    try:
        found = DatasetCard.load(card).data.license
    except yaml.YAMLError:  # front matter that is not YAML: a README.md beside parquet files, not a hub card
        return [UNKNOWN_LICENSE]
    return [found] if isinstance(found, str) else [str(name) for name in found or []] or [UNKNOWN_LICENSE]


def _source_name(source: dict[str, Any]) -> str:
    """How the card names a source: the hub id or folder as given, no local folders."""
    given = source.get("repo") if source.get("kind") == "hf" else source.get("root")
    return f"{source.get('kind')} `{portable_path(str(given))}`"


def _licenses(manifest: Manifest) -> list[tuple[str, list[str]]]:
    """(source, its licences) per source, as the card's body lists them."""
    return [(_source_name(source), _source_licenses(source)) for source in manifest.sources]


def _counts(manifest: Manifest) -> dict[str, dict[str, list[int]]]:
    """generator -> set -> [reals, fakes]."""
    table: dict[str, dict[str, list[int]]] = {name: {} for name in manifest.generators}
    for set_name, info in manifest.sets.items():
        for generator, by_label in info.counts.items():
            table.setdefault(generator, {})[set_name] = [by_label.get("0", 0), by_label.get("1", 0)]
    return table


def write_generators(out: Path, manifest: Manifest) -> Path:
    """Write `OUT/generators.csv`: one row per generator in id order (the `ids`
    member's generator id is the row's `id`), its images per label, in all and per set."""
    counts = _counts(manifest)
    set_names = list(manifest.sets)
    path = Path(out) / GENERATORS_NAME
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "generator", "real", "fake",
                         *(f"{name}_{label}" for name in set_names for label in LABEL_NAMES)])
        for gen_id, name in enumerate(manifest.generators):
            per_set = [counts[name].get(s, [0, 0]) for s in set_names]
            writer.writerow([gen_id, spreadsheet_safe(name), sum(c[0] for c in per_set), sum(c[1] for c in per_set),
                             *(n for c in per_set for n in c)])
    return path


def _generator_summary(manifest: Manifest) -> str:
    """The generators in a few numbers: how many hold fakes and reals, images per generator."""
    totals = [[sum(c[i] for c in by_set.values()) for i in (0, 1)] for by_set in _counts(manifest).values()]
    images = [real + fake for real, fake in totals] or [0]
    with_fakes, with_reals = sum(fake > 0 for _, fake in totals), sum(real > 0 for real, _ in totals)
    return (f"{len(manifest.generators)} generators and real sources: {with_fakes} with fake images, {with_reals} "
            f"with real images; images per name: {min(images)} to {max(images)}, median "
            f"{statistics.median(images):g}")


def _body(manifest: Manifest) -> str:
    splits = ", ".join(f"`{SPLIT_NAMES[name]}` ({info.num_samples} images, set `{name}`)"
                       for name, info in manifest.sets.items())
    image = (f"the pixels resized to a shorter side of {manifest.preresize}, as a PIL image\n  "
             f"(`numpy.asarray` gives the uint8 HWC array); stored as a binary PPM whose header\n  is always "
             f"{RAW_HEADER_BYTES} bytes, so reading it is a copy" if manifest.preresize
             else "the image as the source held it (JPEG, PNG, WebP, BMP or TIFF; other\n  formats as a lossless "
             "PNG), as a PIL image; `json` names its format")
    licenses = "; ".join(f"{name}: {', '.join(found)}" for name, found in _licenses(manifest)) or "no sources"
    return f"""
# Community Forensics shards

WebDataset tar shards written by `commfor-fast convert` for training and evaluating
fake-image detectors ([Community Forensics](https://arxiv.org/abs/2411.04125)).

```python
import datasets
ds = datasets.load_dataset("path/to/this/folder")  # or the hub id once pushed
ds = ds.rename_column("cls", "label")  # if you prefer the usual name: a rename copies nothing
row = ds["{SPLIT_NAMES[next(iter(manifest.sets), "train")]}"][0]
row["image"], row["label"], row["json"]["generator"]  # PIL image, 0 real / 1 fake, the generator
```

Splits: {splits}.

Columns:
- `__key__`: the sample number within its set;
- `image`: {image};
- `cls`: the label, `ClassLabel` 0 `real`, 1 `fake`;
- `ids`: five little-endian int32 (label, generator id, sample number, stored height,
  stored width);
- `json`: the metadata (`generator`, source, original name, format and size).

Generators: {_generator_summary(manifest)}.
Every one, with its images per label and set, is in [`{GENERATORS_NAME}`]({GENERATORS_NAME})
(generator id = `id`).

Licences: the images keep their sources' licences ({licenses}).

`manifest.json` holds the counts per generator, label and format, the rejected
images, the command and the seed; `commfor-fast inspect` summarises it. Written by
commfor-fast {manifest.package_version}: `{portable_command(manifest.command)}`.
"""


def _card_data(manifest: Manifest) -> Any:
    """The card's YAML front matter (a `huggingface_hub.DatasetCardData`)."""
    from huggingface_hub import DatasetCardData

    licenses = sorted({name for _, found in _licenses(manifest) for name in found}) or [UNKNOWN_LICENSE]
    hub_ids = manifest.hub_datasets()
    data_files = [{"split": SPLIT_NAMES[name], "path": f"{name}/*.tar"} for name in manifest.sets]
    config = {"config_name": "default", "data_files": data_files,
              # the cache identity of `datasets` (see the module's docstring)
              "description": f"commfor-fast shards {manifest.fingerprint()}"}
    return DatasetCardData(license=licenses[0] if len(licenses) == 1 else licenses,
                           source_datasets=hub_ids or None, task_categories=["image-classification"],
                           tags=["webdataset", "image-classification", "ai-generated-image-detection"],
                           configs=[config], dataset_info={"features": _validated(_features())})


def write_dataset_card(out: Path, manifest: Manifest) -> Path:
    """Write `OUT/generators.csv`, then `OUT/README.md` (YAML metadata, `configs` and
    `dataset_info`, then a short description)."""
    write_generators(out, manifest)
    path = Path(out) / CARD_NAME
    with atomic_write(path, "w") as f:
        f.write(f"---\n{_card_data(manifest).to_yaml()}\n---\n{_body(manifest)}")
    return path
