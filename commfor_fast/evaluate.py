"""Evaluation: score converted shards with a trained detector and report per generator.

Single process:   commfor-fast eval --data SHARDS --ckpt RUN/model.pt --out REPORT
torchrun:         torchrun --nproc_per_node=8 -m commfor_fast eval --data SHARDS --hf-model OwensLab/commfor-model-384 --out REPORT

Every rank scores its contiguous part of each set once (the loaders drop DALI's
padding repeats); rank 0 gathers the scores, checks that every image of the folder
was counted exactly once, and writes the report (SPEC section 6: accuracy at 0.5, AP,
ROC-AUC; per generator its fakes against all reals; the original's within-group AP).

Robustness (`--perturb jpeg=95,50 --perturb noise=5 ...`): every image is read and
decoded once and scored at `clean` and at every level (`pipelines/perturb.py`); each
level is checked exactly once like clean, measured by `robustness.py` and written
next to the clean report (report.json's `robustness` section, robustness.csv, a chart
per family, `scores_<family>_<level>.FORMAT` with --save-scores).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from commfor_fast.errors import UserError
from commfor_fast.fileio import atomic_write, check_writable
from commfor_fast.safetext import spreadsheet_safe_columns
from commfor_fast.metrics import EvalReport
from commfor_fast.pipelines.perturb import CLEAN, CLEAN_LEVEL, Level, check_sides, parse_perturbations
from commfor_fast.progress import Progress
from commfor_fast.convert.units import HF
from commfor_fast.shards import META_EXT, Manifest, ShardReader, check_generator_ids, sample_key
from commfor_fast.settings import EvalSettings
from commfor_fast.distributed import Dist, all_gather, amp_dtype, resolve_device, setup_distributed, teardown_distributed

SCORE_FORMATS = ("parquet", "csv")


@dataclass
class Scores:
    """Every scored image: which set, its key, generator id, label and logit."""

    sets: list[str]
    numbers: np.ndarray
    generator_ids: np.ndarray
    labels: np.ndarray
    logits: np.ndarray

    @property
    def probabilities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))


def _set_names(manifest: Manifest, sets: str | None, data: Path) -> list[str]:
    """The sets to score (each once), all of them by default; never an empty choice."""
    if sets is None:
        names = list(manifest.sets)
    else:
        names = list(dict.fromkeys(s.strip() for s in sets.split(",") if s.strip()))
        unknown = [s for s in names if s not in manifest.sets]
        if unknown or not names:
            raise UserError(f"--sets {sets!r}: {data} has the sets {', '.join(manifest.sets)}")
    if not sum(manifest.sets[s].num_samples for s in names):
        raise UserError(f"--data {data}: the sets {', '.join(names)} hold no images to evaluate")
    return names


def _check_exactly_once(scores: Scores, manifest: Manifest, set_names: list[str]) -> None:
    """Every image of every scored set counted once: no padding repeats, nothing missed."""
    if not len(scores.numbers) == len(scores.logits) == len(scores.labels) == len(scores.sets):
        raise RuntimeError(f"{len(scores.numbers)} images but {len(scores.logits)} scores")
    for name in set_names:
        numbers = scores.numbers[np.asarray(scores.sets) == name]
        if len(np.unique(numbers)) != len(numbers) or len(numbers) != manifest.sets[name].num_samples:
            raise RuntimeError(
                f"set {name}: scored {len(numbers)} images ({len(np.unique(numbers))} distinct) but it holds "
                f"{manifest.sets[name].num_samples}"
            )


def sample_origins(data: Path, manifest: Manifest, sets: list[str], numbers: np.ndarray) -> tuple[list[str], list[str]]:
    """The original image name and source of each (set, sample number), from the samples'
    `KEY.json` metadata: a local file's path under its root and that root, or an HF row's
    `image_name` (its parquet file and row when there is none) and the repo."""
    readers: dict[str, ShardReader] = {}
    names, sources = [], []
    try:
        for set_name, number in zip(sets, numbers):
            reader = readers.get(set_name) or readers.setdefault(set_name, ShardReader(data, manifest.sets[set_name]))
            position = reader.position(sample_key(int(number)))
            meta = json.loads(reader.read(position, (META_EXT,))[META_EXT]) if position is not None else {}
            if meta.get("source") == HF:
                names.append(meta.get("image_name") or f"{meta.get('file')}#row {meta.get('row')}")
                sources.append(str(meta.get("repo")))
            else:
                names.append(str(meta.get("path")))
                sources.append(str(meta.get("root")))
    finally:
        for reader in readers.values():
            reader.close()
    return names, sources


def write_scores(scores: Scores, manifest: Manifest, data: Path, path: Path,
                 origins: tuple[list[str], list[str]] | None = None) -> Path:
    """One row per image: set, key, original name, source, generator, label, logit, P(fake).

    `origins` are `sample_origins` of the scores' images when already known (one lookup
    serves every robustness level)."""
    import pyarrow as pa

    names, sources = origins or sample_origins(data, manifest, scores.sets, scores.numbers)
    table = pa.table({
        "set": scores.sets,
        "key": [sample_key(int(n)) for n in scores.numbers],
        "name": names,
        "source": sources,
        "generator": [manifest.generators[int(g)] for g in scores.generator_ids],
        "label": scores.labels.astype(np.int8),
        "logit": scores.logits.astype(np.float32),
        "score": scores.probabilities.astype(np.float32),
    })
    with atomic_write(path) as f:
        if path.suffix == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(spreadsheet_safe_columns(table), f)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, f)
    return path


def scores_name(level: Level, fmt: str) -> str:
    """`scores.FMT` for clean, `scores_<family>_<level>.FMT` for a perturbation (scores_jpeg_30.parquet)."""
    return f"scores.{fmt}" if level.family == CLEAN else f"scores_{level.slug}.{fmt}"


@dataclass
class _Timing:
    """Where rank 0's time went: the whole pass, waiting for batches, the model per level."""

    levels: int
    images: int = 0
    waiting_s: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    model_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model_s = [0.0] * self.levels

    def lines(self, levels: tuple[Level, ...]) -> list[str]:
        total = time.perf_counter() - self.start
        n = self.images
        lines = [f"robustness pass (rank 0): {n} images x {len(levels)} levels, each image read and decoded once: "
                 f"{total:.1f} s, {n / max(total, 1e-9):.1f} img/s ({n * len(levels) / max(total, 1e-9):.1f} "
                 f"level-images/s); waiting for the pipeline {self.waiting_s:.1f} s"]
        for level, seconds in zip(levels, self.model_s):
            lines.append(f"  {level.label:<12} model {seconds:.1f} s, {n / max(seconds, 1e-9):.1f} img/s")
        return lines


def evaluate_shards(settings: EvalSettings) -> EvalReport:
    """Score every image of the chosen sets and write the report; returns it (rank 0).

    With `settings.perturb` (robustness evaluation) every image is also scored at every
    perturbation level, all levels made from one read and decode of the image; the
    returned report is the clean one, and report.json gains a `robustness` section."""
    from commfor_fast.metrics import evaluate
    from commfor_fast.model import load_detector
    from commfor_fast.pipelines.loader import create_eval_loader
    from commfor_fast.report import format_table, write_report

    if settings.scores_format not in SCORE_FORMATS:
        raise UserError(f"--scores-format {settings.scores_format!r}: use one of {', '.join(SCORE_FORMATS)}")
    if settings.batch_size < 1 or settings.num_threads < 1:
        raise UserError(f"--batch-size {settings.batch_size} / --num-threads {settings.num_threads}: must be >= 1")
    levels = parse_perturbations(settings.perturb) if settings.perturb else ()
    autocast_dtype = amp_dtype(settings.amp_dtype)
    env = Dist.from_env()
    device = resolve_device(settings.device, env.local_rank)
    env = setup_distributed(device)
    manifest = Manifest.load(settings.data)
    set_names = _set_names(manifest, settings.sets, settings.data)
    check_sides(levels, [size for name in set_names for size in manifest.sets[name].resolutions], manifest.preresize,
                settings.loader)
    if env.is_main:  # before scoring anything: a report that cannot be written is known now
        check_writable(Path(settings.out), "--out")
    model, info = load_detector(ckpt=settings.ckpt, hf_model=settings.hf_model, map_location=device,
                                trust_checkpoint=settings.trust_checkpoint)
    applied_to = _applied_to(manifest)
    if env.is_main:
        print(f"scoring the sets {', '.join(set_names)} of {settings.data} with {model.timm_name}", flush=True)
        if "train" in set_names and settings.sets is None:
            print("note: this includes the training set; pass --sets val to score held-out images only", flush=True)
        if levels:
            print(f"robustness: {', '.join(level.label for level in levels)} ({len(levels)} levels per image, "
                  f"from one decode; perturbations applied to the {applied_to})", flush=True)

    n_levels = max(len(levels), 1)
    sets, numbers, gens, labels = [], [], [], []
    logits: list[list[np.ndarray]] = [[] for _ in range(n_levels)]
    timing = _Timing(n_levels)
    total = sum(manifest.sets[s].num_samples for s in set_names)
    desc = f"eval x {n_levels} levels" if levels else "eval"
    with Progress(total // env.world_size, desc, enabled=env.is_main) as progress:
        for name in set_names:
            loader = create_eval_loader(
                settings.loader, settings.data, manifest, name, device=device, batch_size=settings.batch_size,
                crop=model.input_size, rank=env.rank, world_size=env.world_size, num_threads=settings.num_threads,
                levels=levels, seed=settings.perturb_seed,
            )
            with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype, enabled=settings.use_amp):
                batches = iter(loader)
                while True:
                    waited = time.perf_counter()
                    batch = next(batches, None)
                    timing.waiting_s += time.perf_counter() - waited
                    if batch is None:
                        break
                    for i, images in enumerate(batch.levels or (batch.images,)):
                        started = time.perf_counter()
                        logits[i].append(model(images).float().squeeze(1).cpu().numpy())  # .cpu() waits for it
                        timing.model_s[i] += time.perf_counter() - started
                    numbers.append(batch.sample_numbers.numpy())
                    gens.append(batch.generator_ids.numpy())
                    labels.append(batch.labels.numpy())
                    sets.extend([name] * len(batch.labels))
                    timing.images += len(batch.labels)
                    progress.update(len(batch.labels))
            loader.close()

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0)

    mine = [Scores(sets, cat(numbers), cat(gens), cat(labels), cat(part)) for part in logits]
    gathered = all_gather(mine, env)
    teardown_distributed(env)
    if not env.is_main:
        return None  # type: ignore[return-value]
    per_level = [Scores(
        [s for g in gathered for s in g[i].sets],
        *(np.concatenate([getattr(g[i], f) for g in gathered]) for f in ("numbers", "generator_ids", "labels",
                                                                          "logits")),
    ) for i in range(n_levels)]
    for scores in per_level:  # every level: every image once (all levels come from the same batches)
        _check_exactly_once(scores, manifest, set_names)
    scores = per_level[0]
    check_generator_ids(scores.generator_ids, manifest, settings.data)

    report = evaluate(scores.labels, scores.probabilities, scores.generator_ids, manifest.generators)
    out = Path(settings.out)
    settings_record = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()}
    meta = {"model": info, "data": str(settings.data), "sets": set_names, "command": settings.command,
            "settings": settings_record}
    sections, robust = {}, []
    if levels:
        from commfor_fast import robustness

        robust = [robustness.level_metrics(level, s.labels, s.probabilities, s.generator_ids, manifest.generators)
                  for level, s in zip(levels, per_level)]
        sections["robustness"] = robustness.report_section(robust, applied_to, settings.perturb_seed)
    paths = write_report(report, out, meta, sections)
    print(format_table(report))
    if levels:
        paths.update(robustness.write_outputs(robust, out))
        print("\n" + robustness.format_table(robust))
        print("\n".join(timing.lines(levels)))
    if settings.save_scores:
        origins = sample_origins(settings.data, manifest, scores.sets, scores.numbers)
        for level, level_scores in zip(levels or (CLEAN_LEVEL,), per_level):
            path = out / scores_name(level, settings.scores_format)
            paths[f"scores {level.label}"] = write_scores(level_scores, manifest, settings.data, path, origins)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return report


def _applied_to(manifest: Manifest) -> str:
    """What the perturbations see: the decoded images, or the stored pixels of pre-resized shards."""
    if manifest.preresize is None:
        return "decoded images, before the first resize"
    return (f"stored pixels: these shards are pre-resized (shorter side {manifest.preresize}), so the perturbations "
            "come after the converter's first resize; convert without --preresize to perturb the original images")
