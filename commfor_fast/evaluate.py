"""Evaluation: score converted shards with a trained detector and report per generator.

Single process:   commfor-fast eval --data SHARDS --ckpt RUN/model.pt --out REPORT
torchrun:         torchrun --nproc_per_node=8 -m commfor_fast eval --data SHARDS --hf-model OwensLab/commfor-model-384 --out REPORT

Four steps (`evaluate_shards`): check the flags and the data before a model is loaded;
every rank scores its contiguous part of each set once (`score_batches`; the loaders
drop DALI's padding repeats); rank 0 gathers the scores (`gather_scores`) and checks
that every image of the folder was counted exactly once; it writes the report (SPEC
section 6: accuracy at 0.5, AP, ROC-AUC; per generator its fakes against all reals,
balanced accuracy and an AP against as many reals as fakes, with their chance levels;
the original's within-group AP; `metrics.METRICS`). Training's validation reuses
`score_batches` and `gather_scores`.

`--threshold val@fpr=F` (`threshold.py`) also scores the val set (of `--val-data`, or
of `--data`, then left out of the report) and measures the report at the threshold
that at most F of its reals exceed; report.json's `threshold_choice` says how.

Robustness (`--perturb jpeg=95,50 --perturb noise=5 ...`): every image is read and
decoded once and scored at `clean` and at every level (`pipelines/perturb.py`); each
level is checked exactly once like clean, measured by `robustness.py` and written
next to the clean report (report.json's `robustness` section, robustness.csv, a chart
per family, `scores_<family>_<level>.FORMAT` with --save-scores).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import torch

from commfor_fast.errors import UserError
from commfor_fast.fileio import atomic_write, check_writable
from commfor_fast.metrics import EvalReport, evaluate
from commfor_fast.pipelines.perturb import CLEAN, CLEAN_LEVEL, Level, check_sides, parse_perturbations
from commfor_fast.progress import Progress
from commfor_fast.safetext import spreadsheet_safe_columns
from commfor_fast.shards import META_EXT, Manifest, ShardReader, check_generator_ids, sample_key
from commfor_fast.sources import sample_origin
from commfor_fast.threshold import VAL_SET, Chosen, ThresholdSpec, choose_on_val, parse_threshold
from commfor_fast.settings import EvalSettings, ScoresFormat, settings_dict
from commfor_fast.distributed import Dist, all_gather, amp_dtype, resolve_device, setup_distributed, teardown_distributed

if TYPE_CHECKING:
    from commfor_fast.model import CommForDetector
    from commfor_fast.pipelines.batch import EvalLoader

SCORE_FORMATS: tuple[str, ...] = get_args(ScoresFormat)
# The array fields of `Scores` and their dtypes (those of `Batch` and of the float32 logits):
# `score_batches` fills arrays of these, allocated once per set (an empty share keeps them too).
ARRAYS = {"numbers": np.int64, "generator_ids": np.int64, "labels": np.float32, "logits": np.float32}


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

    @classmethod
    def empty(cls, set_name: str, n: int) -> Scores:
        """Room for `n` images of `set_name`, filled in place by `score_batches`."""
        return cls([set_name] * n, **{name: np.zeros(n, dtype) for name, dtype in ARRAYS.items()})

    def head(self, n: int) -> Scores:
        """The first `n` images (views, no copy)."""
        return Scores(self.sets[:n], **{name: getattr(self, name)[:n] for name in ARRAYS})

    @classmethod
    def merge(cls, scores: Sequence[Scores]) -> Scores:
        """One `Scores` of several (the sets of one rank, or the ranks of one level), in order."""
        return cls([s for part in scores for s in part.sets],
                   **{name: np.concatenate([getattr(part, name) for part in scores]) if scores else np.zeros(0, dtype)
                      for name, dtype in ARRAYS.items()})


def _set_names(manifest: Manifest, sets: str | None, data: Path, reserved: str | None = None) -> list[str]:
    """The sets to report on (each once), all of them by default but `reserved` (the set
    that chooses the threshold); never an empty choice."""
    if sets is None:
        names = [s for s in manifest.sets if s != reserved]
        if not names:
            raise UserError(f"--data {data} holds only the {reserved} set, which chooses --threshold; give --val-data "
                            "FOLDER to choose it on another folder's val set")
    else:
        names = list(dict.fromkeys(s.strip() for s in sets.split(",") if s.strip()))
        unknown = [s for s in names if s not in manifest.sets]
        if unknown or not names:
            raise UserError(f"--sets {sets!r}: {data} has the sets {', '.join(manifest.sets)}")
        if reserved in names:
            raise UserError(f"--sets {sets!r}: the {reserved} set chooses --threshold, so it cannot be reported on "
                            "too; leave it out, or give --val-data FOLDER to choose on another folder's val set")
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
    `KEY.json` metadata, as its source kind names them (`sources.sample_origin`: a local
    file's path under its root and that root, an HF row's `image_name` and the repo)."""
    readers: dict[str, ShardReader] = {}
    names, sources = [], []
    try:
        for set_name, number in zip(sets, numbers):
            reader = readers.get(set_name) or readers.setdefault(set_name, ShardReader(data, manifest.sets[set_name]))
            position = reader.position(sample_key(int(number)))
            meta = json.loads(reader.read(position, (META_EXT,))[META_EXT]) if position is not None else {}
            name, source = sample_origin(meta)
            names.append(name)
            sources.append(source)
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
class PassTiming:
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


def score_batches(model: torch.nn.Module, loader: EvalLoader, set_name: str, *, device: torch.device,
                  autocast_dtype: torch.dtype, use_amp: bool, levels: int = 1, timing: PassTiming | None = None,
                  progress: Progress | None = None) -> list[Scores]:
    """Score every image `loader` yields at each of its `levels` (`Batch.levels`, or the
    clean images alone): one `Scores` per level, of this process's share, in the loader's
    order (`gather_scores` joins the ranks). The model runs under inference mode and,
    with `use_amp`, autocast to `autocast_dtype`; its logits come back as float32 on the
    CPU. `timing` and `progress`, when given, count the pass.

    The scores go into arrays of `len(loader)` images allocated before the first batch:
    nothing is kept per batch, so memory stays flat however many images are scored
    (keeping every batch's small arrays pinned the freed image buffers around them and
    grew the process by kilobytes per image).

    Args:
        model: the detector (in eval mode), on `device`.
        loader: an evaluation loader (`pipelines.loader.create_eval_loader`); its length
            is the number of images it yields.
        set_name: the set the loader reads (recorded per image).
        levels: how many levels each batch holds (1 without robustness levels).
    """
    timing = timing or PassTiming(levels)
    capacity, filled = len(loader), 0
    clean = Scores.empty(set_name, capacity)  # the levels share the images' ids, each has its logits
    per_level = [clean, *(replace(clean, logits=np.zeros(capacity, np.float32)) for _ in range(levels - 1))]
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype, enabled=use_amp):
        batches = iter(loader)
        while True:
            waited = time.perf_counter()
            batch = next(batches, None)
            timing.waiting_s += time.perf_counter() - waited
            if batch is None:
                break
            n = len(batch.labels)
            if filled + n > capacity:
                raise RuntimeError(f"set {set_name}: the loader yielded more than its {capacity} images")
            rows = slice(filled, filled + n)
            for i, images in enumerate(batch.levels or (batch.images,)):
                started = time.perf_counter()
                per_level[i].logits[rows] = model(images).float().squeeze(1).cpu().numpy()  # .cpu() waits for it
                timing.model_s[i] += time.perf_counter() - started
            clean.numbers[rows] = batch.sample_numbers.numpy()
            clean.generator_ids[rows] = batch.generator_ids.numpy()
            clean.labels[rows] = batch.labels.numpy()
            filled += n
            timing.images += n
            if progress is not None:
                progress.update(n)
    return [level.head(filled) for level in per_level]


def gather_scores(mine: list[Scores], env: Dist) -> list[Scores]:
    """Every rank's `Scores` (one per level) joined level by level in rank order, on every
    rank. Every rank must call it (a collective)."""
    gathered = all_gather(mine, env)
    return [Scores.merge([rank[i] for rank in gathered]) for i in range(len(mine))]


@dataclass(frozen=True)
class _Inputs:
    """What `_check` found usable: the levels, the device, the data and the sets to score."""

    levels: tuple[Level, ...]  # clean first; empty without --perturb
    env: Dist  # the torchrun environment, read once
    device: torch.device
    autocast_dtype: torch.dtype
    manifest: Manifest
    set_names: list[str]
    threshold: ThresholdSpec
    val: tuple[Path, Manifest] | None  # with --threshold val@fpr=F: the folder whose val set chooses it


def _val_source(settings: EvalSettings, manifest: Manifest) -> tuple[Path, Manifest]:
    """The convert output whose val set chooses the threshold: --val-data, or --data itself."""
    if settings.val_data is None or Path(settings.val_data).resolve() == Path(settings.data).resolve():
        data, flag, val_manifest = Path(settings.data), "--data", manifest
    elif not Path(settings.val_data).is_dir():
        raise UserError(f"--val-data {settings.val_data}: no such folder; pass a convert output with a {VAL_SET} "
                        "set (e.g. the training data's)")
    else:
        data, flag, val_manifest = Path(settings.val_data), "--val-data", Manifest.load(settings.val_data)
    if not val_manifest.sets.get(VAL_SET) or not val_manifest.sets[VAL_SET].num_samples:
        raise UserError(f"--threshold {settings.threshold}: {flag} {data} has no {VAL_SET} set (its sets: "
                        f"{', '.join(val_manifest.sets)}); give --val-data FOLDER, a convert output with one (e.g. the "
                        "training data's), or a fixed --threshold")
    return data, val_manifest


def _check(settings: EvalSettings) -> _Inputs:
    """Every flag and the data checked before a model is loaded or an image scored (one-line
    `UserError`s): a report that cannot be written is known now."""
    if settings.scores_format not in SCORE_FORMATS:
        raise UserError(f"--scores-format {settings.scores_format!r}: use one of {', '.join(SCORE_FORMATS)}")
    if settings.batch_size < 1 or settings.num_threads < 1:
        raise UserError(f"--batch-size {settings.batch_size} / --num-threads {settings.num_threads}: must be >= 1")
    levels = parse_perturbations(settings.perturb) if settings.perturb else ()
    threshold = parse_threshold(settings.threshold)
    autocast_dtype = amp_dtype(settings.amp_dtype)
    env = Dist.from_env()
    device = resolve_device(settings.device, env.local_rank)
    manifest = Manifest.load(settings.data)
    val = _val_source(settings, manifest) if threshold.on_val else None
    same_folder = val is not None and val[1] is manifest  # its val set chooses: not reported on
    set_names = _set_names(manifest, settings.sets, settings.data, VAL_SET if same_folder else None)
    check_sides(levels, [size for name in set_names for size in manifest.sets[name].resolutions], manifest.preresize,
                settings.loader)
    if env.is_main:
        check_writable(Path(settings.out), "--out")
    return _Inputs(levels, env, device, autocast_dtype, manifest, set_names, threshold, val)


def _announce(settings: EvalSettings, inputs: _Inputs, model: CommForDetector) -> None:
    """Rank 0's first lines: what is scored, with which model, at which levels."""
    print(f"scoring the sets {', '.join(inputs.set_names)} of {settings.data} with {model.timm_name}", flush=True)
    if "train" in inputs.set_names and settings.sets is None:
        print("note: this includes the training set; pass --sets val to score held-out images only", flush=True)
    if inputs.levels:
        print(f"robustness: {', '.join(level.label for level in inputs.levels)} ({len(inputs.levels)} levels per "
              f"image, from one decode; perturbations applied to the {_applied_to(inputs.manifest)})", flush=True)


def _score_set(model: CommForDetector, settings: EvalSettings, inputs: _Inputs, data: Path, manifest: Manifest,
               name: str, levels: tuple[Level, ...], timing: PassTiming, progress: Progress) -> list[Scores]:
    """This rank's part of one set of `data`, scored at every level: one `Scores` per level."""
    from commfor_fast.pipelines.executor import ExecutorOptions
    from commfor_fast.pipelines.loader import create_eval_loader

    loader = create_eval_loader(
        settings.loader, data, manifest, name, device=inputs.device, batch_size=settings.batch_size,
        crop=model.input_size, rank=inputs.env.rank, world_size=inputs.env.world_size,
        num_threads=settings.num_threads, levels=levels, seed=settings.perturb_seed,
        executor=ExecutorOptions.from_flags(settings.executor),
    )
    try:
        return score_batches(model, loader, name, device=inputs.device, autocast_dtype=inputs.autocast_dtype,
                             use_amp=settings.use_amp, levels=max(len(levels), 1), timing=timing, progress=progress)
    finally:
        loader.close()


def _score(model: CommForDetector, settings: EvalSettings, inputs: _Inputs, env: Dist,
           timing: PassTiming) -> list[Scores]:
    """This rank's part of every chosen set, scored at every level: one `Scores` per level."""
    n_levels = max(len(inputs.levels), 1)
    total = sum(inputs.manifest.sets[s].num_samples for s in inputs.set_names)
    desc = f"eval x {n_levels} levels" if inputs.levels else "eval"
    with Progress(total // env.world_size, desc, enabled=env.is_main) as progress:
        per_set = [_score_set(model, settings, inputs, settings.data, inputs.manifest, name, inputs.levels, timing,
                              progress) for name in inputs.set_names]
    return [Scores.merge([level_scores[i] for level_scores in per_set]) for i in range(n_levels)]


def _choose_threshold(model: CommForDetector, settings: EvalSettings, inputs: _Inputs, env: Dist) -> Chosen | None:
    """With `--threshold val@fpr=F`: the val set scored (clean) by every rank, gathered,
    checked exactly once, and the threshold chosen on its reals (on rank 0; None elsewhere)."""
    assert inputs.val is not None and inputs.threshold.fpr is not None
    data, manifest = inputs.val
    with Progress(manifest.sets[VAL_SET].num_samples // env.world_size, f"{VAL_SET} (threshold)",
                  enabled=env.is_main) as progress:
        mine = _score_set(model, settings, inputs, data, manifest, VAL_SET, (), PassTiming(1), progress)
    scores = gather_scores(mine, env)[0]  # a collective
    if not env.is_main:
        return None
    _check_exactly_once(scores, manifest, [VAL_SET])
    return choose_on_val(scores.labels, scores.probabilities, inputs.threshold.fpr, data)


def _write(settings: EvalSettings, inputs: _Inputs, per_level: list[Scores], info: dict[str, Any],
           timing: PassTiming, chosen: Chosen | None) -> EvalReport:
    """Measure every level at the threshold (`chosen` on the val set, or the given one),
    write report.json, the CSVs, the charts and (--save-scores) the scores, print the
    tables; returns the clean report."""
    from commfor_fast import robustness
    from commfor_fast.curves import write_curves
    from commfor_fast.report import format_table, write_report

    manifest, levels, out = inputs.manifest, inputs.levels, Path(settings.out)
    clean = per_level[0]
    threshold = chosen.threshold if chosen else inputs.threshold.value
    assert threshold is not None
    report = evaluate(clean.labels, clean.probabilities, clean.generator_ids, manifest.generators, threshold)
    meta = {"model": info, "data": str(settings.data), "sets": inputs.set_names, "command": settings.command,
            "settings": settings_dict(settings)}
    robust = [robustness.level_metrics(level, s.labels, s.probabilities, s.generator_ids, manifest.generators,
                                       threshold) for level, s in zip(levels, per_level)]
    sections: dict[str, Any] = {"threshold_choice": chosen.record} if chosen else {}
    if levels:
        sections["robustness"] = robustness.report_section(robust, _applied_to(manifest), settings.perturb_seed)
    paths = write_report(report, out, meta, sections)
    paths.update(write_curves(report, clean.labels, clean.probabilities, clean.generator_ids, manifest.generators, out))
    if chosen:
        print(chosen.line)
    print(format_table(report))
    if levels:
        paths.update(robustness.write_outputs(robust, out))
        print("\n" + robustness.format_table(robust))
        print("\n".join(timing.lines(levels)))
    if settings.save_scores:
        origins = sample_origins(settings.data, manifest, clean.sets, clean.numbers)
        for level, level_scores in zip(levels or (CLEAN_LEVEL,), per_level):
            path = out / scores_name(level, settings.scores_format)
            paths[f"scores {level.label}"] = write_scores(level_scores, manifest, settings.data, path, origins)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return report


def evaluate_shards(settings: EvalSettings) -> EvalReport:
    """Score every image of the chosen sets and write the report; returns it (rank 0).

    With `settings.perturb` (robustness evaluation) every image is also scored at every
    perturbation level, all levels made from one read and decode of the image; the
    returned report is the clean one, and report.json gains a `robustness` section."""
    from commfor_fast.model import load_detector

    inputs = _check(settings)
    env = setup_distributed(inputs.device, inputs.env)
    model, info = load_detector(ckpt=settings.ckpt, hf_model=settings.hf_model, map_location=inputs.device,
                                trust_checkpoint=settings.trust_checkpoint)
    if env.is_main:
        _announce(settings, inputs, model)
    timing = PassTiming(max(len(inputs.levels), 1))
    per_level = gather_scores(_score(model, settings, inputs, env, timing), env)
    chosen = _choose_threshold(model, settings, inputs, env) if inputs.val else None
    teardown_distributed(env)
    if not env.is_main:
        return None  # type: ignore[return-value]
    for scores in per_level:  # every level: every image once (all levels come from the same batches)
        _check_exactly_once(scores, manifest=inputs.manifest, set_names=inputs.set_names)
    check_generator_ids(per_level[0].generator_ids, inputs.manifest, settings.data)
    return _write(settings, inputs, per_level, info, timing, chosen)


def _applied_to(manifest: Manifest) -> str:
    """What the perturbations see: the decoded images, or the stored pixels of pre-resized shards."""
    if manifest.preresize is None:
        return "decoded images, before the first resize"
    return (f"stored pixels: these shards are pre-resized (shorter side {manifest.preresize}), so the perturbations "
            "come after the converter's first resize; convert without --preresize to perturb the original images")
