"""The faster IForest/HBOS evaluation (detect/fast_members.py) gives PyOD's own scores."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from pyod.models.hbos import HBOS
from pyod.models.iforest import IForest

from cellwatch.detect.ensemble import FeatureEnsemble
from cellwatch.detect.fast_members import fast_iforest, hbos_decision_function


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
