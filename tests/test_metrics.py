"""Metrics: hand-computed values, sklearn agreement with ties, the per-generator protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from commfor_fast.metrics import EvalReport, accuracy, average_precision, evaluate, roc_auc, subsample_sorted


def test_hand_computed_without_ties() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    assert accuracy(labels, scores) == 0.75  # 0.35 is a missed fake
    # thresholds 0.8 (P=1, R=1/2) and 0.35 (P=2/3, R=1): 1/2 * 1 + 1/2 * 2/3
    assert average_precision(labels, scores) == pytest.approx(5 / 6)
    # 4 fake/real pairs, 0.35 < 0.4 loses once
    assert roc_auc(labels, scores) == pytest.approx(3 / 4)


def test_hand_computed_with_ties() -> None:
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.5, 0.5, 0.2, 0.9])
    assert accuracy(labels, scores) == 0.75  # exactly 0.5 is "real"
    # threshold 0.9: P=1, R=1/2; threshold 0.5 takes both tied images: P=2/3, R=1
    assert average_precision(labels, scores) == pytest.approx(5 / 6)
    # pairs: win, win, tie (1/2), win
    assert roc_auc(labels, scores) == pytest.approx(3.5 / 4)


def test_one_label_is_undefined_not_minus_one() -> None:
    assert average_precision(np.array([1, 1]), np.array([0.2, 0.9])) is None
    assert roc_auc(np.array([0, 0]), np.array([0.2, 0.9])) is None
    assert accuracy(np.array([]), np.array([])) is None


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_sklearn_on_random_data_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 2000))
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)
    scores = rng.integers(0, int(rng.integers(2, 30)), n) / 10.0  # few distinct values: many ties
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    float32 = rng.random(n).astype(np.float32)
    assert average_precision(labels, float32) == pytest.approx(average_precision_score(labels, float32), abs=1e-12)
    assert roc_auc(labels, float32) == pytest.approx(roc_auc_score(labels, float32), abs=1e-12)


NAMES = ["real_a", "gen_x", "gen_y", "gen_z", "unused"]


def small_test_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [  # (generator id, label, score)
        (0, 0, 0.1), (0, 0, 0.3), (0, 0, 0.6),  # real-only source
        (1, 1, 0.9), (1, 1, 0.7), (1, 0, 0.2),  # both labels
        (2, 1, 0.4),  # fakes only
        (3, 1, 0.55), (3, 1, 0.05),  # fakes only
    ]
    gids, labels, scores = (np.array(col) for col in zip(*rows))
    return labels, scores, gids


def test_per_generator_protocol_by_hand() -> None:
    labels, scores, gids = small_test_set()
    report = evaluate(labels, scores, gids, NAMES)
    by_name = {g.name: g for g in report.generators}
    assert list(by_name) == ["real_a", "gen_x", "gen_y", "gen_z"]  # "unused" has no images

    # All reals of the test set: 0.1 0.2 0.3 0.6; at 0.5 three of four are right (TNR 3/4).
    x, y, z, real = by_name["gen_x"], by_name["gen_y"], by_name["gen_z"], by_name["real_a"]
    assert (x.n_real, x.n_fake, x.real_accuracy, x.fake_accuracy) == (1, 2, 1.0, 1.0)
    assert x.balanced_accuracy == (1.0 + 0.75) / 2 and "accuracy" not in x.values  # overall only
    assert (x.ap, x.auc, x.ap_within) == (1.0, 1.0, 1.0)
    # 0.4 is below one real (0.6): P = 1/2; above three of four reals
    assert (y.ap, y.auc, y.ap_within) == (0.5, 0.75, None)
    assert (y.balanced_accuracy, y.real_accuracy, y.fake_accuracy) == ((0.0 + 0.75) / 2, None, 0.0)
    # 0.55: P = 1/2 at R = 1/2; 0.05: P = 2/6 at R = 1 -> 1/4 + 1/6; pairs won 3 of 8
    assert z.ap == pytest.approx(5 / 12)
    assert z.auc == pytest.approx(3 / 8)
    assert (z.ap_within, z.fake_accuracy, z.balanced_accuracy) == (None, 0.5, (0.5 + 0.75) / 2)
    assert (real.n_real, real.n_fake, real.ap, real.auc, real.ap_within) == (3, 0, None, None, None)
    assert (real.balanced_accuracy, real.real_accuracy, real.fake_accuracy) == (None, pytest.approx(2 / 3), None)

    # Means over the three fake generators; undefined values left out, never -1.
    assert report.n_fake_generators == 3
    assert report.mean_balanced_accuracy == pytest.approx((0.875 + 0.375 + 0.625) / 3)
    assert report.mean_fake_accuracy == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert report.mean_ap == pytest.approx((1.0 + 0.5 + 5 / 12) / 3)
    assert report.mean_auc == pytest.approx((1.0 + 0.75 + 3 / 8) / 3)
    assert report.mean_ap_within == 1.0  # only gen_x has both labels

    assert (report.n, report.n_real, report.n_fake) == (9, 4, 5)
    assert report.accuracy == pytest.approx(6 / 9)
    assert report.real_accuracy == 0.75 and report.fake_accuracy == 0.6
    assert report.balanced_accuracy == pytest.approx((0.6 + 0.75) / 2)
    # fakes high to low: 0.9 (P 1), 0.7 (P 1), 0.55 (P 3/4), 0.4 (P 4/5), 0.05 (P 5/9)
    assert report.ap == pytest.approx((1 + 1 + 3 / 4 + 4 / 5 + 5 / 9) / 5)
    assert report.auc == pytest.approx(14 / 20)
    assert [(s.name, s.n, s.accuracy) for s in report.real_sources] == [
        ("real_a", 3, pytest.approx(2 / 3)), ("gen_x", 1, 1.0)]


def test_protocol_matches_sklearn_on_fakes_plus_all_reals() -> None:
    rng = np.random.default_rng(7)
    n, n_gen = 3000, 12
    gids = rng.integers(0, n_gen, n)
    labels = (rng.random(n) < 0.6).astype(int)
    labels[gids == 0] = 0  # a real-only source
    scores = np.round(rng.random(n) * (0.3 + 0.05 * gids), 2)  # ties, generator-dependent
    report = evaluate(labels, scores, gids, [f"g{i}" for i in range(n_gen)])
    reals = labels == 0
    for g in report.generators[1:]:
        gid = int(g.name[1:])
        fakes = (gids == gid) & (labels == 1)
        y = np.r_[np.zeros(reals.sum()), np.ones(fakes.sum())]
        s = np.r_[scores[reals], scores[fakes]]
        assert g.ap == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert g.auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        own = gids == gid
        assert g.ap_within == pytest.approx(average_precision_score(labels[own], scores[own]), abs=1e-12)
    assert report.ap == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert report.mean_ap == pytest.approx(np.mean([g.ap for g in report.generators[1:]]))


def test_no_reals_anywhere_leaves_ap_undefined() -> None:
    report = evaluate(np.array([1, 1, 1]), np.array([0.9, 0.2, 0.7]), np.array([0, 0, 1]), ["a", "b"])
    assert report.ap is None and report.auc is None and report.real_accuracy is None
    assert all(g.ap is None and g.auc is None and g.ap_within is None for g in report.generators)
    assert (report.mean_ap, report.mean_auc, report.mean_ap_within) == (None, None, None)
    assert report.mean_fake_accuracy == pytest.approx((0.5 + 1.0) / 2)
    assert report.balanced_accuracy is None and report.mean_balanced_accuracy is None
    assert report.real_sources == []


def test_report_is_json_serialisable_and_reads_back() -> None:
    labels, scores, gids = small_test_set()
    report = evaluate(labels, scores.astype(np.float32), gids, NAMES)
    text = json.dumps(report.to_dict())
    assert "-1" not in text
    again = EvalReport.from_dict({**json.loads(text), "meta": {"run": "x"}})
    assert again == report


@pytest.mark.parametrize(("labels", "scores", "gids", "match"), [
    ([0, 1], [0.1], [0, 0], "same length"),
    ([0, 2], [0.1, 0.2], [0, 0], "0 \\(real\\) or 1 \\(fake\\)"),
    ([0, 1], [0.1, float("nan")], [0, 0], "NaN"),
    ([0, 1], [0.1, 0.2], [0, 5], "generator ids"),
    ([], [], [], "no images"),
])
def test_bad_inputs_are_rejected(labels: list, scores: list, gids: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate(np.array(labels), np.array(scores), np.array(gids, dtype=int), ["a", "b"])


def test_balanced_accuracy_does_not_flatter_a_model_that_calls_everything_fake() -> None:
    """Every score 0.9: every fake right, every real wrong. Fake-only accuracy says 1.0;
    balanced accuracy, per generator and overall, says 0.5 (chance)."""
    gids = np.array([0] * 50 + [1] * 25 + [2] * 25)
    labels = (gids > 0).astype(int)
    report = evaluate(labels, np.full(100, 0.9), gids, ["real", "gan", "diffusion"])
    assert report.mean_fake_accuracy == 1.0 and report.real_accuracy == 0.0
    assert report.mean_balanced_accuracy == 0.5 and report.balanced_accuracy == 0.5
    assert report.chance["mean_balanced_accuracy"] == 0.5


def test_the_threshold_moves_every_accuracy() -> None:
    labels, scores, gids = small_test_set()
    report = evaluate(labels, scores, gids, NAMES, threshold=0.35)
    # reals 0.1 0.2 0.3 0.6: three at or below 0.35; fakes 0.9 0.7 0.55 0.4 above it, 0.05 not
    assert (report.threshold, report.real_accuracy, report.fake_accuracy) == (0.35, 0.75, 0.8)
    assert report.accuracy == pytest.approx(7 / 9)
    y = next(g for g in report.generators if g.name == "gen_y")
    assert (y.fake_accuracy, y.balanced_accuracy) == (1.0, (1.0 + 0.75) / 2)


def test_ap_against_matched_reals_is_seeded_and_does_not_fall_with_the_number_of_reals() -> None:
    """Random scores, 400 generators of 10 fakes, 5,000 reals: AP against all reals sits
    at the share of fakes (10 / 5,010), AP against as many reals as fakes near 0.5; each
    generator draws its own reals, the same ones on every run."""
    rng = np.random.default_rng(3)
    gids = np.r_[np.zeros(5000, int), np.repeat(np.arange(1, 401), 10)]
    labels = (gids > 0).astype(int)
    scores = rng.random(gids.size)
    names = [f"g{i}" for i in range(401)]
    report = evaluate(labels, scores, gids, names)
    assert report.mean_ap < 0.01 and report.chance["mean_ap"] == pytest.approx(10 / 5010)
    # random scores' expected AP is the share of fakes for large groups, a little more for
    # small ones: 0.568 for 10 fakes against 10 reals (0.0036 against 5,000)
    assert 0.5 < report.mean_ap_balanced < 0.62 and report.chance["mean_ap_balanced"] == 0.5
    assert report.mean_auc == pytest.approx(0.5, abs=0.03) and report.chance["mean_auc"] == 0.5
    all_reals = np.sort(scores[labels == 0])
    for g in report.generators[1:4]:
        gid = int(g.name[1:])
        drawn = subsample_sorted(all_reals, 10, gid)
        assert drawn.size == 10 and np.isin(drawn, all_reals).all() and np.all(np.diff(drawn) > 0)
        y = np.r_[np.zeros(10), np.ones(10)]
        assert g.ap_balanced == pytest.approx(average_precision_score(y, np.r_[drawn, scores[gids == gid]]))
    assert not np.array_equal(subsample_sorted(all_reals, 10, 1), subsample_sorted(all_reals, 10, 2))
    assert evaluate(labels, scores, gids, names).to_dict() == report.to_dict()  # deterministic
    few = evaluate(labels[4990:], scores[4990:], gids[4990:], names)  # 10 reals: fewer than 10 fakes? equal: all
    assert few.generators[1].ap_balanced == few.generators[1].ap


def test_chance_levels_are_in_the_report() -> None:
    labels, scores, gids = small_test_set()
    report = evaluate(labels, scores, gids, NAMES)
    # overall: 5 fakes and 4 reals; per fake generator: x 2 fakes, y 1, z 2 against the 4 reals
    assert report.chance == {"balanced_accuracy": 0.5, "ap": 5 / 9, "auc": 0.5, "mean_balanced_accuracy": 0.5,
                             "mean_ap": pytest.approx((2 / 6 + 1 / 5 + 2 / 6) / 3), "mean_ap_balanced": 0.5,
                             "mean_auc": 0.5, "mean_ap_within": 2 / 3}  # only gen_x has its own real
    assert EvalReport.from_dict(json.loads(json.dumps(report.to_dict()))).chance == report.chance


def test_a_report_written_before_balanced_accuracy_reads_back() -> None:
    old = {"n": 3, "n_real": 1, "n_fake": 2, "accuracy": 1.0, "real_accuracy": 1.0, "fake_accuracy": 1.0, "ap": 1.0,
           "auc": 1.0, "mean_accuracy": 1.0, "mean_ap": 1.0, "mean_auc": 1.0, "mean_ap_within": None,
           "n_fake_generators": 1, "generators": [
               {"name": "real", "n_real": 1, "n_fake": 0, "accuracy": 1.0, "real_accuracy": 1.0,
                "fake_accuracy": None, "ap": None, "auc": None, "ap_within": None},
               {"name": "gan", "n_real": 0, "n_fake": 2, "accuracy": 1.0, "real_accuracy": None,
                "fake_accuracy": 1.0, "ap": 1.0, "auc": 1.0, "ap_within": None}],
           "real_sources": [{"name": "real", "n": 1, "accuracy": 1.0}], "threshold": 0.5}
    report = EvalReport.from_dict(old)
    assert (report.accuracy, report.mean_accuracy, report.mean_ap, report.chance) == (1.0, 1.0, 1.0, {})
    assert report.generators[1].fake_accuracy == 1.0 and report.generators[1].accuracy == 1.0
