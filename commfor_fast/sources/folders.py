"""The local folder source kind: `ROOT/<generator or dataset>/<label dir>/<image>`, one unit per image file.

The generator name is the folder above the label folder; label folders are mapped by
`--labels`. Which files are images is the `--discovery` rule:

- `broad` (the default): images may sit in subfolders of a label folder, endings are
  matched in any case (`IMG_0001.JPG`), `.tif` counts as `.tiff`, and hidden files and
  folders (names starting with ".") are skipped at every level.
- `original`: the original's rule exactly: only files directly in a label folder whose
  names end in one of `ORIGINAL_EXTENSIONS` in lower case; hidden files and folders
  are taken like any other.

Both rules see the same tree, and the difference is counted: under `broad` a line
says how many images the original would not have seen (and how many hidden images it
would have taken); under `original`, how many images `broad` would add.

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

Each file costs one `stat` (its size): real paths are resolved for links only, and
each listed folder's ctime is stamped, so that a rerun or another node can take the
recorded scan instead of walking again while no folder changed (`convert/listing.py`).

Folders hold the extra local data, whose reals balancing limits (`BALANCED`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from commfor_fast.errors import UserError
from commfor_fast.imageio import SOURCE_EXTENSIONS
from commfor_fast.portable import portable_path
from commfor_fast.sources.units import Source, Unit, escape_name

if TYPE_CHECKING:
    from commfor_fast.convert.settings import ConvertSettings, Limits

KIND = "folder"
BALANCED = True  # extra local data: balancing limits its reals

IGNORED_EXAMPLES = 10  # how many ignored files the manifest names
NAMED_IN_WARNINGS = 3  # how many skipped links or unreadable folders a warning line names
# A folder whose ctime is this close to the scan's start (or later) may have changed
# within one tick of the file system's clock while it was listed: never trusted.
RACY_NS = 100_000_000
BROAD, ORIGINAL = "broad", "original"
DISCOVERY_RULES = (BROAD, ORIGINAL)
ORIGINAL_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tiff", ".webp", ".gif")  # matched in lower case only


def broad_takes(rel: str) -> bool:
    """The `broad` rule for a file at `rel` (its path below the label folder): an image
    ending in any case, at any depth, nothing hidden on the way."""
    return os.path.splitext(rel)[1].lower() in SOURCE_EXTENSIONS and not any(p.startswith(".") for p in rel.split("/"))


def original_takes(rel: str) -> bool:
    """The original's rule: directly in the label folder, an image ending in lower case."""
    return "/" not in rel and rel.endswith(ORIGINAL_EXTENSIONS)


RULES: dict[str, Callable[[str], bool]] = {BROAD: broad_takes, ORIGINAL: original_takes}


class _Walk:
    """What walking one root found besides images: what was skipped, and why."""

    def __init__(self, root: Path, seen: set[str], discovery: str) -> None:
        self.root = root
        self.prefix = os.path.join(str(root), "")  # the root with one trailing separator
        self.seen = seen  # real paths of the files taken already, across all roots
        self.discovery = discovery
        self.takes = RULES[discovery]
        self.other_rule = RULES[ORIGINAL if discovery == BROAD else BROAD]
        self.extra: list[str] = []  # images this rule takes and the other rule does not
        self.missed: list[str] = []  # images the other rule takes and this one does not
        self.ignored: list[str] = []  # not images, hidden, or reached a second time
        self.links: list[str] = []  # links that loop or leave their label folder
        self.unreadable: list[str] = []  # folders that cannot be listed
        self.repeats = 0  # files taken already (through another link or root)
        self.started = time.time_ns()
        self.stamps: dict[str, int] = {}  # folder listed -> its ctime then (`convert/listing.py`)

    def rel(self, path: str) -> str:
        # string slicing, not pathlib: this runs for every file (pathlib was most of the walk's time)
        return escape_name(path[len(self.prefix):] if path.startswith(self.prefix) else "")

    def entries(self, folder: str) -> list[os.DirEntry]:
        """The sorted entries of `folder`; none (and a note) when it cannot be listed.

        Its ctime is stamped first, so a change while it is listed shows on the next
        run; a folder changed at about the time of the scan is marked untrusted (-1).
        """
        self.stamps[folder] = -1  # until stamped: a folder that cannot even be stat'ed is never trusted
        try:
            ctime = os.stat(folder).st_ctime_ns
            self.stamps[folder] = -1 if ctime >= self.started - RACY_NS else ctime
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.unreadable.append(f"{self.rel(folder) or '.'}/ ({exc.strerror or exc})")
            return []

    def hidden_skipped(self, name: str) -> bool:
        """Whether the rule skips hidden files and folders (names starting with ".")."""
        return self.discovery == BROAD and name.startswith(".")

    def files(self, label_dir: os.DirEntry) -> list[os.DirEntry]:
        """The images the rule takes inside the real tree of `label_dir`, in sorted path
        order; every other file is noted as ignored."""
        base = os.path.realpath(label_dir.path)
        files: list[os.DirEntry] = []
        walked = {base}

        def walk(directory: str) -> None:
            here = os.path.realpath(directory)
            for entry in self.entries(directory):
                is_dir = entry.is_dir()
                below = entry.path[len(label_dir.path) + 1:]  # the path below the label folder
                if self.hidden_skipped(entry.name):
                    self.ignored.append(self.rel(entry.path) + ("/" if is_dir else ""))
                    if not is_dir and self.other_rule(below):
                        self.missed.append(self.rel(entry.path))
                    continue
                # only a link can lead elsewhere: a plain entry's real path is its real folder's
                real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(here, entry.name)
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
                elif self.takes(below):
                    if not self.other_rule(below):
                        self.extra.append(self.rel(entry.path))
                    self.take(entry, real, files)
                else:
                    self.ignored.append(self.rel(entry.path))
                    if self.other_rule(below):
                        self.missed.append(self.rel(entry.path))

        walk(label_dir.path)
        return files

    def take(self, entry: os.DirEntry, real: str, files: list[os.DirEntry]) -> None:
        """Keep an image unless its real file was taken already (through another link or root)."""
        if real in self.seen:
            self.ignored.append(self.rel(entry.path))
            self.repeats += 1
        else:
            self.seen.add(real)
            files.append(entry)

    def warnings(self, root: Path) -> list[str]:
        """What the walk skipped or took unlike the other rule, a line per kind; the root
        by its last component, as the manifest records these lines (`portable.py`)."""
        name = portable_path(str(root))
        lines = []
        if self.discovery == BROAD and (self.extra or self.missed):
            lines.append(f"--folder {name}: {len(self.extra)} image(s) the original would not have seen (upper-case "
                         f"or .tif endings, or in subfolders of a label folder) and {len(self.missed)} hidden "
                         f"image(s) it would have taken, e.g. {', '.join((self.extra + self.missed)[:NAMED_IN_WARNINGS])}"
                         f"; --discovery original reproduces its rule")
        if self.discovery == ORIGINAL and (self.extra or self.missed):
            lines.append(f"--folder {name}: the original's rule (--discovery original) leaves out {len(self.missed)} "
                         f"image(s) with upper-case or .tif endings or in subfolders of a label folder and takes "
                         f"{len(self.extra)} hidden one(s), e.g. {', '.join((self.missed + self.extra)[:NAMED_IN_WARNINGS])}"
                         f"; --discovery broad takes the first and skips the second")
        if self.ignored:
            lines.append(f"--folder {name}: ignored {len(self.ignored)} file(s) or folder(s) that are not images "
                         f"in the layout ROOT/<generator>/<label>/<image>, are hidden, or were reached a second "
                         f"time through symlinks, e.g. {', '.join(self.ignored[:NAMED_IN_WARNINGS])} (listed in "
                         f"manifest.json sources)")
        if self.links:
            lines.append(f"--folder {name}: skipped {len(self.links)} symlink(s) that loop or lead out of their "
                         f"label folder (an image takes the label of the folder it really is in): "
                         f"{', '.join(self.links[:NAMED_IN_WARNINGS])}")
        if self.unreadable:
            lines.append(f"--folder {name}: skipped {len(self.unreadable)} folder(s) that cannot be read: "
                         f"{', '.join(self.unreadable[:NAMED_IN_WARNINGS])}; fix their permissions and rerun "
                         f"to include them")
        return lines


def scan_folder(root: Path, labels: dict[str, int], source_index: int,
                seen: set[str] | None = None, discovery: str = BROAD) -> tuple[Source, list[Unit]]:
    """One unit per image under `root` by the `discovery` rule (module docstring);
    raises `UserError` for a bad layout.

    `seen` holds the real paths of files taken from earlier roots (updated here), so
    a file reached from two roots is stored once.
    """
    given = str(root)
    if not root.is_dir():
        raise UserError(f"--folder {root}: no such folder; give a folder laid out as ROOT/<generator>/<label>/<image>")
    root = root.absolute()
    found = _Walk(root, set() if seen is None else seen, discovery)
    units: list[Unit] = []
    datasets: dict[str, dict[str, int]] = {}
    for gen in found.entries(str(root)):
        gen_name = escape_name(gen.name)
        if not gen.is_dir() or found.hidden_skipped(gen.name):
            found.ignored.append(gen_name)
            continue
        for label_dir in found.entries(gen.path):
            rel = f"{gen_name}/{escape_name(label_dir.name)}"
            if not label_dir.is_dir() or found.hidden_skipped(label_dir.name):
                found.ignored.append(rel)
                continue
            if label_dir.name not in labels:
                from commfor_fast.convert.settings import labels_hint  # the converter's, only for this error

                raise UserError(
                    f"--folder {root}: the folder {rel} is not a label folder; --labels "
                    f"{','.join(f'{k}:{v}' for k, v in labels.items())} knows only {', '.join(labels)}. "
                    f"Rename it, move it out, or name it in --labels (e.g. {labels_hint(labels, escape_name(label_dir.name))})"
                )
            label = labels[label_dir.name]
            for entry in found.files(label_dir):
                name = found.rel(entry.path)
                units.append(Unit(source=source_index, path=entry.path, name=name, row_group=-1, first_row=0,
                                  nbytes=entry.stat().st_size, labels=(label,), generators=(gen_name,)))
                counts = datasets.setdefault(gen_name, {"0": 0, "1": 0})
                counts[str(label)] += 1
    if not units and found.repeats:
        raise UserError(f"--folder {root}: every image in it was reached already through another --folder (the "
                        "same files); give each folder once")
    if not units and discovery == ORIGINAL:
        raise UserError(f"--folder {root}: holds no images by the original's rule (--discovery original: "
                        f"{', '.join(ORIGINAL_EXTENSIONS)} in lower case, directly in ROOT/<generator>/<label>/); "
                        f"point to the folder above the generator folders, or use --discovery broad "
                        f"({len(found.missed)} image(s) there)")
    if not units:
        raise UserError(f"--folder {root}: holds no images ({', '.join(SOURCE_EXTENSIONS)}, any case) in the layout "
                        "ROOT/<generator>/<label>/<image>; point to the folder above the generator folders")
    summary = {
        "kind": KIND, "root": str(root), "samples": len(units),
        "labels": {k: sum(c[k] for c in datasets.values()) for k in ("0", "1")},
        "datasets": datasets, "ignored_files": len(found.ignored),
        "ignored_examples": found.ignored[:IGNORED_EXAMPLES],
        "skipped_links": found.links, "unreadable_folders": found.unreadable,
        "discovery": discovery, "images_only_this_rule_takes": len(found.extra),
        "images_only_the_other_rule_takes": len(found.missed),
    }
    return (Source(kind=KIND, given=given, root=str(root), summary=summary, warnings=found.warnings(root),
                   stamps=found.stamps), units)


def scan(settings: ConvertSettings, limits: Limits, first_index: int) -> list[tuple[Source, list[Unit]]]:
    """Every `--folder` root, in the order given; a file reached from two roots is taken once."""
    seen: set[str] = set()  # real paths of the files taken: each is stored once, whichever root reaches it
    return [scan_folder(folder, limits.labels, first_index + i, seen, settings.discovery)
            for i, folder in enumerate(settings.folders)]


def read(unit: Unit, given: str, root: str) -> Iterator[tuple[bytes | str, dict[str, Any]]]:
    """The image file's bytes (or why it cannot be read) and its metadata: the root and
    the path under it."""
    try:
        data: bytes | str = Path(unit.path).read_bytes()
    except OSError as exc:
        data = f"cannot read: {exc.strerror or exc}"
    meta = {"source": KIND, "root": root, "path": unit.name}
    if escape_name(unit.path) != unit.path:
        meta["path_escaped"] = True  # not UTF-8: "path" has the bytes as \xNN (`units.escape_name`)
    yield data, meta


def item(unit: Unit, row: int, root: str) -> str:
    """How the image is named among the rejects: its file below the root's last
    component (`my_images/<generator>/<label>/x.png`), as its metadata names it."""
    return f"{escape_name(portable_path(root))}/{unit.name}"


def describe(source: Source) -> list[str]:
    """One line: the root's images, labels and dataset folders, and what it ignored."""
    s = source.summary
    ignored = f"; {s['ignored_files']} file(s) ignored" if s["ignored_files"] else ""
    return [f"  --folder {source.given}: {s['samples']} images (real {s['labels']['0']}, fake {s['labels']['1']}) "
            f"in {len(s['datasets'])} dataset folder(s){ignored}"]


def origin(meta: dict[str, Any]) -> tuple[str, str]:
    """The file's path under its root, and the root."""
    return str(meta.get("path")), str(meta.get("root"))
