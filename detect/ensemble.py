"""A calibrated ensemble of fast, complementary detectors on window features.

Members (all score rows independently, so results never depend on how a stream is batched):

* ``hbos``   - PyOD HBOS: per-feature histograms (cheap, good on marginal outliers);
* ``iforest``- PyOD IForest: isolation of unusual feature combinations;
* ``pca``    - PyOD PCA: distance from the correlation structure (the T^2/Q family of control charts);
* ``maxz``   - a Shewhart chart on every standardised window feature at once (max |robust z|): catches a
  single sensor's spike, mean shift (window mean), noise change (spread) or drift (slope);
* ``ecdf``   - ECOD's idea with a precomputed empirical CDF per feature (ECOD/COPOD themselves re-scan the
  training set on every call): sum over features of -log of the two-sided tail probability.

Each member's raw score becomes a tail probability against held-out clean data (:class:`TailCalibrator`);
the ensemble probability is their Bonferroni-corrected minimum.
"""

from __future__ import annotations

import numpy as np
from pyod.models.hbos import HBOS
from pyod.models.iforest import IForest
from pyod.models.pca import PCA

from cellwatch.detect.calibration import TailCalibrator, TailCalibrators, combine
from cellwatch.detect.fast_members import fast_iforest, hbos_decision_function, pca_decision_function
from cellwatch.detect.kernels import interp_columns, interp_index

MEMBERS = ("hbos", "iforest", "pca", "maxz", "ecdf")
_FIT_ROWS = 20_000     # subsample for the model members (IForest/PCA/HBOS)
_ECDF_GRID = np.linspace(0.0, 1.0, 257)


class FeatureEnsemble:
    """PyOD-style detector on a feature matrix: ``fit``, ``calibrate``, ``member_probabilities``, ``probability``."""

    def __init__(self, members: tuple[str, ...] = MEMBERS, random_state: int = 0, scale_floor: float = 0.1,
                 drift_allowance: float = 0.0):
        unknown = set(members) - set(MEMBERS)
        if unknown:
            raise ValueError(f"unknown ensemble members {sorted(unknown)}; choose from {MEMBERS}")
        self.members = tuple(members)
        self.random_state = random_state
        self.scale_floor = scale_floor
        self.drift_allowance = drift_allowance

    def fit(self, F: np.ndarray) -> FeatureEnsemble:
        """Fit on clean features in time order (rows of several lines may follow each other)."""
        F = np.asarray(F, dtype="float64")
        rng = np.random.default_rng(self.random_state)
        sub = F if len(F) <= _FIT_ROWS else F[np.sort(rng.choice(len(F), _FIT_ROWS, replace=False))]
        with np.errstate(all="ignore"):
            self.center_ = np.median(sub, axis=0)
            q75, q25 = np.percentile(sub, [75, 25], axis=0)
            scale = (q75 - q25) / 1.349
            std = sub.std(axis=0)
        floor = max(self.scale_floor, 1e-3)
        self.scale_ = np.maximum(np.where(scale > 1e-3, scale, std), floor)
        if self.drift_allowance > 0 and len(F) >= 20:
            # non-stationarity allowance: a feature whose median moved between the halves of the (time-ordered)
            # training data is expected to keep moving at that rate; widen its scale accordingly
            half = len(F) // 2
            moved = np.abs(np.median(F[half:], axis=0) - np.median(F[:half], axis=0))
            self.scale_ = np.maximum(self.scale_, self.drift_allowance * moved)
        Z = self._standardise(sub)
        self.quantiles_ = np.quantile(Z, _ECDF_GRID, axis=0)  # (grid, features) for the ecdf member
        self.models_ = {}
        if "hbos" in self.members:
            self.models_["hbos"] = HBOS(n_bins=20, contamination=0.01).fit(Z)
        if "iforest" in self.members:
            self.models_["iforest"] = IForest(n_estimators=100, max_samples=min(256, len(Z)), contamination=0.01,
                                              random_state=self.random_state).fit(Z)
        if "pca" in self.members and Z.shape[1] >= 2 and len(Z) > Z.shape[1]:
            # keep the components that carry variance: window features are partly collinear by construction
            # (e.g. jump is a combination of level and mean), and a zero-variance component would divide by 0
            self.models_["pca"] = PCA(contamination=0.01, random_state=self.random_state, standardization=False,
                                      n_components=0.99999, svd_solver="full").fit(Z)
        self.active_ = tuple(m for m in self.members if m in self.models_ or m in ("maxz", "ecdf"))
        return self

    def _standardise(self, F: np.ndarray) -> np.ndarray:
        return (np.asarray(F, dtype="float64") - self.center_) / self.scale_

    def raw_scores(self, F: np.ndarray) -> np.ndarray:
        """Raw member scores (rows x active members), larger = more anomalous."""
        Z = self._standardise(F)
        cols = []
        for m in self.active_:
            if m in self.models_:
                cols.append(self._member_decision(m, Z))
            elif m == "maxz":
                cols.append(np.abs(Z).max(axis=1) if Z.shape[1] else np.zeros(len(Z)))
            elif m == "ecdf":
                cols.append(self._ecdf_score(Z))
        return np.column_stack(cols) if cols else np.zeros((len(Z), 0))

    def _member_decision(self, m: str, Z: np.ndarray) -> np.ndarray:
        """The member's PyOD ``decision_function``, through the faster equivalents of
        :mod:`cellwatch.detect.fast_members` (same scores)."""
        model = self.models_[m]
        if m == "hbos":
            return hbos_decision_function(model, Z)
        if m == "pca":
            return pca_decision_function(model, Z)
        if m == "iforest":
            if "_fast_iforest" not in self.__dict__:  # built once per loaded model, never pickled
                self._fast_iforest = fast_iforest(model, Z.shape[1])
            if self._fast_iforest is not None:
                return self._fast_iforest.decision_function(Z)
        return model.decision_function(Z)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for cache in ("_fast_iforest", "_ecdf_search", "_calibration"):
            state.pop(cache, None)
        return state

    def _ecdf_score(self, Z: np.ndarray) -> np.ndarray:
        """Sum over features of -log(two-sided ECDF tail) + the distance beyond the observed range (which keeps
        the ordering out there); summed in feature order (a cumulative sum), bit for bit the per-feature loop.
        The ECDF is ``np.interp`` of every feature on its quantile grid, in one compiled call."""
        q = self.quantiles_
        if Z.shape[1] == 0:
            return np.zeros(len(Z))
        if "_ecdf_search" not in self.__dict__:  # built once per loaded model, never pickled
            q_t = np.ascontiguousarray(q.T)
            self._ecdf_search = (q_t, interp_index(q_t))
        q_t, table = self._ecdf_search
        cdf = interp_columns(np.ascontiguousarray(Z, dtype="float64"), q_t, _ECDF_GRID, 0.0, 1.0, table)
        tail = np.clip(np.minimum(cdf, 1.0 - cdf), 1.0 / 512, 0.5)
        beyond = np.maximum(np.maximum(q[0] - Z, Z - q[-1]), 0.0)
        return np.cumsum(-np.log(tail) + beyond, axis=1)[:, -1]

    def calibrate(self, F_cal: np.ndarray) -> FeatureEnsemble:
        """Fit each member's tail calibration on held-out clean features."""
        raw = self.raw_scores(F_cal)
        self.calibrators_ = [TailCalibrator.fit(raw[:, i]) for i in range(raw.shape[1])]
        return self

    def member_probabilities(self, F: np.ndarray) -> np.ndarray:
        if "_calibration" not in self.__dict__:  # built once per loaded model, never pickled
            self._calibration = TailCalibrators(self.calibrators_)
        return self._calibration.tail_probabilities(self.raw_scores(F))

    def probability(self, F: np.ndarray) -> np.ndarray:
        """Ensemble tail probability per row (small = anomalous)."""
        return combine(self.member_probabilities(F))
