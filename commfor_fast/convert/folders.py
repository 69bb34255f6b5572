"""Local folder sources: `ROOT/<generator or dataset>/<label dir>/<image>`, one unit per image file.

The generator name is the folder above the label folder; label folders are mapped by
`--labels`, and images may sit in subfolders of a label folder. Extensions are
matched case-insensitively (the original only matched lower case and silently
missed `IMG_0001.JPG`). Files that are not images are never skipped silently: they
are counted, a few are named in the manifest, and a line is printed.
"""

from __future__ import annotations

import os
from pathlib import Path

from commfor_fast.convert.units import FOLDER, Source, Unit
from commfor_fast.errors import UserError
from commfor_fast.imageio import SOURCE_EXTENSIONS

IGNORED_EXAMPLES = 10  # how many ignored files the manifest names


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _walk_files(folder: Path) -> list[os.DirEntry]:
    """Every file below `folder`, in sorted path order (symlinks followed)."""
    files = []
    for entry in _entries(folder):
        if entry.is_dir():
            files.extend(_walk_files(Path(entry.path)))
        elif entry.is_file():
            files.append(entry)
    return files


def scan_folder(root: Path, labels: dict[str, int], source_index: int) -> tuple[Source, list[Unit]]:
    """One unit per image under `root`; raises `UserError` for a bad layout."""
    given = str(root)
    if not root.is_dir():
        raise UserError(f"--folder {root}: no such folder; give a folder laid out as ROOT/<generator>/<label>/<image>")
    root = root.absolute()
    units: list[Unit] = []
    ignored: list[str] = []
    datasets: dict[str, dict[str, int]] = {}
    for gen in _entries(root):
        if not gen.is_dir() or gen.name.startswith("."):
            ignored.append(gen.name)
            continue
        for label_dir in _entries(Path(gen.path)):
            rel = f"{gen.name}/{label_dir.name}"
            if not label_dir.is_dir() or label_dir.name.startswith("."):
                ignored.append(rel)
                continue
            if label_dir.name not in labels:
                real = next(name for name, value in labels.items() if value == 0)
                raise UserError(
                    f"--folder {root}: the folder {rel} is not a label folder; --labels "
                    f"{','.join(f'{k}:{v}' for k, v in labels.items())} knows only {', '.join(labels)}. "
                    f"Rename it, move it out, or name it in --labels (e.g. --labels {real}:0,{label_dir.name}:1)"
                )
            label = labels[label_dir.name]
            for entry in _walk_files(Path(label_dir.path)):
                name = Path(entry.path).relative_to(root).as_posix()
                if Path(entry.name).suffix.lower() not in SOURCE_EXTENSIONS or entry.name.startswith("."):
                    ignored.append(name)
                    continue
                units.append(Unit(source=source_index, path=entry.path, name=name, row_group=-1, first_row=0,
                                  nbytes=entry.stat().st_size, labels=(label,), generators=(gen.name,)))
                counts = datasets.setdefault(gen.name, {"0": 0, "1": 0})
                counts[str(label)] += 1
    if not units:
        raise UserError(f"--folder {root}: holds no images ({', '.join(SOURCE_EXTENSIONS)}, any case) in the layout "
                        "ROOT/<generator>/<label>/<image>; point to the folder above the generator folders")
    summary = {
        "kind": FOLDER, "root": str(root), "samples": len(units),
        "labels": {k: sum(c[k] for c in datasets.values()) for k in ("0", "1")},
        "datasets": datasets, "ignored_files": len(ignored), "ignored_examples": ignored[:IGNORED_EXAMPLES],
    }
    warnings = []
    if ignored:
        warnings.append(f"--folder {root}: ignored {len(ignored)} file(s) that are not images in the layout "
                        f"ROOT/<generator>/<label>/<image>, e.g. {', '.join(ignored[:3])} (listed in manifest.json sources)")
    return Source(kind=FOLDER, given=given, root=str(root), summary=summary, warnings=warnings), units
