"""How sure evaluation figures are (issue #18, item 1): bootstrap intervals, paired differences,
calibration of probabilities and ratings, rejected users counted as misses."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score
from test_evaluate import ranking_frame, rp_frame, write_run

from itdr_batch import intervals as intervals_module
from itdr_batch.evaluate import HIT_KS, NDCG_KS, _ranking_metrics, evaluate, render
from itdr_batch.intervals import intervals, paired, ranking_values, rating_values
from itdr_batch.reliability import probability_calibration, rating_tables


def test_per_user_values_average_to_the_library_metrics() -> None:
    rng = np.random.default_rng(0)
    n, width = 300, 10
    relevance = np.zeros((n, width), dtype=np.int64)
    relevance[np.arange(n), rng.integers(0, width, n)] = 1
    scores = rng.random((n, width))
    values = ranking_values(relevance, scores, HIT_KS, NDCG_KS)
    library = _ranking_metrics(relevance, scores)
    assert set(values) == set(library)
    for name, per_user in values.items():
        assert per_user.mean() == pytest.approx(library[name], abs=1e-12), name


def test_intervals_cover_a_known_hit_rate_at_about_the_nominal_rate() -> None:
    """200 independent runs of 300 users with hit probability 0.3: the 95% interval covers 0.3
    in 90-99% of them (the percentile bootstrap runs a little under nominal at this size)."""
    truth, covered, runs = 0.3, 0, 200
    for seed in range(runs):
        hits = (np.random.default_rng(seed).random(300) < truth).astype(float)
        interval = intervals({"hr@1": hits}, seed)["hr@1"]
        assert interval is not None
        covered += interval["ci_low"] <= truth <= interval["ci_high"]
    assert 0.90 <= covered / runs <= 0.99


def test_rmse_interval_surrounds_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 6, 500).astype(float)
    predicted = truth + rng.normal(0, 1, 500)
    values = rating_values(truth, predicted)
    rmse = float(np.sqrt(values["rmse"].mean()))
    interval = intervals(values, 0)["rmse"]
    assert interval is not None
    assert interval["ci_low"] < rmse < interval["ci_high"]
    assert interval["ci_low"] > 0.9
    assert interval["ci_high"] < 1.1


def test_a_scorer_against_itself_differs_by_nothing() -> None:
    hits = {"hr@1": (np.random.default_rng(2).random(100) < 0.5).astype(float)}
    same = paired(hits, hits, 0)["hr@1"]
    assert same == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


def test_a_real_difference_is_significant_and_noise_is_not() -> None:
    rng = np.random.default_rng(3)
    good = {"hr@1": (rng.random(200) < 0.6).astype(float)}
    bad = {"hr@1": (rng.random(200) < 0.2).astype(float)}
    noise = {"hr@1": (rng.random(200) < 0.6).astype(float)}
    clear = paired(good, bad, 0)["hr@1"]
    assert clear is not None
    assert clear["ci_low"] > 0
    assert clear["p_value"] < 0.01
    unclear = paired(good, noise, 0)["hr@1"]
    assert unclear is not None
    assert unclear["ci_low"] < 0 < unclear["ci_high"] or abs(unclear["difference"]) < 0.1


def test_evaluation_json_gains_intervals_and_differences(tmp_path: Path) -> None:
    n, width = 60, 10
    labels = np.arange(n) % width
    perfect = np.where(np.arange(width) == labels[:, None], 2.0, 1.0)
    users = list(range(n))
    ratings = rp_frame(users, [0] * n, [4.0] * n, [4.0 if u % 2 else 5.0 for u in users])
    run = write_run(tmp_path, {"tkr": ranking_frame(perfect, labels), "rp": ratings})
    result = evaluate(run)
    tkr = result["tasks"]["tkr"]["base"]
    assert set(tkr["metrics"]["model"]) == set(tkr["metrics_ci"]["model"])
    assert tkr["metrics_ci"]["model"]["hr@1"] == {"ci_low": 1.0, "ci_high": 1.0}
    versus = tkr["model_vs"]["random"]["hr@1"]
    assert versus["difference"] > 0.5
    assert versus["p_value"] < 0.01
    rp = result["tasks"]["rp"]["base"]
    low, high = rp["metrics_ci"]["model"]["rmse"].values()
    assert low <= rp["metrics"]["model"]["rmse"] <= high
    assert "95% CI" in [c.header for c in render(result).columns]


def test_expected_calibration_error_by_hand() -> None:
    """100 candidates at prob 0.25 with 25 hits (calibrated), 100 at 0.85 with 50 (0.35 off):
    ECE = 0.5 * 0 + 0.5 * 0.35."""
    prob = np.array([0.25] * 100 + [0.85] * 100)
    label = np.array([True] * 25 + [False] * 75 + [True] * 50 + [False] * 50)
    result = probability_calibration(label, prob)
    assert result is not None
    assert result["ece"] == pytest.approx(0.175)
    assert result["auc"] == pytest.approx(roc_auc_score(label, prob))
    assert result["brier"] == pytest.approx(np.mean((prob - label) ** 2))
    filled = [b for b in result["bins"] if b["n"]]
    assert [(b["n"], b["hit_rate"]) for b in filled] == [(100, 0.25), (100, 0.5)]
    assert probability_calibration(np.array([False, False]), np.array([0.1, 0.2])) is None


def test_rating_tables_put_half_stars_at_the_nearest_value() -> None:
    truth = np.array([5.0, 4.5, 2.0, 1.0])
    expected = np.array([4.6, 4.2, 2.4, 1.9])
    argmax = np.array([5.0, 4.0, 2.0, 2.0])
    tables = rating_tables(truth, expected, argmax, [1, 2, 3, 4, 5])
    confusion = np.array(tables["confusion"])
    assert confusion.sum() == 4
    assert confusion[4, 4] == 1  # 5 -> 5
    assert confusion[3, 3] == 1  # 4.5 (ties to the lower: 4) -> 4
    assert confusion[0, 1] == 1  # 1 -> 2
    rows = {r["rating"]: r for r in tables["reliability"]}
    assert rows[2.0]["n"] == 2  # expected 2.4 and 1.9
    assert rows[2.0]["mean_true"] == pytest.approx(1.5)
    assert rows[3.0]["n"] == 0
    assert rows[3.0]["mean_true"] is None


def test_overall_counts_rejected_users_as_misses_and_generate_has_no_calibration(
    tmp_path: Path,
) -> None:
    n, width = 20, 10
    labels = np.arange(n) % width
    perfect = np.where(np.arange(width) == labels[:, None], 2.0, 1.0)
    frame = ranking_frame(perfect, labels).with_columns(prob=pl.col("score") / 20)
    counts = {"scored": n, "rejected": 5, "reasons": {"engine_error": 5}}
    run = write_run(tmp_path, {"tkr": frame}, counts={"tasks": {"tkr": {"base": counts}}})
    group = evaluate(run)["tasks"]["tkr"]["base"]
    assert group["metrics"]["model"]["hr@1"] == 1.0
    assert group["metrics_overall"]["hr@1"] == pytest.approx(20 / 25)
    assert group["calibration"]["auc"] == 1.0
    no_prob = write_run(tmp_path / "gen", {"tkr": ranking_frame(perfect, labels)})
    assert evaluate(no_prob)["tasks"]["tkr"]["base"]["calibration"] is None


def test_resampling_in_batches_gives_the_same_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Millions of users are resampled a few resamples at a time (bounded memory); the draws and
    so the intervals are those of one batch."""
    rng = np.random.default_rng(3)
    values = {"hr@1": (rng.random(500) < 0.3).astype(float), "rmse": rng.random(500)}
    other = {name: v[::-1].copy() for name, v in values.items()}
    whole = intervals(values, seed=1), paired(values, other, seed=1)
    monkeypatch.setattr(intervals_module, "RESAMPLED_VALUES", 500 * 7)
    assert (intervals(values, seed=1), paired(values, other, seed=1)) == whole
