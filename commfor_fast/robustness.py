"""Robustness evaluation: metrics per perturbation level, and how they are written and shown.

`eval --perturb` scores every image at `clean` and at every requested level
(`pipelines/perturb.py`); this module turns those scores into one `LevelMetrics` per
level and writes them: the `robustness` section of report.json, robustness.csv (one
row per generator x family x level), one chart per family and the console table.

Definitions (per level, each from that level's scores only):
- accuracy, AP and ROC-AUC as in `metrics.py` (accuracy at 0.5; per generator, its
  fakes against ALL real images of that level);
- TPR at FPR alpha (1 % and 5 %): the threshold t is the (floor(alpha n_real) + 1)-th
  highest score of the level's real images, an image counts as fake when its score is
  above t, so at most alpha of the reals are false positives (the point of the ROC
  curve with the highest TPR at FPR <= alpha); the TPR is the share of fakes above t,
  overall and per generator (the same t for every generator);
- expected calibration error (overall): the scores P(fake) fall into 15 equal-width
  bins over [0, 1] (bin b holds [b/15, (b+1)/15), the last one also 1.0); ECE is the
  sum over non-empty bins of (images in the bin / all images) x |share of fakes in the
  bin - mean P(fake) in the bin|.
Undefined values (no reals, no fakes) are None, shown as n/a and left out of means.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from commfor_fast.fileio import atomic_write
from commfor_fast.metrics import evaluate, generator_groups, mean_defined
from commfor_fast.pipelines.perturb import CLEAN, FAMILIES, Level
from commfor_fast.report import axis_start, format_metric, save_chart, short_name, spreadsheet_safe

ECE_BINS = 15
FPRS = (0.01, 0.05)
CSV_NAME = "robustness.csv"
CHART_PREFIX = "robustness_"  # robustness_<family>.png and .pdf
CSV_COLUMNS = ("generator", "family", "level", "n_real", "n_fake", "accuracy", "real_accuracy", "fake_accuracy",
               "ap", "auc", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct")
WORST_LABELLED = 5
DEFINITIONS = {
    "accuracy": "threshold 0.5 on P(fake) (fake when above)",
    "ap_auc": "average precision and ROC-AUC; per generator: its fakes vs all real images of that level",
    "tpr_at_fpr": "threshold t = the (floor(alpha * n_real) + 1)-th highest real score of that level, fake when "
                  "score > t (FPR <= alpha); TPR = share of fakes above t, overall and per generator (same t)",
    "ece": f"{ECE_BINS} equal-width bins of P(fake) over [0, 1]; sum over bins of (n_bin / n) * "
           "|share of fakes - mean P(fake)|",
}


# ------------------------------------------------------------------- metrics


def threshold_at_fpr(real_scores: np.ndarray, fpr: float) -> float | None:
    """The (floor(fpr * n) + 1)-th highest real score: at most `fpr` of the reals lie above it."""
    reals = np.sort(np.asarray(real_scores, dtype=np.float64))[::-1]
    if reals.size == 0:
        return None
    allowed = math.floor(fpr * reals.size + 1e-9)  # false positives allowed
    return float(reals[allowed]) if allowed < reals.size else -math.inf


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


def _pct(fpr: float) -> str:
    return f"{fpr * 100:g}pct"


@dataclass
class LevelGenerator:
    """One generator (or real source) at one level."""

    name: str
    n_real: int
    n_fake: int
    accuracy: float
    real_accuracy: float | None
    fake_accuracy: float | None
    ap: float | None  # its fakes vs all reals of the level
    auc: float | None
    tpr_at_fpr_1pct: float | None  # its fakes above the level's 1 % FPR threshold
    tpr_at_fpr_5pct: float | None


@dataclass
class LevelMetrics:
    """Everything measured at one level; `to_dict` gives plain JSON types."""

    family: str  # "clean" or a family of perturb.FAMILIES
    level: float | None  # None for clean
    label: str  # "clean", "jpeg=30"
    n: int
    n_real: int
    n_fake: int
    accuracy: float
    ap: float | None
    auc: float | None
    tpr_at_fpr_1pct: float | None
    tpr_at_fpr_5pct: float | None
    threshold_fpr_1pct: float | None  # the level's thresholds (P(fake))
    threshold_fpr_5pct: float | None
    ece: float | None
    # Means over the fake generators (groups with fakes), of the defined values only.
    mean_accuracy: float | None
    mean_ap: float | None
    mean_auc: float | None
    mean_tpr_at_fpr_1pct: float | None
    mean_tpr_at_fpr_5pct: float | None
    n_fake_generators: int
    worst_generator: str | None  # lowest AP among the fake generators
    worst_ap: float | None
    generators: list[LevelGenerator] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def level_metrics(level: Level, labels: np.ndarray, scores: np.ndarray, generator_ids: np.ndarray,
                  generator_names: Sequence[str]) -> LevelMetrics:
    """The metrics of one level from its scores P(fake) (see the module docstring)."""
    labels, scores = np.asarray(labels).astype(np.int64), np.asarray(scores, dtype=np.float64)
    generator_ids = np.asarray(generator_ids).astype(np.int64)
    base = evaluate(labels, scores, generator_ids, generator_names)
    thresholds = [threshold_at_fpr(scores[labels == 0], fpr) for fpr in FPRS]
    generators = []
    for g, (_, members) in zip(base.generators, generator_groups(generator_ids)):
        fakes = scores[members][labels[members] == 1]
        generators.append(LevelGenerator(g.name, g.n_real, g.n_fake, g.accuracy, g.real_accuracy, g.fake_accuracy,
                                         g.ap, g.auc, *(tpr_above(fakes, t) for t in thresholds)))
    with_fakes = [g for g in generators if g.n_fake]
    with_ap = [g for g in with_fakes if g.ap is not None]
    worst = min(with_ap, key=lambda g: g.ap) if with_ap else None
    return LevelMetrics(
        family=level.family, level=level.value, label=level.label, n=base.n, n_real=base.n_real,
        n_fake=base.n_fake, accuracy=base.accuracy, ap=base.ap, auc=base.auc,
        tpr_at_fpr_1pct=tpr_above(scores[labels == 1], thresholds[0]),
        tpr_at_fpr_5pct=tpr_above(scores[labels == 1], thresholds[1]),
        threshold_fpr_1pct=thresholds[0], threshold_fpr_5pct=thresholds[1],
        ece=expected_calibration_error(labels, scores),
        mean_accuracy=base.mean_accuracy, mean_ap=base.mean_ap, mean_auc=base.mean_auc,
        mean_tpr_at_fpr_1pct=mean_defined([g.tpr_at_fpr_1pct for g in with_fakes]),
        mean_tpr_at_fpr_5pct=mean_defined([g.tpr_at_fpr_5pct for g in with_fakes]),
        n_fake_generators=len(with_fakes),
        worst_generator=worst.name if worst else None, worst_ap=worst.ap if worst else None,
        generators=generators,
    )


def report_section(levels: Sequence[LevelMetrics], applied_to: str, seed: int) -> dict[str, Any]:
    """The `robustness` section of report.json: the definitions, then every level."""
    families = list(dict.fromkeys(m.family for m in levels if m.family != CLEAN))
    return {
        "applied_to": applied_to,
        "noise_seed": seed,
        "families": {name: {"parameter": FAMILIES[name].parameter, "definition": FAMILIES[name].definition}
                     for name in families},
        "metrics": DEFINITIONS,
        "levels": [m.to_dict() for m in levels],
    }


# ------------------------------------------------------------------- outputs


def _level_text(m: LevelMetrics) -> str:
    return "" if m.level is None else f"{m.level:g}"


def write_csv(levels: Sequence[LevelMetrics], path: Path) -> Path:
    """robustness.csv: one row per generator x family x level (`clean` as family clean, level empty)."""
    with atomic_write(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for m in levels:
            for g in m.generators:
                row = (spreadsheet_safe(g.name), m.family, _level_text(m), g.n_real, g.n_fake, g.accuracy,
                       g.real_accuracy, g.fake_accuracy, g.ap, g.auc, g.tpr_at_fpr_1pct, g.tpr_at_fpr_5pct)
                writer.writerow("" if v is None else v for v in row)
    return path


def format_table(levels: Sequence[LevelMetrics]) -> str:
    """The console table: one row per family x level, overall figures, mean AP over the
    fake generators and the worst generator by AP."""
    header = ("family", "level", "acc", "AP", "TPR@1%", "TPR@5%", "ECE", "mean AP")
    lines = ["robustness (AP: fakes vs all reals of that level; TPR at 1 %/5 % FPR, thresholds from that level's "
             f"reals; ECE over {ECE_BINS} bins):",
             f"{header[0]:<7} {header[1]:>6}  " + "  ".join(f"{h:>7}" for h in header[2:]) + "  worst generator (AP)"]
    for m in levels:
        cells = (m.accuracy, m.ap, m.tpr_at_fpr_1pct, m.tpr_at_fpr_5pct, m.ece, m.mean_ap)
        worst = f"{short_name(m.worst_generator, 36)} ({format_metric(m.worst_ap)})" if m.worst_generator else "n/a"
        lines.append(f"{m.family:<7} {_level_text(m) or '-':>6}  "
                     + "  ".join(f"{format_metric(v):>7}" for v in cells) + f"  {worst}")
    return "\n".join(lines)


def plot_family(levels: Sequence[LevelMetrics], family: str, path: Path) -> tuple[Path, Path]:
    """AP per fake generator against the level (clean first, then mild to harsh) for one
    family: a thin line per generator, the mean over generators bold with its values,
    the worst generators at the harshest level coloured and named. PNG (200 dpi) and PDF."""
    steps = [m for m in levels if m.family == CLEAN] + [m for m in levels if m.family == family]
    xs = list(range(len(steps)))
    names = [g.name for g in steps[0].generators if g.n_fake]
    by_name = [{g.name: g.ap for g in m.generators} for m in steps]
    curves = {name: [aps.get(name) for aps in by_name] for name in names}
    curves = {name: ys for name, ys in curves.items() if any(y is not None for y in ys)}
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.add_subplot()
    spec = FAMILIES[family]
    worst: list[str] = []
    if not curves:
        ax.text(0.5, 0.5, "no AP defined: the test set has no real or no fake images", ha="center", va="center",
                transform=ax.transAxes)
    else:
        harshest = len(steps) - 1
        worst = sorted((n for n in curves if curves[n][harshest] is not None), key=lambda n: curves[n][harshest])
        worst = worst[:WORST_LABELLED]
        alpha = max(0.08, min(0.5, 8 / len(curves)))
        others = [n for n in curves if n not in worst]
        for name in others:
            ax.plot(xs, [np.nan if y is None else y for y in curves[name]], color="0.55", linewidth=0.7, alpha=alpha,
                    label=f"other generators ({len(others)})" if name == others[0] else None)
        colours = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink"]
        for colour, name in zip(colours, worst):
            ys = curves[name]
            ax.plot(xs, [np.nan if y is None else y for y in ys], color=colour, linewidth=1.3, marker=".",
                    label=f"{short_name(name, 34)}: {ys[harshest]:.3f}")
        means = [m.mean_ap for m in steps]
        ax.plot(xs, [np.nan if v is None else v for v in means], color="black", linewidth=2.8, marker="o",
                label=f"mean over {len(curves)} generators", zorder=5)
        for x, v in zip(xs, means):
            if v is not None:
                ax.annotate(f"{v:.3f}", (x, v), xytext=(0, 8), textcoords="offset points", ha="center",
                            fontsize=8, fontweight="bold", zorder=6)
        values = [y for ys in curves.values() for y in ys if y is not None] + [v for v in means if v is not None]
        ax.set_ylim(axis_start(values), 1.02)
        ax.set_xlim(-0.25, harshest + 0.25)
        fig.legend(loc="outside right upper", fontsize=7.5,
                   title=f"worst {len(worst)} at {family}={steps[-1].level:g} (AP)", title_fontsize=8)
    ax.set_xticks(xs, ["clean"] + [f"{m.level:g}" for m in steps[1:]])
    ax.set_xlabel(f"{spec.parameter}, mild to harsh")
    ax.set_ylabel("AP (fakes vs all reals of the level)")
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"{family}: AP per fake generator (thin), mean bold, worst {len(worst)} in colour", fontsize=10)
    return save_chart(fig, path)


def write_outputs(levels: Sequence[LevelMetrics], out_dir: Path) -> dict[str, Path]:
    """robustness.csv and a chart per family in `out_dir`; returns the paths by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"robustness_csv": write_csv(levels, out_dir / CSV_NAME)}
    for family in dict.fromkeys(m.family for m in levels if m.family != CLEAN):
        paths[f"chart_{family}"], paths[f"chart_{family}_pdf"] = plot_family(
            levels, family, out_dir / f"{CHART_PREFIX}{family}")
    return paths
