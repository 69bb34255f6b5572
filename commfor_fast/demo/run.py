"""`commfor-fast demo`: the whole chain on built-in synthetic data, offline, in minutes.

1. Render the demo images (`demo.synth`): two camera-like real sources and five
   generators with real kinds of trace. The training part is written the way real
   users hold data: generators and one real source as a Hugging Face dataset replica
   (splits Systematic and Manual, the hub's parquet schema), the other real source
   as a local folder tree; held-out images of every source form a PublicEval split.
2. Convert both with `commfor-fast convert` (balancing local reals, a validation set).
3. Train a small ViT from scratch with the DALI pipeline and the full
   RandomStateAugmentation (CPU backend unless --device cuda).
4. Evaluate on PublicEval and print the per-generator report.

The same command with `--device cuda` and larger sizes is a smoke test on a GPU box;
`--quick` (`settings.DEMO_QUICK`) is the chain in a few minutes.

A rerun with the same settings resumes: the settings are recorded in `demo.json`
first, the rendered data is kept once complete, convert finds its shards finished and
training goes on from its newest checkpoint (only the report is made again). Other
settings, another shard format, or an output folder without the record, start afresh.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from commfor_fast.demo import synth
from commfor_fast.demo.hf_replica import write_hf_replica
from commfor_fast.errors import UserError
from commfor_fast.metrics import EvalReport
from commfor_fast.progress import Progress
from commfor_fast.settings import DEMO_QUICK, DemoSettings

# Which generators go to which hub split (like the real dataset's subsets).
SPLITS = {"Systematic": ("demo/gan-tconv", "demo/gan-upsample-nn", "demo/latdiff-vae"),
          "Manual": ("demo/pixdiff-cascade", "demo/vq-autoregressive")}
HF_REAL, FOLDER_REAL = "demo-scans", "demo-photos"
RECORD = "demo.json"  # the settings of the demo in an output folder, written before its work
OUTPUTS = ("data", "shards", "test-shards", "run", "report")  # what the demo writes in it
DATA_DONE = "complete"  # in data/: written once every image is
# Settings that do not change what the demo writes (quick: its sizes are recorded): a rerun with other values resumes.
NOT_RECORDED = ("out", "device", "quick")


def _row(img: synth.DemoImage, split: str) -> dict:
    """A hub-schema row for one demo image."""
    return {
        "image_name": img.file_name, "format": img.format, "resolution": f"[{img.width}, {img.height}]",
        "image_data": img.data, "model_name": img.name, "prompt": "",
        "subset": split if img.label else "real", "split": split, "label": img.label,
        "architecture": img.architecture,
    }


def write_demo_data(root: Path, fakes_per_generator: int, test_per_source: int, seed: int,
                    show_progress: bool = True) -> tuple[Path, Path]:
    """Render the demo images into an HF replica and a folder tree (with a progress bar
    or periodic lines on stderr); returns both roots."""
    n_reals = fakes_per_generator * len(synth.GENERATORS) // len(synth.REAL_SOURCES)
    total = (fakes_per_generator * len(synth.GENERATORS) + n_reals * len(synth.REAL_SOURCES)
             + test_per_source * len(synth.SOURCES))
    rows: dict[str, list[dict]] = {split: [] for split in (*SPLITS, "PublicEval")}
    folders = root / "folders"
    with Progress(total, "render", enabled=show_progress) as progress:
        for split, generators in SPLITS.items():
            for img in synth.generate(fakes_per_generator, seed, generators):
                rows[split].append(_row(img, split))
                progress.update()
        for img in synth.generate(n_reals, seed, [HF_REAL]):
            rows["Systematic"].append(_row(img, "Systematic"))
            progress.update()
        for img in synth.generate(n_reals, seed, [FOLDER_REAL]):
            path = folders / img.name / "real" / img.file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(img.data)
            progress.update()
        start = max(fakes_per_generator, n_reals)  # held-out images: indices after the training ones
        for img in synth.generate(test_per_source, seed, start=start):
            rows["PublicEval"].append(_row(img, "PublicEval"))
            progress.update()
    if show_progress:
        print(progress.line(), file=sys.stderr, flush=True)
    hf = write_hf_replica(root / "hf", rows, rows_per_file=200, row_group_size=50)
    return hf, folders


def quick_sized(settings: DemoSettings) -> DemoSettings:
    """`settings` with the sizes of `DEMO_QUICK` when `quick` is set (refused if one of them
    was changed too: which one should win is not clear)."""
    if not settings.quick:
        return settings
    defaults = DemoSettings()
    changed = [name for name in DEMO_QUICK if getattr(settings, name) != getattr(defaults, name)]
    if changed:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in changed)
        raise UserError(f"--quick sets {flags} itself; give either --quick or {flags}")
    return dataclasses.replace(settings, **DEMO_QUICK)


def _record(settings: DemoSettings) -> dict[str, Any]:
    """What decides the demo's outputs: its settings, and the shard format (a demo of an
    older format would train on again from shards converted anew, which resuming refuses)."""
    from commfor_fast.shards import FORMAT_VERSION

    return {**{k: v for k, v in dataclasses.asdict(settings).items() if k not in NOT_RECORDED},
            "shard_format": FORMAT_VERSION}


def prepare_out(out: Path, settings: DemoSettings) -> bool:
    """Keep the demo in `out` when it was made with these settings (returns True: resume);
    else remove its outputs, saying why, and record these settings (returns False)."""
    record = _record(settings)
    try:
        before = json.loads((out / RECORD).read_text())
    except (OSError, ValueError):
        before = None
    if before == record:
        return True
    if before is not None:
        changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in record.items() if before.get(k) != v)
        print(f"the demo in {out} was made with other settings ({changed}): starting afresh", flush=True)
    for name in OUTPUTS:
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return False


def run_demo(settings: DemoSettings) -> EvalReport:
    """Generate, convert, train, evaluate (resuming a demo with the same settings in
    `settings.out`); prints where everything went."""
    from commfor_fast.convert.run import convert
    from commfor_fast.convert.settings import ConvertSettings
    from commfor_fast.evaluate import evaluate_shards
    from commfor_fast.settings import EvalSettings, TrainSettings
    from commfor_fast.train import train

    settings = quick_sized(settings)
    out = Path(settings.out)
    resuming = prepare_out(out, settings)
    shutil.rmtree(out / "report", ignore_errors=True)  # the report is always made again
    started = time.perf_counter()
    data = out / "data"
    if resuming and (data / DATA_DONE).is_file():
        print(f"[1/4] the demo images in {data} are complete: kept", flush=True)
        hf, folders = data / "hf", data / "folders"
    else:
        print(f"[1/4] rendering demo images into {data}", flush=True)
        shutil.rmtree(data, ignore_errors=True)
        hf, folders = write_demo_data(data, settings.fakes_per_generator, settings.test_per_source, settings.seed)
        (data / DATA_DONE).write_text("")

    print("[2/4] converting: HF replica (Systematic+Manual) + local real folder -> train/val shards; "
          "PublicEval -> test shards", flush=True)
    convert(ConvertSettings(hf_repo=str(hf), hf_split="Systematic+Manual", folders=[folders], out=out / "shards",
                            val_frac=0.1, seed=settings.seed, shard_size="16MB", partition_size="64MB",
                            overwrite=True))
    convert(ConvertSettings(hf_repo=str(hf), hf_split="PublicEval", out=out / "test-shards", val_frac=0.0,
                            seed=settings.seed, shard_size="16MB", partition_size="64MB", overwrite=True))

    print(f"[3/4] training ViT-{settings.model_size}/{settings.patch_size} at {settings.input_size} from scratch "
          f"for {settings.train_itrs} iterations ({settings.loader} pipeline)", flush=True)
    run = out / "run"
    model = train(TrainSettings(
        data=out / "shards", out=run, device=settings.device, loader=settings.loader,
        num_threads=settings.num_threads, model_size=settings.model_size, input_size=settings.input_size,
        patch_size=settings.patch_size, pretrained=False, batch_size=settings.batch_size,
        train_itrs=settings.train_itrs, lr=settings.lr, warmup_frac=0.05, seed=settings.seed,
        log_every=25, ckpt_keep_count=1,
    ))

    print("[4/4] evaluating on the held-out PublicEval shards", flush=True)
    report = evaluate_shards(EvalSettings(
        data=out / "test-shards", out=out / "report", ckpt=model, device=settings.device,
        batch_size=settings.batch_size, loader=settings.loader, num_threads=settings.num_threads, save_scores=True,
    ))
    minutes = (time.perf_counter() - started) / 60
    print(f"\ndemo finished in {minutes:.1f} min: AP {report.ap:.3f} over {report.n} held-out images "
          f"(chance: {report.n_fake / report.n:.2f})")
    print(f"  chart:      {out / 'report' / 'per_generator.png'} (and .pdf)")
    print(f"  report:     {out / 'report' / 'report.json'}")
    print(f"  checkpoint: {model} (newest full checkpoint in {run})")
    return report
