"""Metric implementations against hand-computed examples (SKAB F1/FAR/MAR, SKAB NAB, NAB, event metrics)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cellwatch.detect.metrics_events import (
    NAB_PROFILES,
    event_metrics,
    nab_file_score,
    nab_normalised,
    nab_probation,
    nab_window_rows,
    skab_changepoints,
    skab_nab_score,
    skab_outlier_metrics,
)


def test_skab_outlier_metrics_micro_average():
    # file 1: TP=2 FP=1 FN=1 TN=2; file 2: TP=0 FP=0 FN=1 TN=4
    m = skab_outlier_metrics([np.array([0, 1, 1, 1, 0, 0]), np.array([0, 0, 1, 0, 0])],
                             [np.array([0, 1, 0, 1, 1, 0]), np.array([0, 0, 0, 0, 0])])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 2, 6)
    assert m["f1"] == pytest.approx(2 / (2 + 1.5))
    assert m["far"] == pytest.approx(100 / 7)
    assert m["mar"] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        skab_outlier_metrics([np.zeros(3)], [np.zeros(2)])


def test_skab_changepoints_are_switches_of_the_prediction():
    assert skab_changepoints(np.array([1, 1, 0, 0, 1, 0])).astype(int).tolist() == [1, 0, 1, 0, 1, 1]
    assert skab_changepoints(np.array([0, 0, 1, 1])).astype(int).tolist() == [0, 0, 1, 0]


def test_skab_nab_score_by_hand():
    ts = pd.Series(pd.date_range("2020-01-01", periods=200, freq="1s"))
    true_cp = np.zeros(200, dtype=int)
    true_cp[[10, 100]] = 1                   # windows [10 s, 70 s] and [100 s, 160 s]
    pred = np.zeros(200, dtype=int)
    pred[[5, 40, 50, 170]] = 1               # FP, detection at r = 0.5, ignored, FP; second window missed
    out = skab_nab_score([(ts, true_cp, pred)])
    # detection at r = 0.5 (standard): e = 500, x = -pi/2 + 500 pi / 999
    x = -math.pi / 2 + 500 * math.pi / 999
    s = 1.11 / 2 * (-math.tanh(x) / math.tanh(math.pi / 2)) + 1.11 / 2 - 0.11
    assert s == pytest.approx(0.44405, abs=1e-5)
    total = s - 1 - 2 * 0.11
    assert out["standard"]["score"] == round(100 * (total + 2) / 4, 2) == 30.6
    assert out["standard"]["missed"] == 1 and out["standard"]["fps"] == 2
    # low FN: A_fn = -2 doubles the miss and the null score
    s_fn = s
    assert out["low_fn"]["score"] == round(100 * (s_fn - 2 - 0.22 + 4) / 6, 2)


def test_skab_overlapping_windows_are_cut_right():
    ts = pd.Series(pd.date_range("2020-01-01", periods=200, freq="1s"))
    true_cp = np.zeros(200, dtype=int)
    true_cp[[10, 40]] = 1                    # [10, 70] and [40, 100] -> the second becomes [70, 100]
    pred = np.zeros(200, dtype=int)
    pred[[45, 71]] = 1                       # 45 is in the first window only; 71 detects the second
    out = skab_nab_score([(ts, true_cp, pred)])
    assert out["standard"]["missed"] == 0 and out["standard"]["fps"] == 0


def test_nab_probation():
    assert nab_probation(100) == 15
    assert nab_probation(4032) == 604
    assert nab_probation(20000) == 750


def test_nab_file_score_by_hand():
    windows = [(40, 49)]                     # width 10 rows
    det = np.zeros(100, dtype=bool)
    det[[10, 20, 45, 47, 55, 90]] = True     # 10 in probation (ignored); 20 FP before any window;
    prof = NAB_PROFILES["standard"]          # 45 TP; 47 ignored; 55 FP close after; 90 FP far after (d > 3)

    def sigma(y):
        return 2 / (1 + math.exp(5 * y)) - 1

    tp = sigma(-(49 - 45 + 1) / 10) / sigma(-1)
    assert tp == pytest.approx(0.85979, abs=1e-5)
    fp_close = 0.11 * sigma((55 - 49) / 9)
    expected = tp - 0.11 + fp_close - 0.11
    raw = nab_file_score(det, windows, prof, probation=15)
    assert raw == pytest.approx(expected)
    assert nab_normalised(raw, 1, prof) == pytest.approx(100 * (expected + 1) / 2)
    assert nab_normalised(raw, 1, prof) == pytest.approx(76.87, abs=0.01)
    # a perfect detector (first row of the window) scores 100, the null detector 0
    perfect = np.zeros(100, dtype=bool)
    perfect[40] = True
    assert nab_normalised(nab_file_score(perfect, windows, prof, 15), 1, prof) == pytest.approx(100 * (
        sigma(-1) / sigma(-1) + 1) / 2)
    assert nab_normalised(nab_file_score(np.zeros(100, bool), windows, prof, 15), 1, prof) == 0.0


def test_nab_window_rows_are_inclusive():
    ts = pd.Series(pd.date_range("2014-01-01", periods=10, freq="5min"))
    rows = nab_window_rows(ts, [("2014-01-01 00:10:00.000000", "2014-01-01 00:20:00.000000")])
    assert rows == [(2, 4)]


def test_event_metrics():
    t = pd.Timestamp("2026-01-01", tz="UTC")
    truth = pd.DataFrame({"line": ["L1", "L1", "L2"], "station": "coating",
                          "start_ts": [t, t + pd.Timedelta(hours=1), t],
                          "end_ts": [t + pd.Timedelta(minutes=10), t + pd.Timedelta(hours=1, minutes=5),
                                     t + pd.Timedelta(minutes=5)]})
    alerts = pd.DataFrame({"line": ["L1", "L1", "L1"], "station": "coating",
                           "start_ts": [t + pd.Timedelta(minutes=2), t + pd.Timedelta(hours=3), t],
                           "end_ts": [t + pd.Timedelta(minutes=4), None, t + pd.Timedelta(seconds=30)]})
    m = event_metrics(truth, alerts)
    assert m["detected"] == 1 and m["recall"] == pytest.approx(1 / 3)
    assert m["false_alarms"] == 1 and m["precision"] == pytest.approx(2 / 3)
    assert m["median_delay_s"] == 0.0
