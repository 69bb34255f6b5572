"""Local folder sources: `ROOT/<generator or dataset>/<label dir>/<image>`, one unit per image file.

The generator name is the folder above the label folder; label folders are mapped by
`--labels`, and images may sit in subfolders of a label folder. Extensions are
matched case-insensitively (the original only matched lower case and silently
missed `IMG_0001.JPG`). Hidden files and folders (names starting with ".") are
skipped at every level. Symlinks are followed, since datasets are often linked into
a root, but each real folder below a label folder is walked once: a link back up the
tree (a cycle) or a second link to a folder already walked is skipped. Nothing is
skipped silently: skipped files and folders are counted, a few are named in the
manifest, and a line is printed.
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


def _walk_files(folder: Path, root: Path, ignored: list[str]) -> list[os.DirEntry]:
    """Every file below `folder`, in sorted path order; skipped entries go to `ignored`.

    Skipped: hidden files and folders, folders whose real path was walked already
    (symlink cycles would otherwise recurse until `RecursionError`), and entries that
    are neither (broken symlinks).
    """
    files: list[os.DirEntry] = []
    walked = {os.path.realpath(folder)}

    def skip(entry: os.DirEntry, is_dir: bool) -> None:
        ignored.append(Path(entry.path).relative_to(root).as_posix() + ("/" if is_dir else ""))

    def walk(directory: Path) -> None:
        for entry in _entries(directory):
            if entry.name.startswith("."):
                skip(entry, entry.is_dir())
            elif entry.is_dir():
                real = os.path.realpath(entry.path)
                if real in walked:
                    skip(entry, True)
                    continue
                walked.add(real)
                walk(Path(entry.path))
            elif entry.is_file():
                files.append(entry)
            else:  # a broken symlink, a socket...
                skip(entry, False)

    walk(folder)
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
            for entry in _walk_files(Path(label_dir.path), root, ignored):
                name = Path(entry.path).relative_to(root).as_posix()
                if Path(entry.name).suffix.lower() not in SOURCE_EXTENSIONS:
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
        warnings.append(f"--folder {root}: ignored {len(ignored)} file(s) or folder(s) that are not images in the "
                        f"layout ROOT/<generator>/<label>/<image>, are hidden, or were reached twice through symlinks, "
                        f"e.g. {', '.join(ignored[:3])} (listed in manifest.json sources)")
    return Source(kind=FOLDER, given=given, root=str(root), summary=summary, warnings=warnings), units
