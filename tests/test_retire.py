"""A retired DALI run is kept until the event recorded after its last use has completed
(`pipelines/retire.py`), checked on the CPU with a stand-in for `torch.cuda.Event`."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.pipelines import retire
from commfor_fast.pipelines.loader import create_train_stream
from commfor_fast.pipelines.plan import RSAConfig
from commfor_fast.pipelines.retire import RetiredRuns
from commfor_fast.shards import Manifest


class Run:
    """Stands in for a run's tensors; only its lifetime matters."""


class StandInEvent:
    """Completes when the test says the stand-in GPU has reached it."""

    def __init__(self, gpu: StandInGpu) -> None:
        self.gpu, self.number = gpu, gpu.recorded
        gpu.recorded += 1

    def query(self) -> bool:
        return self.number < self.gpu.finished

    def synchronize(self) -> None:
        self.gpu.finished = max(self.gpu.finished, self.number + 1)
        self.gpu.waited += 1


class StandInGpu:
    """A stream on which `finished` of the `recorded` events have completed."""

    def __init__(self) -> None:
        self.recorded = self.finished = self.waited = 0

    def record(self) -> StandInEvent:
        return StandInEvent(self)


def test_a_run_lives_until_its_event_completes() -> None:
    gpu = StandInGpu()
    retired = RetiredRuns(gpu.record)
    runs = [Run() for _ in range(3)]
    alive = [weakref.ref(r) for r in runs]
    for run in runs:
        retired.retire(run)
    del runs, run
    gc.collect()
    assert len(retired) == 3 and all(ref() is not None for ref in alive)  # the GPU has not run yet
    gpu.finished = 2  # the work queued before the first two retirements is done
    retired.retire(None)  # a stream's first run retires nothing, but lets finished runs go
    gc.collect()
    assert len(retired) == 1 and [ref() is None for ref in alive] == [True, True, False]
    retired.release_all()  # closing the stream waits for the last one
    gc.collect()
    assert len(retired) == 0 and gpu.waited == 1 and alive[2]() is None


def test_on_the_cpu_nothing_is_kept() -> None:
    retired = RetiredRuns.for_device(torch.device("cpu"))
    retired.retire(Run())
    assert len(retired) == 0


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 small images, converted to one unsplit set."""
    root = tmp_path_factory.mktemp("retire")
    rng = np.random.default_rng(0)
    for i in range(8):
        folder = root / "src" / "gen" / ("fake" if i % 2 else "real")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    convert(ConvertSettings(folders=[root / "src"], out=root / "shards", val_frac=0.0, seed=0, workers=1,
                            quiet=True))
    return root / "shards"


def test_dali_stream_retires_each_run_after_its_batches(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = StandInGpu()
    monkeypatch.setattr(retire.RetiredRuns, "for_device", classmethod(lambda cls, device: cls(gpu.record)))
    stream = create_train_stream("dali", shards, Manifest.load(shards), "all", device=torch.device("cpu"),
                                 batch_size=2, crop=224, rsa=RSAConfig(), seed=0, rank=0, world_size=1,
                                 num_threads=1, batches_per_run=2)
    first = [next(stream) for _ in range(2)]  # run 0, whole
    assert gpu.recorded == 0
    next(stream)  # run 1 starts: run 0 is retired behind an event, and kept
    assert gpu.recorded == 1 and len(stream._retired) == 1
    kept = stream._retired._held[0][1]
    assert torch.equal(kept["images"][2:4], first[1].images)  # what is kept is the run the batches came from
    gpu.finished = 1
    next(stream), next(stream)  # run 2 starts: run 0's event has completed, run 1 is kept
    assert gpu.recorded == 2 and len(stream._retired) == 1
    stream.close()
    assert len(stream._retired) == 0 and gpu.waited == 1
