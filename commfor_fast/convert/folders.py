"""Local folder sources: `ROOT/<generator or dataset>/<label dir>/<image>`, one unit per image file.

The generator name is the folder above the label folder; label folders are mapped by
`--labels`, and images may sit in subfolders of a label folder. Extensions are
matched case-insensitively (the original only matched lower case and silently
missed `IMG_0001.JPG`). Hidden files and folders (names starting with ".") are
skipped at every level.

Symlinks: a generator or label folder may be a link to anywhere (datasets are often
linked into a root). Below a label folder, every path is resolved to its real path
and must stay inside that label folder's real tree, so an image's label is always the
label folder directly under its generator folder: a link that loops (leads to one of
its own parents) or leads out of its label folder (elsewhere in the root, or out of
it) is skipped and named in a warning. Every real file is stored at most once across
the whole walk (of all `--folder` roots): a file reached a second time, through
another link, is skipped. Non-UTF-8 names are stored in the lossless escaped form
of `units.escape_name`. An unreadable folder is skipped with a warning naming it.
Nothing is skipped silently: skipped files and folders are counted, a few are named
in the manifest, and a line is printed.
"""

from __future__ import annotations

import os
from pathlib import Path

from commfor_fast.convert.settings import labels_hint
from commfor_fast.convert.units import FOLDER, Source, Unit, escape_name
from commfor_fast.errors import UserError
from commfor_fast.imageio import SOURCE_EXTENSIONS

IGNORED_EXAMPLES = 10  # how many ignored files the manifest names
NAMED_IN_WARNINGS = 3  # how many skipped links or unreadable folders a warning line names


class _Walk:
    """What walking one root found besides images: what was skipped, and why."""

    def __init__(self, root: Path, seen: set[str]) -> None:
        self.root = root
        self.seen = seen  # real paths of the files taken already, across all roots
        self.ignored: list[str] = []  # not images, hidden, or reached a second time
        self.links: list[str] = []  # links that loop or leave their label folder
        self.unreadable: list[str] = []  # folders that cannot be listed
        self.repeats = 0  # files taken already (through another link or root)

    def rel(self, path: str) -> str:
        return escape_name(Path(path).relative_to(self.root).as_posix())

    def entries(self, folder: str) -> list[os.DirEntry]:
        """The sorted entries of `folder`; none (and a note) when it cannot be listed."""
        try:
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.unreadable.append(f"{self.rel(folder) or '.'}/ ({exc.strerror or exc})")
            return []

    def files(self, label_dir: os.DirEntry) -> list[os.DirEntry]:
        """Every file inside the real tree of `label_dir`, in sorted path order."""
        base = os.path.realpath(label_dir.path)
        files: list[os.DirEntry] = []
        walked = {base}

        def walk(directory: str) -> None:
            here = os.path.realpath(directory)
            for entry in self.entries(directory):
                is_dir = entry.is_dir()
                if entry.name.startswith("."):
                    self.ignored.append(self.rel(entry.path) + ("/" if is_dir else ""))
                    continue
                real = os.path.realpath(entry.path)
                if entry.is_symlink() and not real.startswith(base + os.sep):
                    loops = here == real or here.startswith(real + os.sep)
                    why = "loops" if loops else f"leads out of {self.rel(label_dir.path)}"
                    self.links.append(f"{self.rel(entry.path)} ({why})")
                elif is_dir:
                    if real in walked:  # a second link to a folder walked already
                        self.ignored.append(self.rel(entry.path) + "/")
                    else:
                        walked.add(real)
                        walk(entry.path)
                elif not entry.is_file():  # a broken symlink, a socket...
                    self.ignored.append(self.rel(entry.path))
                elif real in self.seen:
                    self.ignored.append(self.rel(entry.path))
                    self.repeats += 1
                else:
                    self.seen.add(real)
                    files.append(entry)

        walk(label_dir.path)
        return files

    def warnings(self, root: Path) -> list[str]:
        lines = []
        if self.ignored:
            lines.append(f"--folder {root}: ignored {len(self.ignored)} file(s) or folder(s) that are not images "
                         f"in the layout ROOT/<generator>/<label>/<image>, are hidden, or were reached a second "
                         f"time through symlinks, e.g. {', '.join(self.ignored[:NAMED_IN_WARNINGS])} (listed in "
                         f"manifest.json sources)")
        if self.links:
            lines.append(f"--folder {root}: skipped {len(self.links)} symlink(s) that loop or lead out of their "
                         f"label folder (an image takes the label of the folder it really is in): "
                         f"{', '.join(self.links[:NAMED_IN_WARNINGS])}")
        if self.unreadable:
            lines.append(f"--folder {root}: skipped {len(self.unreadable)} folder(s) that cannot be read: "
                         f"{', '.join(self.unreadable[:NAMED_IN_WARNINGS])}; fix their permissions and rerun "
                         f"to include them")
        return lines


def scan_folder(root: Path, labels: dict[str, int], source_index: int,
                seen: set[str] | None = None) -> tuple[Source, list[Unit]]:
    """One unit per image under `root`; raises `UserError` for a bad layout.

    `seen` holds the real paths of files taken from earlier roots (updated here), so
    a file reached from two roots is stored once.
    """
    given = str(root)
    if not root.is_dir():
        raise UserError(f"--folder {root}: no such folder; give a folder laid out as ROOT/<generator>/<label>/<image>")
    root = root.absolute()
    found = _Walk(root, set() if seen is None else seen)
    units: list[Unit] = []
    datasets: dict[str, dict[str, int]] = {}
    for gen in found.entries(str(root)):
        gen_name = escape_name(gen.name)
        if not gen.is_dir() or gen.name.startswith("."):
            found.ignored.append(gen_name)
            continue
        for label_dir in found.entries(gen.path):
            rel = f"{gen_name}/{escape_name(label_dir.name)}"
            if not label_dir.is_dir() or label_dir.name.startswith("."):
                found.ignored.append(rel)
                continue
            if label_dir.name not in labels:
                raise UserError(
                    f"--folder {root}: the folder {rel} is not a label folder; --labels "
                    f"{','.join(f'{k}:{v}' for k, v in labels.items())} knows only {', '.join(labels)}. "
                    f"Rename it, move it out, or name it in --labels (e.g. {labels_hint(labels, escape_name(label_dir.name))})"
                )
            label = labels[label_dir.name]
            for entry in found.files(label_dir):
                name = found.rel(entry.path)
                if Path(entry.name).suffix.lower() not in SOURCE_EXTENSIONS:
                    found.ignored.append(name)
                    continue
                units.append(Unit(source=source_index, path=entry.path, name=name, row_group=-1, first_row=0,
                                  nbytes=entry.stat().st_size, labels=(label,), generators=(gen_name,)))
                counts = datasets.setdefault(gen_name, {"0": 0, "1": 0})
                counts[str(label)] += 1
    if not units and found.repeats:
        raise UserError(f"--folder {root}: every image in it was reached already through another --folder (the "
                        "same files); give each folder once")
    if not units:
        raise UserError(f"--folder {root}: holds no images ({', '.join(SOURCE_EXTENSIONS)}, any case) in the layout "
                        "ROOT/<generator>/<label>/<image>; point to the folder above the generator folders")
    summary = {
        "kind": FOLDER, "root": str(root), "samples": len(units),
        "labels": {k: sum(c[k] for c in datasets.values()) for k in ("0", "1")},
        "datasets": datasets, "ignored_files": len(found.ignored),
        "ignored_examples": found.ignored[:IGNORED_EXAMPLES],
        "skipped_links": found.links, "unreadable_folders": found.unreadable,
    }
    return Source(kind=FOLDER, given=given, root=str(root), summary=summary, warnings=found.warnings(root)), units
