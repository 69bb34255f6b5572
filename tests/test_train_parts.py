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


def test_best_is_the_first_of_the_highest_computable_ap() -> None:
    from commfor_fast.checkpoint import is_new_best

    records = [{"itr": 9, "val_ap": 0.5}, {"itr": 12, "loss": 0.3}, {"itr": 18, "val_ap": None},
               {"itr": 27, "val_ap": float("nan")}, {"itr": 36, "val_ap": 0.7}]
    assert is_new_best(0.1, []) and is_new_best(0.71, records)
    assert not is_new_best(0.7, records)  # a tie keeps the earlier model
    assert not is_new_best(None, []) and not is_new_best(float("nan"), [])  # one class: no AP, never best


def test_a_replaced_folder_is_whole_or_the_previous_one(tmp_path: Path) -> None:
    from commfor_fast.checkpoint import folder_replaced, remove_stale_temporaries

    best = tmp_path / "best"
    for text in ("first", "second"):
        with folder_replaced(best) as folder:
            (folder / "weights").write_text(text)
    assert (best / "weights").read_text() == "second" and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    with pytest.raises(RuntimeError), folder_replaced(best) as folder:
        (folder / "weights").write_text("half")
        raise RuntimeError("killed midway")
    assert (best / "weights").read_text() == "second"  # the previous model, whole
    remove_stale_temporaries(tmp_path)  # the next run clears what the failed write left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_training_curves_are_drawn_from_the_log_alone(tmp_path: Path) -> None:
    import json

    from commfor_fast.training_curves import draw_training_curves, plot_training_curves

    records = [{"itr": i, "epoch": (i - 1) // 4, "loss": 1 / i, "lr": 1e-3 * i / 8} for i in range(1, 9)]
    records[4:4] = [{"itr": 4, "epoch": 0, "val_loss": 0.4, "val_acc": 0.8, "val_ap": 0.9, "val_n": 12}]
    records.append({"itr": 8, "epoch": 1, "val_loss": 0.5, "val_acc": 0.7, "val_ap": 0.85, "val_n": 12})
    lines = [json.dumps(r) for r in records] + ['{"itr": 9, "lo']  # the last line cut short by a kill
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    png, pdf = plot_training_curves(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert (png.name, pdf.name) == ("training_curves.png", "training_curves.pdf")
    loss_ax, lr_ax, val_ax = draw_training_curves(records).axes
    loss_line, val_loss_line = loss_ax.get_lines()
    assert list(loss_line.get_xdata()) == list(range(1, 9)) and loss_line.get_ydata()[1] == pytest.approx(0.5)
    assert list(val_loss_line.get_xdata()) == [4, 8] and list(lr_ax.get_lines()[0].get_ydata())[-1] == 1e-3
    ap, acc, best = val_ax.get_lines()
    assert list(ap.get_ydata()) == [0.9, 0.85] and list(acc.get_ydata()) == [0.8, 0.7]
    assert (list(best.get_xdata()), list(best.get_ydata())) == ([4], [0.9])  # the model kept in best/
    with pytest.raises(UserError, match="no metrics.jsonl here; give the --out folder of a training run"):
        plot_training_curves(tmp_path / "elsewhere")


@pytest.fixture
def no_wandb_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder without wandb credentials or settings, nothing in the environment."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_CONFIG_DIR",
                 "WANDB_DIR", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def test_wandb_without_a_key_fails_on_one_line_before_any_work(tmp_path: Path, no_wandb_credentials: Path) -> None:
    from typer.testing import CliRunner

    from commfor_fast.cli import app

    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "shards"), "--out", str(run), "--device",
                                      "cpu", "--wandb-project", "commfor-test"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output == ("error: --wandb-project commfor-test: no Weights & Biases API key found; set "
                             "WANDB_API_KEY, run `wandb login`, or set WANDB_MODE=offline to log to the run folder "
                             "only (`wandb sync` uploads it later)\n")
    assert not run.exists()  # before any work


@pytest.mark.parametrize("where", ["netrc", "environment", "offline", "settings"])
def test_wandb_credentials_are_found_where_wandb_reads_them(where: str, no_wandb_credentials: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from commfor_fast.runlog import check_wandb

    settings = TrainSettings(data=Path("shards"), out=Path("run"), wandb_project="commfor-test")
    with pytest.raises(UserError, match="--wandb-project commfor-test: no Weights & Biases API key"):
        check_wandb(settings, Dist(0, 0, 1))
    check_wandb(settings, Dist(1, 1, 2))  # only the rank that logs needs them
    if where == "netrc":  # as `wandb login` writes it
        (no_wandb_credentials / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n")
        (no_wandb_credentials / ".netrc").chmod(0o600)
    elif where == "environment":
        monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    elif where == "offline":
        monkeypatch.setenv("WANDB_MODE", "offline")
    else:  # `wandb offline` in the working folder
        (Path("wandb")).mkdir()
        Path("wandb/settings").write_text("[default]\nmode = offline\n")
    check_wandb(settings, Dist(0, 0, 1))


def test_other_ranks_errors_name_their_rank(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from commfor_fast.cli import app

    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--batch-size", "0"]
    env = {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    rank1 = CliRunner().invoke(app, args, env={**env, "RANK": "1"})
    rank0 = CliRunner().invoke(app, args, env={**env, "RANK": "0"})
    assert rank1.exit_code == rank0.exit_code == 2
    assert rank0.output == "error: --batch-size 0: must be at least 1\n"
    assert rank1.output == "error: rank 1: --batch-size 0: must be at least 1\n"


def test_other_ranks_print_nothing_but_log_the_mean_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1's log: no line (bar or not), no file; the loss it passes goes into the all-reduce."""
    import commfor_fast.runlog as runlog
    from commfor_fast.runlog import MetricsLog, Throughput

    reduced: list[float] = []
    monkeypatch.setattr(runlog, "mean_over_ranks", lambda loss, env: reduced.append(loss.item()) or loss)
    settings = TrainSettings(data=tmp_path, out=tmp_path)
    log = MetricsLog(settings, Dist(1, 1, 2))
    log.print("a note")
    log.start_progress(4, 0)
    log.step()
    log.iteration(1, 0, 4, torch.tensor(0.25), 1e-3, Throughput(), torch.device("cpu"))
    log.close()
    assert capsys.readouterr() == ("", "") and not (tmp_path / "metrics.jsonl").exists()
    assert reduced == [0.25]
