"""Score single images or folders with a trained detector: `commfor-fast predict`.

Each image goes through exactly the evaluation preprocessing of the reference
executor (`imageio.decode_rgb` -> `pipelines.reference.eval_image` at the model's
input size -> `normalise`): the score equals `eval --loader reference`; the DALI
loader's resampling differs by a fraction of a grey level (see README, Fidelity). Images are decoded on a few
threads (PIL releases the GIL) and scored in batches. A file that cannot be read or
decoded gets an error row instead of stopping the run.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from commfor_fast.distributed import resolve_device
from commfor_fast.errors import UserError
from commfor_fast.fileio import atomic_write, check_writable
from commfor_fast.imageio import SOURCE_EXTENSIONS, BadImage, decode_rgb
from commfor_fast.metrics import THRESHOLD
from commfor_fast.model import load_detector
from commfor_fast.pipelines.preprocess import normalise
from commfor_fast.pipelines.reference import eval_image

OUT_SUFFIXES = (".csv", ".json")


@dataclass
class PredictSettings:
    """Everything `predict` needs; the CLI fills it from its flags."""

    paths: list[Path]  # image files and/or folders (searched recursively)
    ckpt: Path | None = None  # local checkpoint (ours, the original's, or a state dict) ...
    hf_model: str | None = None  # ... or a Hugging Face model id, e.g. OwensLab/commfor-model-384
    trust_checkpoint: bool = False  # allow full unpickling of --ckpt (runs code stored in the file)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda" or "cuda:N"
    batch_size: int = 32
    out: Path | None = None  # .csv or .json file to write; None: nothing written
    workers: int = 4  # decoding threads


@dataclass
class Prediction:
    """One file's result: a probability and verdict, or the reason it could not be scored."""

    path: str
    prob_fake: float | None
    verdict: str | None  # "fake" when prob_fake > 0.5, else "real"
    error: str | None


def collect_images(paths: list[Path]) -> tuple[list[Path], dict[Path, str]]:
    """The files to score, and the folders that could not be read with the reason.

    Named files are taken as given, folders searched recursively (not through
    symlinked folders): they contribute files whose extension (any case) is in
    `SOURCE_EXTENSIONS`, sorted; a named file is used whatever its extension.
    Duplicates are dropped. A sub-folder that cannot be listed is returned with the
    error, so its images are reported as missing rather than silently left out.
    """
    if not paths:
        raise UserError("PATH: no image or folder given; name at least one")
    found: dict[Path, None] = {}
    unreadable: dict[Path, str] = {}

    def note(exc: OSError) -> None:
        unreadable[Path(exc.filename)] = f"cannot read the folder: {exc.strerror or exc}"

    for path in paths:
        if path.is_file():
            found[path] = None
        elif path.is_dir():
            images = sorted(Path(top, name) for top, _, names in os.walk(path, onerror=note) for name in names
                            if Path(name).suffix.lower() in SOURCE_EXTENSIONS and Path(top, name).is_file())
            if not images and not unreadable:
                raise UserError(
                    f"PATH {path}: the folder holds no images (searched recursively for "
                    f"{', '.join(SOURCE_EXTENSIONS)}); point to a folder with images"
                )
            found.update(dict.fromkeys(images))
        else:
            raise UserError(f"PATH {path}: no such file or folder; give an existing image or folder")
    return list(found), unreadable


def _check_settings(settings: PredictSettings) -> None:
    if settings.batch_size < 1:
        raise UserError(f"--batch-size {settings.batch_size}: must be at least 1")
    if settings.workers < 1:
        raise UserError(f"--num-threads {settings.workers}: must be at least 1")
    if settings.out is not None and settings.out.suffix.lower() not in OUT_SUFFIXES:
        raise UserError(
            f"--out {settings.out}: the suffix {settings.out.suffix or '(none)'!r} is not a known "
            f"format; end the file name with .csv or .json"
        )
    if settings.out is not None:
        if settings.out.is_dir():
            raise UserError(f"--out {settings.out}: is a folder; give a file name ending in .csv or .json")
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
    """Score every image of `settings.paths`; write `settings.out` if set.

    Returns one `Prediction` per file, in the order of `collect_images`, then an
    error row per folder that could not be read.
    """
    _check_settings(settings)
    files, unreadable = collect_images(settings.paths)
    device = resolve_device(settings.device)
    model, info = load_detector(ckpt=settings.ckpt, hf_model=settings.hf_model, map_location=device,
                                trust_checkpoint=settings.trust_checkpoint)
    input_size = model.input_size

    results: list[Prediction] = []
    batches = _decoded_batches(files, input_size, settings.batch_size, settings.workers)
    with torch.inference_mode():
        for batch, inputs in batches:
            good = [x for x in inputs if isinstance(x, torch.Tensor)]
            probs: list[float] = []
            if good:
                logits = model(torch.stack(good).to(device, non_blocking=True))
                probs = torch.sigmoid(logits.float()).squeeze(1).cpu().tolist()
            prob_iter = iter(probs)
            for path, x in zip(batch, inputs):
                if isinstance(x, torch.Tensor):
                    p = next(prob_iter)
                    results.append(Prediction(str(path), p, "fake" if p > THRESHOLD else "real", None))
                else:
                    results.append(Prediction(str(path), None, None, x))
    results += [Prediction(str(folder), None, None, reason) for folder, reason in unreadable.items()]
    if settings.out is not None:
        write_predictions(results, settings.out, info)
    return results


def write_predictions(predictions: list[Prediction], out: Path, model_info: dict[str, Any]) -> None:
    """Write a .csv (one row per file) or a .json (model info, threshold and the rows), atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [asdict(p) for p in predictions]
    if out.suffix.lower() == ".json":
        doc = {"model": model_info, "threshold": THRESHOLD, "predictions": rows}
        with atomic_write(out, "w") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
        return
    with atomic_write(out, "w") as f:
        writer = csv.DictWriter(f, fieldnames=[*Prediction.__dataclass_fields__])
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def format_predictions(predictions: list[Prediction]) -> str:
    """A console table: path, P(fake), verdict (or the error), and a count line."""
    width = max([len("path"), *(len(p.path) for p in predictions)])
    lines = [f"{'path':<{width}}  {'P(fake)':>8}  verdict"]
    for p in predictions:
        if p.error is None:
            lines.append(f"{p.path:<{width}}  {p.prob_fake:>8.4f}  {p.verdict}")
        else:
            lines.append(f"{p.path:<{width}}  {'n/a':>8}  error: {p.error}")
    n_fake = sum(p.verdict == "fake" for p in predictions)
    n_err = sum(p.error is not None for p in predictions)
    lines.append(f"{len(predictions)} files: {n_fake} fake, {len(predictions) - n_fake - n_err} real, "
                 f"{n_err} unreadable")
    return "\n".join(lines)
