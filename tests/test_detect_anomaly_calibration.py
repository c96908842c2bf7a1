"""Calibration: tail probabilities and scores in [0, 1] and monotone; the alert-budget threshold holds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellwatch.detect.calibration import TailCalibrator, combine, probability_to_score, threshold_for_budget
from cellwatch.detect.ensemble import FeatureEnsemble
from cellwatch.detect.incidents import count_incidents


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
       st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=2, max_size=50))
def test_tail_probability_in_unit_interval_and_monotone(calibration, queries):
    cal = TailCalibrator.fit(np.array(calibration))
    q = np.sort(np.array(queries))
    p = cal.tail_probability(q)
    assert ((p > 0) & (p <= 1)).all()
    assert (np.diff(p) <= 1e-12).all()  # larger raw score -> smaller (or equal) tail probability
    s = probability_to_score(p)
    assert ((s >= 0) & (s <= 1)).all()
    assert (np.diff(s) >= -1e-12).all()


def test_tail_probability_matches_the_empirical_tail_and_extrapolates():
    rng = np.random.default_rng(0)
    cal = TailCalibrator.fit(rng.normal(size=20000))
    assert cal.tail_probability(np.array([0.0]))[0] == pytest.approx(0.5, abs=0.02)
    assert cal.tail_probability(np.array([1.645]))[0] == pytest.approx(0.05, abs=0.01)
    far = cal.tail_probability(np.array([5.0, 6.0, 8.0]))
    assert far[0] > far[1] > far[2] > 0  # ordering survives beyond the calibration sample
    assert np.isnan(cal.tail_probability(np.array([np.nan]))).sum() == 0


def test_combine_is_a_bonferroni_minimum():
    p = np.array([[0.5, 0.01, 0.2], [1.0, 1.0, 1.0], [0.9, 0.5, 0.0001]])
    np.testing.assert_allclose(combine(p), [0.03, 1.0, 0.0003])
    assert probability_to_score(np.array([1.0, 1e-3, 1e-6, 1e-12])).tolist() == [0.0, 0.5, 1.0, 1.0]


def test_threshold_respects_the_alert_budget_on_clean_scores():
    rng = np.random.default_rng(1)
    lines = [probability_to_score(rng.uniform(size=30000)) for _ in range(2)]  # clean data: uniform p-values
    for allowed in (0, 1, 5):
        theta = threshold_for_budget(lines, allowed, k=3, n=5, close_after=10)
        assert count_incidents([s >= theta for s in lines], 3, 5, 10) <= allowed
        assert 0 < theta <= 1
    loose = threshold_for_budget(lines, 5, 3, 5, 10)
    strict = threshold_for_budget(lines, 0, 3, 5, 10)
    assert loose <= strict  # a bigger budget never needs a higher threshold


def test_ensemble_members_are_calibrated_on_held_out_data():
    rng = np.random.default_rng(2)
    train, held = rng.normal(size=(3000, 6)), rng.normal(size=(2000, 6))
    ens = FeatureEnsemble().fit(train).calibrate(held)
    assert ens.active_ == ("hbos", "iforest", "pca", "maxz", "ecdf")
    p_clean = ens.member_probabilities(rng.normal(size=(4000, 6)))
    assert p_clean.shape == (4000, 5)
    # calibrated: about 5 % of clean rows fall below each member's 5 % tail probability
    np.testing.assert_allclose((p_clean < 0.05).mean(axis=0), 0.05, atol=0.02)
    outlier = np.zeros((1, 6))
    outlier[0, 2] = 9.0
    assert ens.probability(outlier)[0] < 1e-4
