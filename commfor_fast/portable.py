"""What files meant to be shared record of a machine: commands and paths without its folders.

Dataset cards, manifests and the shards' per-sample metadata travel (pushed to the
hub, copied to a cluster), so they name a local path by its last component only
(`/home/me/data/my_images` -> `my_images`) and a command by what the user types
(`commfor-fast convert ...`, not `/path/to/.venv/bin/commfor-fast` or
`.../commfor_fast/__main__.py`). Relative paths and hub ids are kept as they are.

One rule for everything `convert` writes into OUT: the manifest's `settings` (`--out`,
`--folder`, a local `--hf-repo`, `--cache-dir`: every absolute path among them) and
`sources` (`root`, `repo`) by this rule; a reject names its file below its source
(`my_images/<generator>/<label>/x.png`, `data/train-0.parquet#row 3`, `sources.*.item`).
Where a run needs the real folders (the local replica's README.md for the card's
licence, the recorded folder scan), it takes them from its own settings, never from
these files. The folder scan (`convert/listing.py`), a cache only this machine can
use, records paths relative to their `--folder` root and the roots by a digest.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from commfor_fast.shards import Manifest

PROGRAM = "commfor-fast"  # the console script (pyproject.toml), as the README's commands spell it
# Keys of a sample's source metadata (`sources.*.read`) that hold where the source lies.
SOURCE_LOCATION_KEYS = ("root", "repo")


def portable_path(value: str) -> str:
    """`value` if it is not an absolute path, else its last component (the folder or
    file name); a glob such as `/data/*.parquet` keeps its last component too."""
    path = PurePosixPath(value)
    return (path.name or value) if path.is_absolute() else value


def _is_program(word: str) -> bool:
    """Whether `word` (a command's first word) runs this package: its console script,
    `python -m commfor_fast`'s `__main__.py`, or a path to either."""
    name = PurePosixPath(word).name
    return name == PROGRAM or (name == "__main__.py" and PurePosixPath(word).parent.name == "commfor_fast")


def portable_command(command: str) -> str:
    """`command` (a shell line as `shlex.join(sys.argv)` records it) as the user would
    type it: `commfor-fast` first when it ran this package, every absolute path (also
    in `--flag=/a/path`) by its last component. A line shlex cannot split is returned
    with only its absolute words shortened."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: not from shlex.join; shorten what looks like a path
        return " ".join(portable_path(word) for word in command.split(" "))
    if words and _is_program(words[0]):
        words[0] = PROGRAM
    out = []
    for word in words:
        flag, eq, value = word.partition("=")
        out.append(f"{flag}={portable_path(value)}" if eq and flag.startswith("--") else portable_path(word))
    return shlex.join(out)


def portable_settings(record: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings (`ConvertSettings.record()`) with every absolute path, alone or
    in a list (`--folder`), by its last component; other values unchanged."""
    def portable(value: Any) -> Any:
        return portable_path(value) if isinstance(value, str) else value

    return {key: [portable(v) for v in value] if isinstance(value, list) else portable(value)
            for key, value in record.items()}


def portable_manifest(manifest: Manifest) -> Manifest:
    """`manifest` as `convert` writes it: its settings and sources without local folders
    (the rejects and warnings are made without them, `sources.*`)."""
    return dataclasses.replace(manifest, settings=portable_settings(manifest.settings),
                               sources=[portable_source_meta(source) for source in manifest.sources])


def portable_source_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A sample's source metadata, or a source's summary in the manifest, with its
    location keys (`SOURCE_LOCATION_KEYS`: the folder root, the `--hf-repo` value) free
    of local folders; other keys unchanged."""
    return {key: portable_path(value) if key in SOURCE_LOCATION_KEYS and isinstance(value, str) else value
            for key, value in meta.items()}
