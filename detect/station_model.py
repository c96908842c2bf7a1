"""StationModel: the anomaly detector of one station (optionally one recipe), streaming and offline alike.

``fit`` learns, from clean contract frames of the station:

1. robust scaling per sensor (median / IQR),
2. window features per sensor per line (:mod:`cellwatch.detect.features`),
3. the ensemble (:mod:`cellwatch.detect.ensemble`) on the training part,
4. each member's tail calibration on held-out clean data (``validation`` or the last
   ``validation_fraction`` of every line of ``train``),
5. the threshold on that same clean data so that at most ``alert_budget`` false incidents per
   (line, station) stream per ``shift_hours`` would open (:func:`threshold_for_budget`),
6. data-quality limits (:mod:`cellwatch.detect.quality`).

Faults must not be learnt as normal: pass ``exclude`` (a boolean mask over ``train``'s rows, e.g.
labelled fault windows or past incidents); excluded rows and the rows whose window still contains them
are left out of every fit, calibration and threshold step.

``score`` keeps, per line, the last ``history_`` readings in a :class:`WindowState`; every feature of a
row depends only on that row's own trailing window, so the scores are identical however the stream is
cut into batches, and a state rebuilt from the last ``history_`` readings (``new_state(recent)``) gives
the same scores as an uninterrupted run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from cellwatch import __version__
from cellwatch.contract import READING_KEYS
from cellwatch.detect.calibration import SCORE_DECADES, probability_to_score, threshold_for_budget
from cellwatch.detect.ensemble import MEMBERS, FeatureEnsemble
from cellwatch.detect.explain import sensor_contributions, top_sensors_json
from cellwatch.detect.features import (
    FEATURES,
    RobustScaler,
    feature_names,
    reference_std,
    segment_features,
    window_features,
)
from cellwatch.detect.kernels import segment_quality, segment_since
from cellwatch.detect.quality import QualityChecker
from cellwatch.detect.warmup import MIN_RESUME_GAP_S, RESUME_GAP_STEPS, WarmupProfile, seconds_since_resume

SCORE_COLUMNS = ("anomaly_score", "is_anomaly", "kind", "top_sensors")
_NO_LINE = "_"


def choose_sensors(train: pd.DataFrame, sensors: list[str] | None) -> list[str]:
    """The given sensors (all must be columns), else every numeric non-key column at least half filled."""
    if sensors is not None:
        missing = [s for s in sensors if s not in train.columns]
        if missing:
            raise ValueError(f"sensors not in the training frame: {missing}")
        return list(sensors)
    cand = [c for c in train.columns if c not in READING_KEYS and pd.api.types.is_numeric_dtype(train[c])]
    chosen = [c for c in cand if train[c].notna().mean() >= 0.5]
    if not chosen:
        raise ValueError("no numeric sensor column with at least 50 % values in the training frame")
    return chosen


def sensor_matrix(frame: pd.DataFrame, sensors: list[str]) -> np.ndarray:
    """(rows, sensors) float64; a sensor the frame lacks is all NaN."""
    cols = [frame[s].to_numpy(dtype="float64") if s in frame.columns else np.full(len(frame), np.nan)
            for s in sensors]
    return np.column_stack(cols) if cols else np.zeros((len(frame), 0))


@dataclass
class StationScores:
    """:meth:`StationModel.score_arrays` output, one entry per input row (the :data:`SCORE_COLUMNS`)."""

    anomaly_score: np.ndarray
    is_anomaly: np.ndarray
    kind: np.ndarray
    top_sensors: np.ndarray


@dataclass
class WindowState:
    """Per-line tails of the last readings: raw sensor values (rows x sensors) and times (epoch seconds)."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    times: dict[str, np.ndarray] = field(default_factory=dict)
    #: per line: time of the stream's first reading when that start looked like a restart (warm-up), else absent
    started: dict[str, float] = field(default_factory=dict)


def _epoch_seconds(ts: pd.Series | None, n: int) -> np.ndarray:
    if ts is None:
        return np.full(n, np.nan)
    t = pd.DatetimeIndex(pd.to_datetime(ts, utc=True, errors="coerce")).as_unit("ns")
    out = t.asi8.astype("float64") / 1e9
    out[t.isna()] = np.nan
    return out


def _lines(frame: pd.DataFrame) -> pd.Series:
    if "line" in frame.columns:
        return frame["line"].astype(str).fillna(_NO_LINE)
    return pd.Series(_NO_LINE, index=frame.index)


class StationModel:
    """Anomaly detector for one station; scikit-learn/PyOD style (``fit`` returns self, learnt attrs end in ``_``).

    Parameters: ``sensors`` (default: numeric columns at least half filled), ``window`` (readings per feature
    window), ``alert_budget`` (false incidents per stream per shift on clean validation data), ``k``/``n``/
    ``close_after`` (incident rule, see :mod:`cellwatch.detect.incidents`), ``members`` (ensemble members),
    ``validation_fraction`` (held out of ``train`` when no ``validation`` is given), ``min_stuck`` (shortest
    stuck run), ``score_decades`` (tail probability 10**-decades maps to score 1), ``scale_floor`` (smallest
    feature scale), ``drift_allowance`` (0 = off; >0 widens the scale of features that drifted between the two
    halves of the training data by that many times the drift - for short training data of a drifting process),
    ``seconds_per_row`` (time step assumed when readings carry no time), ``warmup`` (learn the restart warm-up
    profile, :mod:`cellwatch.detect.warmup`, so the transients after stops and changeovers are normal).
    """

    def __init__(self, sensors: list[str] | None = None, window: int = 20, alert_budget: float = 1.0,
                 k: int = 3, n: int = 5, close_after: int = 10, members: tuple[str, ...] = MEMBERS,
                 validation_fraction: float = 0.25, min_stuck: int = 10, random_state: int = 0,
                 seconds_per_row: float = 1.0, scale_floor: float = 0.1, score_decades: float = SCORE_DECADES,
                 drift_allowance: float = 0.0, warmup: bool = True):
        self.sensors = sensors
        self.window = window
        self.alert_budget = alert_budget
        self.k = k
        self.n = n
        self.close_after = close_after
        self.members = members
        self.validation_fraction = validation_fraction
        self.min_stuck = min_stuck
        self.random_state = random_state
        self.seconds_per_row = seconds_per_row
        self.scale_floor = scale_floor
        self.score_decades = score_decades
        self.drift_allowance = drift_allowance
        self.warmup = warmup

    # ------------------------------------------------------------------------------------------ helpers
    def _choose_sensors(self, train: pd.DataFrame) -> list[str]:
        return choose_sensors(train, self.sensors)

    def _split_lines(self, frame: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        """(line, row positions) per line, rows in frame order."""
        names, codes = np.unique(_lines(frame).to_numpy(dtype=object), return_inverse=True)
        if len(names) == 1:
            return [(str(names[0]), np.arange(len(frame)))]
        return [(str(k), np.flatnonzero(codes == i)) for i, k in enumerate(names)]

    def _raw(self, frame: pd.DataFrame) -> np.ndarray:
        return sensor_matrix(frame, self.sensors_)

    def _since(self, times: np.ndarray, started: float = np.nan) -> np.ndarray:
        """Seconds since the stream (one line, time order) resumed after a stop; inf without a warm-up profile."""
        profile = getattr(self, "warmup_", None)
        if profile is None:
            return np.full(len(times), np.inf)
        return seconds_since_resume(times, profile.resume_gap_, started)

    def _start_time(self, raw_first: np.ndarray, t_first: float) -> float:
        """``t_first`` when a stream's first reading looks like a restart (see WarmupProfile.starts_warm), else NaN."""
        profile = getattr(self, "warmup_", None)
        if profile is None or not np.isfinite(t_first):
            return np.nan
        return t_first if profile.starts_warm(self.scaler_.transform(raw_first[None, :])[0]) else np.nan

    def _z(self, raw: np.ndarray, since: np.ndarray) -> np.ndarray:
        """Robust z of raw readings, relative to the restart warm-up where one is learnt."""
        z = self.scaler_.transform(raw)
        profile = getattr(self, "warmup_", None)
        return z if profile is None else profile.adjust(z, since)

    def _line_features(self, raw_ctx: np.ndarray, n_out: int, times_ctx: np.ndarray,
                       started: float = np.nan) -> np.ndarray:
        """Window features of the last ``n_out`` rows of one line's context (raw values, epoch times)."""
        since = self._since(times_ctx, started)
        keep = n_out + self.window - 1  # the features look back window - 1 readings
        F = window_features(self._z(raw_ctx[-keep:], since[-keep:]), n_out, self.window, self.ref_std_)
        profile = getattr(self, "warmup_", None)
        return F if profile is None else profile.adjust_features(F, since[-n_out:])

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None, shift_hours: float = 8.0,
            exclude: np.ndarray | pd.Series | None = None) -> StationModel:
        """Learn scaling, features, ensemble, calibration, threshold and data-quality limits (see module doc)."""
        if train is None or len(train) == 0:
            raise ValueError("empty training frame")
        if not 0 < self.k <= self.n:
            raise ValueError(f"need 0 < k <= n, got k={self.k}, n={self.n}")
        self.sensors_ = self._choose_sensors(train)
        #: readings of context the features and data-quality checks look back over
        self.context_ = int(max(self.window, 2 * self.min_stuck, 3 * self.window))
        self.history_ = self.context_
        keep = np.ones(len(train), dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
        if len(keep) != len(train):
            raise ValueError("exclude mask must have one entry per training row")
        raw = self._raw(train)
        times = _epoch_seconds(train.get("ts"), len(train))
        lines = self._split_lines(train)

        # rows usable as clean samples: not excluded and no excluded row inside their window
        clean = np.zeros(len(train), dtype=bool)
        fit_part = np.zeros(len(train), dtype=bool)
        for _, idx in lines:
            bad = (~keep[idx]).astype(float)
            dirty = np.convolve(bad, np.ones(self.context_), mode="full")[: len(idx)] > 0
            clean[idx] = ~dirty
            cut = len(idx) if validation is not None else round(len(idx) * (1 - self.validation_fraction))
            fit_part[idx[:cut]] = True
        if validation is None and not (clean & ~fit_part).any():
            raise ValueError("training frame too short to hold out validation rows")
        fit_rows = clean & fit_part
        if fit_rows.sum() < 10:
            raise ValueError(f"only {int(fit_rows.sum())} clean training rows; need at least 10")

        self.scaler_ = RobustScaler.fit(raw[fit_rows])
        dts = [np.diff(times[idx]) for _, idx in lines]
        dt_all = np.concatenate(dts) if dts else np.zeros(0)
        dt_all = dt_all[np.isfinite(dt_all) & (dt_all > 0)]
        self.median_dt_ = float(np.median(dt_all)) if dt_all.size else float(self.seconds_per_row)
        z = self.scaler_.transform(raw)
        self.warmup_ = None
        if self.warmup and dt_all.size:
            gap = max(RESUME_GAP_STEPS * self.median_dt_, MIN_RESUME_GAP_S)
            since = np.full(len(train), np.inf)
            for _, idx in lines:
                since[idx] = seconds_since_resume(times[idx], gap)
            profile = WarmupProfile.fit(z[fit_rows], since[fit_rows], gap)
            if profile.active:
                # a line whose first training reading came right after a restart counts from it too
                for _, idx in lines:
                    if len(idx) and np.isfinite(times[idx[0]]) and profile.starts_warm(z[idx[0]]):
                        since[idx] = seconds_since_resume(times[idx], gap, times[idx[0]])
                self.warmup_ = profile
                z = profile.adjust(z, since)
                # the state keeps enough readings to see the last resume up to the profile's horizon
                rows_in_horizon = max((int((np.arange(len(idx)) - np.searchsorted(times[idx], times[idx]
                                       - profile.horizon)).max()) + 2 for _, idx in lines if len(idx)), default=0)
                self.history_ = int(max(self.context_, min(rows_in_horizon, 50_000)))
        self.ref_std_ = reference_std([z[idx][fit_rows[idx]] for _, idx in lines], self.window)
        F = np.empty((len(train), len(FEATURES) * len(self.sensors_)))
        for _, idx in lines:
            F[idx] = window_features(z[idx], len(idx), self.window, self.ref_std_)
        if self.warmup_ is not None:
            self.warmup_.fit_features(F[fit_rows], since[fit_rows])
            F = self.warmup_.adjust_features(F, since)
        self.ensemble_ = FeatureEnsemble(self.members, self.random_state, self.scale_floor,
                                         self.drift_allowance).fit(F[fit_rows])

        self.quality_ = QualityChecker.fit(self.sensors_, [raw[idx][fit_rows[idx]] for _, idx in lines],
                                           np.concatenate(dts) if dts else np.zeros(0),
                                           self.min_stuck, self.context_)

        # held-out clean data: calibration of every member, then the alert-budget threshold
        if validation is not None:
            v_raw, v_times = self._raw(validation), _epoch_seconds(validation.get("ts"),
                                                                    len(validation))
            v_lines = self._split_lines(validation)
            v_feats = [self._line_features(v_raw[idx], len(idx), v_times[idx],
                                           self._start_time(v_raw[idx[0]], v_times[idx[0]])) for _, idx in v_lines]
            v_time = [v_times[idx] for _, idx in v_lines]
        else:
            held = clean & ~fit_part
            v_feats = [F[idx][held[idx]] for _, idx in lines]
            v_time = [times[idx][held[idx]] for _, idx in lines]
        F_cal = np.concatenate(v_feats)
        if len(F_cal) == 0:
            raise ValueError("no clean validation rows")
        self.ensemble_.calibrate(F_cal)
        v_scores = [probability_to_score(self.ensemble_.probability(f), self.score_decades) for f in v_feats if len(f)]
        hours = sum(self._span_hours(t) for t in v_time)
        self.validation_hours_ = hours
        allowed = self.alert_budget * hours / shift_hours
        floor = float(probability_to_score(np.array(0.01), self.score_decades))  # never alert on p > 1 %
        self.threshold_ = threshold_for_budget(v_scores, allowed, self.k, self.n, self.close_after, floor)
        self._set_bands()
        self.metadata_ = {
            "kind": "station_model", "cellwatch_version": __version__,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "stations": sorted(train["station"].astype(str).unique().tolist()) if "station" in train else [],
            "recipes": sorted(train["recipe"].dropna().astype(str).unique().tolist()) if "recipe" in train else [],
            "sensors": self.sensors_, "window": self.window, "history": self.history_, "k": self.k, "n": self.n,
            "close_after": self.close_after, "alert_budget": self.alert_budget, "shift_hours": shift_hours,
            "threshold": self.threshold_, "members": list(self.ensemble_.active_),
            "warmup": None if self.warmup_ is None else {
                "resume_gap_s": self.warmup_.resume_gap_, "horizon_s": self.warmup_.horizon,
                "rows_per_bin": self.warmup_.rows_.tolist()},
            "train_rows": int(fit_rows.sum()), "validation_rows": len(F_cal),
            "validation_hours": round(hours, 3), "allowed_false_incidents": round(allowed, 3),
        }
        return self

    def _span_hours(self, t: np.ndarray) -> float:
        if len(t) == 0:
            return 0.0
        if np.isfinite(t).all() and len(t) > 1:
            return float((t[-1] - t[0] + self.median_dt_) / 3600.0)
        return float(len(t) * self.seconds_per_row / 3600.0)

    def _set_bands(self) -> None:
        med, sc = self.scaler_.median_, self.scaler_.scale_
        lo = np.maximum(med - 4 * sc, self.quality_.lower_)
        hi = np.minimum(med + 4 * sc, self.quality_.upper_)
        self.bands_ = pd.DataFrame({"sensor": self.sensors_, "lower": lo, "expected": med, "upper": hi,
                                    "threshold": self.threshold_})

    # ------------------------------------------------------------------------------------------ scoring
    def new_state(self, recent: pd.DataFrame | None = None) -> WindowState:
        """An empty state, or one rebuilt from the latest readings (only the last ``history_`` per line are kept)."""
        self._check_fitted()
        state = WindowState()
        if recent is not None and len(recent):
            raw = self._raw(recent)
            times = _epoch_seconds(recent.get("ts"), len(recent))
            for line, idx in self._split_lines(recent):
                state.values[line] = raw[idx][-self.history_:].copy()
                state.times[line] = times[idx][-self.history_:].copy()
                started = self._start_time(raw[idx[0]], times[idx[0]])
                if np.isfinite(started):
                    state.started[line] = started
        return state

    def _context(self) -> int:
        return int(getattr(self, "context_", self.history_))  # models saved before context_ existed

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise RuntimeError("StationModel is not fitted; call fit() first")

    def score(self, readings: pd.DataFrame, state: WindowState) -> pd.DataFrame:
        """Score a batch (rows in time order per line); one output row per input row, same index. Updates ``state``."""
        self._check_fitted()
        if len(readings) == 0:
            out = pd.DataFrame(index=readings.index)
            for c, dt in zip(SCORE_COLUMNS, ("float64", "bool", "object", "object"), strict=True):
                out[c] = pd.Series(dtype=dt)
            return out
        res = self.score_arrays(self._raw(readings), _epoch_seconds(readings.get("ts"), len(readings)),
                                self._split_lines(readings), state)
        idx = readings.index
        return pd.DataFrame({"anomaly_score": res.anomaly_score, "is_anomaly": res.is_anomaly,
                             "kind": pd.Series(res.kind, index=idx, dtype=object),
                             "top_sensors": pd.Series(res.top_sensors, index=idx, dtype=object)}, index=idx)

    def score_arrays(self, raw: np.ndarray, times: np.ndarray, lines: list[tuple[str, np.ndarray]],
                     state: WindowState) -> StationScores:
        """:meth:`score` on arrays: ``raw`` (rows x ``sensors_``, NaN = absent), ``times`` (epoch seconds, NaN =
        unknown) and ``lines`` = (line, row positions in time order) covering every row. Updates ``state``.

        All lines are scored together: their window-state tails and new rows are stacked as segments of one
        array, and the window features, data-quality checks and warm-up clocks of every segment come from one
        compiled call each (:mod:`cellwatch.detect.kernels`), the ensemble from one call per member."""
        self._check_fitted()
        n_rows, s = raw.shape
        profile = getattr(self, "warmup_", None)
        back = self._context()  # the features (window - 1) and quality checks (context_) look back this far
        n_seg = len(lines)
        if n_rows == 0 or n_seg == 0:
            return StationScores(np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=object),
                                 np.zeros(0, dtype=object))
        ctx, out, end, tail_len = (np.empty(n_seg, dtype=np.int64) for _ in range(4))
        started = np.full(n_seg, np.nan)
        tails, parts_v, parts_t = [], [], []
        pos = 0
        for k, (line, idx) in enumerate(lines):
            tail_v = state.values.get(line)
            if tail_v is None:  # a new stream: did it start with a restart?
                tail_v, tail_t = np.zeros((0, s)), np.zeros(0)
                first = self._start_time(raw[idx[0]], times[idx[0]])
                if np.isfinite(first):
                    state.started[line] = first
            else:
                tail_t = state.times[line]
            tails.append((tail_v, tail_t))
            started[k] = state.started.get(line, np.nan)
            tail_len[k] = len(tail_t)
            used = min(len(tail_t), back)
            parts_v += [tail_v[len(tail_v) - used:], raw[idx]]
            parts_t += [tail_t[len(tail_t) - used:], times[idx]]
            ctx[k], out[k] = pos, pos + used
            end[k] = pos = out[k] + len(idx)
        V = np.concatenate(parts_v)
        T = np.concatenate(parts_t)
        order = np.concatenate([idx for _, idx in lines])
        z = self.scaler_.transform(V)
        since_out = None
        if profile is not None:  # the warm-up clock looks back over the whole tail, not only the stacked part
            full = np.concatenate([np.concatenate([tt, times[idx]]) for (_, tt), (_, idx) in zip(tails, lines,
                                                                                               strict=True)])
            f_end = np.cumsum(tail_len + (end - out))
            since_full = segment_since(full, f_end - tail_len - (end - out), f_end, profile.resume_gap_, started)
            since = np.concatenate([since_full[f_end[k] - (end[k] - ctx[k]):f_end[k]] for k in range(n_seg)])
            z = profile.adjust(z, since)
            since_out = np.concatenate([since[out[k]:end[k]] for k in range(n_seg)])
        F = segment_features(z, ctx, out, end, self.window, self.ref_std_)
        if since_out is not None:
            F = profile.adjust_features(F, since_out)
        q = self.quality_
        oor, missing, stuck, gap, dt = segment_quality(V, T, ctx, out, end, q.lower_, q.upper_,
                                                       q.stuck_run_.astype(np.int64), float(q.gap_seconds_))
        # the new window state: the last history_ readings of every line
        for k, (line, idx) in enumerate(lines):
            if out[k] - ctx[k] == tail_len[k] or self.history_ <= end[k] - ctx[k]:
                keep = slice(max(ctx[k], end[k] - self.history_), end[k])
                state.values[line], state.times[line] = V[keep].copy(), T[keep].copy()
            else:
                tail_v, tail_t = tails[k]
                state.values[line] = np.concatenate([tail_v, raw[idx]])[-self.history_:]
                state.times[line] = np.concatenate([tail_t, times[idx]])[-self.history_:]

        score_s = probability_to_score(self.ensemble_.probability(F), self.score_decades)
        dq = oor.any(axis=1) | missing.any(axis=1) | stuck.any(axis=1) | gap
        process = score_s >= self.threshold_
        anom_s = process | dq
        score_s = np.where(dq, np.maximum(score_s, self.threshold_), score_s)
        top_s = np.full(n_rows, None, dtype=object)
        rows = np.flatnonzero(anom_s)
        if rows.size:
            contrib = sensor_contributions(self.ensemble_._standardise(F[rows]), s)
            issues = {"out_of_range": oor[rows], "missing": missing[rows], "stuck": stuck[rows]}
            top_s[rows] = top_sensors_json(np.arange(rows.size), contrib, raw[order[rows]], self.scaler_.median_,
                                           self.sensors_, issues, gap[rows], dt[rows], self.median_dt_)
        kind_s = np.where(dq, "data_quality", np.where(process, "process", "normal")).astype(object)
        res = StationScores(np.empty(n_rows), np.empty(n_rows, dtype=bool), np.empty(n_rows, dtype=object),
                            np.empty(n_rows, dtype=object))
        res.anomaly_score[order] = score_s
        res.is_anomaly[order] = anom_s
        res.kind[order] = kind_s
        res.top_sensors[order] = top_s
        return res

    # ------------------------------------------------------------------------------------------ PyOD vocabulary
    def _as_frame(self, X) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            return X
        X = np.atleast_2d(np.asarray(X, dtype="float64"))
        return pd.DataFrame(X, columns=self.sensors_)

    def decision_function(self, X) -> np.ndarray:
        """Anomaly scores in [0, 1] of a whole frame (or array with the sensor columns), scored from a fresh state."""
        self._check_fitted()
        return self.score(self._as_frame(X), self.new_state())["anomaly_score"].to_numpy()

    def predict(self, X) -> np.ndarray:
        """1 for an anomalous row (process or data quality), 0 otherwise."""
        self._check_fitted()
        return self.score(self._as_frame(X), self.new_state())["is_anomaly"].to_numpy().astype(int)

    @property
    def feature_names_(self) -> list[str]:
        return feature_names(self.sensors_)

    def metadata_json(self) -> str:
        self._check_fitted()
        return json.dumps(self.metadata_, indent=2, sort_keys=True)
