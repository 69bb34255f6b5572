"""The Hugging Face source kind: the parquet files of the requested splits, one unit per row group.

`--hf-repo` is one of
- a hub dataset id (`OwensLab/CommunityForensics`): only README.md and the requested
  splits' parquet files are downloaded with `huggingface_hub.snapshot_download`, and
  the hub cache is the only copy on disk (`datasets.load_dataset` would build a second,
  full Arrow copy: 1.1 TB for the full set);
- a local folder laid out like the hub repo (README.md whose YAML front matter lists
  `configs: - config_name: default, data_files: - split: NAME, path: [patterns]`);
- a parquet file or a glob of parquet files (one split).

Splits are found as `datasets` finds them (`read_split_patterns`, `_resolve`: its card
parsing, default layouts and pattern matching), only the download is ours.
Planning reads only the `label` and `model_name` columns and the row-group metadata;
the images are read when a partition is converted (`read`). This is the dataset
itself, so its reals are never limited by balancing (`BALANCED`).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from commfor_fast.errors import UserError
from commfor_fast.portable import portable_path
from commfor_fast.sources.columns import carried_columns, read_labels
from commfor_fast.sources.units import Source, Unit, escape_name

if TYPE_CHECKING:
    from commfor_fast.convert.settings import ConvertSettings, Limits

KIND = "hf"
BALANCED = False  # the dataset itself: its reals are never limited

README = "README.md"
IMAGE_COLUMN = "image_data"
PLAN_COLUMNS = ("label", "model_name")
# Every column except the image, kept in each sample's metadata when present.
META_COLUMNS = ("image_name", "format", "resolution", "model_name", "prompt", "subset", "split", "label",
                "architecture")
FILES_SPLIT = "files"  # the one split of parquet files given directly

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_split_patterns(root: Path, base_path: str) -> dict[str, list[str]]:
    """Split name -> file patterns of a dataset repo, by `datasets`' own rules.

    `root` holds the repo's README.md; its `configs` front matter (config `default`,
    else the first) names the splits. A card without `configs` gets the hub's default
    layout inference (`datasets.data_files.get_data_patterns`) on `base_path`, the
    repo's folder or `hf://datasets/ID`.
    """
    import yaml
    from datasets.data_files import get_data_patterns, sanitize_patterns
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    readme = root / README
    try:
        configs = MetadataConfigs.from_dataset_card_data(DatasetCard.load(readme).data)
        if configs:
            config = configs.get("default", next(iter(configs.values())))
            patterns = sanitize_patterns(config.get("data_files", []))
        else:
            patterns = get_data_patterns(base_path)
        return {str(name): list(split_patterns) for name, split_patterns in patterns.items()}
    except (yaml.YAMLError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # YAML's messages span lines
        raise UserError(f"{readme}: cannot read its `configs` front matter ({reason}); fix the dataset card") from None
    except FileNotFoundError:
        raise UserError(f"{readme} has no `configs` and {base_path} holds no data files in a layout the hub "
                        "recognises; add `configs` to the card") from None


def choose_splits(requested: str | None, available: list[str], where: str) -> list[str]:
    """The split names of "A+B" (order kept, duplicates dropped), checked against `available`."""
    if requested is None:
        if len(available) == 1:
            return available
        raise UserError(f"--hf-split is needed: {where} has the splits {', '.join(available)}; "
                        f"pick one or more joined with '+', e.g. --hf-split {'+'.join(available[:2])}")
    names = list(dict.fromkeys(part.strip() for part in requested.split("+")))
    for name in names:
        if name not in available:
            raise UserError(f"--hf-split {requested!r}: unknown split {name!r}; {where} has "
                            f"{', '.join(available)} (join several with '+')")
    return names


def _download(repo_id: str, patterns: list[str], cache_dir: Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=patterns, cache_dir=cache_dir))
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise UserError(f"--hf-repo {repo_id}: the hub dataset cannot be opened ({type(exc).__name__}); check the "
                        "id, accept its terms on huggingface.co and log in with `hf auth login`") from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise UserError(f"--hf-repo {repo_id}: download failed ({exc}); check the network and --cache-dir, "
                        "or pass a local copy of the repo") from None


def find_parquet_files(repo: str, split: str | None, cache_dir: Path | None) -> tuple[Path, dict[str, list[Path]]]:
    """(root folder, split name -> sorted parquet files) for the `--hf-repo` value."""
    path = Path(repo).expanduser()
    if path.is_file() or glob.has_magic(repo):
        files = sorted({Path(p).absolute() for p in glob.glob(str(path))} if glob.has_magic(repo) else {path.absolute()})
        files = [f for f in files if f.suffix == ".parquet"]
        if not files:
            raise UserError(f"--hf-repo {repo}: matches no .parquet file; give a parquet file, a glob of them, "
                            "a folder laid out like the hub repo, or a hub dataset id")
        if split is not None:
            raise UserError(f"--hf-split {split!r}: parquet files given directly form one split; drop --hf-split")
        root = Path(os.path.commonpath(files)) if len(files) > 1 else files[0].parent
        return root, {FILES_SPLIT: files}
    if path.is_dir():
        root = path.absolute()
        if not (root / README).is_file():
            raise UserError(f"--hf-repo {repo}: the folder has no {README}; pass a folder laid out like the hub repo "
                            "(README.md with `configs` front matter and data/<split>/*.parquet), or parquet files")
        where = str(root)
    elif _HUB_ID.match(repo):
        root = _download(repo, [README], cache_dir)
        where = f"the hub dataset {repo}"
    else:
        raise UserError(f"--hf-repo {repo}: no such file or folder, and not a hub dataset id like "
                        "OwensLab/CommunityForensics; fix the path or the id")
    patterns = read_split_patterns(root, str(root) if path.is_dir() else f"hf://datasets/{repo}")
    names = choose_splits(split, list(patterns), where)
    if not path.is_dir():
        root = _download(repo, [README] + [p for name in names for p in patterns[name]], cache_dir)
    return root, {name: _resolve(patterns[name], root, name, where) for name in names}


def _resolve(patterns: list[str], root: Path, split: str, where: str) -> list[Path]:
    """The sorted parquet files of one split's patterns, matched as `datasets` matches them."""
    from datasets.data_files import DataFilesList

    try:
        found = DataFilesList.from_patterns(patterns, base_path=str(root), allowed_extensions=[".parquet"])
    except FileNotFoundError:
        found = []
    files = sorted({Path(f) for f in found if Path(f).is_file()})
    if not files:
        raise UserError(f"--hf-split {split}: {where} has no parquet files matching {', '.join(patterns)}; "
                        "is the download complete?")
    return files


def _open(path: Path) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc}); re-download it or remove it") from None
    missing = [c for c in (IMAGE_COLUMN, *PLAN_COLUMNS) if c not in pf.schema_arrow.names]
    if missing:
        raise UserError(f"{path}: lacks the column(s) {', '.join(missing)}; --hf-repo must point to "
                        "Community Forensics parquet files (image_data, label, model_name, ...)")
    return pf


def scan_hf(repo: str, split: str | None, cache_dir: Path | None, source_index: int) -> tuple[Source, list[Unit]]:
    """One unit per row group of every parquet file of the requested splits."""
    root, files = find_parquet_files(repo, split, cache_dir)
    units: list[Unit] = []
    splits_summary = {}
    for split_name, paths in files.items():
        counts = {"files": len(paths), "row_groups": 0, "samples": 0, "labels": {"0": 0, "1": 0}}
        for path in paths:
            pf = _open(path)
            try:
                columns = pf.read(columns=list(PLAN_COLUMNS))
            except (OSError, pa.ArrowException) as exc:
                raise UserError(f"{path}: cannot read its label/model_name columns ({exc}); re-download it") from None
            labels = read_labels(path, columns.column("label"))
            generators = columns.column("model_name").to_pylist()
            start = 0
            name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
            for rg in range(pf.metadata.num_row_groups):
                meta = pf.metadata.row_group(rg)
                stop = start + meta.num_rows
                if meta.num_rows:
                    units.append(Unit(
                        source=source_index, path=str(path), name=name, row_group=rg, first_row=start,
                        nbytes=meta.total_byte_size, labels=tuple(labels[start:stop]),
                        generators=tuple(str(g) for g in generators[start:stop]),
                    ))
                start = stop
            counts["row_groups"] += pf.metadata.num_row_groups
            counts["samples"] += len(labels)
            counts["labels"]["1"] += sum(labels)
            counts["labels"]["0"] += len(labels) - sum(labels)
        splits_summary[split_name] = counts
    summary = {"kind": KIND, "repo": repo, "root": str(root), "splits": splits_summary}
    return Source(kind=KIND, given=repo, root=str(root), summary=summary), units


def scan(settings: ConvertSettings, limits: Limits, first_index: int) -> list[tuple[Source, list[Unit]]]:
    """The `--hf-repo` source, when one is given."""
    if not settings.hf_repo:
        return []
    return [scan_hf(settings.hf_repo, settings.hf_split, settings.cache_dir, first_index)]


def read(unit: Unit, given: str, root: str) -> Iterator[tuple[bytes | str, dict[str, Any]]]:
    """Each row of a row group: its image bytes (or why the row group cannot be read) and
    its metadata: where it came from, then every column but the image."""
    try:
        pf = pq.ParquetFile(unit.path)
        columns = [IMAGE_COLUMN, *carried_columns(pf.schema_arrow, META_COLUMNS)]
        table = pf.read_row_group(unit.row_group, columns=columns).to_pydict()
    except (OSError, pa.ArrowException) as exc:
        for _ in range(unit.num_rows):
            yield f"cannot read row group {unit.row_group}: {exc}", {}
        return
    for row in range(unit.num_rows):
        meta = {"source": KIND, "repo": given, "file": unit.name, "row": unit.first_row + row}
        meta.update({c: table[c][row] for c in columns[1:]})
        yield table[IMAGE_COLUMN][row] or b"", meta


def item(unit: Unit, row: int, root: str) -> str:
    """How a row is named among the rejects: `file.parquet#row N`, the file below the
    repo's root as its metadata names it (`file`); the conversion has one HF source."""
    return f"{escape_name(portable_path(unit.name))}#row {unit.first_row + row}"


def describe(source: Source) -> list[str]:
    """One line per split: its images, labels, files and row groups."""
    return [f"  --hf-repo {source.given}, split {name}: {c['samples']} images (real {c['labels']['0']}, fake "
            f"{c['labels']['1']}) in {c['files']} file(s), {c['row_groups']} row group(s)"
            for name, c in source.summary["splits"].items()]


def origin(meta: dict[str, Any]) -> tuple[str, str]:
    """The row's `image_name` (its parquet file and row when there is none), and the repo."""
    return meta.get("image_name") or f"{meta.get('file')}#row {meta.get('row')}", str(meta.get("repo"))
