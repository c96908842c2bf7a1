"""WindowPCAModel: PCA residual (Q / SPE) and Hotelling T^2 control charts on short windows of all sensors.

The multivariate-SPC detector of the process-monitoring literature ("T-squared+Q"), made dynamic: every row
is described by the last ``lags`` readings of every sensor (standardised with the training mean and standard
deviation), a PCA keeps the components that explain ``variance`` of the training windows, and two statistics
measure how unusual a window is:

* ``Q`` (squared prediction error): the part of the window the principal components cannot reconstruct -
  a broken correlation between sensors or a broken short-term dynamic (the signature of a closed valve,
  a leak or cavitation);
* ``T^2``: the distance inside the principal subspace, in units of each component's training variance.

Control limits are the ``quantile`` of each statistic on the training windows times ``factor`` (a safety
factor fixed a priori: in-sample statistics are optimistic, and training data never covers all normal
operation). ``ratio`` = the statistic over its limit (the larger of the two with ``statistic="t2q"``);
an alarm opens when the trailing median of ``ratio`` over ``smooth`` rows exceeds 1 (the median ignores
isolated spikes, so an alarm needs about half of the last ``smooth`` rows above the limit) and, once open,
stays open until that median falls to ``close`` or below (hysteresis: an action limit to open, a lower one to
close, as in SPC practice; ``close=1`` turns it off). ``is_anomaly`` = the alarm is open.
``anomaly_score = r / (1 + r)`` of that smoothed ratio: 0.5 at the control limit, towards 1 far beyond it.

Every row is scored from its own past only (its window and the ``smooth - 1`` rows before it); the state
carries the last ``history_`` readings and whether the alarm is open per line, so batching a stream never
changes a score. Missing readings
are imputed by the training mean (z = 0). ``top_sensors`` names the sensors with the largest share of the
current row's residual, with the actual reading and the value the principal components expect.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import orjson
import pandas as pd
from sklearn.decomposition import PCA

from cellwatch import __version__
from cellwatch.detect.station_model import WindowState, _epoch_seconds, _lines, choose_sensors, sensor_matrix

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("anomaly_score", "is_anomaly", "kind", "top_sensors")
STATISTICS = ("q", "t2", "t2q")
#: Largest window width (sensors x lags) fitted; wider tables use fewer lags (logged).
MAX_WIDTH = 2_000
#: Training windows used for the PCA fit and the control limits (a random subset beyond this).
MAX_FIT_ROWS = 50_000
#: Window-matrix elements per scoring chunk (rows x sensors x lags).
_CHUNK_ELEMENTS = 8_000_000
TOP_N = 3


@dataclass
class PCAState(WindowState):
    """:class:`WindowState` plus, per line, whether the alarm is open (the hysteresis carries across batches)."""

    open: dict[str, bool] = field(default_factory=dict)


def hysteresis(smoothed: np.ndarray, close: float, was_open: bool = False) -> np.ndarray:
    """Alarm state per row: opens where ``smoothed > 1``, closes where ``smoothed <= close``, else unchanged
    (``close = 1``: the alarm is exactly ``smoothed > 1``)."""
    decided = np.where(smoothed > 1.0, 1.0, np.where(smoothed <= close, 0.0, np.nan))
    return pd.Series(np.concatenate([[float(was_open)], decided])).ffill().to_numpy()[1:] > 0.5


def lagged(z: np.ndarray, lags: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Window matrix: for each row i (or each of ``rows``), [z[i], z[i-1], .., z[i-lags+1]] flattened lag-major.

    Rows before the first reading repeat the first reading (a stream's start has no earlier context).
    """
    rows = np.arange(len(z)) if rows is None else np.asarray(rows)
    idx = np.maximum(rows[:, None] - np.arange(lags)[None, :], 0)  # (rows, lags)
    return z[idx].reshape(len(rows), -1)


class WindowPCAModel:
    """Dynamic PCA detector (Q / T^2 on lagged windows); scikit-learn/PyOD style, streaming like StationModel.

    Parameters: ``sensors`` (default: numeric columns at least half filled), ``lags`` (readings per window),
    ``variance`` (share of the training windows' variance the principal components keep), ``statistic``
    (``"q"``, ``"t2"`` or ``"t2q"``), ``quantile`` and ``factor`` (control limit = factor x training quantile),
    ``smooth`` (rows of the trailing median of the ratio), ``close`` (an open alarm closes when the smoothed
    ratio falls to this fraction of the limit or below; 1 = no hysteresis), ``random_state`` (row subsample of big
    tables).
    """

    def __init__(self, sensors: list[str] | None = None, lags: int = 25, variance: float = 0.9,
                 statistic: str = "q", quantile: float = 0.99, factor: float = 4.0, smooth: int = 15,
                 close: float = 0.75, random_state: int = 0):
        self.sensors = sensors
        self.lags = lags
        self.variance = variance
        self.statistic = statistic
        self.quantile = quantile
        self.factor = factor
        self.smooth = smooth
        self.close = close
        self.random_state = random_state

    # ------------------------------------------------------------------------------------------ fit
    def _check_params(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if self.lags < 1 or self.smooth < 1:
            raise ValueError("lags and smooth must be at least 1")
        if not 0 < self.variance <= 1 or not 0 < self.quantile < 1 or self.factor <= 0 or not 0 < self.close <= 1:
            raise ValueError("need 0 < variance <= 1, 0 < quantile < 1, factor > 0 and 0 < close <= 1")

    def _choose_sensors(self, train: pd.DataFrame) -> list[str]:
        return choose_sensors(train, self.sensors)

    def _raw(self, frame: pd.DataFrame) -> np.ndarray:
        return sensor_matrix(frame, self.sensors_)

    def _z(self, raw: np.ndarray) -> np.ndarray:
        return np.nan_to_num((raw - self.mean_) / self.scale_, nan=0.0, posinf=0.0, neginf=0.0)

    @staticmethod
    def _split_lines(frame: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        names, codes = np.unique(_lines(frame).to_numpy(dtype=object), return_inverse=True)
        if len(names) == 1:
            return [(str(names[0]), np.arange(len(frame)))]
        return [(str(k), np.flatnonzero(codes == i)) for i, k in enumerate(names)]

    def fit(self, train: pd.DataFrame) -> WindowPCAModel:
        """Learn standardisation, the PCA of the training windows and the control limits (rows in time order)."""
        self._check_params()
        if train is None or len(train) == 0:
            raise ValueError("empty training frame")
        self.sensors_ = self._choose_sensors(train)
        n_s = len(self.sensors_)
        self.lags_ = int(max(1, min(self.lags, MAX_WIDTH // max(1, n_s))))
        if self.lags_ < self.lags:
            log.warning("%d sensors: windows of %d readings instead of %d (width cap %d)", n_s, self.lags_,
                        self.lags, MAX_WIDTH)
        self.history_ = self.lags_ + self.smooth - 1
        raw = self._raw(train)
        with np.errstate(all="ignore"):
            mean = np.nanmean(raw, axis=0)
            std = np.nanstd(raw, axis=0)
        self.mean_ = np.where(np.isfinite(mean), mean, 0.0)
        self.scale_ = np.where(np.isfinite(std) & (std > 1e-9 * np.maximum(1.0, np.abs(self.mean_))), std, 1.0)
        z = self._z(raw)
        if len(train) < 10:
            raise ValueError(f"only {len(train)} training rows; need at least 10")
        rng = np.random.default_rng(self.random_state)
        share = min(1.0, MAX_FIT_ROWS / len(train))  # big tables: a random subset of windows, built directly
        blocks = []
        for _, idx in self._split_lines(train):
            rows = np.arange(len(idx))
            if share < 1.0:
                rows = np.sort(rng.choice(len(idx), max(1, round(share * len(idx))), replace=False))
            blocks.append(lagged(z[idx], self.lags_, rows))
        W = np.concatenate(blocks, axis=0)
        n_comp = min(W.shape) - 1 if min(W.shape) > 1 else 1
        pca = PCA(n_components=n_comp, svd_solver="full").fit(W)
        ratio = np.cumsum(pca.explained_variance_ratio_)
        k = int(min(np.searchsorted(ratio, self.variance - 1e-12) + 1, len(ratio)))
        self.center_ = pca.mean_
        self.components_ = pca.components_[:k]  # (k, width)
        self.eigenvalues_ = np.maximum(pca.explained_variance_[:k], 1e-12)
        q, t2 = self._statistics(W)
        self.q_limit_ = max(float(np.quantile(q, self.quantile)) * self.factor, 1e-12)
        self.t2_limit_ = max(float(np.quantile(t2, self.quantile)) * self.factor, 1e-12)
        self.threshold_ = 0.5  # anomaly_score at the control limit (ratio 1)
        self.metadata_ = {
            "kind": "window_pca", "cellwatch_version": __version__,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sensors": self.sensors_, "lags": self.lags_, "variance": self.variance, "components": k,
            "statistic": self.statistic, "quantile": self.quantile, "factor": self.factor, "smooth": self.smooth,
            "close": self.close,
            "q_limit": self.q_limit_, "t2_limit": self.t2_limit_, "threshold": self.threshold_,
            "train_rows": len(train), "history": self.history_,
        }
        return self

    def _statistics(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        B = W - self.center_
        T = B @ self.components_.T
        R = B - T @ self.components_
        return (R * R).sum(axis=1), (T * T / self.eigenvalues_).sum(axis=1)

    def _ratio(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ratio to the control limit, residual of the current readings in z units: rows x sensors)."""
        B = W - self.center_
        T = B @ self.components_.T
        R = B - T @ self.components_
        q = (R * R).sum(axis=1) / self.q_limit_
        t2 = (T * T / self.eigenvalues_).sum(axis=1) / self.t2_limit_
        ratio = q if self.statistic == "q" else t2 if self.statistic == "t2" else np.maximum(q, t2)
        return ratio, R[:, : len(self.sensors_)]

    # ------------------------------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise RuntimeError("WindowPCAModel is not fitted; call fit() first")

    def new_state(self, recent: pd.DataFrame | None = None) -> PCAState:
        """An empty state, or one rebuilt from the latest readings (the last ``history_`` per line are kept;
        the alarm starts closed)."""
        self._check_fitted()
        state = PCAState()
        if recent is not None and len(recent):
            raw = self._raw(recent)
            times = _epoch_seconds(recent.get("ts"), len(recent))
            for line, idx in self._split_lines(recent):
                state.values[line] = raw[idx][-self.history_:].copy()
                state.times[line] = times[idx][-self.history_:].copy()
        return state

    def score(self, readings: pd.DataFrame, state: WindowState) -> pd.DataFrame:
        """Score a batch (rows in time order per line); one output row per input row, same index. Updates ``state``."""
        self._check_fitted()
        n_rows = len(readings)
        if n_rows == 0:
            return pd.DataFrame({c: pd.Series(dtype=d) for c, d in
                                 zip(SCORE_COLUMNS, ("float64", "bool", "object", "object"), strict=True)},
                                index=readings.index)
        raw = self._raw(readings)
        times = _epoch_seconds(readings.get("ts"), n_rows)
        s = len(self.sensors_)
        smoothed = np.empty(n_rows)
        is_anom = np.zeros(n_rows, dtype=bool)
        resid = np.empty((n_rows, s))
        close = getattr(self, "close", 1.0)  # models pickled before the hysteresis have none
        alarm = getattr(state, "open", None)
        for line, idx in self._split_lines(readings):
            tail_v = state.values.get(line, np.zeros((0, s)))
            ctx_v = np.concatenate([tail_v, raw[idx]], axis=0)
            n_ctx = len(ctx_v)
            # ratios of the rows to score plus the smooth-1 rows before them (recomputed from the context)
            first = max(0, n_ctx - len(idx) - (self.smooth - 1))
            z = self._z(ctx_v)
            wanted = np.arange(first, n_ctx)
            step = max(1, _CHUNK_ELEMENTS // max(1, s * self.lags_))  # bounds the window matrix's memory
            parts = [self._ratio(lagged(z, self.lags_, wanted[a:a + step])) for a in range(0, len(wanted), step)]
            ratio = np.concatenate([q for q, _ in parts])
            r = np.concatenate([e for _, e in parts], axis=0)
            med = pd.Series(ratio).rolling(self.smooth, min_periods=1).median().to_numpy()
            med = np.nan_to_num(med[-len(idx):], nan=0.0, posinf=1e12)
            smoothed[idx] = med
            flags = hysteresis(med, close, bool(alarm.get(line, False)) if alarm is not None else False)
            is_anom[idx] = flags
            if alarm is not None:
                alarm[line] = bool(flags[-1])
            resid[idx] = r[-len(idx):]
            state.values[line] = ctx_v[-self.history_:].copy()
            state.times[line] = np.concatenate([state.times.get(line, np.zeros(0)), times[idx]])[-self.history_:]
        score = smoothed / (1.0 + smoothed)
        kind = np.where(is_anom, "process", "normal").astype(object)
        top = np.full(n_rows, None, dtype=object)
        rows = np.flatnonzero(is_anom)
        if rows.size:
            top[rows] = self._explain(raw[rows], resid[rows])
        idx = readings.index
        return pd.DataFrame({"anomaly_score": score, "is_anomaly": is_anom,
                             "kind": pd.Series(kind, index=idx, dtype=object),
                             "top_sensors": pd.Series(top, index=idx, dtype=object)}, index=idx)

    def _explain(self, raw: np.ndarray, resid: np.ndarray) -> list[str]:
        """Top sensors by squared residual of the current reading; expected = reading minus its residual."""
        expected = raw - resid * self.scale_
        order = np.argsort(-(resid * resid), axis=1, kind="stable")[:, :TOP_N]
        out = []
        for i, js in enumerate(order):
            out.append(orjson.dumps([{"sensor": self.sensors_[j], "actual": _num(raw[i, j]),
                                      "expected": _num(expected[i, j]), "contribution": _num(abs(resid[i, j]))}
                                     for j in js]).decode())
        return out

    # ------------------------------------------------------------------------------------------ PyOD vocabulary
    def _as_frame(self, X) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            return X
        return pd.DataFrame(np.atleast_2d(np.asarray(X, dtype="float64")), columns=self.sensors_)

    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores in [0, 1] of a whole frame (rows in time order), scored from a fresh state."""
        self._check_fitted()
        return self.score(self._as_frame(X), self.new_state())["anomaly_score"].to_numpy()

    def predict(self, X) -> np.ndarray:
        """1 for an anomalous row, 0 otherwise."""
        self._check_fitted()
        return self.score(self._as_frame(X), self.new_state())["is_anomaly"].to_numpy().astype(int)

    def metadata_json(self) -> str:
        self._check_fitted()
        return json.dumps(self.metadata_, indent=2, sort_keys=True)


def _num(x: float) -> float | None:
    x = float(x)
    return round(x, 6) if np.isfinite(x) else None
