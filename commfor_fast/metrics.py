"""Evaluation metrics (SPEC section 6) in plain numpy, each declared once in `METRICS`.

Why not sklearn: evaluation must not pull a heavy dependency onto GPU boxes, and the
per-generator protocol below scores thousands of generators against the same real
images, which is fast here because the real scores are sorted once and every
generator's fakes are placed among them with binary searches.

Definitions:
- accuracy: threshold 0.5 on the sigmoid score, fake when `score > 0.5` (as the
  original's `prob > 0.5`);
- average precision: sklearn's `average_precision_score` (sum over thresholds of
  recall increase times precision, tied scores share one threshold);
- ROC-AUC: probability that a fake outscores a real, ties counting 1/2 (sklearn's
  `roc_auc_score`);
- TPR at FPR alpha (robustness, 1 % and 5 %): the threshold t is the
  (floor(alpha n_real) + 1)-th highest real score, an image counts as fake when its
  score is above t, so at most alpha of the reals are false positives (the point of
  the ROC curve with the highest TPR at FPR <= alpha); the TPR is the share of fakes
  above t, overall and per generator (the same t for every generator);
- expected calibration error (robustness, overall): the scores P(fake) fall into 15
  equal-width bins over [0, 1] (bin b holds [b/15, (b+1)/15), the last one also 1.0);
  ECE is the sum over non-empty bins of (images in the bin / all images) x |share of
  fakes in the bin - mean P(fake) in the bin|.

Per generator, AP and AUC follow the field's usual protocol: that generator's fakes
scored against ALL real images of the test set. The original's within-group AP (the
group's own reals and fakes) is kept as `ap_within`. A value that is undefined (one
label only, no reals in the test set) is None, never -1, and is left out of means.

`METRICS` declares each metric once: its name (report.json key and CSV column), its
console label, how it is computed from a `Group` of scores, how it is shown, which of
the two reports (`EVAL`: report.json's top level and per_generator.csv;
`ROBUSTNESS`: its levels and robustness.csv) carry it, and where (per generator,
overall, the mean over fake generators, the robustness table's one row per level).
The records (`GeneratorMetrics`, `Summary` and its reports `EvalReport` and
`robustness.LevelMetrics`), the CSV columns and the console columns all derive from
it, so adding a metric is one `Metric(...)` row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Sequence

import numpy as np

THRESHOLD = 0.5
ECE_BINS = 15
FPRS = (0.01, 0.05)  # the false positive rates of the robustness report's TPR at FPR
EVAL, ROBUSTNESS = "eval", "robustness"  # the reports a metric can belong to
Scope = Literal["per_generator", "overall", "mean", "headline"]


def mean_defined(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are defined (None: no images to measure), or None."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def format_metric(value: float | None) -> str:
    """A metric for tables: four decimals, n/a when undefined."""
    return "n/a" if value is None else f"{value:.4f}"


def accuracy(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Share of images on the right side of 0.5 (fake when score > 0.5); None if empty."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.size == 0:
        return None
    return float(np.mean((scores > THRESHOLD) == (labels == 1)))


def _ap_sorted(pos: np.ndarray, neg_sorted: np.ndarray) -> float | None:
    """AP of positives `pos` against negatives `neg_sorted` (ascending)."""
    if pos.size == 0 or neg_sorted.size == 0:
        return None
    # Thresholds where recall grows are the distinct positive scores, high to low.
    values, counts = np.unique(pos, return_counts=True)
    values, counts = values[::-1], counts[::-1]
    true_pos = np.cumsum(counts)  # positives scoring >= threshold
    false_pos = neg_sorted.size - np.searchsorted(neg_sorted, values, side="left")
    precision = true_pos / (true_pos + false_pos)
    return float(np.sum(counts * precision) / pos.size)


def _auc_sorted(pos: np.ndarray, neg_sorted: np.ndarray) -> float | None:
    """ROC-AUC of positives against negatives (ascending): P(pos > neg) + P(tie) / 2."""
    if pos.size == 0 or neg_sorted.size == 0:
        return None
    below = np.searchsorted(neg_sorted, pos, side="left")
    not_above = np.searchsorted(neg_sorted, pos, side="right")
    wins = np.sum(below, dtype=np.float64) + 0.5 * np.sum(not_above - below, dtype=np.float64)
    return float(wins / (pos.size * neg_sorted.size))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """sklearn-equivalent average precision of label 1; None unless both labels occur."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    return _ap_sorted(scores[labels == 1], np.sort(scores[labels == 0]))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC-AUC with ties counted 1/2; None unless both labels occur."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    return _auc_sorted(scores[labels == 1], np.sort(scores[labels == 0]))


def _threshold_sorted(reals_sorted: np.ndarray, fpr: float) -> float | None:
    """`threshold_at_fpr` of real scores already sorted ascending (one sort serves every generator)."""
    if reals_sorted.size == 0:
        return None
    allowed = math.floor(fpr * reals_sorted.size + 1e-9)  # false positives allowed
    return float(reals_sorted[reals_sorted.size - 1 - allowed]) if allowed < reals_sorted.size else -math.inf


def threshold_at_fpr(real_scores: np.ndarray, fpr: float) -> float | None:
    """The (floor(fpr * n) + 1)-th highest real score: at most `fpr` of the reals lie above it."""
    return _threshold_sorted(np.sort(np.asarray(real_scores, dtype=np.float64)), fpr)


def tpr_above(fake_scores: np.ndarray, threshold: float | None) -> float | None:
    """Share of `fake_scores` above `threshold`; None without fakes or threshold."""
    fakes = np.asarray(fake_scores, dtype=np.float64)
    if threshold is None or fakes.size == 0:
        return None
    return float(np.mean(fakes > threshold))


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float | None:
    """TPR at the threshold of `threshold_at_fpr` over the reals of `labels`/`scores`."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    return tpr_above(scores[labels == 1], threshold_at_fpr(scores[labels == 0], fpr))


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """ECE of P(fake) over `bins` equal-width bins of [0, 1] (see the module docstring)."""
    labels, scores = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if labels.size == 0:
        return None
    index = np.minimum((scores * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    fakes = np.bincount(index, weights=labels, minlength=bins)
    mass = np.bincount(index, weights=scores, minlength=bins)
    used = count > 0
    return float(np.sum(np.abs(fakes[used] - mass[used])) / labels.size)


# ------------------------------------------------------------ declarations


@dataclass
class Group:
    """The scores one value is computed from: one generator's images, or every image of
    the test set (or of one robustness level), with every real score of that test set
    (the negatives of the per-generator protocol)."""

    labels: np.ndarray  # 0 real / 1 fake, int64
    scores: np.ndarray  # P(fake), float64
    all_reals: np.ndarray  # every real score of the test set, ascending

    @cached_property
    def fakes(self) -> np.ndarray:
        return self.scores[self.labels == 1]

    @cached_property
    def reals(self) -> np.ndarray:
        return self.scores[self.labels == 0]


@dataclass(frozen=True)
class Metric:
    """One metric, declared once: the records, CSV columns and console columns of both
    reports derive from it. Its mean over the fake generators is `mean_<name>`."""

    name: str  # report.json key and CSV column
    label: str  # console column
    compute: Callable[[Group], float | None]  # None: undefined for that group
    reports: tuple[str, ...] = (EVAL, ROBUSTNESS)  # the reports that carry it
    per_generator: bool = True  # a value per generator (the CSVs, report.json's `generators`)
    overall: bool = True  # a value over the whole test set (or level)
    mean: bool = True  # the mean over fake generators of its defined per-generator values
    headline: bool = False  # a column of the robustness table (one row per level, overall values)
    fmt: Callable[[float | None], str] = format_metric  # how the console shows it

    def __post_init__(self) -> None:
        if self.mean and not self.per_generator:
            raise ValueError(f"metric {self.name}: a mean over generators needs per_generator=True")
        if self.headline and not self.overall:
            raise ValueError(f"metric {self.name}: a headline column shows the overall value; set overall=True")

    @property
    def mean_key(self) -> str:
        return f"mean_{self.name}"


def _pct(fpr: float) -> str:
    return f"{fpr * 100:g}pct"


def _tpr_metric(fpr: float) -> Metric:
    return Metric(f"tpr_at_fpr_{_pct(fpr)}", f"TPR@{fpr * 100:g}%",
                  lambda g: tpr_above(g.fakes, _threshold_sorted(g.all_reals, fpr)), reports=(ROBUSTNESS,),
                  headline=True)


def _threshold_metric(fpr: float) -> Metric:
    return Metric(f"threshold_fpr_{_pct(fpr)}", f"t@{fpr * 100:g}%", lambda g: _threshold_sorted(g.all_reals, fpr),
                  reports=(ROBUSTNESS,), per_generator=False, mean=False)


# Table order is the order of report.json's keys, the CSV columns and the console columns.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "acc", lambda g: accuracy(g.labels, g.scores), headline=True),
    Metric("real_accuracy", "real_acc", lambda g: accuracy(g.labels[g.labels == 0], g.reals), mean=False),
    Metric("fake_accuracy", "fake_acc", lambda g: accuracy(g.labels[g.labels == 1], g.fakes), mean=False),
    Metric("ap", "AP", lambda g: _ap_sorted(g.fakes, g.all_reals), headline=True),  # fakes vs all reals
    Metric("auc", "AUC", lambda g: _auc_sorted(g.fakes, g.all_reals)),
    # the original's AP: a generator's own reals and fakes (both needed)
    Metric("ap_within", "AP_within", lambda g: _ap_sorted(g.fakes, np.sort(g.reals)), reports=(EVAL,),
           overall=False),
    *(_tpr_metric(fpr) for fpr in FPRS),
    *(_threshold_metric(fpr) for fpr in FPRS),
    Metric("ece", "ECE", lambda g: expected_calibration_error(g.labels, g.scores), reports=(ROBUSTNESS,),
           per_generator=False, mean=False, headline=True),
)}


def metrics_of(report: str, scope: Scope) -> list[Metric]:
    """The metrics of `report` (EVAL or ROBUSTNESS) that have a value at `scope`, in table order."""
    return [m for m in METRICS.values() if report in m.reports and getattr(m, scope)]


def value_keys(report: str) -> list[str]:
    """The keys of a `Summary.values` of `report`: the overall metrics, then the means."""
    return [m.name for m in metrics_of(report, "overall")] + [m.mean_key for m in metrics_of(report, "mean")]


# ----------------------------------------------------------------- records


class _Values:
    """A record's metric values read as attributes: `report.ap`, `g.mean_ap` (the
    metrics are declared in `METRICS`, not as fields)."""

    values: dict[str, float | None]

    def __getattr__(self, name: str) -> float | None:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__} has no field or metric {name!r}")


@dataclass
class GeneratorMetrics(_Values):
    """One generator (or real source) of a test set or level: its counts and its value
    of every per-generator metric of the report."""

    name: str
    n_real: int
    n_fake: int
    values: dict[str, float | None] = field(default_factory=dict)  # metric name -> value, table order

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n_real": self.n_real, "n_fake": self.n_fake, **self.values}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorMetrics:
        counts = ("name", "n_real", "n_fake")
        return cls(*(data[k] for k in counts), {k: v for k, v in data.items() if k not in counts})


@dataclass
class RealSourceMetrics:
    """Accuracy on the real images of one source (a group holding reals)."""

    name: str
    n: int
    accuracy: float


@dataclass(kw_only=True)
class Summary(_Values):
    """What both reports hold for one set of scores (the test set, or one robustness level)."""

    n: int
    n_real: int
    n_fake: int
    values: dict[str, float | None]  # the overall values, then `mean_<name>` over the fake generators
    n_fake_generators: int
    generators: list[GeneratorMetrics] = field(default_factory=list)

    def _counts_and_values(self) -> dict[str, Any]:
        """report.json's keys from `n` to `n_fake_generators`."""
        return {"n": self.n, "n_real": self.n_real, "n_fake": self.n_fake, **self.values,
                "n_fake_generators": self.n_fake_generators}


@dataclass(kw_only=True)
class EvalReport(Summary):
    """Everything `evaluate` reports; `to_dict` gives plain JSON types."""

    real_sources: list[RealSourceMetrics] = field(default_factory=list)
    threshold: float = THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return {**self._counts_and_values(), "generators": [g.to_dict() for g in self.generators],
                "real_sources": [dataclasses.asdict(r) for r in self.real_sources], "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Inverse of `to_dict` (e.g. for a report.json read back); other keys are ignored."""
        return cls(n=data["n"], n_real=data["n_real"], n_fake=data["n_fake"],
                   values={k: data[k] for k in value_keys(EVAL) if k in data},
                   n_fake_generators=data["n_fake_generators"],
                   generators=[GeneratorMetrics.from_dict(g) for g in data["generators"]],
                   real_sources=[RealSourceMetrics(**r) for r in data["real_sources"]],
                   threshold=data.get("threshold", THRESHOLD))


def _check_inputs(labels: np.ndarray, scores: np.ndarray, generator_ids: np.ndarray,
                  n_names: int) -> None:
    if not labels.shape == scores.shape == generator_ids.shape or labels.ndim != 1:
        raise ValueError(
            f"labels {labels.shape}, scores {scores.shape} and generator_ids "
            f"{generator_ids.shape} must be 1-D arrays of the same length"
        )
    if labels.size == 0:
        raise ValueError("no images to evaluate (empty arrays)")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), found {np.unique(labels)[:10]}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int(np.sum(~np.isfinite(scores)))} scores are NaN or infinite")
    if generator_ids.min() < 0 or generator_ids.max() >= n_names:
        raise ValueError(
            f"generator ids must index the {n_names} generator names, found "
            f"{int(generator_ids.min())}..{int(generator_ids.max())}"
        )


def generator_groups(generator_ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(generator id, indices of its images) for every id present, ids ascending: the
    groups of the per-generator rows, in their order."""
    order = np.argsort(generator_ids, kind="stable")
    ids, starts = np.unique(generator_ids[order], return_index=True)
    return list(zip(ids.tolist(), np.split(order, starts[1:])))


def measure(
    labels: np.ndarray,
    scores: np.ndarray,
    generator_ids: np.ndarray,
    generator_names: Sequence[str],
    report: str,
) -> Summary:
    """The metrics of `report` (EVAL or ROBUSTNESS) over one test set or level: overall,
    per generator, and the means over the fake generators (groups with fakes).

    Args:
        labels: 0 (real) / 1 (fake) per image.
        scores: P(fake) per image (sigmoid of the logit).
        generator_ids: index into `generator_names` per image.
        generator_names: name of each generator id; ids without images are skipped.
        report: which report's metrics (`Metric.reports`).
    """
    labels, generator_ids = np.asarray(labels), np.asarray(generator_ids)
    scores = np.asarray(scores, dtype=np.float64)
    _check_inputs(labels, scores, generator_ids, len(generator_names))
    labels, generator_ids = labels.astype(np.int64), generator_ids.astype(np.int64)

    all_reals = np.sort(scores[labels == 0])
    per_generator = metrics_of(report, "per_generator")
    generators = []
    for gid, members in generator_groups(generator_ids):
        group = Group(labels[members], scores[members], all_reals)
        generators.append(GeneratorMetrics(str(generator_names[gid]), int(group.reals.size), int(group.fakes.size),
                                           {m.name: m.compute(group) for m in per_generator}))
    whole = Group(labels, scores, all_reals)
    fake_generators = [g for g in generators if g.n_fake]
    values = {m.name: m.compute(whole) for m in metrics_of(report, "overall")}
    values.update({m.mean_key: mean_defined([g.values[m.name] for g in fake_generators])
                   for m in metrics_of(report, "mean")})
    return Summary(n=int(labels.size), n_real=int(all_reals.size), n_fake=int(whole.fakes.size), values=values,
                   n_fake_generators=len(fake_generators), generators=generators)


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    generator_ids: np.ndarray,
    generator_names: Sequence[str],
) -> EvalReport:
    """Overall and per-generator metrics of one test set (the arguments as `measure`'s),
    and the accuracy on each real source."""
    summary = measure(labels, scores, generator_ids, generator_names, EVAL)
    real_sources = [RealSourceMetrics(name=g.name, n=g.n_real, accuracy=g.real_accuracy)
                    for g in summary.generators if g.n_real]
    return EvalReport(**vars(summary), real_sources=real_sources)
