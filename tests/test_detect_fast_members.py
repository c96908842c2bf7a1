"""The faster IForest/HBOS evaluation (detect/fast_members.py) gives PyOD's own scores."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from pyod.models.hbos import HBOS
from pyod.models.iforest import IForest

from cellwatch.detect.ensemble import FeatureEnsemble
from cellwatch.detect.fast_members import _forest_depths, fast_iforest, hbos_decision_function, pca_decision_function


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    train = rng.normal(size=(3000, 12))
    test = np.vstack([rng.normal(scale=2.5, size=(400, 12)), np.full((1, 12), 40.0), np.full((1, 12), -40.0)])
    return train, test


def test_hbos_matches_pyod(data):
    train, test = data
    for tol in (0.5, 0.05):
        model = HBOS(n_bins=20, contamination=0.01, tol=tol).fit(train)
        np.testing.assert_allclose(hbos_decision_function(model, test), model.decision_function(test),
                                   rtol=0, atol=1e-12)


def test_iforest_matches_pyod(data):
    train, test = data
    model = IForest(n_estimators=50, max_samples=256, random_state=0).fit(train)
    fast = fast_iforest(model, train.shape[1])
    assert fast is not None
    np.testing.assert_allclose(fast.decision_function(test), model.decision_function(test), rtol=0, atol=1e-12)


def test_ensemble_scores_unchanged_and_pickle_has_no_cache(data):
    train, test = data
    clean = test
    ens = FeatureEnsemble(members=("hbos", "iforest")).fit(train)
    Z = ens._standardise(clean)
    expected = np.column_stack([ens.models_["hbos"].decision_function(Z), ens.models_["iforest"].decision_function(Z)])
    np.testing.assert_allclose(ens.raw_scores(clean), expected, rtol=0, atol=1e-12)
    assert "_fast_iforest" in ens.__dict__
    again = pickle.loads(pickle.dumps(ens))
    assert "_fast_iforest" not in again.__dict__
    np.testing.assert_allclose(again.raw_scores(clean), expected, rtol=0, atol=1e-12)


def test_compiled_forest_walk_is_bitwise_the_per_tree_sum(data):
    """The packed trees walked in one compiled loop reach the same leaves and sum the depths in the same order."""
    train, test = data
    model = IForest(n_estimators=60, max_samples=256, random_state=1).fit(train)
    fast = fast_iforest(model, train.shape[1])
    X32 = np.ascontiguousarray(test, dtype=np.float32)
    # ties with the split thresholds themselves go left, like scikit-learn's `<=`
    on_split = np.ascontiguousarray(np.tile(fast.threshold[:, 0].astype(np.float32)[:, None], (1, train.shape[1])))
    for X in (X32, on_split):
        np.testing.assert_array_equal(_forest_depths(X, fast.left, fast.right, fast.feature, fast.threshold,
                                                     fast.leaf_depth, fast.max_depth), fast._depths_per_tree(X))
    with_nan = test.copy()
    with_nan[0, 3] = np.nan  # a batch with NaN takes scikit-learn's own routing (PyOD itself refuses NaN)
    per_tree = fast._depths_per_tree(np.ascontiguousarray(with_nan, dtype=np.float32))
    np.testing.assert_array_equal(fast.score_samples(with_nan),
                                  -(2.0 ** (-per_tree / (len(fast.trees) * fast.denominator))))


def test_pca_and_ecdf_members_bitwise_unchanged(data):
    train, test = data
    ens = FeatureEnsemble(members=("pca", "ecdf")).fit(train)
    Z = ens._standardise(test)
    np.testing.assert_array_equal(pca_decision_function(ens.models_["pca"], Z), ens.models_["pca"].decision_function(Z))
    total = np.zeros(len(Z))
    for j in range(Z.shape[1]):  # the per-feature loop the vectorised ecdf member replaced
        q = ens.quantiles_[:, j]
        cdf = np.interp(Z[:, j], q, np.linspace(0.0, 1.0, 257), left=0.0, right=1.0)
        total += -np.log(np.clip(np.minimum(cdf, 1.0 - cdf), 1.0 / 512, 0.5)) + np.maximum(
            np.maximum(q[0] - Z[:, j], Z[:, j] - q[-1]), 0.0)
    np.testing.assert_array_equal(ens._ecdf_score(Z), total)
