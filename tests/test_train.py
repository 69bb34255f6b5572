"""The training loop and evaluation on CPU: a tiny ViT (random init) on fixture shards."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from commfor_fast.checkpoint import TrainCheckpoint, checkpoints_in, resume_changes
from commfor_fast.convert.run import convert
from commfor_fast.convert.settings import ConvertSettings
from commfor_fast.evaluate import evaluate_shards
from commfor_fast.errors import UserError
from commfor_fast.schedule import LRSchedule
from commfor_fast.settings import EvalSettings, TrainSettings, settings_dict
from commfor_fast.shards import Manifest
from commfor_fast.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An easy task: reals are dark and smooth, fakes bright and noisy (survives RSA)."""
    root = tmp_path_factory.mktemp("easy")
    rng = np.random.default_rng(0)
    for i in range(48):
        fake = i % 2 == 1
        folder = root / "src" / ("gen-bright" if fake else "cam-dark") / ("fake" if fake else "real")
        folder.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(230, 300)), int(rng.integers(230, 300))
        if fake:
            img = rng.integers(150, 256, (h, w, 3), dtype=np.uint8)
        else:
            img = np.full((h, w, 3), rng.integers(10, 60), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    convert(ConvertSettings(folders=[root / "src"], out=root / "shards", val_frac=0.25, seed=0, workers=1,
                            quiet=True))
    return root / "shards"


def _settings(data: Path, out: Path, **overrides: object) -> TrainSettings:
    base = dict(data=data, out=out, device="cpu", model_size="tiny", input_size=224, patch_size=16,
                pretrained=False, batch_size=4, lr=1e-3, warmup_frac=0.1, num_threads=1, log_every=1,
                ckpt_keep_count=-1, rsa_max_num_ops="1", seed=0)
    base.update(overrides)
    return TrainSettings(**base)  # type: ignore[arg-type]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_per_iteration_lr_schedule_follows_the_formula() -> None:
    schedule = LRSchedule("per-iteration", total=100, per_epoch=10, warmup=10, constant=False)
    assert schedule.factor(0) == pytest.approx(0.1)  # (itr + 1) / warmup
    assert schedule.factor(9) == pytest.approx(1.0)
    assert schedule.factor(10) == pytest.approx(1.0)  # cosine starts at the peak
    mid = 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * 45 / 90))
    assert schedule.factor(55) == pytest.approx(mid)
    assert schedule.factor(100) == pytest.approx(1e-3)  # ends at lr * 1e-3
    constant = LRSchedule("per-iteration", total=100, per_epoch=10, warmup=10, constant=True)
    assert constant.factor(50) == 1.0  # --no-lr-schedule


def original_lrs(lr: float, per_epoch: int, epochs: int, train_itrs: int, warmup: int, constant: bool) -> list[float]:
    """The lr of every iteration as the original's loop sets it, with torch's real CosineAnnealingLR.

    The original's train.py / utils.train_one_epoch, with the model left out: `itr` counts
    from 1; `lr * (itr + 1) / warmup` is set while `itr < warmup`; the scheduler steps
    after every iteration with `itr > warmup` and after every epoch.
    """
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * per_epoch - warmup, eta_min=lr if constant else lr * 1e-3)
    used, itr = [], 0
    for _ in range(epochs):
        for _ in range(per_epoch):
            itr += 1
            if itr < warmup:
                for group in optimizer.param_groups:
                    group["lr"] = lr * (itr + 1) / warmup
            if train_itrs > 0 and itr > train_itrs:
                break
            used.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if itr > warmup:
                scheduler.step()
        scheduler.step()
    return used


@pytest.mark.parametrize("per_epoch, overrides", [
    (10, {}),  # the defaults: 20 epochs, 3 warmup epochs (the cosine passes its floor at the end)
    (7, {"epochs": 5, "warmup_frac": 0.25}),  # warmup round(8.75) = 9
    (9, {"train_itrs": 40, "warmup_frac": 0.1}),  # 5 epochs, stops short of the floor
    (8, {"train_itrs": 30, "warmup_epochs": 1.0}),
    (5, {"train_itrs": 20, "warmup_epochs": 1.0}),  # a whole number of epochs
    (3, {"epochs": 6, "warmup_epochs": 2.5}),  # round(7.5) = 8, where int() would give 7
    (5, {"epochs": 4, "warmup_epochs": 2.2}),  # warmup 11: an epoch ends right after its last set lr
    (6, {"epochs": 4, "warmup_epochs": 0.5}),
    (4, {"epochs": 6, "warmup_epochs": 0.25}),  # warmup 1: no warmup lr is ever set
    (5, {"epochs": 3, "warmup_epochs": 0.0}),
    (1, {"epochs": 10, "warmup_epochs": 6.0}),  # the peak is set where the cosine sits at its floor
    (8, {"epochs": 3, "warmup_epochs": 1.0, "no_lr_schedule": True}),  # constant lr
])
def test_original_lr_schedule_matches_the_originals_stepping(per_epoch: int, overrides: dict) -> None:
    settings = TrainSettings(data=Path("d"), out=Path("o"), lr=2e-5, **overrides)
    schedule = LRSchedule.from_settings(settings, per_epoch)
    itrs = settings.train_itrs or 0
    epochs = math.ceil(itrs / per_epoch) if itrs > 0 else settings.epochs
    total = itrs if itrs > 0 else epochs * per_epoch
    warmup = round(settings.warmup_frac * total if settings.warmup_frac > 0 else settings.warmup_epochs * per_epoch)
    expected = original_lrs(settings.lr, per_epoch, epochs, itrs, warmup, settings.no_lr_schedule)
    ours = [settings.lr * schedule.factor(i) for i in range(schedule.total)]
    assert schedule.kind == "original" and schedule.warmup == warmup and len(ours) == len(expected) == total
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=0)


def test_training_learns_checkpoints_and_logs(easy: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = _settings(easy, run, train_itrs=24, ckpt_every=8, ckpt_keep_count=2)
    final = train(settings)
    records = [r for r in _records(run) if "loss" in r]
    assert [r["itr"] for r in records] == list(range(1, 25))
    # iteration k (1-based) used lr * factor(k - 1) of the original's schedule (9 iterations per epoch)
    schedule = LRSchedule.from_settings(settings, 9)
    for r in records:
        assert r["lr"] == pytest.approx(1e-3 * schedule.factor(r["itr"] - 1), rel=1e-12)
        assert r["images_per_s"] > 0 and 0 <= r["data_wait"] <= 1
        assert 100 < r["host_peak_mb"] < 20_000  # torch alone needs more than 100 MiB
    first, last = np.mean([r["loss"] for r in records[:6]]), np.mean([r["loss"] for r in records[-6:]])
    assert last < first * 0.7, (first, last)
    val = [r for r in _records(run) if "val_loss" in r]
    assert val and val[-1]["val_n"] == 12 and val[-1]["val_acc"] is not None
    # newest two checkpoints kept, each a complete dict; the final model loads on its own
    names = [p.name for p in checkpoints_in(run)]
    assert names == ["ckpt-000000018.pt", "ckpt-000000024.pt"]  # epoch ends at 9, 18; every 8; keep 2
    ckpt = torch.load(run / names[-1], weights_only=False)
    assert {"model", "model_args", "optimizer", "scaler", "epoch", "itr", "schedule", "data", "settings"} <= set(ckpt)
    assert ckpt["schedule"] == {"world_size": 1, "total_itrs": 24, "warmup": 2,
                                "data": Manifest.load(settings.data).fingerprint()}
    assert ckpt["itr"] == 24 and len(ckpt["data"]) == 1
    from commfor_fast.model import load_detector

    model, info = load_detector(ckpt=final)
    assert info["model_args"]["model_size"] == "tiny"
    again, _ = load_detector(hf_model=str(run / "final"))  # save_pretrained folder
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(model(x), again(x))
    # the folder's model card: metadata, task, input, data, settings, the last validation, how to load
    card = (run / "final" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n") and "pipeline_tag: image-classification" in card
    assert "ViT tiny/16 at 224 px" in card and "centre crop 224 x 224" in card and "resized to\n256" in card
    counts = Manifest.load(easy).sets["train"].counts
    n_real, n_fake = counts["cam-dark"]["0"], counts["gen-bright"]["1"]
    assert f"{n_real + n_fake} images, {n_real} real and {n_fake} fake, from\n1 real source(s) and 1 generator(s)" in card
    assert "| iterations | 24 (2 warmup), 1 process(es) x batch 4 |" in card and "| started from | random" in card
    assert f"At iteration {val[-1]['itr']}, on 12 held-out images" in card
    # validation at the epoch ends and after the last iteration (24 is no epoch end); the best model in best/
    assert [r["itr"] for r in val] == [9, 18, 24]
    best = next(r for r in val if r["val_ap"] == max(v["val_ap"] for v in val))  # the first of the highest AP
    assert f"At iteration {best['itr']}, on 12 held-out images" in (run / "best" / "README.md").read_text()
    kept, _ = load_detector(hf_model=str(run / "best"))
    assert kept.model_args == model.model_args
    assert {p.name for p in run.glob("training_curves.*")} == {"training_curves.png", "training_curves.pdf"}
    assert f"accuracy {val[-1]['val_acc']:.4f}" in card and f"average precision {val[-1]['val_ap']:.4f}" in card
    assert "CommForDetector.from_pretrained(" + '"PATH_OR_HUB_ID")' in card  # how to load (local path or hub id)


def test_eval_reports_every_image_once(easy: Path, tmp_path: Path) -> None:
    train(_settings(easy, tmp_path / "run", train_itrs=2, validate=False))
    # --no-validate: no best model, and the card's reason for no validation is the true one
    assert not (tmp_path / "run" / "best").exists()
    assert "No validation ran (the data has no `val` set, or `--no-validate`)" in \
        (tmp_path / "run" / "final" / "README.md").read_text()
    report = evaluate_shards(EvalSettings(data=easy, out=tmp_path / "report", ckpt=tmp_path / "run" / "model.pt",
                                          device="cpu", batch_size=5, num_threads=1, save_scores=True,
                                          scores_format="csv"))
    assert report.n == 48 and report.n_fake == 24
    assert {g.name for g in report.generators} == {"gen-bright", "cam-dark"}
    for name in ("report.json", "per_generator.csv", "per_generator.png", "scores.csv"):
        assert (tmp_path / "report" / name).is_file()
    lines = (tmp_path / "report" / "scores.csv").read_text().splitlines()
    assert len(lines) == 49 and lines[0].replace('"', "") == "set,key,name,source,generator,label,logit,score"
    rows = list(csv.DictReader(lines))
    # the original file of every image, and both sets' keys (each starts at 0) told apart by the set
    originals = sorted(p.relative_to(easy.parent / "src").as_posix() for p in (easy.parent / "src").rglob("*.png"))
    assert sorted(r["name"] for r in rows) == originals
    assert {r["source"] for r in rows} == {"src"}  # the root by its name: shards carry no local paths
    assert all(r["generator"] == r["name"].split("/")[0] and r["label"] == str(int("/fake/" in r["name"]))
               for r in rows)
    assert {(r["set"], r["key"]) for r in rows if r["key"] == "0000000000"} == {("train", "0000000000"),
                                                                                ("val", "0000000000")}


@pytest.mark.gpu
def test_gpu_train_resume_eval_round_trip(easy: Path, tmp_path: Path, record_property) -> None:
    """On CUDA: a run resumed from its checkpoint at iteration 2 reads the same batches
    and ends with the same losses as the uninterrupted run; evaluation on the GPU scores
    every image once. Weights are not compared to 1e-4: CUDA's attention backward is not
    deterministic, and Adam turns its last-bit differences into differences of lr size."""
    from commfor_fast.pipelines.loader import create_train_stream
    from commfor_fast.pipelines.plan import RSAConfig

    settings = dict(device="cuda", train_itrs=4, ckpt_every=2, validate=False, use_amp=True, amp_dtype="bf16")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train(_settings(easy, whole, **settings))
    resumed.mkdir()
    shutil.copy(checkpoints_in(whole)[0], resumed)  # the run as it was after 2 iterations
    train(_settings(easy, resumed, **settings))
    losses = [{r["itr"]: r["loss"] for r in _records(run) if "loss" in r} for run in (whole, resumed)]
    assert sorted(losses[1]) == [3, 4]
    gaps = [abs(losses[0][i] - losses[1][i]) for i in (3, 4)]
    record_property("resumed_loss_gap", max(gaps))
    assert max(gaps) < 0.02, (losses, gaps)
    # the data stream on the GPU: a stream resumed after 2 batches serves what the whole one serves next
    manifest = Manifest.load(easy)
    stream_args = dict(device=torch.device("cuda"), batch_size=4, crop=224, rsa=RSAConfig(), seed=0, rank=0,
                       world_size=1, num_threads=1, batches_per_run=2)
    uninterrupted = create_train_stream("dali", easy, manifest, "train", **stream_args)
    expected = [next(uninterrupted) for _ in range(5)][2:]
    again = create_train_stream("dali", easy, manifest, "train", state={"batches": 2}, **stream_args)
    for want in expected:
        got = next(again)
        assert torch.equal(got.sample_numbers, want.sample_numbers) and torch.equal(got.labels, want.labels)
        assert torch.allclose(got.images, want.images, atol=1e-5)  # the same plans on the same pixels
    uninterrupted.close()
    again.close()
    report = evaluate_shards(EvalSettings(data=easy, out=tmp_path / "report", ckpt=tmp_path / "whole" / "model.pt",
                                          device="cuda", batch_size=5, num_threads=1))
    assert report.n == 48


def _cli(*args: str, env: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "commfor_fast", *args]


def _train_args(data: Path, out: Path, itrs: int, ckpt_every: int) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--device", "cpu", "--model-size", "tiny",
            "--input-size", "224", "--no-pretrained", "--batch-size", "4", "--lr", "1e-3", "--num-threads", "1",
            "--train-itrs", str(itrs), "--ckpt-every", str(ckpt_every),
            "--rsa-max-num-ops", "1", "--no-validate", "--log-every", "1"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_model(easy: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_cli(*_train_args(easy, whole, 8, 2)), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cli(*_train_args(easy, killed, 8, 2)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "ckpt-000000002.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.pt").exists(), "the run finished before it could be killed"
    # the same command again resumes from the newest checkpoint
    subprocess.run(_cli(*_train_args(easy, killed, 8, 2)), check=True, env=env, capture_output=True)
    a = torch.load(whole / "model.pt")
    b = torch.load(killed / "model.pt")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.slow
def test_torchrun_two_processes_train_and_eval(easy: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = _train_args(easy, run, 3, 0)
    subprocess.run([*torchrun, "-m", "commfor_fast", *args], check=True, env=env, capture_output=True)
    ckpt = torch.load(checkpoints_in(run)[-1], weights_only=False)
    assert ckpt["itr"] == 3 and len(ckpt["data"]) == 2  # both ranks' stream positions
    result = subprocess.run([*torchrun, "-m", "commfor_fast", "eval", "--data", str(easy), "--ckpt",
                             str(run / "model.pt"), "--out", str(tmp_path / "report"), "--device", "cpu",
                             "--batch-size", "5", "--num-threads", "1"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n"] == 48  # every image once across the two ranks


# Run as each torchrun process: the CLI, with train's `F` recording this rank's own loss of every iteration.
RECORDING_RANK = """
import json, os, sys
import torch.nn.functional as F
import commfor_fast.train as train_module
from commfor_fast.cli import main

losses = []

class Recording:
    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def binary_cross_entropy_with_logits(*args, **kwargs):
        loss = F.binary_cross_entropy_with_logits(*args, **kwargs)
        losses.append(loss.item())
        return loss

train_module.F = Recording()
try:
    main()
finally:
    with open(os.path.join(os.environ["LOSSES_DIR"], os.environ["RANK"]), "w") as f:
        json.dump(losses, f)
"""


@pytest.mark.slow
def test_torchrun_only_rank_0_prints_and_logs_the_mean_loss(easy: Path, tmp_path: Path) -> None:
    """Two gloo processes under torchrun, each rank's output in its own file: rank 1 prints
    nothing; the loss logged (and shown) is the mean of the two ranks' own losses."""
    script, logs, losses = tmp_path / "rank.py", tmp_path / "logs", tmp_path / "losses"
    script.write_text(RECORDING_RANK)
    losses.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOSSES_DIR": str(losses), "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "--log-dir", str(logs), "--redirects", "3"]
    result = subprocess.run([*torchrun, str(script), *_train_args(easy, run, 3, 0)], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = {rank: {stream: next(logs.rglob(f"attempt_0/{rank}/{stream}.log")).read_text()
                  for stream in ("stdout", "stderr")} for rank in (0, 1)}
    assert out[1] == {"stdout": "", "stderr": ""}
    shown = re.findall(r"^itr (\d)/3 \| epoch 0 \| loss (\d\.\d{4}) ", out[0]["stdout"], re.MULTILINE)
    assert [int(itr) for itr, _ in shown] == [1, 2, 3]
    mine = [json.loads((losses / str(rank)).read_text()) for rank in (0, 1)]
    assert len(mine[0]) == len(mine[1]) == 3 and mine[0] != mine[1]  # each rank its own batch
    logged = [r["loss"] for r in _records(run) if "loss" in r]
    assert logged == pytest.approx([(a + b) / 2 for a, b in zip(*mine)], rel=1e-6)
    assert [float(loss) for _, loss in shown] == pytest.approx(logged, abs=5e-5)


def test_wandb_offline_run_is_written(easy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    train(_settings(easy, run, train_itrs=2, validate=False, wandb_project="commfor-test"))
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline and any(offline[0].glob("*.wandb"))


def test_resume_flag_needs_a_checkpoint(easy: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--resume"):
        train(_settings(easy, tmp_path / "empty", train_itrs=1, resume=True))


@pytest.mark.parametrize("overrides, flag", [
    ({"batch_size": 0}, "--batch-size"), ({"log_every": 0}, "--log-every"), ({"amp_dtype": "fp32"}, "--amp-dtype"),
    ({"loader": "pil"}, "--loader"), ({"ckpt_keep_count": -2}, "--ckpt-keep-count"),
    ({"warmup_frac": 1.5}, "--warmup-frac"), ({"rsa_ops": "Blur"}, "--rsa-ops"), ({"device": "tpu"}, "--device"),
    ({"lr_schedule": "step"}, "--lr-schedule"),
])
def test_bad_settings_are_refused_before_work(easy: Path, tmp_path: Path, overrides: dict, flag: str) -> None:
    with pytest.raises(UserError, match=flag):
        train(_settings(easy, tmp_path / "run", train_itrs=1, **overrides))
    assert not (tmp_path / "run").exists()


def test_original_checkpoint_gives_weights_and_freeze_applies(easy: Path, tmp_path: Path) -> None:
    """`--ckpt` with the original's format: its weights, a new optimizer and schedule;
    `--freeze-backbone` holds on weights loaded from a file too."""
    from commfor_fast.model import CommForDetector

    torch.manual_seed(1)
    start = CommForDetector(model_size="tiny", input_size=224, patch_size=16)
    original = {"model": {f"_orig_mod.{k}": v for k, v in start.state_dict().items()}, "optimizer": {},
                "scheduler": {"last_epoch": 7}, "scaler": {}, "epoch": 1, "itr": 1234}
    torch.save(original, tmp_path / "original.pt")
    run = tmp_path / "run"
    final = train(_settings(easy, run, train_itrs=2, validate=False, ckpt=tmp_path / "original.pt",
                            freeze_backbone=True))
    trained = torch.load(final)
    before = start.state_dict()
    assert torch.equal(trained["vit.pos_embed"], before["vit.pos_embed"])  # frozen backbone
    assert not torch.equal(trained["vit.head.weight"], before["vit.head.weight"])  # the head trained
    assert [r["itr"] for r in _records(run) if "loss" in r] == [1, 2]  # a new schedule, not itr 1234


def test_resume_with_changed_settings_is_refused_unless_allowed(easy: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    train(_settings(easy, run, train_itrs=2, warmup_frac=0.5, validate=False))
    with pytest.raises(UserError) as err:
        train(_settings(easy, run, train_itrs=4, warmup_frac=0.5, validate=False, lr=2e-3))
    message = str(err.value)
    assert message.startswith(f"{run / 'ckpt-000000002.pt'} was written with other settings (")
    for change in ("--train-itrs: 2 -> 4", "--lr: 0.001 -> 0.002", "iterations in all: 2 -> 4",
                   "warmup iterations: 1 -> 2", "--allow-changed-settings"):
        assert change in message
    assert len(checkpoints_in(run)) == 1  # nothing ran
    capsys.readouterr()
    resumed = _settings(easy, run, train_itrs=4, warmup_frac=0.5, validate=False, lr=2e-3, allow_changed_settings=True)
    train(resumed)
    printed = capsys.readouterr().out
    assert "note: changed since" in printed and "--train-itrs: 2 -> 4" in printed
    assert "the data streams restart" not in printed  # neither the stream nor the process count changed
    records = [r for r in _records(run) if "loss" in r]
    assert [r["itr"] for r in records] == [1, 2, 3, 4]
    schedule = LRSchedule.from_settings(resumed, 9)
    for r in records[2:]:  # the resumed iterations follow the new schedule and lr
        assert r["lr"] == pytest.approx(2e-3 * schedule.factor(r["itr"] - 1), rel=1e-12)


def test_resume_changes_count_processes_and_stream_settings(easy: Path, tmp_path: Path) -> None:
    settings = _settings(easy, tmp_path, train_itrs=10)
    ckpt = TrainCheckpoint(model={}, model_args={}, optimizer={}, scaler={}, epoch=0, itr=5,
                           schedule={"world_size": 2, "total_itrs": 10, "warmup": 1}, data=[{}, {}],
                           settings=settings_dict(settings), version="")
    assert resume_changes(ckpt, settings, {"world_size": 2, "total_itrs": 10, "warmup": 1}) == ([], True)
    changes, same_stream = resume_changes(ckpt, settings, {"world_size": 1, "total_itrs": 10, "warmup": 1})
    assert changes == ["processes: 2 -> 1"] and not same_stream
    changes, same_stream = resume_changes(ckpt, dataclasses.replace(settings, seed=7),
                                          {"world_size": 2, "total_itrs": 10, "warmup": 1})
    assert changes == ["--seed: 0 -> 7"] and not same_stream


def test_resume_notices_a_change_of_precision(easy: Path, tmp_path: Path) -> None:
    """An fp32 run resumed where the default is now fp16 (CUDA) is a change to confirm, not silent."""
    fp32 = _settings(easy, tmp_path, train_itrs=10, use_amp=False)
    shape = {"world_size": 1, "total_itrs": 10, "warmup": 1}
    ckpt = TrainCheckpoint(model={}, model_args={}, optimizer={}, scaler={}, epoch=0, itr=5, schedule=shape,
                           data=[{}], settings=settings_dict(fp32), version="")
    changes, same_stream = resume_changes(ckpt, dataclasses.replace(fp32, use_amp=True), shape)
    assert changes == ["--use-amp: False -> True"] and same_stream


def test_warmup_longer_than_the_run_is_warned(easy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train(_settings(easy, tmp_path / "run", train_itrs=2, warmup_frac=-1, warmup_epochs=1, validate=False))
    assert "warning: the warmup (9 iterations, --warmup-epochs 1) is longer than the whole run (2)" in \
        capsys.readouterr().out


def test_fine_tuning_a_released_detector_folder(easy: Path, tmp_path: Path) -> None:
    """`--hf-model FOLDER` (a save_pretrained folder, as the Hub's): its weights and shape, a new schedule."""
    from commfor_fast.model import CommForDetector

    torch.manual_seed(3)
    released = CommForDetector(model_size="tiny", input_size=224, patch_size=16)
    released.save_pretrained(tmp_path / "released")
    run = tmp_path / "run"
    final = train(_settings(easy, run, train_itrs=2, validate=False, hf_model=str(tmp_path / "released"),
                            freeze_backbone=True, input_size=384))
    trained = torch.load(final)
    assert torch.equal(trained["vit.blocks.2.mlp.fc1.weight"], released.state_dict()["vit.blocks.2.mlp.fc1.weight"])
    assert trained["vit.pos_embed"].shape[1] == 197  # the shape of the released model (224), not --input-size
    assert [r["itr"] for r in _records(run) if "loss" in r] == [1, 2]
    with pytest.raises(UserError, match="--hf-model .*: give it alone, without --ckpt or --pretrained-path"):
        train(_settings(easy, tmp_path / "other", train_itrs=1, hf_model="x/y", ckpt=final))


def test_train_itrs_below_one_means_epochs(easy: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_settings(easy, run, train_itrs=-1, epochs=1, validate=False, log_every=100))
    assert [r["itr"] for r in _records(run) if "loss" in r] == [9]  # one epoch of 36 images at batch 4


def test_device_names_resolve_or_say_the_fix(monkeypatch):
    from commfor_fast.distributed import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("gpu", "cuda", "cuda:1"):  # "gpu" is DALI's word for it
        with pytest.raises(UserError, match=f"^--device {name}: no CUDA device is visible here; use --device cpu$"):
            resolve_device(name)
    with pytest.raises(UserError, match="use auto, cpu, cuda"):
        resolve_device("tpu")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_live_bar_on_a_terminal_and_lines_elsewhere(easy: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    train(_settings(easy, tmp_path / "plain", train_itrs=3, validate=False))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("itr ")]
    assert len(lines) == 3 and all(" loss " in line and " img/s " in line and "data wait" in line for line in lines)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(_settings(easy, tmp_path / "bar", train_itrs=3, validate=False))
    assert not any(line.startswith("itr ") for line in capsys.readouterr().out.splitlines())
    bar = terminal.getvalue()
    assert re.search(r"train: 100%.* 3/3 \[\d\d:\d\d<\d\d:\d\d, .*loss \d\.\d{4} \| lr .* img/s \| data wait \d+%", bar)


def test_a_failing_run_still_closes_its_stream_and_log(easy: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The teardown runs whatever happens: a stream that fails mid-run is closed, and so is the run log."""
    import commfor_fast.train as train_module
    from commfor_fast.runlog import MetricsLog

    closed: list[str] = []

    class Failing:
        def __next__(self) -> None:
            raise RuntimeError("the data went away")

        def state_dict(self) -> dict:
            return {}

        def close(self) -> None:
            closed.append("stream")

    monkeypatch.setattr(train_module, "create_stream", lambda *args, **kwargs: Failing())
    log_close = MetricsLog.close
    monkeypatch.setattr(MetricsLog, "close", lambda self: (closed.append("log"), log_close(self)))
    with pytest.raises(RuntimeError, match="the data went away"):
        train(_settings(easy, tmp_path / "run", train_itrs=2, validate=False))
    assert closed == ["stream", "log"]
