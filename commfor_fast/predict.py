"""Score single images or folders with a trained detector: `commfor-fast predict`.

Each image goes through exactly the evaluation preprocessing of the reference
executor (`imageio.decode_rgb` -> `pipelines.reference.eval_image` at the model's
input size -> `normalise`): the score equals `eval --loader reference`; the DALI
loader's resampling differs by a fraction of a grey level (see README, Fidelity). Images are decoded on a few
threads (PIL releases the GIL) and scored in batches, with a progress bar on stderr.
A file that cannot be read or decoded gets an error row instead of stopping the run.
Rows go to a .csv or .jsonl file as they come (flushed after every batch, so a killed
run keeps what it scored); a .json file is one document written at the end.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

import torch

from commfor_fast.sources.units import escape_name
from commfor_fast.distributed import resolve_device
from commfor_fast.errors import UserError
from commfor_fast.fileio import OUTPUT_ERRNOS, check_writable, output_error
from commfor_fast.imageio import SOURCE_EXTENSIONS, BadImage, decode_rgb
from commfor_fast.metrics import THRESHOLD
from commfor_fast.model import load_detector
from commfor_fast.pipelines.preprocess import normalise
from commfor_fast.pipelines.reference import eval_image
from commfor_fast.progress import Progress
from commfor_fast.safetext import printable, spreadsheet_safe
from commfor_fast.settings import PredictSettings
from commfor_fast.shards import write_json_atomic

STREAMED_SUFFIXES = (".csv", ".jsonl")  # written row by row
OUT_SUFFIXES = (*STREAMED_SUFFIXES, ".json")


@dataclass
class Prediction:
    """One file's result: logit, probability and verdict, or the reason it could not be scored."""

    path: str
    logit: float | None
    prob_fake: float | None  # sigmoid(logit)
    verdict: str | None  # "fake" when prob_fake > the threshold, else "real"
    error: str | None


@dataclass
class ImageFiles:
    """What `collect_images` found: the files to score, the non-image files it skipped,
    and the folders it could not read (with the reason)."""

    images: list[Path]
    skipped: list[Path]
    unreadable: dict[Path, str]


def collect_images(paths: list[Path]) -> ImageFiles:
    """The files to score: named files as given, folders searched recursively.

    Folders (not followed through symlinked folders) contribute files whose extension
    (any case) is in `SOURCE_EXTENSIONS`, sorted; their other files are listed as
    skipped. A named file is used whatever its extension. Duplicates are dropped. A
    sub-folder that cannot be listed is returned with the error, so its images are
    reported as missing rather than silently left out.
    """
    if not paths:
        raise UserError("PATH: no image or folder given; name at least one")
    found: dict[Path, None] = {}
    skipped: list[Path] = []
    unreadable: dict[Path, str] = {}

    def note(exc: OSError) -> None:
        unreadable[Path(exc.filename)] = f"cannot read the folder: {exc.strerror or exc}"

    for path in paths:
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            files = sorted(Path(top, name) for top, _, names in os.walk(path, onerror=note) for name in names
                           if Path(top, name).is_file())
            images = [p for p in files if p.suffix.lower() in SOURCE_EXTENSIONS]
            if not images and not unreadable:
                raise UserError(
                    f"PATH {path}: the folder holds no images (searched recursively for "
                    f"{', '.join(SOURCE_EXTENSIONS)}); point to a folder with images"
                )
            found.update(dict.fromkeys(images))
            skipped += [p for p in files if p.suffix.lower() not in SOURCE_EXTENSIONS]
        else:
            raise UserError(f"PATH {path}: no such file or folder; give an existing image or folder")
    return ImageFiles(list(found), skipped, unreadable)


def _check_settings(settings: PredictSettings) -> None:
    if settings.batch_size < 1:
        raise UserError(f"--batch-size {settings.batch_size}: must be at least 1")
    if settings.workers < 1:
        raise UserError(f"--num-threads {settings.workers}: must be at least 1")
    if not 0 <= settings.threshold <= 1:
        raise UserError(f"--threshold {settings.threshold}: a probability, between 0 and 1")
    if settings.out is not None and settings.out.suffix.lower() not in OUT_SUFFIXES:
        raise UserError(
            f"--out {settings.out}: the suffix {settings.out.suffix or '(none)'!r} is not a known "
            f"format; end the file name with .csv, .jsonl or .json"
        )
    if settings.out is not None:
        if settings.out.is_dir():
            raise UserError(f"--out {settings.out}: is a folder; give a file name ending in .csv, .jsonl or .json")
        check_writable(settings.out.parent, f"--out {settings.out}: its folder")


def _load_input(path: Path, input_size: int) -> torch.Tensor | str:
    """The normalised CHW tensor of one file, or the reason it cannot be scored."""
    try:
        img = decode_rgb(path.read_bytes())
        return normalise(eval_image(img, input_size))
    except (BadImage, OSError) as exc:  # decode_rgb maps every decoding failure to BadImage
        return str(exc) or type(exc).__name__


def _decoded_batches(files: list[Path], input_size: int, batch_size: int,
                     workers: int) -> Iterator[tuple[list[Path], list[torch.Tensor | str]]]:
    """Batches of (files, tensors or error messages); the next batch decodes meanwhile."""
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(_load_input, p, input_size) for p in batches[0]]
        for k, batch in enumerate(batches):
            inputs = [f.result() for f in pending]
            if k + 1 < len(batches):
                pending = [pool.submit(_load_input, p, input_size) for p in batches[k + 1]]
            yield batch, inputs


def predict(settings: PredictSettings) -> list[Prediction]:
    """Score every image of `settings.paths`; write `settings.out` (as results come) if set.

    Returns one `Prediction` per file, in the order of `collect_images`, then an
    error row per folder that could not be read.
    """
    _check_settings(settings)
    found = collect_images(settings.paths)
    if found.skipped:
        examples = ", ".join(p.name for p in found.skipped[:3])
        print(f"note: skipped {len(found.skipped)} non-image file(s) ({examples}"
              f"{', ...' if len(found.skipped) > 3 else ''}); images are {', '.join(SOURCE_EXTENSIONS)}",
              file=sys.stderr)
    device = resolve_device(settings.device)
    model, info = load_detector(ckpt=settings.ckpt, hf_model=settings.hf_model, map_location=device,
                                trust_checkpoint=settings.trust_checkpoint)

    results: list[Prediction] = []
    writer = PredictionWriter(settings.out, info, settings.threshold) if settings.out is not None else None
    batches = _decoded_batches(found.images, model.input_size, settings.batch_size, settings.workers)
    try:
        with torch.inference_mode(), Progress(len(found.images), "predict") as progress:
            for batch, inputs in batches:
                good = [x for x in inputs if isinstance(x, torch.Tensor)]
                logits = torch.zeros(0)
                if good:
                    logits = model(torch.stack(good).to(device, non_blocking=True)).float().squeeze(1).cpu()
                scored = zip(logits.tolist(), torch.sigmoid(logits).tolist())
                rows = _rows(batch, inputs, scored, settings.threshold)
                if writer is not None:
                    writer.write(rows)
                results += rows
                progress.update(len(rows))
        folders = [Prediction(escape_name(str(folder)), None, None, None, escape_name(reason))
                   for folder, reason in found.unreadable.items()]
        if writer is not None:
            writer.write(folders)
        results += folders
    finally:
        if writer is not None:
            writer.close()
    return results


def _rows(batch: list[Path], inputs: list[torch.Tensor | str], scored: Iterator[tuple[float, float]],
          threshold: float) -> list[Prediction]:
    """One `Prediction` per file of a batch; `scored` holds (logit, P(fake)) per decoded input."""
    rows = []
    for path, x in zip(batch, inputs):
        if isinstance(x, torch.Tensor):
            z, p = next(scored)
            rows.append(Prediction(escape_name(str(path)), z, p, "fake" if p > threshold else "real", None))
        else:
            rows.append(Prediction(escape_name(str(path)), None, None, None, escape_name(x)))
    return rows


def _csv_cell(value: float | str | None) -> float | str:
    """A value for the CSV: empty for None, text escaped against spreadsheet formulas."""
    if value is None:
        return ""
    return spreadsheet_safe(value) if isinstance(value, str) else value


class PredictionWriter:
    """Rows to a .csv or .jsonl file as they come, flushed after every batch (a killed
    run keeps what was scored); a .json file is one document (model, threshold, rows)
    written atomically when the run ends. A write that fails for lack of space or
    permission is a `UserError` naming the file, and leaves no file without rows."""

    def __init__(self, out: Path, model_info: dict[str, Any], threshold: float) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out, self.suffix = out, out.suffix.lower()
        self.doc: dict[str, Any] = {"model": model_info, "threshold": threshold, "predictions": []}
        self.file: IO[str] | None = None
        self.csv: csv.DictWriter | None = None
        self.rows_written = 0
        self.created = False  # whether this run opened `out` for writing (only then may a failure remove it)
        self.whole = 0  # bytes of the file up to the last whole row
        if self.suffix in STREAMED_SUFFIXES:
            with self._failures():
                self.file = open(out, "w", newline="", encoding="utf-8")
                self.created = True
                if self.suffix == ".csv":
                    self.csv = csv.DictWriter(self.file, fieldnames=[f.name for f in fields(Prediction)])
                    self.csv.writeheader()
                    self.file.flush()
                self.whole = self.file.tell()

    @contextmanager
    def _failures(self) -> Iterator[None]:
        """On a failed write: close the file, then remove it if this run created it and
        wrote no row, else cut it back to its last whole row (a full disk may have taken
        half of one). A file this run could not open is left as it was."""
        try:
            yield
        except OSError as exc:
            if self.file is not None:
                with suppress(OSError):
                    self.file.close()
                self.file = None
            if self.created and not self.rows_written:
                self.out.unlink(missing_ok=True)
            elif self.created:
                with suppress(OSError):
                    os.truncate(self.out, self.whole)
            if exc.errno in OUTPUT_ERRNOS:
                raise output_error(self.out, exc) from None
            raise

    def write(self, rows: list[Prediction]) -> None:
        if self.file is None:
            self.doc["predictions"] += map(asdict, rows)
            return
        with self._failures():
            for row in map(asdict, rows):
                if self.csv is not None:
                    self.csv.writerow({k: _csv_cell(v) for k, v in row.items()})
                else:
                    self.file.write(json.dumps(row) + "\n")
            self.file.flush()
            self.whole = self.file.tell()
        self.rows_written += len(rows)

    def close(self) -> None:
        if self.file is not None:
            with self._failures():
                self.file.close()
        elif self.suffix == ".json":
            write_json_atomic(self.out, self.doc)


def write_predictions(predictions: list[Prediction], out: Path, model_info: dict[str, Any],
                      threshold: float = THRESHOLD) -> None:
    """Write finished predictions to `out` (.csv, .jsonl or .json) in one go."""
    writer = PredictionWriter(out, model_info, threshold)
    writer.write(predictions)
    writer.close()


def format_predictions(predictions: list[Prediction]) -> str:
    """A console table: path, logit, P(fake), verdict (or the error), and a count line."""
    paths = [printable(p.path) for p in predictions]  # no escape codes or newlines from file names
    width = max([len("path"), *map(len, paths)])
    lines = [f"{'path':<{width}}  {'logit':>8}  {'P(fake)':>8}  verdict"]
    for path, p in zip(paths, predictions):
        if p.error is None:
            lines.append(f"{path:<{width}}  {p.logit:>8.4f}  {p.prob_fake:>8.4f}  {p.verdict}")
        else:
            lines.append(f"{path:<{width}}  {'n/a':>8}  {'n/a':>8}  error: {printable(p.error)}")
    n_fake = sum(p.verdict == "fake" for p in predictions)
    n_err = sum(p.error is not None for p in predictions)
    lines.append(f"{len(predictions)} files: {n_fake} fake, {len(predictions) - n_fake - n_err} real, "
                 f"{n_err} unreadable")
    return "\n".join(lines)
