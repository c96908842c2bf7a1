"""ContextNoveltyDetector (univariate NAB detector) and the NAB scorer/sweep, on small slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellwatch.detect.bench_nab import nab_sweep, run_nab, scorer_checks, split_files
from cellwatch.detect.metrics_events import NAB_PROFILES, nab_file_score, nab_probation, nab_window_rows
from cellwatch.detect.univariate import ContextNoveltyDetector

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
NAB = DATASETS / "nab"
needs_nab = pytest.mark.skipif(not NAB.is_dir(), reason=f"shared NAB data not found at {NAB}")


def _periodic(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 10 + 5 * np.sin(2 * np.pi * np.arange(n) / 50) + rng.normal(0, 0.3, n)


def test_new_value_range_scores_high_and_familiar_values_score_zero():
    x = _periodic(1500)
    model = ContextNoveltyDetector().fit(x[:300])
    test = x[300:].copy()
    test[900] = 40.0  # far outside anything seen
    s = model.decision_function(test)
    assert s[900] > 0.9
    assert s.min() >= 0 and s.max() <= 1
    assert model.period_ == 50  # the season of the training rows (its part stays below the threshold on noise)
    assert s[:900].max() < 0.35 and s[1000:].max() < 0.35
    no_season = ContextNoveltyDetector(season_acf=None).fit(x[:300])
    assert no_season.period_ is None
    s = no_season.decision_function(test)
    assert s[900] > 0.9 and s[:900].max() < 0.1 and s[1000:].max() < 0.1  # the signal's values stay familiar


def test_season_is_found_and_a_missing_peak_fires_without_an_echo():
    from cellwatch.detect.univariate import season_period
    rng = np.random.default_rng(5)
    t = np.arange(4000)
    x = np.where(t % 200 < 60, 80.0, 20.0) + rng.normal(0, 1.0, t.size)  # a daily block, as in NAB's nojump
    assert season_period(x[:600], 0.5) == 200
    assert season_period(rng.normal(size=600), 0.5) is None  # noise has no season
    x[1510] = 200.0  # a spike; one season later nothing happens
    x[2400:2460] = 20.0 + rng.normal(0, 1.0, 60)  # one block does not come: every value is familiar
    model = ContextNoveltyDetector(long=150).fit(x[:600])  # the spike has left the z history by its echo
    s = model.decision_function(x[600:])
    spike, miss = 1510 - 600, 2400 - 600
    assert s[:spike].max() < 0.5 and s[spike] > 0.9
    assert s[spike + 1:miss].max() < 0.5  # no echo of the spike one season later
    assert s[miss:miss + 60].max() > 0.5  # the seasonal part sees the missing block
    assert s[miss + 460:].max() < 0.5  # and is quiet again after its two-season memory
    flat = ContextNoveltyDetector(season_acf=None).fit(x[:600]).decision_function(x[600:])
    assert flat[miss:miss + 60].max() < 0.5  # without the seasonal part the missing block is invisible


def test_suppression_silences_a_repeat_alarm_but_not_without_it():
    x = _periodic(1200)
    test = x[300:].copy()
    test[500], test[505], test[560] = 30.0, 31.5, 31.5 + 1.5  # a spike, a lower new peak, one after the period
    quiet = ContextNoveltyDetector(suppress=50).fit(x[:300]).decision_function(test)
    loud = ContextNoveltyDetector(suppress=0).fit(x[:300]).decision_function(test)
    assert quiet[500] > 0.9 and loud[500] == quiet[500]
    assert quiet[505] == 0 and loud[505] > 0.6  # new bins, but not a new peak within 50 rows
    assert quiet[560] > 0.6  # once the suppression period is over, a new excursion fires again


def test_sequence_novelty_finds_a_new_rhythm_inside_the_known_range():
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    x = 10 + 5 * np.sin(2 * np.pi * t / 50) + rng.normal(0, 0.05, t.size)
    x[2000:2300] = 10 + 5 * np.sin(2 * np.pi * t[2000:2300] / 13) + rng.normal(0, 0.05, 300)  # same values
    # the seasonal part is off here: it would also see the rhythm (and its end), this test is about sequences
    seq = ContextNoveltyDetector(season_acf=None).fit(x[:450]).decision_function(x[450:])
    value_only = ContextNoveltyDetector(max_order=1, season_acf=None).fit(x[:450]).decision_function(x[450:])
    lo, hi = 2000 - 450, 2300 - 450
    assert seq[lo:hi].max() > 0.4 and max(seq[:lo].max(), seq[hi:].max()) < 0.3
    assert value_only[lo:hi].max() < 0.2  # the value-novelty part alone hardly sees it (a fine grid's new bin)


def test_scores_do_not_depend_on_batches_or_on_the_future():
    x = _periodic(2500, seed=3)
    x[1800:1900] += 8
    model = ContextNoveltyDetector(long=500).fit(x[:400])
    assert model.period_ == 50  # the seasonal part's tails are carried across batches too
    whole = model.decision_function(x[400:])
    state = model.new_state()
    parts = np.concatenate([model.score_batch(x[400:][i:i + 137], state) for i in range(0, 2100, 137)])
    np.testing.assert_allclose(parts, whole, atol=1e-9)
    changed = x.copy()
    changed[2000:] = 100.0
    other = model.decision_function(changed[400:])
    np.testing.assert_array_equal(other[:1600], whole[:1600])
    assert not np.array_equal(other[1600:], whole[1600:])


def test_bad_input_gets_a_clear_error_and_missing_values_score_zero():
    with pytest.raises(ValueError, match="univariate"):
        ContextNoveltyDetector().fit(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="finite"):
        ContextNoveltyDetector().fit([np.nan, 1.0])
    with pytest.raises(RuntimeError, match="not fitted"):
        ContextNoveltyDetector().decision_function([1.0])
    model = ContextNoveltyDetector().fit(_periodic(300))
    s = model.decision_function([10.0, np.nan, 99.0])
    assert s[1] == 0 and s[2] > 0.9
    assert model.predict([10.0, 99.0]).tolist() == [0, 1]


@needs_nab
def test_sweep_equals_the_per_threshold_scorer():
    windows = json.loads((NAB / "labels" / "combined_windows.json").read_text())
    rng = np.random.default_rng(1)
    for name in ["realAdExchange/exchange-3_cpc_results.csv", "artificialNoAnomaly/art_noisy.csv",
                 "realTraffic/TravelTime_387.csv"]:
        df = pd.read_csv(NAB / "data" / name)
        rows = nab_window_rows(pd.to_datetime(df["timestamp"]), windows[name])
        p = nab_probation(len(df))
        s = rng.random(len(df)) ** 8
        thetas = np.array([0.2, 0.6, 0.95, 0.999, 1.5])
        for weights in NAB_PROFILES.values():
            expect = [nab_file_score(s >= t, rows, weights, p) for t in thetas]
            np.testing.assert_allclose(nab_sweep(s, rows, p, weights, thetas), expect, atol=1e-9)


@needs_nab
def test_scorer_reproduces_published_null_scores_and_perfect_is_100():
    windows = json.loads((NAB / "labels" / "combined_windows.json").read_text())
    names = sorted(windows)[::5]
    c = scorer_checks(NAB, windows, names)
    assert c["null_files_profiles_compared"] == 3 * len(names)
    assert c["null_vs_published_max_abs_diff"] < 1e-12
    assert c["perfect_detector"] == {p: 100.0 for p in NAB_PROFILES}


@needs_nab
def test_split_is_disjoint_and_run_reports_it():
    windows = json.loads((NAB / "labels" / "combined_windows.json").read_text())
    choice, held = split_files(list(windows))
    assert len(choice) == 31 and len(held) == 20 and not set(choice) & set(held)
    assert all(not n.startswith("artificial") for n in held)
    files = ["artificialWithAnomaly/art_daily_jumpsup.csv", "realAdExchange/exchange-2_cpc_results.csv",
             "realAdExchange/exchange-3_cpc_results.csv"]
    r = run_nab(NAB, files=files)
    assert r["detector"] == "cellwatch ContextNovelty" and r["files"] == 3
    assert r["split"]["choice_files"] == 2 and r["split"]["held_out_files"] == 1
    assert r["ours"]["standard"]["score"] > 50
    assert r["scorer_checks"]["null_vs_published_max_abs_diff"] < 1e-12
