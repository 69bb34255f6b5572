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

The same command with `--device cuda` and larger sizes is a smoke test on a GPU box.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from commfor_fast.demo import synth
from commfor_fast.demo.hf_replica import write_hf_replica
from commfor_fast.metrics import EvalReport
from commfor_fast.progress import Progress
from commfor_fast.settings import DemoSettings

# Which generators go to which hub split (like the real dataset's subsets).
SPLITS = {"Systematic": ("demo/gan-tconv", "demo/gan-upsample-nn", "demo/latdiff-vae"),
          "Manual": ("demo/pixdiff-cascade", "demo/vq-autoregressive")}
HF_REAL, FOLDER_REAL = "demo-scans", "demo-photos"


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


def run_demo(settings: DemoSettings) -> EvalReport:
    """Generate, convert, train, evaluate; prints where everything went."""
    from commfor_fast.convert.run import convert
    from commfor_fast.convert.settings import ConvertSettings
    from commfor_fast.evaluate import evaluate_shards
    from commfor_fast.settings import EvalSettings, TrainSettings
    from commfor_fast.train import train

    out = Path(settings.out)
    for previous in (out / "run", out / "report"):  # a rerun trains and reports afresh
        shutil.rmtree(previous, ignore_errors=True)
    started = time.perf_counter()
    print(f"[1/4] rendering demo images into {out / 'data'}", flush=True)
    hf, folders = write_demo_data(out / "data", settings.fakes_per_generator, settings.test_per_source,
                                  settings.seed)

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
