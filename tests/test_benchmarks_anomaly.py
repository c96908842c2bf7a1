"""Benchmarks on small slices of the shared datasets (the full runs are `cellwatch benchmark skab|nab`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellwatch.detect.bench_nab import published_anchors, run_nab
from cellwatch.detect.bench_skab import read_skab, run_skab, skab_files
from cellwatch.errors import CellwatchError

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
pytestmark = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"shared datasets not found at {DATASETS}")


def test_skab_files_and_split_follow_the_protocol():
    files = skab_files(DATASETS / "skab")
    assert len(files) == 34
    rows = sum(len(read_skab(p)) - 400 for p in files)
    assert rows == 23801  # the README's test-part size under the 400-row split


def test_run_skab_on_a_slice():
    r = run_skab(DATASETS / "skab", files=["valve1/0.csv", "valve2/0.csv"])
    ours = r["ours"]
    assert r["dataset"] == "skab" and r["detector"] == "window-pca" and ours["files"] == 2
    assert 0 <= ours["far"] <= 100 and 0 <= ours["mar"] <= 100
    assert ours["f1"] > 0.5  # two clear anomalies: a working detector finds most of both
    assert ours["changepoints"] == 8  # 4 in each file (counted from the files)
    # the declared split: valve1 files choose, valve2 files are held out; both reported apart
    assert ours["selection_files"]["files"] == 1 and ours["holdout_files"]["files"] == 1
    assert ours["holdout_files"]["test_rows"] + ours["selection_files"]["test_rows"] == ours["test_rows"]
    assert "choices" in r and r["settings"]["lags"] == 25
    assert "cellwatch ensemble (defaults)" in r["table"] and "Conv-AE" in r["table"]
    assert r["ours_ensemble"]["files"] == 2
    assert r["factor_rule"]["selection_files"] == 1  # one selection file: the rule needs two, says so
    with pytest.raises(CellwatchError):
        run_skab(DATASETS / "skab", files=["valve9/0.csv"])


def test_factor_rule_picks_the_best_f1_within_the_far_budget():
    from cellwatch.detect.bench_skab import choose_factor
    factors = (2.0, 3.0, 4.0)
    # files x factors x (TP, FP, FN, TN): a higher factor flags fewer rows
    counts = np.array([[[98, 30, 2, 70], [80, 12, 20, 88], [50, 2, 50, 98]],
                       [[49, 10, 1, 40], [40, 6, 10, 44], [30, 1, 20, 49]]])
    # pooled FAR 26.7 / 12.0 / 2.0 %, F1 0.872 / 0.833 / 0.687
    assert choose_factor(counts, factors, 30.0) == 0
    assert choose_factor(counts, factors, 13.6) == 1
    assert choose_factor(counts, factors, 5.0) == 2
    assert choose_factor(counts, factors, 1.0) == 2  # nothing meets the budget -> the largest factor


def test_factor_counts_match_the_detector_at_the_default_factor():
    from cellwatch.detect.bench_skab import SKAB_DETECTOR, TRAIN_ROWS, _counts_by_factor, predict_file
    path = DATASETS / "skab" / "valve1" / "0.csv"
    df = read_skab(path)
    pred, _ = predict_file(df)
    y = df["anomaly"].to_numpy()[TRAIN_ROWS:] == 1
    expect = [(pred[y] == 1).sum(), (pred[~y] == 1).sum(), (pred[y] == 0).sum(), (pred[~y] == 0).sum()]
    f = SKAB_DETECTOR["factor"]
    got = _counts_by_factor(path, [(f, f * SKAB_DETECTOR["close"])])[0]
    assert got.tolist() == expect


def test_published_nab_anchors_reproduce_the_readme_table():
    import json
    windows = json.loads((DATASETS / "nab" / "labels" / "combined_windows.json").read_text())
    a = published_anchors(DATASETS / "nab", windows)
    assert a["ARTime"] == {"standard": 77.0, "reward_low_FP_rate": 67.7, "reward_low_FN_rate": 82.26}
    assert a["contextOSE"]["standard"] == 75.41 and a["expose"]["reward_low_FP_rate"] == 2.81
    assert a["null"]["standard"] == 0.0


def test_run_nab_on_a_slice():
    files = ["artificialWithAnomaly/art_daily_jumpsup.csv", "artificialNoAnomaly/art_daily_small_noise.csv"]
    r = run_nab(DATASETS / "nab", files=files)
    assert r["files"] == 2 and r["windows"] == 1
    for prof in ("standard", "reward_low_FP_rate", "reward_low_FN_rate"):
        assert -100 <= r["ours"][prof]["score"] <= 100
        assert 0 < r["ours"][prof]["threshold"] <= 1
    assert r["ours"]["standard"]["score"] > 50  # the jump is found inside its window
    assert np.isfinite(r["published"]["ARTime"]["standard"])


def test_nab_detections_keep_a_refractory_period():
    from cellwatch.detect.bench_nab import detections
    s = np.zeros(30)
    s[[1, 2, 3, 8, 9, 20, 21]] = 0.9
    assert np.flatnonzero(detections(s, 0.5, 5)).tolist() == [1, 8, 20]
    assert np.flatnonzero(detections(s, 0.95, 5)).tolist() == []


def test_nab_scores_use_past_rows_only():
    import pandas as pd

    from cellwatch.detect.bench_nab import score_series
    df = pd.read_csv(DATASETS / "nab" / "data" / "artificialWithAnomaly" / "art_daily_jumpsup.csv")
    df = df.iloc[:2600].reset_index(drop=True)
    base = score_series(df, {"refit_every": 500})
    changed = df.copy()
    changed.loc[2000:, "value"] = changed.loc[2000:, "value"] * 3 + 50  # the future differs
    other = score_series(changed, {"refit_every": 500})
    np.testing.assert_array_equal(base[:2000], other[:2000])
    assert not np.array_equal(base[2000:], other[2000:])
