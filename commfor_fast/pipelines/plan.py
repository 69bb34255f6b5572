"""A sample's augmentation plan: the whole preprocessing of one image as a step list.

RandomStateAugmentation (SPEC section 3) per image: draw a count for every op from
[min_i, max_i], put each op in a bag that many times, then pop ops from the bag in a
uniformly random order; each application draws fresh parameters for the image size
it sees. A plan also holds the deterministic first resize (skipped for pre-resized
shards) and the final crop (random for training, centre for evaluation), so one plan
describes everything between the decoder and normalisation.

Plans are drawn on the host with exact image sizes, by `train_plan`/`eval_plan`, for
both executors; tests can build them by hand instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, get_args

import numpy as np

from commfor_fast.errors import UserError
from commfor_fast.imageio import resized_shape
from commfor_fast.pipelines.ops import DEFAULT_OPS, OPS, Crop, Interp, Resize, Step, trace_sizes
from commfor_fast.pipelines.preprocess import center_crop_offsets, resize_size
from commfor_fast.settings import BoxFilter


BOX_FILTERS: tuple[str, ...] = get_args(BoxFilter)


@dataclass(frozen=True)
class RSAConfig:
    """Which RSA ops run and how often: op i is applied UniformInt[min_i, max_i] times."""

    ops: tuple[str, ...] = DEFAULT_OPS
    min_counts: tuple[int, ...] = (0,) * len(DEFAULT_OPS)
    max_counts: tuple[int, ...] = (2,) * len(DEFAULT_OPS)
    # The original resizes RandomPadding's output to (old W, old H), transposing
    # non-square images; True resizes back to (old H, old W) instead.
    fix_padding_quirk: bool = False
    # How the DALI graph does PIL's box filter (RandomResizedCrop draws it for 1 in 6
    # resizes): "built", `resampling.box_from_regions` (PIL's result but at window-edge
    # ties), or "standin", one Gaussian resize (slots.DALI_FILTERS: 30 operators per slot
    # fewer, further from PIL). The reference executor is PIL itself.
    box_filter: str = "built"

    def __post_init__(self) -> None:
        unknown = [o for o in self.ops if o not in OPS]
        if unknown:
            raise UserError(f"--rsa-ops: unknown op {unknown[0]!r}; choose from {', '.join(OPS)}")
        if not len(self.ops) == len(self.min_counts) == len(self.max_counts):
            raise UserError(f"RSA config: {len(self.ops)} ops but {len(self.min_counts)} minimum and "
                            f"{len(self.max_counts)} maximum counts; give one count per op")
        for name, lo, hi in zip(self.ops, self.min_counts, self.max_counts):
            if lo < 0 or hi < lo:
                raise UserError(f"--rsa-min-num-ops/--rsa-max-num-ops: {name} has min {lo}, max {hi}; "
                                "counts must satisfy 0 <= min <= max")
        if self.box_filter not in BOX_FILTERS:
            raise UserError(f"--box-filter {self.box_filter}: choose one of {', '.join(BOX_FILTERS)}")

    @classmethod
    def from_flags(
        cls,
        ops: str | Sequence[str] = DEFAULT_OPS,
        min_num_ops: str | int = 0,
        max_num_ops: str | int = 2,
        fix_padding_quirk: bool = False,
        box_filter: str = "built",
    ) -> RSAConfig:
        """Parse the original's `--rsa_ops`, `--rsa_min_num_ops`, `--rsa_max_num_ops`.

        Counts are one number for every op or a comma list with one number per op.
        An empty op list turns RSA off.
        """
        names = tuple(o.strip() for o in ops.split(",") if o.strip()) if isinstance(ops, str) else tuple(ops)
        lo = _counts("--rsa-min-num-ops", min_num_ops, len(names))
        hi = _counts("--rsa-max-num-ops", max_num_ops, len(names))
        return cls(names, lo, hi, fix_padding_quirk, box_filter)

    @property
    def max_steps(self) -> int:
        """The most primitive steps RSA can produce for one image."""
        return sum(hi * OPS[op].max_steps for op, hi in zip(self.ops, self.max_counts))

    @property
    def built_box(self) -> bool:
        """Whether the DALI graph builds PIL's box filter (`box_filter`)."""
        return self.box_filter == "built"

    @property
    def max_jpegs(self) -> int:
        """The most of those steps that can be JPEG steps."""
        return sum(hi * OPS[op].max_jpegs for op, hi in zip(self.ops, self.max_counts))


def _counts(flag: str, value: str | int, n: int) -> tuple[int, ...]:
    try:
        parts = [int(v) for v in str(value).split(",")]
    except ValueError:
        raise UserError(f"{flag} {value!r}: give one integer or a comma list of integers") from None
    if any(v < 0 for v in parts):
        raise UserError(f"{flag} {value!r}: counts must be >= 0")
    if len(parts) == 1:
        return tuple(parts * n)
    if len(parts) != n:
        raise UserError(f"{flag} {value!r}: {len(parts)} numbers for {n} ops; give one number or one per op")
    return tuple(parts)


@dataclass(frozen=True)
class PlanEntry:
    """One application of an RSA op and the steps it drew."""

    op: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Plan:
    """Everything between decoding and normalisation, for one image."""

    height: int  # size of the decoded (or pre-resized) input
    width: int
    resize: Resize | None  # the first resize; None for pre-resized input
    entries: tuple[PlanEntry, ...] = field(default=())  # RSA, in application order
    crop: Crop | None = None  # final random (train) or centre (eval) crop

    def rsa_steps(self) -> list[Step]:
        return [s for e in self.entries for s in e.steps]

    def steps(self) -> list[Step]:
        head = [self.resize] if self.resize else []
        tail = [self.crop] if self.crop else []
        return head + self.rsa_steps() + tail


def draw_counts(rng: np.random.Generator, config: RSAConfig) -> list[int]:
    return [int(rng.integers(lo, hi + 1)) for lo, hi in zip(config.min_counts, config.max_counts)]


def draw_order(rng: np.random.Generator, counts: Sequence[int]) -> list[int]:
    """Op indices in application order: fill a bag, then pop uniformly random elements."""
    bag = [i for i, c in enumerate(counts) for _ in range(c)]
    order = []
    while bag:
        order.append(bag.pop(int(rng.integers(len(bag)))))
    return order


def draw_rsa(rng: np.random.Generator, config: RSAConfig, height: int, width: int, crop: int) -> tuple[PlanEntry, ...]:
    """RSA for an image of (height, width): counts, order, then each op's parameters."""
    entries = []
    for i in draw_order(rng, draw_counts(rng, config)):
        op = config.ops[i]
        steps = tuple(OPS[op].sample(rng, height, width, crop, fix_quirks=config.fix_padding_quirk))
        height, width = trace_sizes(list(steps), height, width)[-1]
        entries.append(PlanEntry(op, steps))
    return tuple(entries)


def first_resize(height: int, width: int, crop: int, preresized: bool) -> Resize | None:
    if preresized:
        return None
    return Resize(*resized_shape(height, width, resize_size(crop)), Interp.BILINEAR)


def train_plan(
    rng: np.random.Generator, config: RSAConfig, height: int, width: int, crop: int, preresized: bool = False
) -> Plan:
    """Training: first resize, RSA, then a crop of `crop` x `crop` at a uniform position."""
    resize = first_resize(height, width, crop, preresized)
    h, w = resize.out_size(height, width) if resize else (height, width)
    entries = draw_rsa(rng, config, h, w, crop)
    h, w = trace_sizes([s for e in entries for s in e.steps], h, w)[-1]
    top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    return Plan(height, width, resize, entries, Crop(top, left, crop, crop))


def eval_plan(height: int, width: int, crop: int, preresized: bool = False) -> Plan:
    """Evaluation: first resize, then the centre crop (SPEC section 2)."""
    resize = first_resize(height, width, crop, preresized)
    h, w = resize.out_size(height, width) if resize else (height, width)
    top, left = center_crop_offsets(h, w, crop)
    return Plan(height, width, resize, (), Crop(top, left, crop, crop))
