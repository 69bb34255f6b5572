"""The `commfor-fast` command line: a thin typer layer over the library.

Each command fills one settings dataclass and makes one library call; the library
never imports typer. Every default comes from the settings dataclasses (`_fill`
builds the settings from the command's parameters), never typed twice. Booleans are
`--flag/--no-flag` switches; choices are `Literal` types, checked at parse time.
`flags.py` reads the original's underscore spellings and answers its retired flags.
`UserError`, like any usage error, becomes one `error: ...` line and exit
code 2. Heavy modules (torch, DALI, datasets) are imported inside the commands so
that `--help` is instant.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from commfor_fast import __version__
from commfor_fast.console_summary import ALL_ROWS_UP_TO
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.errors import UserError
from commfor_fast.fileio import OUTPUT_ERRNOS, output_error
from commfor_fast.flags import FlagsGroup, command
from commfor_fast.settings import AMP_SPELLINGS, DEMO_QUICK, AmpDtype, BenchSettings, BoxFilter, CheckMode, \
    DemoSettings, EvalSettings, Loader, LRScheduleKind, ModelSize, PredictSettings, PushSettings, ScoresFormat, \
    TrainSettings

app = typer.Typer(
    cls=FlagsGroup,
    name="commfor-fast",
    help="Community Forensics fake-image detectors: convert data to shards, train, evaluate, predict, benchmark.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Plain click help: no `<bool>` markers after switches, no names or defaults cut with "...".
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)
T = TypeVar("T")
S = TypeVar("S")


def _fill(cls: type[S], values: dict[str, Any]) -> S:
    """An instance of the settings dataclass `cls` from a command's parameters (by field name)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in names})


def _amp_spelling(value: str) -> str:
    """`--amp-dtype`: torch's names (float16, bfloat16) read as fp16 and bf16."""
    return AMP_SPELLINGS.get(value, value)


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


EXECUTOR_HELP = ("DALI: a pipeline option NAME=VALUE, one flag each (pipelines/executor.py): source_workers (processes "
                 "preparing batches out of --num-threads; default half), source_prefetch, prefetch_queue_depth, "
                 "stream_policy, concurrency, resize_minibatch_size, hw_decoder_load; VALUE default keeps DALI's.")


@command(app)
def predict(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="Image files and/or folders (searched recursively).", show_default=False)],
    ckpt: Annotated[Optional[Path], typer.Option("--ckpt", "--ckpt-path", help="Local checkpoint: a .pt (from training, the original's, a state dict), a .safetensors file or a model folder (RUN/final).")] = PredictSettings.ckpt,
    hf_model: Annotated[Optional[str], typer.Option("--hf-model", "--hf-model-repo", help="Hugging Face model id or a save_pretrained folder, e.g. OwensLab/commfor-model-384.")] = PredictSettings.hf_model,
    trust_checkpoint: Annotated[bool, typer.Option(help=TRUST_HELP)] = PredictSettings.trust_checkpoint,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = PredictSettings.device,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = PredictSettings.batch_size,
    out: Annotated[Optional[Path], typer.Option(help="Write the results to this .csv or .jsonl file (row by row, as they come) or .json file (at the end) instead of printing a table.")] = PredictSettings.out,
    workers: Annotated[int, typer.Option("--num-threads", "--workers", help="Threads decoding images.")] = PredictSettings.workers,
    threshold: Annotated[float, typer.Option(help="Verdict 'fake' when P(fake) is above this.")] = PredictSettings.threshold,
) -> None:
    """Score images with a trained detector: logit, P(fake), verdict.

    The detector comes from --ckpt or --hf-model; every file gets a row, unreadable ones an error.

    Example:

    \b
        commfor-fast predict photo.jpg ./images --hf-model OwensLab/commfor-model-384 --out scores.csv
    """
    settings = _fill(PredictSettings, locals())
    from commfor_fast.predict import format_predictions
    from commfor_fast.predict import predict as run_predict

    predictions = call(run_predict, settings)
    if out is None:
        typer.echo(format_predictions(predictions))
    else:
        failed = sum(p.error is not None for p in predictions)
        typer.echo(f"wrote {len(predictions)} predictions to {out}"
                   + (f" ({failed} file(s) could not be read: see their error column)" if failed else ""), err=True)


@command(app)
def train(
    data: Annotated[Path, typer.Option(help="A `commfor-fast convert` output folder (trains on train/ or all/, validates on val/).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, final model, metrics.jsonl. Resumes from the newest checkpoint there.", show_default=False)],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda (this rank's GPU) or cuda:N.")] = TrainSettings.device,
    loader: Annotated[Loader, typer.Option(help="dali, or reference (the PIL executor, to compare).")] = TrainSettings.loader,
    num_threads: Annotated[int, typer.Option("--num-threads", "--cpus-per-gpu", help="Loader CPU threads per process.")] = TrainSettings.num_threads,
    executor: Annotated[Optional[list[str]], typer.Option(metavar="NAME=VALUE", help=EXECUTOR_HELP, show_default=False)] = TrainSettings.executor,
    batches_per_run: Annotated[int, typer.Option(help="DALI: training batches per pipeline run (shares DALI's fixed cost per run).")] = TrainSettings.batches_per_run,
    model_size: Annotated[ModelSize, typer.Option(help="small or tiny.")] = TrainSettings.model_size,
    input_size: Annotated[int, typer.Option(help="384 or 224.")] = TrainSettings.input_size,
    patch_size: Annotated[int, typer.Option(help="16 or 32.")] = TrainSettings.patch_size,
    freeze_backbone: Annotated[bool, typer.Option(help="Train only the head.")] = TrainSettings.freeze_backbone,
    pretrained: Annotated[bool, typer.Option(help="Start from timm's ImageNet weights (needs the Hub or a cache).")] = TrainSettings.pretrained,
    pretrained_path: Annotated[Optional[Path], typer.Option(help="Local timm ImageNet weights file instead of the download; every backbone tensor must fit.")] = TrainSettings.pretrained_path,
    hf_model: Annotated[Optional[str], typer.Option("--hf-model", "--hf-model-repo", help="Fine-tune a released detector: a Hugging Face model id (e.g. OwensLab/commfor-model-384) or a save_pretrained folder.")] = TrainSettings.hf_model,
    ckpt: Annotated[Optional[Path], typer.Option("--ckpt", "--ckpt-path", help="Start from this checkpoint: a full resume for ours, the weights of the original's or of a plain state dict.")] = TrainSettings.ckpt,
    only_load_model_weights: Annotated[bool, typer.Option(help="With --ckpt: take only the weights, with a new optimizer and schedule.")] = TrainSettings.only_load_model_weights,
    trust_checkpoint: Annotated[bool, typer.Option(help=TRUST_HELP)] = TrainSettings.trust_checkpoint,
    batch_size: Annotated[int, typer.Option(help="Images per process per step.")] = TrainSettings.batch_size,
    epochs: Annotated[int, typer.Option(help="Epochs (one epoch: every training image about once).")] = TrainSettings.epochs,
    train_itrs: Annotated[Optional[int], typer.Option(help="Iterations; overrides --epochs when > 0.")] = TrainSettings.train_itrs,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = TrainSettings.lr,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = TrainSettings.weight_decay,
    warmup_epochs: Annotated[float, typer.Option(help="Linear warmup length in epochs (fractions allowed).")] = TrainSettings.warmup_epochs,
    warmup_frac: Annotated[float, typer.Option(help="Warmup as a fraction of all iterations; overrides --warmup-epochs when > 0.")] = TrainSettings.warmup_frac,
    no_lr_schedule: Annotated[bool, typer.Option("--no-lr-schedule/--lr-decay", help="Constant lr after warmup (no cosine decay).")] = TrainSettings.no_lr_schedule,
    lr_schedule: Annotated[LRScheduleKind, typer.Option(help="original: the cosine stepped as the original steps it (each iteration after warmup and again at each epoch end; it need not end at lr x 1e-3); per-iteration: one step per iteration, ending exactly at lr x 1e-3.")] = TrainSettings.lr_schedule,
    grad_clip: Annotated[float, typer.Option(help="Gradient norm clipping.")] = TrainSettings.grad_clip,
    use_amp: Annotated[Optional[bool], typer.Option("--use-amp/--no-use-amp", help="Mixed precision with --amp-dtype. Default: on for CUDA (fp16 with a grad scaler: the original's recipe), off on the CPU.", show_default=False)] = TrainSettings.use_amp,
    amp_dtype: Annotated[AmpDtype, typer.Option(callback=_amp_spelling, help="fp16 (with a grad scaler) or bf16; float16 and bfloat16 are read as these.")] = TrainSettings.amp_dtype,
    compile: Annotated[bool, typer.Option(help="torch.compile the model.")] = TrainSettings.compile,
    seed: Annotated[int, typer.Option(help="Seed of the data order, augmentation and initialisation.")] = TrainSettings.seed,
    rsa_ops: Annotated[str, typer.Option(help="Comma list of RandomStateAugmentation ops.", show_default=TrainSettings.rsa_ops.replace(",", ", "))] = TrainSettings.rsa_ops,
    rsa_min_num_ops: Annotated[str, typer.Option(help="Minimum count per op: one number or a comma list.")] = TrainSettings.rsa_min_num_ops,
    rsa_max_num_ops: Annotated[str, typer.Option(help="Maximum count per op: one number or a comma list.")] = TrainSettings.rsa_max_num_ops,
    fix_padding_quirk: Annotated[bool, typer.Option(help="RandomPadding keeps the image's shape (the original transposes non-square images).")] = TrainSettings.fix_padding_quirk,
    box_filter: Annotated[BoxFilter, typer.Option(help="PIL's box filter in the DALI graph: built (PIL's result but at window-edge ties) or standin (one Gaussian resize: fewer operators, p99.9 37 grey levels off on photos).")] = TrainSettings.box_filter,
    verify_hashes: Annotated[bool, typer.Option(help="Check every shard's sha256 against the manifest before training (sizes and indexes are always checked).")] = TrainSettings.verify_hashes,
    ckpt_every: Annotated[int, typer.Option(help="Also checkpoint every N iterations (0: at epoch ends only).")] = TrainSettings.ckpt_every,
    ckpt_keep_count: Annotated[int, typer.Option(help="Newest checkpoints to keep (-1: all, 0: write none).")] = TrainSettings.ckpt_keep_count,
    resume: Annotated[bool, typer.Option(help="Fail unless --out holds a checkpoint to resume from (resuming itself is automatic).")] = TrainSettings.resume,
    allow_changed_settings: Annotated[bool, typer.Option(help="Resume although settings that shape the schedule or the data stream changed (each change is printed).")] = TrainSettings.allow_changed_settings,
    log_every: Annotated[int, typer.Option(help="Console/log line every N iterations.")] = TrainSettings.log_every,
    validate: Annotated[bool, typer.Option(help="Validate on val/ after every epoch.")] = TrainSettings.validate,
    synthetic_data: Annotated[bool, typer.Option(help="Benchmark the bound: a fixed batch on the device replaces the data pipeline.")] = TrainSettings.synthetic_data,
    wandb_project: Annotated[Optional[str], typer.Option(help="Log to this Weights & Biases project (API key from WANDB_API_KEY, never a flag).")] = TrainSettings.wandb_project,
    wandb_run_name: Annotated[Optional[str], typer.Option(help="Weights & Biases run name.")] = TrainSettings.wandb_run_name,
) -> None:
    """Train a detector on converted shards (one process, or torchrun).

    Example:

    \b
        commfor-fast train --data /data/commfor-train --out runs/vit-s16 --batch-size 128 --use-amp --amp-dtype bf16
    """
    settings = _fill(TrainSettings, locals())
    from commfor_fast.train import train as run_train

    call(run_train, settings)


@command(app, "eval")
def evaluate(
    data: Annotated[Path, typer.Option(help="A `commfor-fast convert` output folder.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Report folder: report.json, per_generator.csv, per_generator.png and .pdf.", show_default=False)],
    ckpt: Annotated[Optional[Path], typer.Option("--ckpt", "--ckpt-path", help="Local checkpoint: a .pt (ours, the original's, a state dict), a .safetensors file or a model folder (RUN/final).")] = EvalSettings.ckpt,
    hf_model: Annotated[Optional[str], typer.Option("--hf-model", "--hf-model-repo", help="Hugging Face model id or a save_pretrained folder, e.g. OwensLab/commfor-model-384.")] = EvalSettings.hf_model,
    trust_checkpoint: Annotated[bool, typer.Option(help=TRUST_HELP)] = EvalSettings.trust_checkpoint,
    sets: Annotated[Optional[str], typer.Option(help="Comma list of sets to score (default: all of them).")] = EvalSettings.sets,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda (this rank's GPU) or cuda:N.")] = EvalSettings.device,
    batch_size: Annotated[int, typer.Option(help="Images per process per batch.")] = EvalSettings.batch_size,
    loader: Annotated[Loader, typer.Option(help="dali or reference (the PIL executor).")] = EvalSettings.loader,
    num_threads: Annotated[int, typer.Option("--num-threads", "--cpus-per-gpu", help="Loader CPU threads per process.")] = EvalSettings.num_threads,
    executor: Annotated[Optional[list[str]], typer.Option(metavar="NAME=VALUE", help=EXECUTOR_HELP, show_default=False)] = EvalSettings.executor,
    use_amp: Annotated[bool, typer.Option(help="Mixed precision.")] = EvalSettings.use_amp,
    amp_dtype: Annotated[AmpDtype, typer.Option(callback=_amp_spelling, help="fp16 or bf16; float16 and bfloat16 are read as these.")] = EvalSettings.amp_dtype,
    save_scores: Annotated[bool, typer.Option(help="Also write every image's set, key, original name, source, generator, label, logit and score.")] = EvalSettings.save_scores,
    scores_format: Annotated[ScoresFormat, typer.Option(help="parquet or csv.")] = EvalSettings.scores_format,
    perturb: Annotated[Optional[list[str]], typer.Option("--perturb", metavar="FAMILY=LEVELS", help="Robustness: also score every image perturbed; one flag per family, FAMILY=L1,L2 (any number of levels): jpeg=Q (quality 1-100), blur=SIGMA (px), resize=F (downscale factor in (0, 1]), noise=SIGMA (grey levels); clean is always scored. Adds robustness.csv and a chart per family.", show_default=False)] = EvalSettings.perturb,
    perturb_seed: Annotated[int, typer.Option(help="Seed of the noise perturbation (per sample: the same on every rank and run).")] = EvalSettings.perturb_seed,
    threshold: Annotated[str, typer.Option(help="Fake when P(fake) is above this: a probability (0.5, the original's), or val@fpr=F: the threshold at which at most F of the val set's real images count as fake (the val set of --val-data, else of --data, left out of the report).")] = EvalSettings.threshold,
    val_data: Annotated[Optional[Path], typer.Option(help="With --threshold val@fpr=F: the convert output whose val set chooses the threshold (e.g. the training data's); default --data.", show_default=False)] = EvalSettings.val_data,
) -> None:
    """Evaluate a detector: overall and per-generator accuracy, AP, AUC; optionally under perturbations.

    Example:

    \b
        commfor-fast eval --data /data/commfor-publiceval --hf-model OwensLab/commfor-model-384 --out reports/publiceval
        commfor-fast eval --data /data/commfor-publiceval --hf-model OwensLab/commfor-model-384 --out reports/robust \\
            --perturb jpeg=95,75,50,30 --perturb blur=1,2,4 --perturb resize=0.75,0.5 --perturb noise=5,10
    """
    settings = _fill(EvalSettings, locals())
    from commfor_fast.evaluate import evaluate_shards

    call(evaluate_shards, settings)


@command(app)
def convert(
    out: Annotated[Path, typer.Option(help="Output folder: <set>/shard-*.tar (+ .idx), parts/, plan.json, manifest.json (written last). Rerun the same command to resume.", show_default=False)],
    hf_repo: Annotated[Optional[str], typer.Option(help="Hub dataset id (e.g. OwensLab/CommunityForensics), a local folder laid out like the hub repo, or parquet file(s) (a path or a quoted glob).", show_default=False)] = ConvertSettings.hf_repo,
    hf_split: Annotated[Optional[str], typer.Option(help="Split(s) joined with '+', e.g. Systematic+Manual (full set) or train (Small set); optional when the repo has one split.", show_default=False)] = ConvertSettings.hf_split,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Hugging Face cache for hub downloads (only README.md and the chosen splits' parquet files are fetched).", show_default=False)] = ConvertSettings.cache_dir,
    folder: Annotated[Optional[list[Path]], typer.Option("--folder", help="Local data ROOT laid out as ROOT/<generator or dataset>/<label dir>/<image> (repeatable).", show_default=False)] = None,
    labels: Annotated[str, typer.Option(help="Label folder names and their labels: exactly two, 0 = real and 1 = fake.")] = ConvertSettings.labels,
    discovery: Annotated[str, typer.Option(help="Which files of a --folder are images. broad: any-case endings (.JPG), .tif, subfolders of label folders, hidden files skipped; original: the original's rule exactly (lower-case .jpg .jpeg .png .bmp .tiff .webp .gif directly in the label folder, hidden files taken).")] = ConvertSettings.discovery,
    overwrite: Annotated[bool, typer.Option(help="Delete a conversion made with other settings in --out and start again.")] = ConvertSettings.overwrite,
    val_frac: Annotated[float, typer.Option(help="Share of samples in the val set (0: one set, `all`).")] = ConvertSettings.val_frac,
    seed: Annotated[int, typer.Option(help="Seed of balancing, the split and the shuffles.")] = ConvertSettings.seed,
    balance: Annotated[bool, typer.Option(help="When HF and local data are combined, limit local reals to (all fakes - HF reals), water-filling over datasets.")] = ConvertSettings.balance,
    balance_checked: Annotated[bool, typer.Option(help="Balance against the fakes and HF reals that pass the image checks (checked once more before planning), not every row as the original counts.")] = ConvertSettings.balance_checked,
    shard_size: Annotated[str, typer.Option(help="Target size of a tar: 512MB, 1GB, 2GiB or bytes.")] = ConvertSettings.shard_size,
    partition_size: Annotated[str, typer.Option(help="Input bytes per unit of work and of resume; each worker holds about 3 x this in memory (lower it with --preresize of small JPEGs).")] = ConvertSettings.partition_size,
    preresize: Annotated[Optional[int], typer.Option(help="Store raw RGB pixels resized to this shorter side (440 for crop 384, 256 for crop 224) instead of the encoded image.", show_default=False)] = ConvertSettings.preresize,
    max_pixels: Annotated[int, typer.Option(help="Reject larger images as decompression bombs.")] = ConvertSettings.max_pixels,
    check: Annotated[CheckMode, typer.Option(help="full: decode all compressed data of every image (PNG inflated, JPEG entropy-decoded; PIL decodes the rest); fast: check only the file structure of verbatim PNG/JPEG (faster, misses damage inside compressed data).")] = ConvertSettings.check,
    dali_check: Annotated[bool, typer.Option(help="Also decode every verbatim image with DALI's CPU decoder and reject what it refuses (about one more full decode).")] = ConvertSettings.dali_check,
    workers: Annotated[int, typer.Option(help="Conversion processes (0: one per CPU core, as many as memory allows); each holds about 3 x --partition-size in memory.")] = ConvertSettings.workers,
    num_nodes: Annotated[int, typer.Option(help="Machines converting into the same --out (shared storage).")] = ConvertSettings.num_nodes,
    node_rank: Annotated[int, typer.Option(help="This machine's rank: it converts partitions p with p % num_nodes == node_rank.")] = ConvertSettings.node_rank,
    verify_hashes: Annotated[bool, typer.Option(help="On resume, re-hash finished shards and their source files (sha256) instead of checking names, sizes and indexes only: damaged shards and sources edited in place are converted again (partitions first converted without this flag are redone once).")] = ConvertSettings.verify_hashes,
    quiet: Annotated[bool, typer.Option(help="No progress or summary lines.")] = ConvertSettings.quiet,
    dry_run: Annotated[bool, typer.Option(help="Scan and plan only: print the sources found, balancing, the split, the partitions and the expected output size; write nothing.")] = ConvertSettings.dry_run,
) -> None:
    """Convert HF parquet and/or image folders into WebDataset shards.

    Example:

    \b
        commfor-fast convert --hf-repo OwensLab/CommunityForensics-Small --folder /data/extra_real --out /data/commfor-small
    """
    settings = _fill(ConvertSettings, {**locals(), "folders": list(folder or [])})
    from commfor_fast.convert.run import convert as run_convert

    call(run_convert, settings)


@command(app)
def push(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="A trained model folder (RUN/final) or a `commfor-fast convert` output folder.", show_default=False)],
    repo_id: Annotated[str, typer.Option(help="The Hub repo, owner/name: a model repo for a model folder, a dataset repo for shards (created if need be).", show_default=False)],
    private: Annotated[bool, typer.Option(help="Create the repo private (an existing repo keeps its visibility).")] = PushSettings.private,
    commit_message: Annotated[Optional[str], typer.Option(help="The commit's message.", show_default=False)] = PushSettings.commit_message,
) -> None:
    """Upload a trained model or converted shards to the Hugging Face Hub.

    A model goes up in timm's layout (timm alone loads it), shards without their
    resume bookkeeping. The token comes from `hf auth login` or HF_TOKEN.

    Example:

    \b
        commfor-fast push runs/vit-s16/final --repo-id me/commfor-vit-s16
    """
    settings = _fill(PushSettings, locals())
    from commfor_fast.hub import push as run_push

    typer.echo(call(run_push, settings))


@command(app, "inspect")
def inspect_data(
    data: Annotated[Path, typer.Argument(help="A convert output folder.", show_default=False)],
    whole: Annotated[bool, typer.Option("--all/--no-all", help=f"Every generator's counts; by default more than {ALL_ROWS_UP_TO} generators are summarised.")] = False,
) -> None:
    """Show what converted shards hold: sets, counts per generator, label and format, format-bias warnings, sizes.

    Example:

    \b
        commfor-fast inspect /data/commfor-train
    """
    from commfor_fast.inspection import describe

    typer.echo("\n".join(call(describe, data, whole=whole)))


@command(app)
def verify(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="A `commfor-fast convert` output folder.", show_default=False)],
    quiet: Annotated[bool, typer.Option(help="No progress lines.")] = False,
) -> None:
    """Check every shard against manifest.json; exit 1 if any is damaged.

    Each shard's sha256 and index, and each sample's label and ids.

    Example:

    \b
        commfor-fast verify /data/commfor-train
    """
    from commfor_fast.verify import verify_shards

    checked, damaged = call(verify_shards, data, not quiet)
    for damage in damaged:
        typer.echo(f"damaged: {data / damage.shard}: {damage.problem}")
    if damaged:
        typer.echo(f"{len(damaged)} of {checked} shards are damaged; re-run the convert command recorded in "
                   f"{data / 'manifest.json'} to redo them", err=True)
        raise typer.Exit(1)
    typer.echo(f"{checked} shards intact", err=True)


@command(app)
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes its data, shards, run and report.")] = DemoSettings.out,
    device: Annotated[str, typer.Option(help="cpu, cuda (or gpu) or auto.")] = DemoSettings.device,
    fakes_per_generator: Annotated[int, typer.Option(help="Training images per generator (reals matched in number).")] = DemoSettings.fakes_per_generator,
    test_per_source: Annotated[int, typer.Option(help="Held-out images per source.")] = DemoSettings.test_per_source,
    model_size: Annotated[ModelSize, typer.Option(help="small or tiny.")] = DemoSettings.model_size,
    input_size: Annotated[int, typer.Option(help="224 or 384.")] = DemoSettings.input_size,
    patch_size: Annotated[int, typer.Option(help="16 or 32.")] = DemoSettings.patch_size,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = DemoSettings.batch_size,
    train_itrs: Annotated[int, typer.Option(help="Training iterations.")] = DemoSettings.train_itrs,
    lr: Annotated[float, typer.Option(help="Peak learning rate (training from scratch).")] = DemoSettings.lr,
    num_threads: Annotated[int, typer.Option(help="Loader CPU threads.")] = DemoSettings.num_threads,
    loader: Annotated[Loader, typer.Option(help="dali or reference (the PIL executor).")] = DemoSettings.loader,
    seed: Annotated[int, typer.Option(help="Seed of the data, the split and training.")] = DemoSettings.seed,
    quick: Annotated[bool, typer.Option(help="A short run, a few minutes: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO_QUICK.items()) + ".")] = DemoSettings.quick,
) -> None:
    """Run the whole chain on built-in synthetic data.

    Generate, convert, train, evaluate and report, offline. A rerun with the same
    settings resumes: it keeps the data and shards and goes on training from the
    newest checkpoint; other settings start afresh.

    Example:

    \b
        commfor-fast demo --out demo-output --device cpu
    """
    settings = _fill(DemoSettings, locals())
    from commfor_fast.demo.run import run_demo

    call(run_demo, settings)


@command(app)
def bench(
    out: Annotated[Path, typer.Option(help="Folder for the benchmark data, BENCH.md and bench.png.")] = BenchSettings.out,
    quick: Annotated[bool, typer.Option(help="A reduced set: a few minutes on 2 CPU cores.")] = BenchSettings.quick,
    shards: Annotated[Optional[list[Path]], typer.Option(help="Benchmark these convert outputs instead of generated data (repeatable).")] = BenchSettings.shards,
    threads: Annotated[int, typer.Option(help="CPU threads per loader.")] = BenchSettings.threads,
    scale: Annotated[bool, typer.Option(help="Only the scale benchmark: per-sample CPU and memory of each step at 10k and 100k tiny images.")] = BenchSettings.scale,
    scale_sizes: Annotated[Optional[list[int]], typer.Option(help="With --scale: these sample counts instead (repeatable; 1000000 takes over an hour on 2 cores).")] = BenchSettings.scale_sizes,
) -> None:
    """Benchmark the converter, the pipelines and training.

    Pipelines: the PIL reference, DALI on the CPU and, on a CUDA machine, DALI on the GPU.

    Example:

    \b
        commfor-fast bench --quick --out bench-output
    """
    settings = _fill(BenchSettings, locals())
    from commfor_fast.bench.run_all import run_all

    call(run_all, settings.out, settings.quick, settings.shards or None, settings.threads,
         (settings.scale_sizes or []) if settings.scale else None)


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
