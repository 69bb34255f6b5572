"""The DALI and reference loaders: sharding across ranks, reproducibility, exact resume, bad samples, factories."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.pipelines.batch import EvalLoader, TrainStream
from commfor_fast.pipelines.damaged import DataError
from commfor_fast.pipelines.executor import ExecutorOptions
from commfor_fast.pipelines.loader import LOADERS, create_eval_loader, create_train_stream
from commfor_fast.pipelines.source import iters_per_epoch
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.shards import Manifest, ShardReader, read_index

CROP = 224
N_IMAGES = 22


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """22 JPEG/PNG images of two generators, converted to one unsplit set."""
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        folder = root / "src" / f"gen{i % 2}" / ("fake" if i % 3 else "real")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(230, 330)), int(rng.integers(230, 330))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img.save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    convert(ConvertSettings(folders=[root / "src"], out=root / "shards", val_frac=0.0, seed=0, workers=1,
                            quiet=True))
    return root / "shards"


def _kwargs(**extra: object) -> dict:
    return dict(device=torch.device("cpu"), batch_size=4, crop=CROP, num_threads=1, **extra)


def _workers(loader: str, workers: int) -> dict:
    """DALI with `workers` batch-preparing processes out of a budget of workers + 1 threads."""
    return {"num_threads": workers + 1, "executor": ExecutorOptions(source_workers=workers)} if workers else {}


@pytest.mark.parametrize("loader", LOADERS)
def test_eval_counts_every_sample_once_across_ranks(data: Path, loader: str) -> None:
    manifest = Manifest.load(data)
    seen = []
    for rank in range(3):
        part = create_eval_loader(loader, data, manifest, "all", **_kwargs(rank=rank, world_size=3))
        numbers = [int(n) for batch in part for n in batch.sample_numbers]
        assert len(numbers) == len(part)  # no padding repeats
        seen += numbers
        for batch in create_eval_loader(loader, data, manifest, "all", **_kwargs(rank=rank, world_size=3)):
            assert batch.images.shape[1:] == (3, CROP, CROP) and batch.images.dtype == torch.float32
    assert sorted(seen) == sorted(set(seen)) and len(seen) == N_IMAGES


@pytest.mark.parametrize("loader", LOADERS)
def test_train_stream_reproducible_sharded_and_resumable(data: Path, loader: str) -> None:
    manifest = Manifest.load(data)
    rsa = RSAConfig()

    def stream(rank: int, seed: int = 0, state: dict | None = None):
        return create_train_stream(loader, data, manifest, "all", rsa=rsa, seed=seed, state=state,
                                   **_kwargs(rank=rank, world_size=2))

    a, b = stream(0), stream(0)
    first_a, first_b = next(a), next(b)
    assert torch.equal(first_a.images, first_b.images)  # same seed, rank: same augmented batch
    assert torch.equal(first_a.labels, first_b.labels)
    assert not torch.equal(next(stream(0, seed=1)).images, first_a.images)

    # Both ranks deliver batches of real samples from the set, labels matching the shards.
    batch = next(stream(1))
    reader = ShardReader(data, manifest.sets["all"])
    for number, label in zip(batch.sample_numbers, batch.labels):
        members = reader.members(reader.position(f"{int(number):010d}"))
        assert int(reader.read(reader.position(f"{int(number):010d}"), ("cls",))["cls"]) == int(label)
        assert members

    # Exact resume: a stream restored from a state continues with the same batches.
    for _ in range(3):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(2)]
    resumed = stream(0, state=state)
    for want in expected:
        got = next(resumed)
        assert torch.equal(got.images, want.images) and torch.equal(got.sample_numbers, want.sample_numbers)


def test_both_loaders_read_one_order_and_runs_cut_into_batches(data: Path) -> None:
    """The DALI stream reads the reference stream's order, whatever its batches per run,
    and resumes exactly in the middle of a run."""
    manifest = Manifest.load(data)

    def numbers(loader: str, per_run: int = 1, state: dict | None = None, n: int = 5):
        stream = create_train_stream(loader, data, manifest, "all", rsa=RSAConfig(), seed=3, state=state,
                                     **_kwargs(rank=1, world_size=2), **({"batches_per_run": per_run}
                                                                         if loader == "dali" else {}))
        batches = [next(stream) for _ in range(n)]
        return stream, batches

    _, reference = numbers("reference")
    _, single = numbers("dali")
    stream, triple = numbers("dali", per_run=3, n=4)
    order = [b.sample_numbers.tolist() for b in reference]
    assert [b.sample_numbers.tolist() for b in single] == order
    assert [b.sample_numbers.tolist() for b in triple] == order[:4]
    assert all(b.images.shape == (4, 3, CROP, CROP) for b in triple)
    want = [next(stream) for _ in range(3)]  # batches 5-7: the rest of run 2, then run 3
    _, resumed = numbers("dali", per_run=3, state={"loader": "dali", "batches": 4}, n=3)
    for a, b in zip(resumed, want):
        assert torch.equal(a.images, b.images) and torch.equal(a.sample_numbers, b.sample_numbers)


@pytest.mark.gpu
def test_gpu_eval_counts_every_sample_once_across_ranks(data: Path) -> None:
    manifest = Manifest.load(data)
    seen = []
    for rank in range(3):
        loader = create_eval_loader("dali", data, manifest, "all", **{**_kwargs(rank=rank, world_size=3),
                                                                        "device": torch.device("cuda")})
        for batch in loader:
            assert batch.images.is_cuda and batch.images.shape[1:] == (3, CROP, CROP)
            seen += [int(n) for n in batch.sample_numbers]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == N_IMAGES


def test_reference_epochs_cover_the_set_with_equal_batches_per_rank() -> None:
    from commfor_fast.pipelines.reference_loader import _StreamSampler

    iters = iters_per_epoch(N_IMAGES, 4, 2)
    assert iters == 2
    keys = [list(iter_keys) for iter_keys in (
        _take(_StreamSampler(N_IMAGES, 4, rank, 2, seed=0, start=0), 2 * iters * 4) for rank in (0, 1))]
    for rank_keys in keys:
        epochs = [k[0] for k in rank_keys]
        assert epochs == [0] * 8 + [1] * 8  # the same number of batches per epoch on each rank
    epoch0 = [k[1] for ks in keys for k in ks if k[0] == 0]
    assert len(set(epoch0)) == len(epoch0) == 16  # no sample twice within an epoch
    epoch1 = [k[1] for ks in keys for k in ks if k[0] == 1]
    assert epoch0 != epoch1  # a new order every epoch


def _take(it, n: int) -> list:
    out = []
    for key in it:
        out.append(key)
        if len(out) == n:
            return out
    return out


def test_iters_per_epoch_refuses_too_small_sets() -> None:
    from commfor_fast.errors import UserError

    with pytest.raises(UserError, match="--batch-size"):
        iters_per_epoch(10, 8, 2)


@pytest.mark.parametrize("loader, workers", [("dali", 0), ("dali", 1), ("reference", 0)])
def test_damaged_sample_is_named(data: Path, tmp_path: Path, loader: str, workers: int) -> None:
    """A sample damaged after conversion stops the run with its key and shard, also when
    DALI's workers prepared the batch."""
    damaged = tmp_path / "shards"
    shutil.copytree(data, damaged)
    manifest = Manifest.load(damaged)
    shard = manifest.sets["all"].shards[0]
    members = read_index(damaged / shard.index)[1]
    image = members["image"]
    with open(damaged / shard.tar, "r+b") as f:
        f.seek(image.offset)
        f.write(b"\0" * min(image.size, 64))
    key = image.filename.split(".")[0]
    with pytest.raises(DataError, match=f"sample {key} in {shard.tar}"):
        for _ in create_eval_loader(loader, damaged, manifest, "all",
                                    **{**_kwargs(rank=0, world_size=1), **_workers(loader, workers)}):
            pass


@pytest.mark.parametrize("loader", LOADERS)
def test_every_loader_follows_the_protocols(data: Path, loader: str) -> None:
    """Both backends serve `TrainStream` / `EvalLoader`, and a stream's state names its loader."""
    manifest = Manifest.load(data)
    stream = create_train_stream(loader, data, manifest, "all", rsa=RSAConfig(), seed=0,
                                 **_kwargs(rank=0, world_size=1))
    try:
        assert isinstance(stream, TrainStream)
        next(stream)
        assert stream.state_dict() == {"loader": loader, "batches": 1}
    finally:
        stream.close()
    part = create_eval_loader(loader, data, manifest, "all", **_kwargs(rank=0, world_size=1))
    assert isinstance(part, EvalLoader) and len(part) == N_IMAGES
    part.close()


def test_the_factories_import_a_backend_only_when_it_is_chosen(data: Path) -> None:
    """Importing the factories loads neither backend; choosing one loads only it (no DALI for `reference`)."""
    code = (
        "import sys, torch\n"
        "from commfor_fast.pipelines.loader import create_eval_loader\n"
        "from commfor_fast.shards import Manifest\n"
        "def loaded():\n"
        "    return sorted(m.split('.')[-1] for m in sys.modules if m == 'nvidia.dali' or\n"
        "                  m.startswith('commfor_fast.pipelines.') and m.endswith('_loader'))\n"
        "before = loaded()\n"
        f"data = {str(data)!r}\n"
        "create_eval_loader('reference', data, Manifest.load(data), 'all', device=torch.device('cpu'), batch_size=4,\n"
        "                   crop=224, rank=0, world_size=1, num_threads=0)\n"
        "print(before, loaded())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] ['reference_loader']"


def test_an_unknown_loader_is_refused_naming_the_flag(data: Path) -> None:
    from commfor_fast.errors import UserError

    with pytest.raises(UserError, match="--loader 'pil': choose one of dali, reference"):
        create_eval_loader("pil", data, Manifest.load(data), "all", **_kwargs(rank=0, world_size=1))


def test_workers_prepare_the_batches_the_training_thread_would(data: Path) -> None:
    """DALI's worker processes make the very batches the training thread makes (batch k
    is a function of (seed, rank, k)), resume exactly mid-run, and the training
    thread reads no shard to get them; evaluation with robustness levels too."""
    from commfor_fast.pipelines.perturb import parse_perturbations

    manifest = Manifest.load(data)

    def batches(workers: int, state: dict | None = None, n: int = 5):
        stream = create_train_stream("dali", data, manifest, "all", rsa=RSAConfig(), seed=3, state=state,
                                     batches_per_run=2,
                                     **{**_kwargs(rank=1, world_size=2), **_workers("dali", workers)})
        try:
            return [next(stream) for _ in range(n)], stream.pipe.source
        finally:
            stream.close()

    inline, _ = batches(0)
    parallel, source = batches(1)
    assert source.consumed == 3 and source._reader is None  # 3 runs taken, no shard opened in this process
    resumed, _ = batches(1, state={"loader": "dali", "batches": 3}, n=2)
    for a, b in zip(inline, parallel, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.sample_numbers, b.sample_numbers)
    for a, b in zip(inline[3:], resumed):
        assert torch.equal(a.images, b.images) and torch.equal(a.sample_numbers, b.sample_numbers)

    levels = parse_perturbations(["jpeg=50", "noise=0.05"])

    def passes(workers: int) -> list:
        return list(create_eval_loader("dali", data, manifest, "all", levels=levels, seed=1,
                                       **{**_kwargs(rank=0, world_size=1), **_workers("dali", workers)}))

    inline_eval, parallel_eval = passes(0), passes(1)
    assert sum(len(b.sample_numbers) for b in parallel_eval) == N_IMAGES  # every sample once, the last batch short
    for a, b in zip(inline_eval, parallel_eval, strict=True):
        assert torch.equal(a.sample_numbers, b.sample_numbers)
        assert all(torch.equal(x, y) for x, y in zip(a.levels, b.levels, strict=True))


def test_the_thread_budget_is_split_between_dali_and_the_workers() -> None:
    from commfor_fast.errors import UserError

    assert ExecutorOptions().split(4) == (2, 2)  # the default: half each
    assert ExecutorOptions().split(1) == (1, 0)  # no room for a worker: the training thread prepares batches
    assert ExecutorOptions(source_workers=3).split(4) == (1, 3)
    with pytest.raises(UserError, match="--executor source_workers=4: choose 0 to 3"):
        ExecutorOptions(source_workers=4).split(4)
    with pytest.raises(UserError, match="--executor stream_policy=fast: choose one of single, per_backend"):
        ExecutorOptions(stream_policy="fast").pipeline_kwargs()
    flags = ExecutorOptions.from_flags(["source_workers=1", "prefetch_queue_depth=3", "hw_decoder_load=0.7"])
    assert flags == ExecutorOptions(source_workers=1, prefetch_queue_depth=3, hw_decoder_load=0.7)
    # `none` is a concurrency of DALI's (no operators at once), `default` DALI's default
    assert ExecutorOptions.from_flags(["concurrency=none"]).pipeline_kwargs()["concurrency"].name == "NONE"
    assert ExecutorOptions.from_flags(["concurrency=none", "concurrency=default"]) == ExecutorOptions()
    with pytest.raises(UserError, match="--executor 'workers=2': use NAME=VALUE with NAME one of source_workers"):
        ExecutorOptions.from_flags(["workers=2"])
    with pytest.raises(UserError, match="--executor 'source_prefetch=two': source_prefetch takes int"):
        ExecutorOptions.from_flags(["source_prefetch=two"])


def test_executor_options_reach_the_pipeline(data: Path) -> None:
    from commfor_fast.pipelines.dali import create_eval_pipeline
    from commfor_fast.pipelines.source import ShardSource

    source = ShardSource.from_manifest(data, Manifest.load(data), "all")
    options = ExecutorOptions.from_flags(["source_workers=2", "prefetch_queue_depth=3", "concurrency=backend"])
    pipe = create_eval_pipeline(source, device="cpu", batch_size=4, crop=CROP, num_threads=3, options=options)
    assert (pipe.num_threads, pipe.py_num_workers, pipe.prefetch_queue_depth) == (1, 2, 3)
    pipe.source.close()


def test_the_resize_minibatch_option_reaches_every_resize(data: Path) -> None:
    """`--executor resize_minibatch_size=N` sets every resize of the training graph: the
    first resize and each RSA stage's (traced, no run)."""
    from commfor_fast.pipelines.dali import create_train_pipeline
    from commfor_fast.pipelines.source import ShardSource

    def minibatch_sizes(options: ExecutorOptions) -> list:
        source = ShardSource.from_manifest(data, Manifest.load(data), "all")
        pipe = create_train_pipeline(source, device="cpu", batch_size=4, crop=CROP, rsa=RSAConfig(), seed=0,
                                     options=options)
        pipe._build_graph()
        pipe.source.close()
        return [op._op._init_args.get("minibatch_size") for op in pipe._ops
                if getattr(op._op, "schema_name", "") == "Resize"]

    chosen = minibatch_sizes(ExecutorOptions(source_workers=0, resize_minibatch_size=7))
    assert len(chosen) > 1 and set(chosen) == {7}  # the first resize and every stage's
    assert set(minibatch_sizes(ExecutorOptions(source_workers=0))) == {None}  # DALI's default


def test_an_evaluation_loader_keeps_its_pipeline_between_passes(data: Path) -> None:
    """Validation runs every epoch: later passes reuse the first pass's pipeline and
    workers (no new start-up) and give the same batches, every sample once; a pass left
    early drops the pipeline and the next pass is whole again."""
    manifest = Manifest.load(data)
    loader = create_eval_loader("dali", data, manifest, "all",
                                **{**_kwargs(rank=1, world_size=2), **_workers("dali", 1)})
    try:
        first = list(loader)
        pipe = loader.pipe
        second = list(loader)
        assert loader.pipe is pipe  # reset, not rebuilt
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.sample_numbers, b.sample_numbers)
        numbers = [int(n) for b in second for n in b.sample_numbers]
        assert len(numbers) == len(set(numbers)) == len(loader)
        for _ in loader:
            break  # left early: DALI cannot reset mid-pass, so the pipeline goes
        assert loader.pipe is None
        third = list(loader)
        assert loader.pipe is not None and loader.pipe is not pipe
        assert [b.sample_numbers.tolist() for b in third] == [b.sample_numbers.tolist() for b in first]
    finally:
        loader.close()
    assert loader.pipe is None
