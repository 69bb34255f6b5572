"""Evaluation metrics (SPEC section 6) in plain numpy: accuracy, AP, ROC-AUC, per generator.

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
  `roc_auc_score`).

Per generator, AP and AUC follow the field's usual protocol: that generator's fakes
scored against ALL real images of the test set. The original's within-group AP (the
group's own reals and fakes) is kept as `ap_within`. A value that is undefined (one
label only, no reals in the test set) is None, never -1, and is left out of means.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

THRESHOLD = 0.5


def mean_defined(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are defined (None: no images to measure), or None."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


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


@dataclass
class GeneratorMetrics:
    """One generator (or real source) of the test set."""

    name: str
    n_real: int
    n_fake: int
    accuracy: float  # over all its images
    real_accuracy: float | None  # None: no reals in the group
    fake_accuracy: float | None  # None: no fakes in the group
    ap: float | None  # its fakes vs all reals of the test set
    auc: float | None  # its fakes vs all reals of the test set
    ap_within: float | None  # the original's: its own reals and fakes (both needed)


@dataclass
class RealSourceMetrics:
    """Accuracy on the real images of one source (a group holding reals)."""

    name: str
    n: int
    accuracy: float


@dataclass
class EvalReport:
    """Everything `evaluate` reports; `to_dict` gives plain JSON types."""

    n: int
    n_real: int
    n_fake: int
    accuracy: float
    ap: float | None
    auc: float | None
    real_accuracy: float | None
    fake_accuracy: float | None
    # Means over fake generators (groups with fakes), of the defined values only.
    mean_accuracy: float | None
    mean_ap: float | None
    mean_auc: float | None
    mean_ap_within: float | None  # over groups where the original's AP is defined
    n_fake_generators: int
    generators: list[GeneratorMetrics] = field(default_factory=list)
    real_sources: list[RealSourceMetrics] = field(default_factory=list)
    threshold: float = THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """Inverse of `to_dict` (e.g. for a report.json read back); other keys are ignored."""
        data = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        data["generators"] = [GeneratorMetrics(**g) for g in data["generators"]]
        data["real_sources"] = [RealSourceMetrics(**r) for r in data["real_sources"]]
        return cls(**data)


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
    groups of `evaluate`'s per-generator rows, in their order."""
    order = np.argsort(generator_ids, kind="stable")
    ids, starts = np.unique(generator_ids[order], return_index=True)
    return list(zip(ids.tolist(), np.split(order, starts[1:])))


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    generator_ids: np.ndarray,
    generator_names: Sequence[str],
) -> EvalReport:
    """Overall and per-generator metrics of one test set.

    Args:
        labels: 0 (real) / 1 (fake) per image.
        scores: P(fake) per image (sigmoid of the logit).
        generator_ids: index into `generator_names` per image.
        generator_names: name of each generator id; ids without images are skipped.
    """
    labels, generator_ids = np.asarray(labels), np.asarray(generator_ids)
    scores = np.asarray(scores, dtype=np.float64)
    _check_inputs(labels, scores, generator_ids, len(generator_names))
    labels, generator_ids = labels.astype(np.int64), generator_ids.astype(np.int64)

    is_fake = labels == 1
    reals_sorted = np.sort(scores[~is_fake])
    generators, real_sources = [], []
    for gid, members in generator_groups(generator_ids):
        g_labels, g_scores = labels[members], scores[members]
        g_fake = g_labels == 1
        fakes, reals = g_scores[g_fake], g_scores[~g_fake]
        name = str(generator_names[gid])
        generators.append(GeneratorMetrics(
            name=name,
            n_real=int(reals.size),
            n_fake=int(fakes.size),
            accuracy=accuracy(g_labels, g_scores),
            real_accuracy=accuracy(g_labels[~g_fake], reals),
            fake_accuracy=accuracy(g_labels[g_fake], fakes),
            ap=_ap_sorted(fakes, reals_sorted),
            auc=_auc_sorted(fakes, reals_sorted),
            ap_within=_ap_sorted(fakes, np.sort(reals)),
        ))
        if reals.size:
            real_sources.append(RealSourceMetrics(name=name, n=int(reals.size),
                                                  accuracy=generators[-1].real_accuracy))

    fake_generators = [g for g in generators if g.n_fake]
    return EvalReport(
        n=int(labels.size),
        n_real=int(reals_sorted.size),
        n_fake=int(is_fake.sum()),
        accuracy=accuracy(labels, scores),
        ap=_ap_sorted(scores[is_fake], reals_sorted),
        auc=_auc_sorted(scores[is_fake], reals_sorted),
        real_accuracy=accuracy(labels[~is_fake], scores[~is_fake]),
        fake_accuracy=accuracy(labels[is_fake], scores[is_fake]),
        mean_accuracy=mean_defined([g.accuracy for g in fake_generators]),
        mean_ap=mean_defined([g.ap for g in fake_generators]),
        mean_auc=mean_defined([g.auc for g in fake_generators]),
        mean_ap_within=mean_defined([g.ap_within for g in generators]),
        n_fake_generators=len(fake_generators),
        generators=generators,
        real_sources=real_sources,
    )
