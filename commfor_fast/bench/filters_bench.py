"""Resampling filters: how close DALI's resizes come to PIL's, on real photos and generated images.

Three measurements, each as the absolute difference to PIL in grey levels (all
channels), pooled and summarised as mean, 99th and 99.9th percentile and maximum:

1. RandomResizedCrop's resize. A box (aspect ratio 4/3, 3/4 or 1, one per image in
   turn) cut from the centre of an image is resized as RandomResizedCrop resizes it:
   its shorter side by `factor` (0.72-1.1: RSA's range, see `FACTORS`), the long side
   truncated as torchvision does. The box's shorter side is CROP / factor (CROP = 384)
   where the image holds it, else the largest that fits. For every PIL filter the
   augmentation draws (`reference.PIL_FILTERS`) and every DALI filter (NN, linear,
   cubic, Lanczos-3, triangular, Gaussian), antialias on and off, the differences are
   pooled as shrinking (DALI's `min_filter`), identity and enlarging (`mag_filter`).
   Per PIL filter and antialias setting (one flag per DALI resize operator) the closest
   min_filter and mag_filter are chosen by the 99.9th percentile pooled over every
   image and confirmed as one resize; the stand-ins the training graph uses
   (`slots.DALI_FILTERS`, antialias on) are reported per image set.
2. PIL's box filter built from DALI operators (`resampling.box_from_regions`): exact in exact
   arithmetic for factors above 1/2, measured against PIL like the single filters.
3. The robustness perturbation `resize=f` (`perturb.py`; f = 0.1 to 0.75 on whole
   images) in DALI against its PIL definition, alone and through the evaluation chain
   (first resize to 440, centre crop 384): as `perturb.py` runs it (renormalising the
   downscale at the borders as PIL does, `resampling.resize_renormalised`) and with
   DALI's own downscale, which repeats the border pixels instead.

Image sets (`--quick`: fewer of each):
- photos: real photographs that ship with scikit-image (its `data` folder: astronaut,
  chelsea, coffee, motorcycle, rocket, Hubble deep field, retina, and the greyscale
  camera, brick, grass, gravel and moon as RGB); `--photos DIR` takes every image in
  DIR instead. Install scikit-image anywhere on `PYTHONPATH` (only its files are read).
- generated: the demo's five generators' traces (`demo.synth`), two seeds each.
- synthetic: the demo's camera-like photos and scans, two seeds each.

    python -m commfor_fast.bench.filters_bench [--quick] [--photos DIR] [--out bench-output/filters.json]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from PIL import Image

from commfor_fast.bench.common import machine, markdown_table
from commfor_fast.demo import synth
from commfor_fast.imageio import SOURCE_EXTENSIONS, resized_shape
from commfor_fast.pipelines.ops import Interp
from commfor_fast.pipelines.perturb import GraphInputs, apply_dali, apply_reference, downscaled_size, \
    parse_perturbations
from commfor_fast.pipelines.plan import eval_plan
from commfor_fast.pipelines.reference import PIL_FILTERS, eval_image
from commfor_fast.pipelines.resampling import box_from_regions, box_regions
from commfor_fast.pipelines.slots import DALI_FILTERS as DALI_FILTERS_USED

DALI_FILTERS = ("INTERP_NN", "INTERP_LINEAR", "INTERP_CUBIC", "INTERP_LANCZOS3", "INTERP_TRIANGULAR",
                "INTERP_GAUSSIAN")  # indexed by DALI's DALIInterpType values (slots.DALI_NN, ...)
BUILT_BOX = "NN pair per axis (built)"
SHRINK, IDENTITY, ENLARGE = "shrink", "identity", "enlarge"
POOLS = (SHRINK, IDENTITY, ENLARGE)
MIN_POOLS, MAG_POOLS = (SHRINK,), (IDENTITY, ENLARGE)  # which pools each DALI filter argument decides
PHOTOS, GENERATED, SYNTHETIC, ALL = "photos", "generated", "synthetic", "all"
SETS = (PHOTOS, GENERATED, SYNTHETIC)
# scikit-image's real photographs (files of its data folder); the greyscale ones are used as RGB.
PHOTO_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg",
               "hubble_deep_field.jpg", "retina.jpg", "camera.png", "brick.png", "grass.png", "gravel.png",
               "moon.png")
CROP = 384
FACTORS = (0.72, 0.8, 0.87, 0.93, 0.98, 1.0, 1.03, 1.1)  # output / box shorter side
QUICK_FACTORS = (0.8, 0.93, 1.0, 1.03)
ASPECTS = (4 / 3, 3 / 4, 1.0)  # box width / height, one per image in turn
IMAGE_SIDE = 720  # demo images: fit the largest box, CROP / 0.72 by 4/3 of that; a multiple of 16
RESIZE_FACTORS = (0.1, 0.25, 0.5, 0.75)  # robustness `resize=f` levels measured
QUICK_RESIZE_FACTORS = (0.1, 0.5)
GOAL_P999 = 4  # grey levels
THREADS = 2

STATS = ("mean", "p99", "p99.9", "max")
COLUMNS = ["PIL filter", "DALI filter", "antialias", *(f"{pool} {stat}" for pool in POOLS for stat in STATS)]
CHOICE_COLUMNS = ["PIL filter", "min_filter", "mag_filter", "antialias", *(f"{pool} p99.9" for pool in POOLS),
                  f"p99.9 <= {GOAL_P999}", "closest"]
SET_COLUMNS = ["PIL filter", "DALI", "set", *(f"{pool} {stat}" for pool in (SHRINK, ENLARGE) for stat in STATS)]
RESIZE_COLUMNS = ["factor", "DALI", "set", "stage", *STATS]


@dataclass(frozen=True)
class Case:
    """One RandomResizedCrop resize: a centred box of one image, its shorter side scaled by `factor`."""

    image: int
    set: str
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


@dataclass(frozen=True)
class TestImage:
    name: str
    set: str
    pixels: np.ndarray  # uint8 HWC RGB


def skimage_data_dir() -> Path | None:
    """scikit-image's data folder, found without importing the package (it needs more packages to import)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


def load_photos(folder: Path | None, quick: bool) -> list[TestImage]:
    """The real photos: scikit-image's (`PHOTO_FILES`), or every image in `folder`."""
    if folder is None:
        found = skimage_data_dir()
        paths = [found / name for name in PHOTO_FILES if (found / name).is_file()] if found else []
        where = "scikit-image's data folder (pip install scikit-image, anywhere on PYTHONPATH)"
    else:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in SOURCE_EXTENSIONS)
        where = f"--photos {folder}"
    if not paths:
        print(f"error: no photos found in {where}; install scikit-image or pass --photos DIR with real photos",
              file=sys.stderr)
        sys.exit(2)
    return [TestImage(p.name, PHOTOS, np.asarray(Image.open(p).convert("RGB"))) for p in paths[:3 if quick else None]]


def demo_images(quick: bool) -> list[TestImage]:
    """Generated (the demo generators' traces) and synthetic (the demo's reals) images, 720 x 720."""
    images = []
    for set_name, sources in ((GENERATED, synth.GENERATORS), (SYNTHETIC, synth.REAL_SOURCES)):
        for source in sources[:1] if quick else sources:
            for seed in (0,) if quick else (0, 1):
                pixels = synth.render_image(source, np.random.default_rng(seed), (IMAGE_SIDE, IMAGE_SIDE))
                images.append(TestImage(f"{source.name} seed {seed}", set_name, pixels))
    return images


def rrc_case(images: list[TestImage], image: int, factor: float, aspect: float) -> Case:
    """A box of this aspect ratio and shorter side CROP / factor (or the largest that fits),
    sized as RandomResizedCrop resizes it: shorter side x factor, long side truncated."""
    height, width = images[image].pixels.shape[:2]
    short = round(CROP / factor)
    long_over_short = max(aspect, 1 / aspect)
    short = min(short, int(min(height, width) if aspect == 1 else
                           min(height / long_over_short, width) if aspect < 1 else
                           min(height, width / long_over_short)))
    long = int(short * long_over_short)
    box = (short, long) if aspect >= 1 else (long, short)
    return Case(image, images[image].set, factor, box, resized_shape(*box, round(short * factor)))


def make_cases(images: list[TestImage], factors: tuple[float, ...]) -> list[Case]:
    """Every image at every factor, image i with aspect ratio ASPECTS[i % 3]."""
    return [rrc_case(images, i, f, ASPECTS[i % len(ASPECTS)]) for i in range(len(images)) for f in factors]


def crop_box(images: list[TestImage], case: Case) -> np.ndarray:
    """The case's box, from the centre of its image."""
    img = images[case.image].pixels
    top, left = (img.shape[0] - case.box[0]) // 2, (img.shape[1] - case.box[1]) // 2
    return np.ascontiguousarray(img[top:top + case.box[0], left:left + case.box[1]])


def pil_resize(boxes: list[np.ndarray], cases: list[Case], interp: Interp) -> list[np.ndarray]:
    """The boxes resized with PIL's filter for `interp`, as the reference executor does it."""
    return [np.asarray(Image.fromarray(box).resize(c.out[::-1], PIL_FILTERS[interp])) for box, c in zip(boxes, cases)]


def run_dali(graph: Callable[..., Any], feeds: dict[str, list[np.ndarray]], *graph_args: Any) -> list[list[np.ndarray]]:
    """Run `graph(*graph_args)` on DALI's CPU backend once over `feeds` (one batch); its outputs as arrays."""
    n = len(next(iter(feeds.values())))
    pipe = pipeline_def(graph, num_threads=THREADS, device_id=None)(*graph_args, batch_size=n)
    pipe.build()
    for name, data in feeds.items():
        pipe.feed_input(name, data)
    return [[np.array(out.at(i)) for i in range(n)] for out in pipe.run()]


def _resize_graph(choice: Choice):  # type: ignore[no-untyped-def]
    images = fn.external_source(name="images", layout="HWC")
    sizes = fn.external_source(name="sizes")
    return fn.resize(images, size=sizes, min_filter=getattr(types, choice.min_filter),
                     mag_filter=getattr(types, choice.mag_filter), antialias=choice.antialias)


def _box_graph():  # type: ignore[no-untyped-def]
    return box_from_regions(fn.external_source(name="images", layout="HWC"), fn.external_source(name="regions"),
                            fn.external_source(name="sizes"))


def _sizes(boxes: list[np.ndarray], cases: list[Case]) -> dict[str, list[np.ndarray]]:
    return {"images": boxes, "sizes": [np.array(c.out, np.float32) for c in cases]}


def _box_feeds(boxes: list[np.ndarray], cases: list[Case]) -> dict[str, list[np.ndarray]]:
    regions = box_regions(*np.array([(*b.shape[:2], *c.out) for b, c in zip(boxes, cases)]).T)
    return {**_sizes(boxes, cases), "regions": list(regions)}


def dali_resize(boxes: list[np.ndarray], cases: list[Case], choice: Choice | None) -> list[np.ndarray]:
    """The boxes resized by DALI's CPU backend with `choice`, or by the built box filter (None)."""
    if choice is None:
        return run_dali(_box_graph, _box_feeds(boxes, cases))[0]
    return run_dali(_resize_graph, _sizes(boxes, cases), choice)[0]


def diff_histograms(ours: list[np.ndarray], refs: list[np.ndarray], keys: list[str]) -> dict[str, np.ndarray]:
    """Per key, how many pixel channels differ by 0, 1, ..., 255 grey levels."""
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


def pooled(ours: list[np.ndarray], ref: list[np.ndarray], cases: list[Case]) -> dict[str, dict[str, np.ndarray]]:
    """Histograms by pool, for every set and for all images together: {set: {pool: histogram}}."""
    by_set = diff_histograms(ours, ref, [f"{c.set}/{c.pool}" for c in cases])
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, hist in by_set.items():
        set_name, pool = key.split("/")
        for name in (set_name, ALL):
            out.setdefault(name, {}).setdefault(pool, np.zeros(256, np.int64))
            out[name][pool] += hist
    return out


def stats_row(hists: dict[str, np.ndarray]) -> dict[str, Any]:
    """The statistics columns for one configuration's pools."""
    return {f"{pool} {stat}": value for pool, hist in hists.items() for stat, value in summarize(hist).items()}


def set_rows(interp: Interp, dali: str, by_set: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """One row per image set (and all together) of a configuration's differences."""
    return [{"PIL filter": interp.name, "DALI": dali, "set": name, **stats_row(by_set[name])}
            for name in (*SETS, ALL) if name in by_set]


def _rank(row: dict[str, Any], pools: tuple[str, ...]) -> tuple[float, ...]:
    """Closer first: by the worst pool's 99.9th percentile, then 99th, then mean (missing pools rank 0)."""
    return max(tuple(row.get(f"{pool} {stat}", 0) for stat in ("p99.9", "p99", "mean")) for pool in pools)


def choose(rows: list[dict[str, Any]], antialias: bool) -> Choice:
    """One PIL filter's closest min_filter and mag_filter with this antialias setting."""
    same = [r for r in rows if r["antialias"] == antialias]
    low = min(same, key=lambda r: _rank(r, MIN_POOLS))
    high = min(same, key=lambda r: _rank(r, MAG_POOLS))
    return Choice(low["DALI filter"], high["DALI filter"], antialias)


def describe(choice: Choice) -> str:
    """E.g. "GAUSSIAN/NN aa=on": min_filter / mag_filter, antialias."""
    low, high = (name.removeprefix("INTERP_") for name in (choice.min_filter, choice.mag_filter))
    return f"{low}/{high} aa={'on' if choice.antialias else 'off'}"


def measure_filters(images: list[TestImage], factors: tuple[float, ...]) -> dict[str, Any]:
    """Measurements 1 and 2 of the module docstring."""
    cases = make_cases(images, factors)
    boxes = [crop_box(images, c) for c in cases]
    refs = {interp: pil_resize(boxes, cases, interp) for interp in PIL_FILTERS}
    rows: list[dict[str, Any]] = []
    for name in DALI_FILTERS:
        for antialias in (True, False):
            ours = dali_resize(boxes, cases, Choice(name, name, antialias))
            rows += [{"PIL filter": interp.name, "DALI filter": name, "antialias": antialias,
                      **stats_row(pooled(ours, ref, cases)[ALL])} for interp, ref in refs.items()]
    rows.sort(key=lambda r: list(PIL_FILTERS).index(Interp[r["PIL filter"]]))
    chosen, by_set = [], []
    for interp, ref in refs.items():
        mine = [r for r in rows if r["PIL filter"] == interp.name]
        pair = []
        for antialias in (True, False):
            choice = choose(mine, antialias)
            hists = pooled(dali_resize(boxes, cases, choice), ref, cases)
            worst = max(summarize(h)["p99.9"] for h in hists[ALL].values())
            pair.append({"PIL filter": interp.name, **asdict(choice), **stats_row(hists[ALL]),
                         f"p99.9 <= {GOAL_P999}": worst <= GOAL_P999})
        closest = min(pair, key=lambda r: _rank(r, POOLS))
        chosen += [{**r, "closest": r is closest} for r in pair]
        used = graph_choice(interp)
        by_set += set_rows(interp, f"graph: {describe(used)}", pooled(dali_resize(boxes, cases, used), ref, cases))
    built = set_rows(Interp.BOX, BUILT_BOX, pooled(dali_resize(boxes, cases, None), refs[Interp.BOX], cases))
    return {"cases": [asdict(c) for c in cases], "rows": rows, "chosen": chosen, "by_set": by_set + built}


def graph_choice(interp: Interp) -> Choice:
    """The stand-in the training graph uses (`slots.DALI_FILTERS`; its resize always antialiases)."""
    shrink, enlarge = DALI_FILTERS_USED[interp]
    return Choice(DALI_FILTERS[shrink], DALI_FILTERS[enlarge], True)


# --------------------------------------------------------------------------- robustness resize


def _perturb_graph(factor: float, clamping: bool):  # type: ignore[no-untyped-def]
    """`resize=factor` as `perturb.py` runs it (renormalised), or with DALI's clamping
    downscale (`clamping`: what it ran before), then the evaluation chain."""
    images = fn.external_source(name="images", layout="HWC")
    ids = fn.external_source(name="ids", dtype=types.INT32)
    first, start, shape = (fn.external_source(name=n) for n in ("first", "start", "shape"))
    if clamping:
        linear = {"interp_type": types.INTERP_LINEAR, "antialias": True}
        small = fn.resize(images, size=fn.external_source(name="down"), **linear)
        out = fn.resize(small, size=fn.cast(ids[3:5], dtype=types.FLOAT), **linear)
    else:
        out = apply_dali(parse_perturbations([f"resize={factor}"])[-1], images, GraphInputs(ids, "cpu", 0))
    chain = fn.slice(fn.resize(out, size=first, interp_type=types.INTERP_LINEAR, antialias=True), start=start,
                     shape=shape, axes=[0, 1])
    return out, chain


def measure_robustness_resize(images: list[TestImage], factors: tuple[float, ...]) -> list[dict[str, Any]]:
    """Measurement 3: `resize=f` in DALI (renormalised, and clamping) against PIL, alone
    and through the evaluation chain, by image set."""
    rows = []
    pixels = [np.ascontiguousarray(t.pixels) for t in images]
    plans = [eval_plan(p.shape[0], p.shape[1], CROP) for p in pixels]
    for factor in factors:
        level = parse_perturbations([f"resize={factor}"])[-1]  # after `clean`
        refs = [apply_reference(level, p, 0, 0) for p in pixels]
        ref_chain = [eval_image(Image.fromarray(r), CROP) for r in refs]
        feeds = {
            "images": pixels,
            "ids": [np.array([0, 0, 0, *p.shape[:2]], np.int32) for p in pixels],
            "down": [np.array(downscaled_size(*p.shape[:2], factor), np.float32) for p in pixels],
            "first": [np.array(plan.resize.out_size(plan.height, plan.width), np.float32) for plan in plans],
            "start": [np.array([plan.crop.top, plan.crop.left], np.int32) for plan in plans],
            "shape": [np.array([CROP, CROP], np.int32) for _ in plans],
        }
        for clamping in (True, False):
            needed = {k: v for k, v in feeds.items() if clamping or k != "down"}
            out, chain = run_dali(_perturb_graph, needed, factor, clamping)
            keys = [t.set for t in images]
            for stage, ours, ref in (("resize=f", out, refs), ("+ eval chain", chain, ref_chain)):
                hists = diff_histograms(ours, ref, keys)
                hists[ALL] = sum(hists.values())
                rows += [{"factor": factor, "DALI": "clamping (before)" if clamping else "renormalised", "set": name,
                          "stage": stage, **summarize(hist)} for name, hist in hists.items()]
    return rows


def run(quick: bool, photos: Path | None) -> dict[str, Any]:
    """Every measurement of the module docstring."""
    start = time.perf_counter()
    images = load_photos(photos, quick) + demo_images(quick)
    filters = measure_filters(images, QUICK_FACTORS if quick else FACTORS)
    whole = [t for t in images if t.set != SYNTHETIC]
    resize = measure_robustness_resize(whole, QUICK_RESIZE_FACTORS if quick else RESIZE_FACTORS)
    return {"benchmark": "filters", "date": datetime.date.today().isoformat(), "machine": machine(),
            "quick": quick, "images": {t.name: [t.set, list(t.pixels.shape[:2])] for t in images},
            "goal_p99.9": GOAL_P999, **filters, "robustness_resize": resize,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="three photos, one generated and one synthetic "
                        "image, four factors")
    parser.add_argument("--photos", type=Path, help="a folder of real photos (default: scikit-image's)")
    parser.add_argument("--out", type=Path, default=Path("bench-output/filters.json"), help="JSON results file")
    args = parser.parse_args()
    result = run(args.quick, args.photos)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    factors = sorted({c["factor"] for c in result["cases"]})
    counts = {name: sum(s == name for s, _ in result["images"].values()) for name in SETS}
    print(f"# Resampling filters: DALI (CPU backend) vs PIL ({result['machine']}, {result['date']}, "
          f"{result['seconds']} s)\n")
    print(f"Absolute difference in grey levels; {', '.join(f'{n} {k}' for k, n in counts.items())} images "
          f"({', '.join(result['images'])}); RandomResizedCrop factors {', '.join(map(str, factors))}.\n")
    print(markdown_table(result["rows"], COLUMNS))
    print("\nClosest DALI configuration per PIL filter and antialias setting, chosen over all images "
          "(measured as one resize):\n")
    print(markdown_table(result["chosen"], CHOICE_COLUMNS))
    print(f"\nThe stand-ins the training graph uses (slots.DALI_FILTERS), and PIL's box built from DALI operators "
          f"({BUILT_BOX}), per image set:\n")
    print(markdown_table(result["by_set"], SET_COLUMNS))
    print("\nRobustness `resize=f` (down and back up; then the evaluation chain: shorter side 440, centre crop 384):\n")
    print(markdown_table(result["robustness_resize"], RESIZE_COLUMNS))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
