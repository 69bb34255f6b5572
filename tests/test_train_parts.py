"""The parts train.py is made of: the checkpoint record and files, the synthetic stream,
the process-group teardown, and the benchmarks' one-way imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from commfor_fast import distributed
from commfor_fast.checkpoint import TrainCheckpoint, checkpoint_due, checkpoints_in, write_checkpoint
from commfor_fast.distributed import Dist
from commfor_fast.errors import UserError
from commfor_fast.pipelines.loader import Batch
from commfor_fast.pipelines.synthetic import SyntheticStream
from commfor_fast.settings import TrainSettings

# The keys our checkpoints have always held (the on-disk format resume reads).
WRITTEN_KEYS = ["model", "model_args", "optimizer", "scaler", "epoch", "itr", "schedule", "data", "settings", "version"]


def _record(itr: int) -> TrainCheckpoint:
    return TrainCheckpoint(model={"w": torch.ones(2)}, model_args={"model_size": "tiny"}, optimizer={"state": {}},
                           scaler={}, epoch=0, itr=itr, schedule={"world_size": 1, "total_itrs": 9, "warmup": 1},
                           data=[{"batches": itr}], settings={"seed": 0}, version="test")


def test_checkpoint_record_is_the_file_and_keeps_the_newest(tmp_path: Path) -> None:
    for itr in (3, 6, 9):
        write_checkpoint(tmp_path, _record(itr), keep=2)
    assert [p.name for p in checkpoints_in(tmp_path)] == ["ckpt-000000006.pt", "ckpt-000000009.pt"]
    loaded = torch.load(tmp_path / "ckpt-000000009.pt", weights_only=True)
    assert list(loaded) == WRITTEN_KEYS
    again = TrainCheckpoint.from_dict(loaded, tmp_path / "ckpt-000000009.pt")
    assert again.itr == 9 and again.data == [{"batches": 9}] and torch.equal(again.model["w"], torch.ones(2))
    write_checkpoint(tmp_path, _record(12), keep=-1)  # -1 keeps them all
    assert len(checkpoints_in(tmp_path)) == 3


def test_older_checkpoints_still_read_and_incomplete_ones_say_the_fix(tmp_path: Path) -> None:
    # as written before the schedule's shape was recorded (and without a version)
    older = {"model": {}, "model_args": {"model_size": "tiny"}, "optimizer": {}, "scaler": {}, "epoch": 1, "itr": 12,
             "data": [{"batches": 12}], "settings": {"seed": 0}}
    record = TrainCheckpoint.from_dict(older, tmp_path / "ckpt-000000012.pt")
    assert record.schedule == {} and record.version == "" and record.itr == 12
    cut = {k: v for k, v in older.items() if k not in ("optimizer", "itr")}
    with pytest.raises(UserError, match=r"ckpt-000000012.pt: not a complete training checkpoint \(no optimizer, itr\)"
                                        r".*--only-load-model-weights"):
        TrainCheckpoint.from_dict(cut, tmp_path / "ckpt-000000012.pt")


@pytest.mark.parametrize("itr, every, keep, due", [
    (9, 0, 5, True),  # an epoch end (9 per epoch)
    (10, 0, 5, False),
    (10, 5, 5, True),  # every --ckpt-every iterations
    (20, 0, 5, True),  # the last iteration
    (9, 0, 0, False),  # --ckpt-keep-count 0 writes none
])
def test_checkpoint_due(itr: int, every: int, keep: int, due: bool) -> None:
    settings = TrainSettings(data=Path("d"), out=Path("o"), ckpt_every=every, ckpt_keep_count=keep)
    assert checkpoint_due(itr, total_itrs=20, per_epoch=9, settings=settings) is due


def test_synthetic_stream_serves_one_real_batch_until_closed() -> None:
    stream = SyntheticStream(4, 32, torch.device("cpu"))
    first, second = next(stream), next(iter(stream))
    assert isinstance(first, Batch) and first is second
    assert first.images.shape == (4, 3, 32, 32) and first.labels.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert stream.state_dict() == {"loader": "synthetic"}
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)


def test_teardown_after_a_failure_does_not_wait_for_the_other_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    env = Dist(rank=1, local_rank=1, world_size=2)
    distributed.teardown_distributed(env, wait=False)
    assert calls == ["destroy"]
    distributed.teardown_distributed(env)
    assert calls == ["destroy", "barrier", "destroy"]


def test_bench_modules_import_one_way() -> None:
    """common <- data <- script: no module imports one that imports it back."""
    bench = Path(distributed.__file__).parent / "bench"

    def imported(name: str) -> set[str]:
        tree = ast.parse((bench / f"{name}.py").read_text())
        return {node.module.rsplit(".", 1)[-1] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("commfor_fast.bench.")}

    assert imported("common") == set()
    assert imported("data") == {"common"}
    assert imported("script") == {"common", "data"}
