"""The `commfor-fast` command line: a thin typer layer over the library.

Each command fills one settings dataclass and makes one library call; the library
never imports typer. `UserError` becomes one `error: ...` line and exit code 2.
Heavy modules (torch, DALI, datasets) are imported inside the commands so that
`--help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from commfor_fast import __version__
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.errors import UserError
from commfor_fast.fileio import OUTPUT_ERRNOS, output_error
from commfor_fast.settings import DemoSettings, EvalSettings, TrainSettings

app = typer.Typer(
    name="commfor-fast",
    help="Community Forensics fake-image detectors: convert data to shards, train, evaluate, predict, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
T = TypeVar("T")
TRUST_HELP = ("Allow full unpickling of --ckpt when it holds more than tensors. DANGEROUS: unpickling runs any "
              "code stored in the file, so use it only for checkpoints from a source you trust.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"commfor-fast {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Community Forensics, fed at GPU speed."""


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="Image files and/or folders (searched recursively).", show_default=False)],
    ckpt: Annotated[Optional[Path], typer.Option("--ckpt", "--ckpt-path", help="Local checkpoint: from training, the original's, or a plain state dict.")] = None,
    hf_model: Annotated[Optional[str], typer.Option("--hf-model", "--hf-model-repo", help="Hugging Face model id, e.g. OwensLab/commfor-model-384.")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=TRUST_HELP)] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    out: Annotated[Optional[Path], typer.Option(help="Write the results to this .csv or .json file instead of printing a table.")] = None,
    workers: Annotated[int, typer.Option("--num-threads", "--workers", help="Threads decoding images.")] = 4,
) -> None:
    """Score images: P(fake) per image from a trained detector (--ckpt or --hf-model)."""
    from commfor_fast.predict import PredictSettings, format_predictions
    from commfor_fast.predict import predict as run_predict

    settings = PredictSettings(paths=paths, ckpt=ckpt, hf_model=hf_model, trust_checkpoint=trust_checkpoint,
                               device=device, batch_size=batch_size, out=out, workers=workers)
    predictions = call(run_predict, settings)
    if out is None:
        typer.echo(format_predictions(predictions))
    else:
        failed = sum(p.error is not None for p in predictions)
        typer.echo(f"wrote {len(predictions)} predictions to {out}"
                   + (f" ({failed} file(s) could not be read: see their error column)" if failed else ""), err=True)


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="A `commfor-fast convert` output folder (trains on train/ or all/, validates on val/).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, final model, metrics.jsonl. Resumes from the newest checkpoint there.", show_default=False)],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda (this rank's GPU) or cuda:N.")] = TrainSettings.device,
    loader: Annotated[str, typer.Option(help="dali, or reference (the PIL executor, to compare).")] = TrainSettings.loader,
    num_threads: Annotated[int, typer.Option("--num-threads", "--cpus-per-gpu", help="Loader CPU threads per process.")] = TrainSettings.num_threads,
    batches_per_run: Annotated[int, typer.Option(help="DALI: training batches per pipeline run (shares DALI's fixed cost per run).")] = TrainSettings.batches_per_run,
    model_size: Annotated[str, typer.Option(help="small or tiny.")] = TrainSettings.model_size,
    input_size: Annotated[int, typer.Option(help="384 or 224.")] = TrainSettings.input_size,
    patch_size: Annotated[int, typer.Option(help="16 or 32.")] = TrainSettings.patch_size,
    freeze_backbone: Annotated[bool, typer.Option("--freeze-backbone", help="Train only the head.")] = False,
    pretrained: Annotated[bool, typer.Option(help="Start from timm's ImageNet weights (needs the Hub or a cache).")] = True,
    pretrained_path: Annotated[Optional[Path], typer.Option(help="Local timm weights file instead of the download.")] = None,
    ckpt: Annotated[Optional[Path], typer.Option("--ckpt", "--ckpt-path", help="Start from this checkpoint: a full resume for ours, the weights of the original's or of a plain state dict.")] = None,
    only_load_model_weights: Annotated[bool, typer.Option("--only-load-model-weights", help="With --ckpt: take only the weights, with a new optimizer and schedule.")] = False,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=TRUST_HELP)] = False,
    batch_size: Annotated[int, typer.Option(help="Images per process per step.")] = TrainSettings.batch_size,
    epochs: Annotated[int, typer.Option(help="Epochs (one epoch: every training image about once).")] = TrainSettings.epochs,
    train_itrs: Annotated[Optional[int], typer.Option(help="Iterations; overrides --epochs when > 0.")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = TrainSettings.lr,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = TrainSettings.weight_decay,
    warmup_epochs: Annotated[float, typer.Option(help="Linear warmup length in epochs (fractions allowed).")] = TrainSettings.warmup_epochs,
    warmup_frac: Annotated[float, typer.Option(help="Warmup as a fraction of all iterations; overrides --warmup-epochs when > 0.")] = TrainSettings.warmup_frac,
    no_lr_schedule: Annotated[bool, typer.Option("--no-lr-schedule", help="Constant lr after warmup (no cosine decay).")] = False,
    lr_schedule: Annotated[str, typer.Option(help="original: the cosine stepped as the original steps it (each iteration after warmup and again at each epoch end; it need not end at lr x 1e-3); per-iteration: one step per iteration, ending exactly at lr x 1e-3.")] = TrainSettings.lr_schedule,
    grad_clip: Annotated[float, typer.Option(help="Gradient norm clipping.")] = TrainSettings.grad_clip,
    use_amp: Annotated[bool, typer.Option("--use-amp", help="Mixed precision.")] = False,
    amp_dtype: Annotated[str, typer.Option(help="fp16 (with a grad scaler) or bf16.")] = TrainSettings.amp_dtype,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the data order, augmentation and initialisation.")] = TrainSettings.seed,
    rsa_ops: Annotated[str, typer.Option(help="Comma list of RandomStateAugmentation ops.")] = TrainSettings.rsa_ops,
    rsa_min_num_ops: Annotated[str, typer.Option(help="Minimum count per op: one number or a comma list.")] = TrainSettings.rsa_min_num_ops,
    rsa_max_num_ops: Annotated[str, typer.Option(help="Maximum count per op: one number or a comma list.")] = TrainSettings.rsa_max_num_ops,
    fix_padding_quirk: Annotated[bool, typer.Option("--fix-padding-quirk", help="RandomPadding keeps the image's shape (the original transposes non-square images).")] = False,
    verify_hashes: Annotated[bool, typer.Option("--verify-hashes", help="Check every shard's sha256 against the manifest before training (sizes and indexes are always checked).")] = False,
    ckpt_every: Annotated[int, typer.Option(help="Also checkpoint every N iterations (0: at epoch ends only).")] = TrainSettings.ckpt_every,
    ckpt_keep_count: Annotated[int, typer.Option(help="Newest checkpoints to keep (-1: all, 0: write none).")] = TrainSettings.ckpt_keep_count,
    resume: Annotated[bool, typer.Option("--resume", help="Fail unless --out holds a checkpoint to resume from (resuming itself is automatic).")] = False,
    log_every: Annotated[int, typer.Option(help="Console/log line every N iterations.")] = TrainSettings.log_every,
    validate: Annotated[bool, typer.Option(help="Validate on val/ after every epoch.")] = True,
    synthetic_data: Annotated[bool, typer.Option("--synthetic-data", help="Benchmark the bound: a fixed batch on the device replaces the data pipeline.")] = False,
    wandb_project: Annotated[Optional[str], typer.Option(help="Log to this Weights & Biases project (API key from WANDB_API_KEY, never a flag).")] = None,
    wandb_run_name: Annotated[Optional[str], typer.Option(help="Weights & Biases run name.")] = None,
) -> None:
    """Train a detector on converted shards (single process, or under torchrun)."""
    from commfor_fast.train import train as run_train

    settings = TrainSettings(
        data=data, out=out, device=device, loader=loader, num_threads=num_threads, batches_per_run=batches_per_run,
        model_size=model_size,
        input_size=input_size, patch_size=patch_size, freeze_backbone=freeze_backbone, pretrained=pretrained,
        pretrained_path=pretrained_path, ckpt=ckpt, only_load_model_weights=only_load_model_weights,
        trust_checkpoint=trust_checkpoint,
        batch_size=batch_size, epochs=epochs, train_itrs=train_itrs, lr=lr, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, warmup_frac=warmup_frac, no_lr_schedule=no_lr_schedule, lr_schedule=lr_schedule,
        grad_clip=grad_clip, use_amp=use_amp, amp_dtype=amp_dtype, compile=compile, seed=seed, rsa_ops=rsa_ops,
        rsa_min_num_ops=rsa_min_num_ops, rsa_max_num_ops=rsa_max_num_ops, fix_padding_quirk=fix_padding_quirk,
        verify_hashes=verify_hashes, ckpt_every=ckpt_every, ckpt_keep_count=ckpt_keep_count, resume=resume,
        log_every=log_every, validate=validate, synthetic_data=synthetic_data, wandb_project=wandb_project,
        wandb_run_name=wandb_run_name,
    )
    call(run_train, settings)


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Option(help="A `commfor-fast convert` output folder.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Report folder: report.json, per_generator.csv, per_generator.png.", show_default=False)],
    ckpt: Annotated[Optional[Path], typer.Option("--ckpt", "--ckpt-path", help="Local checkpoint (ours or the original's).")] = None,
    hf_model: Annotated[Optional[str], typer.Option("--hf-model", "--hf-model-repo", help="Hugging Face model id, e.g. OwensLab/commfor-model-384.")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help=TRUST_HELP)] = False,
    sets: Annotated[Optional[str], typer.Option(help="Comma list of sets to score (default: all of them).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda (this rank's GPU) or cuda:N.")] = EvalSettings.device,
    batch_size: Annotated[int, typer.Option(help="Images per process per batch.")] = EvalSettings.batch_size,
    loader: Annotated[str, typer.Option(help="dali or reference.")] = EvalSettings.loader,
    num_threads: Annotated[int, typer.Option("--num-threads", "--cpus-per-gpu", help="Loader CPU threads per process.")] = EvalSettings.num_threads,
    use_amp: Annotated[bool, typer.Option("--use-amp", help="Mixed precision.")] = False,
    amp_dtype: Annotated[str, typer.Option(help="fp16 or bf16.")] = EvalSettings.amp_dtype,
    save_scores: Annotated[bool, typer.Option("--save-scores", help="Also write every image's key, generator, label and score.")] = False,
    scores_format: Annotated[str, typer.Option(help="parquet or csv.")] = EvalSettings.scores_format,
) -> None:
    """Evaluate a detector on converted shards: overall and per-generator accuracy, AP, AUC."""
    from commfor_fast.evaluate import evaluate_shards

    settings = EvalSettings(data=data, out=out, ckpt=ckpt, hf_model=hf_model, trust_checkpoint=trust_checkpoint,
                            sets=sets, device=device,
                            batch_size=batch_size, loader=loader, num_threads=num_threads, use_amp=use_amp,
                            amp_dtype=amp_dtype, save_scores=save_scores, scores_format=scores_format)
    call(evaluate_shards, settings)


@app.command()
def convert(
    out: Annotated[Path, typer.Option(help="Output folder: <set>/shard-*.tar (+ .idx), parts/, plan.json, manifest.json (written last). Rerun the same command to resume.", show_default=False)],
    hf_repo: Annotated[Optional[str], typer.Option(help="Hub dataset id (e.g. OwensLab/CommunityForensics), a local folder laid out like the hub repo, or parquet file(s) (a path or a quoted glob).", show_default=False)] = None,
    hf_split: Annotated[Optional[str], typer.Option(help="Split(s) joined with '+', e.g. Systematic+Manual (full set) or train (Small set); optional when the repo has one split.", show_default=False)] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Hugging Face cache for hub downloads (only README.md and the chosen splits' parquet files are fetched).", show_default=False)] = None,
    folder: Annotated[Optional[list[Path]], typer.Option("--folder", help="Local data ROOT laid out as ROOT/<generator or dataset>/<label dir>/<image> (repeatable).", show_default=False)] = None,
    labels: Annotated[str, typer.Option(help="Label folder names and their labels: exactly two, 0 = real and 1 = fake.")] = ConvertSettings.labels,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete a conversion made with other settings in --out and start again.")] = False,
    val_frac: Annotated[float, typer.Option(help="Share of samples in the val set (0: one set, `all`).")] = ConvertSettings.val_frac,
    seed: Annotated[int, typer.Option(help="Seed of balancing, the split and the shuffles.")] = ConvertSettings.seed,
    balance: Annotated[bool, typer.Option(help="When HF and local data are combined, limit local reals to (all fakes - HF reals), water-filling over datasets.")] = ConvertSettings.balance,
    shard_size: Annotated[str, typer.Option(help="Target size of a tar: 512MB, 1GB, 2GiB or bytes.")] = ConvertSettings.shard_size,
    partition_size: Annotated[str, typer.Option(help="Input bytes per unit of work and of resume; each worker holds about 3 x this in memory (lower it with --preresize of small JPEGs).")] = ConvertSettings.partition_size,
    preresize: Annotated[Optional[int], typer.Option(help="Store raw RGB pixels resized to this shorter side (440 for crop 384, 256 for crop 224) instead of the encoded image.", show_default=False)] = None,
    max_pixels: Annotated[int, typer.Option(help="Reject larger images as decompression bombs.")] = ConvertSettings.max_pixels,
    check: Annotated[str, typer.Option(help="full: decode all compressed data of every image (PNG inflated, JPEG entropy-decoded; PIL decodes the rest); fast: check only the file structure of verbatim PNG/JPEG (faster, misses damage inside compressed data).")] = ConvertSettings.check,
    dali_check: Annotated[bool, typer.Option("--dali-check", help="Also decode every verbatim image with DALI's CPU decoder and reject what it refuses (about one more full decode).")] = False,
    workers: Annotated[int, typer.Option(help="Conversion processes (0: one per CPU core, as many as memory allows); each holds about 3 x --partition-size in memory.")] = ConvertSettings.workers,
    num_nodes: Annotated[int, typer.Option(help="Machines converting into the same --out (shared storage).")] = ConvertSettings.num_nodes,
    node_rank: Annotated[int, typer.Option(help="This machine's rank: it converts partitions p with p % num_nodes == node_rank.")] = ConvertSettings.node_rank,
    verify_hashes: Annotated[bool, typer.Option("--verify-hashes", help="On resume, re-hash finished shards and their source files (sha256) instead of checking names, sizes and indexes only: damaged shards and sources edited in place are converted again (partitions first converted without this flag are redone once).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress or summary lines.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Scan and plan only: print the sources found, balancing, the split, the partitions and the expected output size; write nothing.")] = ConvertSettings.dry_run,
) -> None:
    """Convert Hugging Face parquet files and/or local image folders into WebDataset shards."""
    from commfor_fast.convert.run import convert as run_convert

    settings = ConvertSettings(
        hf_repo=hf_repo, hf_split=hf_split, cache_dir=cache_dir, folders=list(folder or []), labels=labels,
        out=out, overwrite=overwrite, val_frac=val_frac, seed=seed, balance=balance, shard_size=shard_size,
        partition_size=partition_size, preresize=preresize, max_pixels=max_pixels, check=check,
        dali_check=dali_check, workers=workers, num_nodes=num_nodes, node_rank=node_rank,
        verify_hashes=verify_hashes, quiet=quiet, dry_run=dry_run,
    )
    call(run_convert, settings)


@app.command("inspect")
def inspect_data(
    data: Annotated[Path, typer.Argument(help="A convert output folder.", show_default=False)],
) -> None:
    """Show what converted shards hold: sets, counts per generator, label and format, format-bias warnings, sizes."""
    from commfor_fast.inspection import describe

    typer.echo("\n".join(call(describe, data)))


@app.command()
def verify(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="A `commfor-fast convert` output folder.", show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines.")] = False,
) -> None:
    """Check every shard against manifest.json: sha256, index, and each sample's label and ids. Exit 1 if any is damaged."""
    from commfor_fast.verify import verify_shards

    checked, damaged = call(verify_shards, data, not quiet)
    for damage in damaged:
        typer.echo(f"damaged: {data / damage.shard}: {damage.problem}")
    if damaged:
        typer.echo(f"{len(damaged)} of {checked} shards are damaged; re-run the convert command recorded in "
                   f"{data / 'manifest.json'} to redo them", err=True)
        raise typer.Exit(1)
    typer.echo(f"{checked} shards intact", err=True)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes its data, shards, run and report.")] = DemoSettings.out,
    device: Annotated[str, typer.Option(help="cpu, cuda (or gpu) or auto.")] = DemoSettings.device,
    fakes_per_generator: Annotated[int, typer.Option(help="Training images per generator (reals matched in number).")] = DemoSettings.fakes_per_generator,
    test_per_source: Annotated[int, typer.Option(help="Held-out images per source.")] = DemoSettings.test_per_source,
    model_size: Annotated[str, typer.Option(help="small or tiny.")] = DemoSettings.model_size,
    input_size: Annotated[int, typer.Option(help="224 or 384.")] = DemoSettings.input_size,
    patch_size: Annotated[int, typer.Option(help="16 or 32.")] = DemoSettings.patch_size,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = DemoSettings.batch_size,
    train_itrs: Annotated[int, typer.Option(help="Training iterations.")] = DemoSettings.train_itrs,
    lr: Annotated[float, typer.Option(help="Peak learning rate (training from scratch).")] = DemoSettings.lr,
    num_threads: Annotated[int, typer.Option(help="Loader CPU threads.")] = DemoSettings.num_threads,
    loader: Annotated[str, typer.Option(help="dali or reference.")] = DemoSettings.loader,
    seed: Annotated[int, typer.Option(help="Seed of the data, the split and training.")] = DemoSettings.seed,
) -> None:
    """Run the whole chain on built-in synthetic data: generate, convert, train, evaluate."""
    from commfor_fast.demo.run import run_demo

    call(run_demo, DemoSettings(out=out, device=device, fakes_per_generator=fakes_per_generator,
                                test_per_source=test_per_source, model_size=model_size, input_size=input_size,
                                patch_size=patch_size, batch_size=batch_size, train_itrs=train_itrs, lr=lr,
                                num_threads=num_threads, loader=loader, seed=seed))


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Folder for the benchmark data, BENCH.md and bench.png.")] = Path("bench-output"),
    quick: Annotated[bool, typer.Option("--quick", help="A reduced set: a few minutes on 2 CPU cores.")] = False,
    shards: Annotated[Optional[list[Path]], typer.Option(help="Benchmark these convert outputs instead of generated data (repeatable).")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads per engine.")] = 2,
) -> None:
    """Benchmark the converter, the pipelines (reference, DALI CPU, DALI GPU) and training."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    if not (benchmarks / "run_all.py").is_file():
        typer.echo(f"error: the benchmarks live in the source checkout ({benchmarks} is missing); "
                   "run this command from a clone of the repository (pip install -e .)", err=True)
        raise typer.Exit(2)
    sys.path.insert(0, str(benchmarks))
    from run_all import run_all

    call(run_all, out, quick, shards or None, threads)


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one library call; a `UserError` (or a write that failed for lack of space or
    permission) becomes `error: ...` on stderr and exit code 2, Ctrl-C one line and exit
    code 130 (the shell's code for SIGINT)."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            raise
        typer.echo(f"error: {output_error(exc.filename, exc)}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command to go on (convert and train resume where they "
                   "stopped)", err=True)
        raise typer.Exit(130) from None


def main() -> None:
    """Console-script entry point."""
    app()
