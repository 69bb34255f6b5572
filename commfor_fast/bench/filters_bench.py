"""Resampling filters: how close DALI's resize comes to each PIL filter at RandomResizedCrop's scales.

RandomResizedCrop resizes a box (90-100% of an image whose shorter side is 385-472,
aspect ratio 3/4 to 4/3) so that its shorter side becomes C = 384, the long side
`int(C * long / short)`: a factor per axis of about 0.75 to 1.05. Each case here does
exactly that to a box cut from the centre of a demo image (`demo.synth`: camera-like
photos and scans and the five generators' traces, 720x720, two seeds each), for box
shorter sides of C / factor and aspect ratios 4/3, 3/4 and 1. For every PIL filter the
augmentation draws (`reference.PIL_FILTERS`) and every DALI filter (NN, linear, cubic,
Lanczos-3, triangular, Gaussian) with antialias on and off, it compares PIL's resize
with DALI's (CPU backend) and pools the absolute differences (grey levels, all
channels) over images and factors in three pools: shrinking (DALI's `min_filter`),
identity and enlarging (both `mag_filter`). It prints the mean, 99th and 99.9th
percentile and maximum of each pool. Then, per PIL filter and antialias setting (DALI
takes one antialias flag per resize operator, not per sample), it picks the
min_filter and the mag_filter with the lowest 99.9th percentile in their pools, runs
that pair once more as one resize to confirm it, marks the closer setting, and flags
where it misses the goal (99.9th percentile <= 4 grey levels).

    python -m commfor_fast.bench.filters_bench [--quick] [--out bench-output/filters.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from PIL import Image

from commfor_fast.bench.common import machine, markdown_table
from commfor_fast.demo import synth
from commfor_fast.imageio import resized_shape
from commfor_fast.pipelines.ops import Interp
from commfor_fast.pipelines.reference import PIL_FILTERS

DALI_FILTERS = ("INTERP_NN", "INTERP_LINEAR", "INTERP_CUBIC", "INTERP_LANCZOS3", "INTERP_TRIANGULAR",
                "INTERP_GAUSSIAN")
SHRINK, IDENTITY, ENLARGE = "shrink", "identity", "enlarge"
POOLS = (SHRINK, IDENTITY, ENLARGE)
MIN_POOLS, MAG_POOLS = (SHRINK,), (IDENTITY, ENLARGE)  # which pools each DALI filter argument decides
CROP = 384
FACTORS = (0.72, 0.8, 0.87, 0.93, 0.98, 1.0, 1.03, 1.1)  # CROP / box shorter side
QUICK_FACTORS = (0.8, 0.93, 1.0, 1.03)
ASPECTS = (4 / 3, 3 / 4, 1.0)  # box width / height, one per image in turn
IMAGE_SIDE = 720  # fits the largest box, CROP / 0.72 by 4/3 of that; a multiple of 16 for the generators
GOAL_P999 = 4  # grey levels
THREADS = 2

STATS = ("mean", "p99", "p99.9", "max")
COLUMNS = ["PIL filter", "DALI filter", "antialias", *(f"{pool} {stat}" for pool in POOLS for stat in STATS)]
CHOICE_COLUMNS = ["PIL filter", "min_filter", "mag_filter", "antialias", *(f"{pool} p99.9" for pool in POOLS),
                  f"p99.9 <= {GOAL_P999}", "closest"]


@dataclass(frozen=True)
class Case:
    """One RandomResizedCrop resize: a centred box of one image, its shorter side scaled to CROP."""

    image: int
    factor: float
    box: tuple[int, int]  # (height, width)
    out: tuple[int, int]

    @property
    def pool(self) -> str:
        return SHRINK if self.factor < 1 else IDENTITY if self.factor == 1 else ENLARGE


@dataclass(frozen=True)
class Choice:
    """A DALI resize configuration: filter when shrinking, filter otherwise, antialias."""

    min_filter: str
    mag_filter: str
    antialias: bool


def test_images(quick: bool) -> tuple[list[np.ndarray], list[str]]:
    """Demo images (uint8 HWC RGB) of every source, two seeds each (one real and one generator with --quick)."""
    sources = [synth.REAL_SOURCES[0], synth.GENERATORS[0]] if quick else [*synth.REAL_SOURCES, *synth.GENERATORS]
    images, names = [], []
    for source in sources:
        for seed in (0,) if quick else (0, 1):
            images.append(synth.render_image(source, np.random.default_rng(seed), (IMAGE_SIDE, IMAGE_SIDE)))
            names.append(f"{source.name} seed {seed}")
    return images, names


def rrc_case(image: int, factor: float, aspect: float) -> Case:
    """A box of shorter side CROP / factor and this aspect ratio, sized as RandomResizedCrop resizes it."""
    short = round(CROP / factor)
    long = round(short * max(aspect, 1 / aspect))
    box = (short, long) if aspect >= 1 else (long, short)
    return Case(image, factor, box, resized_shape(*box, CROP))


def make_cases(n_images: int, factors: tuple[float, ...]) -> list[Case]:
    """Every image at every factor, image i with aspect ratio ASPECTS[i % 3]."""
    return [rrc_case(i, f, ASPECTS[i % len(ASPECTS)]) for i in range(n_images) for f in factors]


def crop_box(images: list[np.ndarray], case: Case) -> np.ndarray:
    """The case's box, from the centre of its image."""
    img = images[case.image]
    top, left = (img.shape[0] - case.box[0]) // 2, (img.shape[1] - case.box[1]) // 2
    return np.ascontiguousarray(img[top:top + case.box[0], left:left + case.box[1]])


def pil_resize(boxes: list[np.ndarray], cases: list[Case], interp: Interp) -> list[np.ndarray]:
    """The boxes resized with PIL's filter for `interp`, as the reference executor does it."""
    return [np.asarray(Image.fromarray(box).resize(c.out[::-1], PIL_FILTERS[interp])) for box, c in zip(boxes, cases)]


@pipeline_def(num_threads=THREADS, device_id=None)
def _resize_pipeline(choice: Choice):  # type: ignore[no-untyped-def]
    images = fn.external_source(name="images", layout="HWC")
    sizes = fn.external_source(name="sizes")
    return fn.resize(images, size=sizes, min_filter=getattr(types, choice.min_filter),
                     mag_filter=getattr(types, choice.mag_filter), antialias=choice.antialias)


def dali_resize(boxes: list[np.ndarray], cases: list[Case], choice: Choice) -> list[np.ndarray]:
    """The boxes resized by DALI's CPU backend, all in one batch."""
    pipe = _resize_pipeline(choice, batch_size=len(cases))
    pipe.build()
    pipe.feed_input("images", boxes)
    pipe.feed_input("sizes", [np.array(c.out, np.float32) for c in cases])
    (out,) = pipe.run()
    return [np.array(out.at(i)) for i in range(len(cases))]


def diff_histograms(ours: list[np.ndarray], refs: list[np.ndarray], keys: list[str]) -> dict[str, np.ndarray]:
    """Per key (each image's pool or factor), how many pixel channels differ by 0, 1, ..., 255 grey levels."""
    hists: dict[str, np.ndarray] = {}
    for a, b, key in zip(ours, refs, keys):
        hists.setdefault(key, np.zeros(256, np.int64))
        hists[key] += np.bincount(np.abs(a.astype(np.int16) - b).ravel(), minlength=256)
    return hists


def summarize(hist: np.ndarray) -> dict[str, float | int]:
    """Mean, 99th and 99.9th percentile (the smallest level reaching that share) and maximum."""
    if not hist.any():
        return {}
    share = np.cumsum(hist) / hist.sum()
    return {"mean": float(hist @ np.arange(256) / hist.sum()), "p99": int(np.searchsorted(share, 0.99)),
            "p99.9": int(np.searchsorted(share, 0.999)), "max": int(np.flatnonzero(hist)[-1])}


def stats_row(interp: Interp, hists: dict[str, np.ndarray]) -> dict[str, Any]:
    """The table's statistics columns for one PIL filter's pools."""
    row: dict[str, Any] = {"PIL filter": interp.name}
    for pool, hist in hists.items():
        row.update({f"{pool} {stat}": value for stat, value in summarize(hist).items()})
    return row


def _rank(row: dict[str, Any], pools: tuple[str, ...]) -> tuple[float, ...]:
    """Closer first: by the worst pool's 99.9th percentile, then 99th, then mean (missing pools rank 0)."""
    return max(tuple(row.get(f"{pool} {stat}", 0) for stat in ("p99.9", "p99", "mean")) for pool in pools)


def choose(rows: list[dict[str, Any]], antialias: bool) -> Choice:
    """One PIL filter's closest min_filter and mag_filter with this antialias setting."""
    same = [r for r in rows if r["antialias"] == antialias]
    low = min(same, key=lambda r: _rank(r, MIN_POOLS))
    high = min(same, key=lambda r: _rank(r, MAG_POOLS))
    return Choice(low["DALI filter"], high["DALI filter"], antialias)


def confirm(boxes: list[np.ndarray], cases: list[Case], interp: Interp, ref: list[np.ndarray],
            choice: Choice) -> dict[str, Any]:
    """The choice measured as one resize (min_filter and mag_filter together), by pool and by factor."""
    ours = dali_resize(boxes, cases, choice)
    row = stats_row(interp, diff_histograms(ours, ref, [c.pool for c in cases]))
    by_factor = diff_histograms(ours, ref, [str(c.factor) for c in cases])
    worst = max(row.get(f"{pool} p99.9", 0) for pool in POOLS)
    return {**row, "min_filter": choice.min_filter, "mag_filter": choice.mag_filter, "antialias": choice.antialias,
            f"p99.9 <= {GOAL_P999}": worst <= GOAL_P999,
            **{f"p99.9 x{factor}": summarize(hist)["p99.9"] for factor, hist in by_factor.items()}}


def run(quick: bool) -> dict[str, Any]:
    """Measure every (PIL filter, DALI filter, antialias), choose per PIL filter and antialias setting
    (DALI's antialias is one flag per resize operator, not per sample), confirm each choice."""
    start = time.perf_counter()
    images, names = test_images(quick)
    cases = make_cases(len(images), QUICK_FACTORS if quick else FACTORS)
    boxes = [crop_box(images, c) for c in cases]
    refs = {interp: pil_resize(boxes, cases, interp) for interp in PIL_FILTERS}
    pools = [c.pool for c in cases]
    rows: list[dict[str, Any]] = []
    for name in DALI_FILTERS:
        for antialias in (True, False):
            ours = dali_resize(boxes, cases, Choice(name, name, antialias))
            rows += [{**stats_row(interp, diff_histograms(ours, ref, pools)), "DALI filter": name,
                      "antialias": antialias} for interp, ref in refs.items()]
    rows.sort(key=lambda r: list(PIL_FILTERS).index(Interp[r["PIL filter"]]))
    chosen = []
    for interp, ref in refs.items():
        mine = [r for r in rows if r["PIL filter"] == interp.name]
        pair = [confirm(boxes, cases, interp, ref, choose(mine, antialias)) for antialias in (True, False)]
        closest = min(pair, key=lambda r: _rank(r, POOLS))
        chosen += [{**r, "closest": r is closest} for r in pair]
    return {"benchmark": "filters", "date": datetime.date.today().isoformat(), "machine": machine(),
            "quick": quick, "images": names, "cases": [asdict(c) for c in cases], "goal_p99.9": GOAL_P999,
            "rows": rows, "chosen": chosen, "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two images and four factors")
    parser.add_argument("--out", type=Path, default=Path("bench-output/filters.json"), help="JSON results file")
    args = parser.parse_args()
    result = run(args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    factors = sorted({c["factor"] for c in result["cases"]})
    print(f"# Resampling filters: DALI vs PIL ({result['machine']}, {result['seconds']} s)\n")
    print(f"Absolute difference in grey levels over {len(result['images'])} images, factors (output / box "
          f"shorter side) {', '.join(map(str, factors))}.\n")
    print(markdown_table(result["rows"], COLUMNS))
    print("\nClosest DALI configuration per PIL filter and antialias setting (measured as one resize):\n")
    print(markdown_table(result["chosen"], CHOICE_COLUMNS))
    print("\nTheir 99.9th percentile per factor:\n")
    print(markdown_table(result["chosen"], ["PIL filter", "min_filter", "mag_filter", "antialias",
                                            *(f"p99.9 x{f}" for f in factors)]))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
