"""The learning-rate schedule: linear warmup, then a cosine towards lr * 1e-3.

A pure function of the iteration (`LRSchedule.factor`), so a resumed run continues
with the lr the uninterrupted run would have used; the default steps the cosine as
the original does (SPEC section 5), `per-iteration` ends exactly at the floor.
"""

from __future__ import annotations

import dataclasses
import math
from typing import get_args

import torch

from commfor_fast.settings import LRScheduleKind, TrainSettings

LR_SCHEDULES: tuple[str, ...] = get_args(LRScheduleKind)


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    """The lr multiplier of every iteration, a pure function of the (0-based) iteration.

    Being a pure function makes resume exact: the lr after a resume is the
    uninterrupted run's. `warmup` is `round(warmup_frac * total)` or
    `round(warmup_epochs * per_epoch)`, as the original rounds it.

    "original" (the default) gives the lr the original's loop gives (SPEC section 5):
    it counts iterations from k = 1, sets `lr * (k + 1) / warmup` before iteration k
    while `k < warmup`, and runs torch's `CosineAnnealingLR(T_max = epochs * per_epoch
    - warmup, eta_min = lr * final_ratio)`, stepped after every iteration with
    `k > warmup` and once more at every epoch end (with `--train-itrs`, epochs =
    ceil(total / per_epoch)). Before iteration k the scheduler has thus stepped
    `t = max(k - 1 - warmup, 0) + (k - 1) // per_epoch` times. torch's step is
    recursive (it rescales the distance of the current lr from eta_min), so the
    epoch-end steps taken during the warmup leave a scale `c(t_peak)` behind, where
    `t_peak` is the step count when the lr was last set to the peak and
    `c(u) = 1 + cos(pi u / T_max)`: the lr is `eta_min + (lr - eta_min) c(t) / c(t_peak)`
    until torch's first additive step (the step to `T_max + 1 (mod 2 T_max)`, past
    the floor), after which it is the plain `eta_min + (lr - eta_min) c(t) / 2`. So
    the original need not end at the floor: its scheduler takes T_max + epochs steps,
    so without `--train-itrs` the last iteration runs `epochs - 2` steps past the floor
    (the cosine rises again; negligible with thousands of iterations per epoch), and
    with a `--train-itrs` that is not a multiple of the epoch it stops short of it.
    T_max below 1 (a warmup as long as the run, where the original divides by zero)
    counts as 1.

    "per-iteration": warmup `(itr + 1) / warmup` for `itr < warmup`, then one cosine
    step per iteration from 1 down to `final_ratio`, which it reaches at the end of
    the run. `constant` (`--no-lr-schedule`) keeps 1 after the warmup in both.
    """

    kind: str  # one of LR_SCHEDULES
    total: int  # iterations the run trains
    per_epoch: int  # iterations per epoch
    warmup: int  # warmup iterations
    constant: bool
    final_ratio: float = 1e-3

    @classmethod
    def from_settings(cls, settings: TrainSettings, per_epoch: int) -> LRSchedule:
        """The schedule of `settings` at `per_epoch` iterations per epoch (`--train-itrs` > 0
        overrides `--epochs`; `--warmup-frac` > 0 overrides `--warmup-epochs`)."""
        use_itrs = settings.train_itrs is not None and settings.train_itrs > 0
        total = settings.train_itrs if use_itrs else settings.epochs * per_epoch
        warmup = round(settings.warmup_frac * total if settings.warmup_frac > 0 else settings.warmup_epochs * per_epoch)
        return cls(settings.lr_schedule, total, per_epoch, warmup, settings.no_lr_schedule)

    def scheduler(self, optimizer: torch.optim.Optimizer, lr: float, weight_decay: float,
                  itr: int) -> torch.optim.lr_scheduler.LambdaLR:
        """torch's scheduler over `optimizer`, positioned before iteration `itr`.

        On resume the optimizer's groups come from the checkpoint; the base lr and
        weight decay are set from the settings again, so a run resumed with
        `--allow-changed-settings` follows the new values from `itr` on.
        """
        for group in optimizer.param_groups:
            group["initial_lr"], group["weight_decay"] = lr, weight_decay
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor, last_epoch=itr - 1)

    def factor(self, itr: int) -> float:
        """Multiplier of the base lr at iteration `itr` (0-based)."""
        if self.kind == "original":
            if itr + 1 < self.warmup:
                return (itr + 2) / self.warmup
            return 1.0 if self.constant else self._original_cosine(itr + 1)
        if itr < self.warmup:
            return (itr + 1) / self.warmup
        if self.constant:
            return 1.0
        progress = min((itr - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _original_cosine(self, k: int) -> float:
        """The original's lr factor at its iteration k >= warmup (1-based)."""
        t_max = max(math.ceil(self.total / self.per_epoch) * self.per_epoch - self.warmup, 1)

        def c(u: int) -> float:
            return 1 + math.cos(math.pi * u / t_max)

        t = max(k - 1 - self.warmup, 0) + (k - 1) // self.per_epoch
        # the step count when the lr was last the peak: set at k = warmup - 1, or at construction
        peak, scale = max(self.warmup - 2, 0) // self.per_epoch, 1.0
        if t == peak:
            return 1.0
        if (peak - t_max) % (2 * t_max) == 0:  # c(peak) = 0: torch's next step adds instead of rescaling
            peak, scale = peak + 1, 1 + (1 - math.cos(math.pi / t_max)) / 2
        first_add = peak + 1 + (t_max - peak) % (2 * t_max)
        d = c(t) / 2 if t >= first_add else scale * c(t) / c(peak)
        return self.final_ratio + (1 - self.final_ratio) * d

