"""The metric table (`metrics.METRICS`): one row adds a metric to both reports, and the
scoring that evaluation and training's validation share (`evaluate.score_batches`,
`evaluate.gather_scores`)."""

from __future__ import annotations

import csv
import gc
import json
import weakref
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import commfor_fast.evaluate as evaluate_module
from commfor_fast import robustness
from commfor_fast.distributed import Dist
from commfor_fast.evaluate import PassTiming, Scores, gather_scores, score_batches
from commfor_fast.metrics import EVAL, METRICS, ROBUSTNESS, Group, Metric, evaluate, metrics_of
from commfor_fast.pipelines.loader import Batch
from commfor_fast.pipelines.perturb import parse_perturbations
from commfor_fast.report import format_table, write_report

NAMES = ["real", "gen-a", "gen-b"]
ROWS = [  # (generator id, label, score)
    (0, 0, 0.1), (0, 0, 0.3), (0, 0, 0.6), (0, 0, 0.2),
    (1, 1, 0.9), (1, 1, 0.7), (1, 0, 0.4),
    (2, 1, 0.45), (2, 1, 0.8),
]


def _test_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gids, labels, scores = (np.array(col) for col in zip(*ROWS))
    return labels, scores, gids


def _brier(group: Group) -> float | None:
    """Mean squared error of P(fake) against the label: a metric the package does not have."""
    return float(np.mean((group.scores - group.labels) ** 2)) if group.labels.size else None


BRIER = Metric("brier", "Brier", _brier, headline=True, fmt=lambda v: "n/a" if v is None else f"{v:.3f}")


def test_one_row_adds_a_metric_to_both_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METRICS, "brier", BRIER)
    labels, scores, gids = _test_set()
    report = evaluate(labels, scores, gids, NAMES)
    levels = parse_perturbations(["noise=8"])
    robust = [robustness.level_metrics(level, labels, np.clip(scores + 0.1 * i, 0, 1), gids, NAMES)
              for i, level in enumerate(levels)]
    write_report(report, tmp_path, sections={"robustness": robustness.report_section(robust, "decoded images", 0)})
    robustness.write_outputs(robust, tmp_path)

    # gen-a: (0.1^2 + 0.3^2 + 0.4^2) / 3; overall over the 9 images; the mean over gen-a and gen-b
    gen_a = (0.01 + 0.09 + 0.16) / 3
    gen_b = (0.55 ** 2 + 0.2 ** 2) / 2
    overall = (0.01 + 0.09 + 0.36 + 0.04 + 0.01 + 0.09 + 0.16 + 0.55 ** 2 + 0.04) / 9
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["brier"] == pytest.approx(overall) and data["mean_brier"] == pytest.approx((gen_a + gen_b) / 2)
    assert data["generators"][1]["brier"] == pytest.approx(gen_a)
    clean = data["robustness"]["levels"][0]
    assert clean["brier"] == data["brier"] and clean["mean_brier"] == data["mean_brier"]  # clean is the same scores
    assert clean["generators"][2]["brier"] == pytest.approx(gen_b)
    assert data["robustness"]["levels"][1]["brier"] != data["brier"]  # the noise level's own scores

    for name in ("per_generator.csv", "robustness.csv"):
        with (tmp_path / name).open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert float(rows[1]["brier"]) == pytest.approx(gen_a), name
        assert list(rows[0])[-1] == "brier", name  # after the built-in metrics, in table order

    table = format_table(report).splitlines()
    assert table[0].endswith(f"Brier {overall:.3f}") and table[1].endswith(f"Brier {(gen_a + gen_b) / 2:.3f}")
    header = next(line for line in table if line.startswith("generator (worst AP first)"))
    assert header.split()[-1] == "Brier"
    assert next(line for line in table if line.startswith("gen-a")).split()[-1] == f"{gen_a:.3f}"
    robust_table = robustness.format_table(robust).splitlines()
    assert robust_table[1].split()[:8] == ["family", "level", "acc", "bal_acc", "AP", "TPR@1%", "TPR@5%", "ECE"]
    assert robust_table[1].split()[8] == "Brier" and robust_table[2].split()[8] == f"{overall:.3f}"


def test_the_reports_share_their_records() -> None:
    """The clean level and the plain report: one record shape, equal values where both carry a metric."""
    labels, scores, gids = _test_set()
    report = evaluate(labels, scores, gids, NAMES)
    clean = robustness.level_metrics(parse_perturbations(["jpeg=50"])[0], labels, scores, gids, NAMES)
    shared = set(report.values) & set(clean.values)
    assert {"accuracy", "balanced_accuracy", "real_accuracy", "fake_accuracy", "ap", "auc", "mean_ap"} <= shared
    assert all(report.values[k] == clean.values[k] for k in shared)
    for mine, theirs in zip(report.generators, clean.generators):
        assert (mine.name, mine.n_real, mine.n_fake) == (theirs.name, theirs.n_real, theirs.n_fake)
        assert all(mine.values[k] == theirs.values[k] for k in set(mine.values) & set(theirs.values))
    # what each report carries is declared in the table, nowhere else
    assert "ap_within" in report.generators[1].values and "ap_within" not in clean.generators[1].values
    assert [m.name for m in metrics_of(ROBUSTNESS, "headline")] == ["accuracy", "balanced_accuracy", "ap",
                                                                    "tpr_at_fpr_1pct", "tpr_at_fpr_5pct", "ece"]
    assert [m.name for m in metrics_of(EVAL, "mean")] == ["balanced_accuracy", "fake_accuracy", "ap", "ap_balanced",
                                                          "auc", "ap_within"]
    assert [m.name for m in metrics_of(EVAL, "overall")] == ["accuracy", "balanced_accuracy", "real_accuracy",
                                                             "fake_accuracy", "ap", "auc"]


def test_a_metric_row_declares_its_chance_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row's `chance` reaches report.json's `chance` and the console table's footer,
    overall and as the mean over the fake generators, next to the built-in ones."""
    monkeypatch.setitem(METRICS, "brier", replace(BRIER, chance=lambda g: 0.25))  # scores of 0.5 everywhere
    labels, scores, gids = _test_set()
    report = evaluate(labels, scores, gids, NAMES)
    write_report(report, tmp_path)
    chance = json.loads((tmp_path / "report.json").read_text())["chance"]
    assert (chance["brier"], chance["mean_brier"], chance["auc"], chance["mean_auc"]) == (0.25, 0.25, 0.5, 0.5)
    assert chance["ap"] == 4 / 9 and chance["mean_ap"] == pytest.approx((2 / 7 + 2 / 7) / 2)  # 5 reals in all
    overall, means = format_table(report).splitlines()[-2:]
    assert overall == "chance level (scores that ignore the image): bal_acc 0.5000  AP 0.4444  AUC 0.5000  Brier 0.250"
    assert means == ("chance level of the means over fake generators: bal_acc 0.5000  AP 0.2857  AP_bal 0.5000  "
                     "AUC 0.5000  AP_within 0.6667  Brier 0.250")  # AP_within: gen-a, 2 fakes and 1 own real


def test_a_metric_row_that_cannot_be_shown_is_refused() -> None:
    with pytest.raises(ValueError, match="brier: a mean over generators needs per_generator=True"):
        Metric("brier", "Brier", _brier, per_generator=False)
    with pytest.raises(ValueError, match="brier: a headline column shows the overall value"):
        Metric("brier", "Brier", _brier, overall=False, headline=True)


class _Sum(torch.nn.Module):
    """A stand-in detector: the logit is the sum of the image's pixels."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.sum((1, 2, 3))[:, None]


class _Loader(list):
    """Batches as an evaluation loader serves them: `len` is the number of images
    (`announced`, when given, instead of the images the batches hold)."""

    def __init__(self, batches: Iterable[Batch] = (), announced: int | None = None) -> None:
        super().__init__(batches)
        self.announced = announced

    def __len__(self) -> int:
        return sum(len(batch.labels) for batch in self) if self.announced is None else self.announced


def _batches(n_levels: int) -> _Loader:
    """Two batches (3 + 2 images) of 1x2x2 images; level i is the clean image plus i."""
    out = _Loader()
    for first, size in ((0, 3), (3, 2)):
        numbers = torch.arange(first, first + size)
        images = numbers.float()[:, None, None, None].expand(size, 1, 2, 2)
        levels = tuple(images + i for i in range(n_levels)) if n_levels > 1 else ()
        out.append(Batch(images, (numbers % 2).float(), numbers // 2, numbers + 100, levels))
    return out


def test_score_batches_scores_every_image_at_every_level() -> None:
    timing = PassTiming(2)
    per_level = score_batches(_Sum(), _batches(2), "val", device=torch.device("cpu"), autocast_dtype=torch.bfloat16,
                              use_amp=False, levels=2, timing=timing)
    clean, shifted = per_level
    assert clean.sets == ["val"] * 5 and clean.numbers.tolist() == [100, 101, 102, 103, 104]
    assert clean.generator_ids.tolist() == [0, 0, 1, 1, 2] and clean.labels.tolist() == [0, 1, 0, 1, 0]
    assert clean.logits.tolist() == [0, 4, 8, 12, 16] and shifted.logits.tolist() == [4, 8, 12, 16, 20]
    assert (clean.logits.dtype, clean.labels.dtype, clean.numbers.dtype) == (np.float32, np.float32, np.int64)
    assert timing.images == 5
    empty = score_batches(_Sum(), _Loader(), "val", device=torch.device("cpu"), autocast_dtype=torch.bfloat16,
                          use_amp=False)[0]
    assert empty.sets == [] and empty.logits.dtype == np.float32 and empty.numbers.dtype == np.int64


def test_score_batches_keeps_nothing_of_the_batches() -> None:
    """The scores are copied into arrays allocated once: no batch tensor stays alive after
    its batch (per-batch `.numpy()` views kept them all and grew memory per image)."""
    loader = _batches(2)
    alive = [weakref.ref(t) for batch in loader for t in (batch.labels, batch.generator_ids, batch.sample_numbers)]
    per_level = score_batches(_Sum(), loader, "val", device=torch.device("cpu"), autocast_dtype=torch.bfloat16,
                              use_amp=False, levels=2)
    loader.clear()
    gc.collect()
    assert not [ref for ref in alive if ref() is not None]
    assert np.shares_memory(per_level[1].numbers, per_level[0].numbers) and per_level[1].labels.tolist() == [0, 1, 0, 1, 0]


def test_score_batches_refuses_more_images_than_the_loader_announced() -> None:
    with pytest.raises(RuntimeError, match="set val: the loader yielded more than its 4 images"):
        score_batches(_Sum(), _Loader(_batches(1), announced=4), "val", device=torch.device("cpu"), autocast_dtype=torch.bfloat16, use_amp=False)


def test_gather_scores_joins_the_ranks_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """What training's validation does on every rank: score its share, gather on rank 0."""
    rank0, rank1 = ([score_batches(_Sum(), _Loader(batches), "val", device=torch.device("cpu"),
                                   autocast_dtype=torch.bfloat16, use_amp=False)[0]]
                    for batches in (_batches(1)[:1], _batches(1)[1:]))
    monkeypatch.setattr(evaluate_module, "all_gather", lambda obj, env: [rank0, rank1])
    for rank, mine in enumerate((rank0, rank1)):  # every rank gets every image, in rank order
        joined = gather_scores(mine, Dist(rank=rank, local_rank=rank, world_size=2))
        assert len(joined) == 1 and joined[0].numbers.tolist() == [100, 101, 102, 103, 104]
        assert joined[0].logits.tolist() == [0, 4, 8, 12, 16]
    assert Scores.merge([]).logits.dtype == np.float32
