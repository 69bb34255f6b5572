"""Settings of the `train`, `eval`, `predict`, `push`, `demo` and `bench` commands: one flat dataclass each.

They live apart from the code that runs them so the CLI can read their defaults
without importing torch or DALI (`--help` stays instant); the CLI takes every default
from here. Every run records its settings: training in every checkpoint and the wandb
run (`settings_dict`) and in the model card, evaluation in report.json.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from commfor_fast.metrics import THRESHOLD
from commfor_fast.pipelines.ops import DEFAULT_OPS

# The choices of the string settings, as types: the CLI lists them in --help and shell
# completion and refuses anything else at parse time, before torch or DALI is imported.
Loader = Literal["dali", "reference"]  # `pipelines.loader.LOADERS`
ModelSize = Literal["small", "tiny"]
LRScheduleKind = Literal["original", "per-iteration"]
ScoresFormat = Literal["parquet", "csv"]
CheckMode = Literal["full", "fast"]  # `convert --check`
BoxFilter = Literal["built", "standin"]  # `pipelines.plan.BOX_FILTERS`
AmpDtype = Literal["fp16", "bf16", "float16", "bfloat16"]  # fp16 or bf16, or torch's names for them ...
AMP_SPELLINGS = {"float16": "fp16", "bfloat16": "bf16"}  # ... read as these


@dataclass
class TrainSettings:
    """Everything a training run depends on; recorded in every checkpoint, the wandb run and the model card."""

    # data and output
    data: Path  # a `commfor-fast convert` output folder (trains on `train` or `all`, validates on `val`)
    out: Path  # run folder: checkpoints, final model, metrics.jsonl
    loader: str = "dali"  # "dali" or "reference" (the PIL executor, for comparison)
    num_threads: int = 4  # CPU threads per process for the loader (the original's --cpus-per-gpu)
    batches_per_run: int = 4  # DALI: training batches per pipeline run, sharing DALI's fixed cost per run
    executor: list[str] | None = None  # DALI pipeline options NAME=VALUE (pipelines/executor.py); None: defaults
    device: str = "auto"  # "cuda", "cpu", or "auto": cuda when a GPU is visible
    # model
    model_size: str = "small"
    input_size: int = 384
    patch_size: int = 16
    freeze_backbone: bool = False
    pretrained: bool = True  # start from timm's ImageNet-21k -> 1k weights
    pretrained_path: Path | None = None  # local timm weights instead of the download
    ckpt: Path | None = None  # start from this checkpoint: a full resume for ours, weights only for others
    only_load_model_weights: bool = False  # with --ckpt: take only the weights of our checkpoint too
    hf_model: str | None = None  # fine-tune a released detector: a hub id or a save_pretrained folder
    trust_checkpoint: bool = False  # allow full unpickling of --ckpt (runs code stored in the file)
    # schedule (the defaults are the original's)
    batch_size: int = 32  # per process (the paper's runs use 128)
    epochs: int = 20
    train_itrs: int | None = None  # overrides epochs when > 0
    lr: float = 2e-5
    weight_decay: float = 1e-2
    warmup_epochs: float = 3.0  # linear warmup, in epochs (fractions allowed)
    warmup_frac: float = -1.0  # warmup as a fraction of all iterations; overrides warmup_epochs when > 0
    no_lr_schedule: bool = False  # constant lr (after warmup)
    lr_schedule: str = "original"  # "original" (its cosine stepping) or "per-iteration" (ends exactly at the floor)
    grad_clip: float = 1.0
    # None (the default): the original's precision on CUDA, fp16 autocast with a grad scaler (the original
    # trains no other way), fp32 on the CPU; True / False decide either way (`resolve_precision`)
    use_amp: bool | None = None
    amp_dtype: str = "fp16"  # "fp16" (with a grad scaler) or "bf16"
    compile: bool = False  # torch.compile the model
    seed: int = 42
    # augmentation (RandomStateAugmentation)
    rsa_ops: str = ",".join(DEFAULT_OPS)
    rsa_min_num_ops: str = "0"
    rsa_max_num_ops: str = "2"
    fix_padding_quirk: bool = False
    # PIL's box filter in the DALI graph: "built" from DALI operators (PIL's result but at
    # window-edge ties), or "standin", one Gaussian resize (fewer operators, further off)
    box_filter: BoxFilter = "built"
    verify_hashes: bool = False  # sha256 of every shard against the manifest before training (sizes are always checked)
    # checkpoints and logging
    ckpt_every: int = 0  # also checkpoint every N iterations (0: only at epoch ends)
    ckpt_keep_count: int = 5  # newest checkpoints kept (-1: all, 0: write none)
    resume: bool = False  # require a checkpoint in --out to resume from (resuming is automatic anyway)
    allow_changed_settings: bool = False  # resume although schedule or data-stream settings changed (each is printed)
    log_every: int = 50
    validate: bool = True  # loss, accuracy and AP on `val` after every epoch
    synthetic_data: bool = False  # benchmark bound: one fixed batch already on the device replaces the loader
    wandb_project: str | None = None  # log to Weights & Biases (key from WANDB_API_KEY)
    wandb_run_name: str | None = None
    command: str = field(default_factory=lambda: shlex.join(sys.argv))


def resolve_precision(s: TrainSettings) -> TrainSettings:
    """`s` with `use_amp` decided for its resolved device (`s.device`, "cuda" or "cpu"):
    when unset, on for CUDA (with the default --amp-dtype fp16 that is the original's
    recipe) and off on the CPU, where fp16 autocast is slow and nothing to reproduce."""
    if s.use_amp is not None:
        return s
    return dataclasses.replace(s, use_amp=s.device == "cuda")


def settings_dict(settings: Any) -> dict[str, Any]:
    """A command's settings dataclass as a run records them (checkpoints, wandb's config,
    report.json): paths as strings."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(settings).items()}


@dataclass
class EvalSettings:
    """Everything an evaluation run depends on; recorded in report.json."""

    data: Path  # a `commfor-fast convert` output folder
    out: Path  # report folder: report.json, per_generator.csv, per_generator.png and .pdf
    ckpt: Path | None = None  # a local checkpoint (ours or the original's)
    hf_model: str | None = None  # or a Hugging Face model id, e.g. OwensLab/commfor-model-384
    trust_checkpoint: bool = False  # allow full unpickling of --ckpt (runs code stored in the file)
    sets: str | None = None  # comma list of sets to score; default: every set in the folder
    device: str = "auto"  # "cuda", "cpu", or "auto": cuda when a GPU is visible
    batch_size: int = 128  # per process
    loader: str = "dali"  # "dali" or "reference"
    num_threads: int = 4
    executor: list[str] | None = None  # DALI pipeline options NAME=VALUE (pipelines/executor.py); None: defaults
    use_amp: bool = False
    amp_dtype: str = "fp16"
    save_scores: bool = False  # also write every image's set, key, original name, source, label, logit and score
    scores_format: str = "parquet"  # "parquet" or "csv"
    # robustness: "FAMILY=L1,L2,..." per family (jpeg, blur, resize, noise; pipelines/perturb.py); clean always runs
    perturb: list[str] | None = None
    perturb_seed: int = 0  # seed of the noise perturbation (with the sample number: the same on every rank and run)
    # fake when P(fake) > threshold: a probability, or "val@fpr=F": chosen on the val set's reals (threshold.py)
    threshold: str = str(THRESHOLD)
    val_data: Path | None = None  # with val@fpr=F: the convert output whose val set chooses it; None: --data
    command: str = field(default_factory=lambda: shlex.join(sys.argv))


@dataclass
class PredictSettings:
    """Everything `predict` needs; the CLI fills it from its flags."""

    paths: list[Path]  # image files and/or folders (searched recursively)
    ckpt: Path | None = None  # local checkpoint (ours, the original's, or a state dict) ...
    hf_model: str | None = None  # ... or a Hugging Face model id, e.g. OwensLab/commfor-model-384
    trust_checkpoint: bool = False  # allow full unpickling of --ckpt (runs code stored in the file)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda" or "cuda:N"
    batch_size: int = 32
    out: Path | None = None  # .csv, .jsonl or .json file (the first two written as results come); None: nothing written
    workers: int = 4  # decoding threads
    threshold: float = THRESHOLD  # verdict "fake" when P(fake) > threshold


@dataclass
class PushSettings:
    """What `commfor-fast push` uploads, and where; the token comes from `hf auth login` or HF_TOKEN, never a flag."""

    folder: Path  # a trained model folder (RUN/final) or a `commfor-fast convert` output folder
    repo_id: str  # the Hub repo, owner/name; a model repo or a dataset repo after the folder's kind
    private: bool = False  # create the repo private (an existing repo keeps its visibility)
    commit_message: str | None = None  # None: "Upload model with commfor-fast" (or dataset)


@dataclass
class DemoSettings:
    """What the demo generates, and how long it trains."""

    out: Path = Path("demo-output")
    device: str = "auto"  # "cpu", "cuda" or "auto"
    fakes_per_generator: int = 64  # training images per generator (reals are matched in number)
    test_per_source: int = 24  # held-out images per source (PublicEval)
    model_size: str = "tiny"
    input_size: int = 224
    patch_size: int = 16
    batch_size: int = 16
    train_itrs: int = 300
    lr: float = 3e-4  # from scratch, not the fine-tuning lr of the full recipe
    num_threads: int = 2
    loader: str = "dali"
    seed: int = 0
    quick: bool = False  # the sizes of DEMO_QUICK instead: the whole chain in a few minutes


# What `demo --quick` changes (explicit values of these are refused with --quick).
DEMO_QUICK = {"fakes_per_generator": 16, "test_per_source": 8, "train_itrs": 60}


@dataclass
class BenchSettings:
    """What `commfor-fast bench` measures, and where it writes."""

    out: Path = Path("bench-output")  # benchmark data, BENCH.md and bench.png
    quick: bool = False  # a reduced set: a few minutes on 2 CPU cores
    shards: list[Path] | None = None  # benchmark these convert outputs instead of generated data
    threads: int = 2  # CPU threads per loader
    scale: bool = False  # only the scale benchmark (bench/scale_bench.py): per-sample costs at 10k and 100k samples
    scale_sizes: list[int] | None = None  # its sample counts instead (e.g. 10000 100000 1000000)
