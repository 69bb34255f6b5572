"""Evaluation metrics (SPEC section 6) in plain numpy, each declared once in `METRICS`.

Why not sklearn: evaluation must not pull a heavy dependency onto GPU boxes, and the
per-generator protocol below scores thousands of generators against the same real
images, which is fast here because the real scores are sorted once and every
generator's fakes are placed among them with binary searches.

Definitions:
- the threshold t: 0.5 on the sigmoid score by default (the original's `prob > 0.5`),
  `eval --threshold` sets another or chooses it on the validation set's reals; an
  image counts as fake when `score > t`;
- accuracy (overall only): share of all images on the right side of t; it depends on
  the share of fakes in the test set, so it is not reported per generator;
- real accuracy (TNR): share of reals at or below t; fake accuracy (TPR): share of
  fakes above t (per generator: its own reals, its own fakes);
- balanced accuracy: (TPR + TNR) / 2; per generator its fakes' TPR with the TNR of ALL
  real images of the test set (the same reals as its AP and AUC); 0.5 for scores
  that ignore the image, whatever the share of fakes;
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
scored against ALL real images of the test set. Such an AP tends to the share of that
generator's fakes among those images when there are thousands of generators (about
0.0005 for scores that ignore the image, 50k images, 5,000 generators), so its mean is
not comparable between test sets with different numbers of reals; `ap_balanced` is the
AP of the generator's fakes against a seeded random subsample of the reals, as many as
its fakes (all reals when there are fewer), whose chance level is 0.5, and ROC-AUC does
not depend on the share at all. The original's within-group AP (the group's own reals
and fakes) is kept as `ap_within`. A value that is undefined (one label only, no reals
in the test set) is None, never -1, and is left out of means.

Chance levels: a metric may declare the value that scores independent of the labels
get on a group (`Metric.chance`: AUC and balanced accuracy 0.5, an AP the share of
fakes among the images it ranks, TPR at FPR alpha alpha); the report carries it
overall and as the mean over fake generators (`Summary.chance`) next to the values.
The AP's is its limit for large groups: random scores get a little more on small
ones (0.568 for 10 fakes against 10 reals, 0.0036 for 10 against 5,000 reals).

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

THRESHOLD = 0.5  # the original's decision threshold on P(fake)
ECE_BINS = 15
SUBSAMPLE_SEED = 0  # with the generator id: which reals `ap_balanced` draws
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


def accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float = THRESHOLD) -> float | None:
    """Share of images on the right side of `threshold` (fake when score > threshold); None if empty."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.size == 0:
        return None
    return float(np.mean((scores > threshold) == (labels == 1)))


def balanced_accuracy(fakes: np.ndarray, reals_sorted: np.ndarray, threshold: float) -> float | None:
    """(TPR + TNR) / 2 at `threshold`: the share of `fakes` above it and of the reals
    (ascending) at or below it; None unless both occur."""
    if fakes.size == 0 or reals_sorted.size == 0:
        return None
    tnr = np.searchsorted(reals_sorted, threshold, side="right") / reals_sorted.size
    return float((np.mean(fakes > threshold) + tnr) / 2)


def subsample_sorted(reals_sorted: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` of the reals (ascending) drawn without replacement, seeded by (SUBSAMPLE_SEED,
    `seed` + 1: a generator id, or -1 for the whole set), still ascending; all of them
    when there are no more than `n`."""
    if reals_sorted.size <= n:
        return reals_sorted
    rng = np.random.default_rng([SUBSAMPLE_SEED, seed + 1])
    return reals_sorted[np.sort(rng.choice(reals_sorted.size, size=n, replace=False))]


def prevalence(n_fake: int, n_real: int) -> float | None:
    """Share of fakes among `n_fake + n_real` images: the AP of scores that ignore the image."""
    return n_fake / (n_fake + n_real) if n_fake and n_real else None


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
    threshold: float = THRESHOLD  # fake when P(fake) > threshold
    generator_id: int = -1  # the generator's id (seeds its subsample of reals); -1 for the whole set

    @cached_property
    def fakes(self) -> np.ndarray:
        return self.scores[self.labels == 1]

    @cached_property
    def reals(self) -> np.ndarray:
        return self.scores[self.labels == 0]

    @cached_property
    def matched_reals(self) -> np.ndarray:
        """As many of `all_reals` as the group has fakes (`subsample_sorted`), ascending."""
        return subsample_sorted(self.all_reals, self.fakes.size, self.generator_id)


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
    # the value scores independent of the labels get on a group; None: none declared
    chance: Callable[[Group], float | None] | None = None

    def __post_init__(self) -> None:
        if self.mean and not self.per_generator:
            raise ValueError(f"metric {self.name}: a mean over generators needs per_generator=True")
        if self.headline and not self.overall:
            raise ValueError(f"metric {self.name}: a headline column shows the overall value; set overall=True")

    @property
    def mean_key(self) -> str:
        return f"mean_{self.name}"


def _half(g: Group) -> float | None:
    """The chance level of a ranking or balanced metric, 0.5, where the group has fakes and the set has reals."""
    return 0.5 if g.fakes.size and g.all_reals.size else None


def _pct(fpr: float) -> str:
    return f"{fpr * 100:g}pct"


def _tpr_metric(fpr: float) -> Metric:
    return Metric(f"tpr_at_fpr_{_pct(fpr)}", f"TPR@{fpr * 100:g}%",
                  lambda g: tpr_above(g.fakes, _threshold_sorted(g.all_reals, fpr)), reports=(ROBUSTNESS,),
                  headline=True, chance=lambda g: fpr if _half(g) else None)


def _threshold_metric(fpr: float) -> Metric:
    return Metric(f"threshold_fpr_{_pct(fpr)}", f"t@{fpr * 100:g}%", lambda g: _threshold_sorted(g.all_reals, fpr),
                  reports=(ROBUSTNESS,), per_generator=False, mean=False)


# Table order is the order of report.json's keys, the CSV columns and the console columns.
METRICS: dict[str, Metric] = {m.name: m for m in (
    # every image at the threshold: depends on the share of fakes, so overall only
    Metric("accuracy", "acc", lambda g: accuracy(g.labels, g.scores, g.threshold), headline=True,
           per_generator=False, mean=False),
    # (TPR of the fakes + TNR of all reals) / 2
    Metric("balanced_accuracy", "bal_acc", lambda g: balanced_accuracy(g.fakes, g.all_reals, g.threshold),
           headline=True, chance=lambda g: _half(g)),
    Metric("real_accuracy", "real_acc", lambda g: accuracy(g.labels[g.labels == 0], g.reals, g.threshold),
           mean=False),  # TNR of the group's own reals
    Metric("fake_accuracy", "fake_acc", lambda g: accuracy(g.labels[g.labels == 1], g.fakes, g.threshold)),  # TPR
    Metric("ap", "AP", lambda g: _ap_sorted(g.fakes, g.all_reals), headline=True,  # fakes vs all reals
           chance=lambda g: prevalence(g.fakes.size, g.all_reals.size)),
    # fakes vs as many reals, drawn from all reals (seeded by the generator id)
    Metric("ap_balanced", "AP_bal", lambda g: _ap_sorted(g.fakes, g.matched_reals), reports=(EVAL,),
           overall=False, chance=lambda g: prevalence(g.fakes.size, g.matched_reals.size)),
    Metric("auc", "AUC", lambda g: _auc_sorted(g.fakes, g.all_reals), chance=_half),
    # the original's AP: a generator's own reals and fakes (both needed)
    Metric("ap_within", "AP_within", lambda g: _ap_sorted(g.fakes, np.sort(g.reals)), reports=(EVAL,),
           overall=False, chance=lambda g: prevalence(g.fakes.size, g.reals.size)),
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


# What the per-generator figures compare, for tables (`report.format_table`).
PER_GENERATOR_NOTE = ("per generator: bal_acc, AP, AUC: its fakes vs all real images of the test set; AP_bal: vs as many\n"
                      "reals as its fakes (seeded draw); AP_within: its own reals and fakes (the original's AP); "
                      "real_acc, fake_acc: its own")


def chance_line(summary: Summary, report: str) -> str:
    """The chance levels of `summary` (scores that ignore the image) for the console: a
    line overall, a line of the means over the fake generators, labelled as the columns."""
    overall = [f"{m.label} {m.fmt(summary.chance[m.name])}" for m in metrics_of(report, "overall")
               if m.name in summary.chance]
    means = [f"{m.label} {m.fmt(summary.chance[m.mean_key])}" for m in metrics_of(report, "mean")
             if m.mean_key in summary.chance]
    return (f"chance level (scores that ignore the image): {'  '.join(overall)}\n"
            f"chance level of the means over fake generators: {'  '.join(means)}")


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
    # the chance levels of the metrics that declare one (`Metric.chance`), keyed as `values`
    chance: dict[str, float | None] = field(default_factory=dict)

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
        return {**self._counts_and_values(), "chance": self.chance,
                "generators": [g.to_dict() for g in self.generators],
                "real_sources": [dataclasses.asdict(r) for r in self.real_sources], "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Inverse of `to_dict` (e.g. for a report.json read back); other keys are ignored.
        A report written before balanced accuracy reads too: its values of metrics since
        renamed or made overall-only (its per-generator and mean `accuracy`, which were
        the fakes' TPR for a generator without reals) stay under their old keys."""
        return cls(n=data["n"], n_real=data["n_real"], n_fake=data["n_fake"],
                   values={k: data[k] for k in (*value_keys(EVAL), "mean_accuracy") if k in data},
                   n_fake_generators=data["n_fake_generators"],
                   generators=[GeneratorMetrics.from_dict(g) for g in data["generators"]],
                   real_sources=[RealSourceMetrics(**r) for r in data["real_sources"]],
                   threshold=data.get("threshold", THRESHOLD), chance=data.get("chance", {}))


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
    threshold: float = THRESHOLD,
) -> Summary:
    """The metrics of `report` (EVAL or ROBUSTNESS) over one test set or level: overall,
    per generator, and the means over the fake generators (groups with fakes); the
    chance levels alongside.

    Args:
        labels: 0 (real) / 1 (fake) per image.
        scores: P(fake) per image (sigmoid of the logit).
        generator_ids: index into `generator_names` per image.
        generator_names: name of each generator id; ids without images are skipped.
        report: which report's metrics (`Metric.reports`).
        threshold: an image counts as fake when its score is above it.
    """
    labels, generator_ids = np.asarray(labels), np.asarray(generator_ids)
    scores = np.asarray(scores, dtype=np.float64)
    _check_inputs(labels, scores, generator_ids, len(generator_names))
    labels, generator_ids = labels.astype(np.int64), generator_ids.astype(np.int64)

    all_reals = np.sort(scores[labels == 0])
    per_generator = metrics_of(report, "per_generator")
    generators, fake_groups = [], []
    for gid, members in generator_groups(generator_ids):
        group = Group(labels[members], scores[members], all_reals, threshold, gid)
        generators.append(GeneratorMetrics(str(generator_names[gid]), int(group.reals.size), int(group.fakes.size),
                                           {m.name: m.compute(group) for m in per_generator}))
        if group.fakes.size:
            fake_groups.append(group)
    whole = Group(labels, scores, all_reals, threshold)
    fake_generators = [g for g in generators if g.n_fake]
    values = {m.name: m.compute(whole) for m in metrics_of(report, "overall")}
    values.update({m.mean_key: mean_defined([g.values[m.name] for g in fake_generators])
                   for m in metrics_of(report, "mean")})
    chance = {m.name: m.chance(whole) for m in metrics_of(report, "overall") if m.chance}
    chance.update({m.mean_key: mean_defined([m.chance(g) for g in fake_groups])
                   for m in metrics_of(report, "mean") if m.chance})
    return Summary(n=int(labels.size), n_real=int(all_reals.size), n_fake=int(whole.fakes.size), values=values,
                   n_fake_generators=len(fake_generators), generators=generators, chance=chance)


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    generator_ids: np.ndarray,
    generator_names: Sequence[str],
    threshold: float = THRESHOLD,
) -> EvalReport:
    """Overall and per-generator metrics of one test set (the arguments as `measure`'s),
    and the accuracy on each real source."""
    summary = measure(labels, scores, generator_ids, generator_names, EVAL, threshold)
    real_sources = [RealSourceMetrics(name=g.name, n=g.n_real, accuracy=g.real_accuracy)
                    for g in summary.generators if g.n_real]
    return EvalReport(**vars(summary), real_sources=real_sources, threshold=threshold)
