"""SECOM protocol: every preprocessing step is fitted on the training fold only (no leakage from test rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from cellwatch.detect.bench_secom import ber, fit_predict, load_secom, make_pipeline

SECOM = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "secom"


def _data(n=300, p=80, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    X[rng.random((n, p)) < 0.05] = np.nan
    X[:, 5] = 1.0  # constant
    X[rng.random(n) < 0.8, 6] = np.nan  # mostly missing
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 1.2).astype(int)
    return X, y


def test_pipeline_holds_every_preprocessing_step():
    steps = [name for name, _ in make_pipeline().steps]
    assert steps == ["sparse", "constant", "impute", "select", "model"]


def test_fitted_preprocessing_depends_on_the_training_rows_only():
    X, y = _data()
    tr, te = np.arange(200), np.arange(200, 300)
    fitted = clone(make_pipeline()).fit(X[tr], y[tr])
    keep = fitted.named_steps["sparse"].keep_
    np.testing.assert_array_equal(keep, np.isnan(X[tr]).mean(axis=0) <= 0.5)
    assert not keep[6]
    kept = X[tr][:, keep][:, fitted.named_steps["constant"].get_support()]
    np.testing.assert_allclose(fitted.named_steps["impute"].statistics_, np.nanmedian(kept, axis=0))
    # wildly different test rows change nothing that was learnt
    X2 = X.copy()
    X2[te] = 1e6
    refit = clone(make_pipeline()).fit(X2[tr], y[tr])
    np.testing.assert_allclose(refit.named_steps["impute"].statistics_, fitted.named_steps["impute"].statistics_)
    np.testing.assert_allclose(refit.predict_proba(X[te]), fitted.predict_proba(X[te]))


def test_test_rows_are_scored_independently_and_labels_unseen():
    X, y = _data(seed=1)
    tr, te = np.arange(220), np.arange(220, 300)
    p_all, t_all, c_all = fit_predict(X[tr], y[tr], X[te])
    p_half, t_half, c_half = fit_predict(X[tr], y[tr], X[te[:40]])
    assert (t_all, c_all) == (t_half, c_half)  # threshold and configuration come from the training rows
    np.testing.assert_allclose(p_half, p_all[:40])
    assert ber(y[te], p_all >= t_all) < 0.4


def test_ber_definition():
    y = np.array([1, 1, 0, 0, 0, 0])
    assert ber(y, np.array([1, 0, 0, 0, 0, 1])) == pytest.approx((0.5 + 0.25) / 2)


@pytest.mark.skipif(not SECOM.is_dir(), reason="shared SECOM dataset not present")
def test_load_secom_shape_and_labels():
    X, y, ts = load_secom(SECOM)
    assert X.shape == (1567, 590) and y.sum() == 104 and ts.is_monotonic_increasing


def test_time_split_inner_folds_validate_on_later_rows_only():
    from cellwatch.detect.bench_secom import inner_folds

    y = np.tile([0, 0, 0, 1], 50)
    folds = inner_folds(y, "time")
    assert len(folds) == 5
    for tr, va in folds:
        assert tr.max() < va.min()  # the model never sees a run later than the ones it is validated on
    strat = inner_folds(y, "stratified")
    assert sorted(np.concatenate([va for _, va in strat]).tolist()) == list(range(len(y)))
    assert all(abs(y[va].mean() - 0.25) < 0.05 for _, va in strat)
