"""The decision threshold of `eval --threshold`: a fixed P(fake), or one chosen on the
validation set's real images at a fixed false positive rate.

An image counts as fake when its P(fake) is above the threshold (0.5 by default, the
original's `prob > 0.5`). A fixed threshold tuned by eye on the test set flatters the
test set; `val@fpr=F` takes it from held-out data instead: the `val` set (of `--data`,
or of `--val-data`, e.g. the training data's) is scored with the same model, and the
threshold is the one at which at most F of its reals count as fake
(`metrics.threshold_at_fpr`). The test set's accuracies are then measured at it, and
report.json records where it came from (`Chosen.record`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from commfor_fast.errors import UserError
from commfor_fast.metrics import THRESHOLD, threshold_at_fpr

VAL_SET = "val"  # the set a threshold is chosen on
VAL_PREFIX = f"{VAL_SET}@fpr="
SPEC_HELP = (f"a probability in [0, 1] ({THRESHOLD}, the original's), or {VAL_PREFIX}F with F in (0, 1), e.g. "
             f"{VAL_PREFIX}0.05: chosen on the {VAL_SET} set's reals")


@dataclass(frozen=True)
class ThresholdSpec:
    """What `--threshold` asks for: a fixed value, or the false positive rate to choose one at."""

    value: float | None = None  # a fixed threshold ...
    fpr: float | None = None  # ... or: chosen on the val set's reals at this FPR

    @property
    def on_val(self) -> bool:
        return self.fpr is not None


def parse_threshold(text: str) -> ThresholdSpec:
    """`--threshold`'s value read and checked (one-line `UserError` naming the flag)."""
    body, on_val = (text[len(VAL_PREFIX):], True) if text.startswith(VAL_PREFIX) else (text, False)
    try:
        number = float(body)
    except ValueError:
        number = math.nan
    if on_val and 0 < number < 1:
        return ThresholdSpec(fpr=number)
    if not on_val and 0 <= number <= 1:
        return ThresholdSpec(value=number)
    raise UserError(f"--threshold {text!r}: give {SPEC_HELP}")


@dataclass(frozen=True)
class Chosen:
    """A threshold chosen on the val set's reals, and how it was chosen."""

    threshold: float
    fpr: float  # the rate asked for
    achieved_fpr: float  # the share of the val reals above the threshold (<= fpr)
    n_real: int
    data: Path  # the convert output whose val set chose it

    @property
    def record(self) -> dict[str, Any]:
        """report.json's `threshold_choice`."""
        return {"threshold": self.threshold, "chosen_on": f"{self.data} set {VAL_SET}, its real images",
                "n_real": self.n_real, "fpr": self.fpr, "achieved_fpr": self.achieved_fpr}

    @property
    def line(self) -> str:
        """What the console says about it."""
        return (f"threshold {self.threshold:.6g}: at most {self.fpr:g} of the {self.n_real} real images of the "
                f"{VAL_SET} set of {self.data} above it (achieved {self.achieved_fpr:.4f})")


def choose_on_val(labels: np.ndarray, scores: np.ndarray, fpr: float, data: Path) -> Chosen:
    """The threshold at `fpr` over the reals of the val set's `labels`/`scores` (P(fake));
    a `UserError` when the val set has no reals."""
    reals = np.asarray(scores, dtype=np.float64)[np.asarray(labels) == 0]
    threshold = threshold_at_fpr(reals, fpr)
    if threshold is None:
        raise UserError(f"--threshold {VAL_PREFIX}{fpr:g}: the {VAL_SET} set of {data} has no real images to choose "
                        "it on; give a fixed --threshold")
    return Chosen(threshold, fpr, float(np.mean(reals > threshold)), int(reals.size), data)
