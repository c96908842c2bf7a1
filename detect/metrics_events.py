"""Scoring definitions for anomaly benchmarks and event-level evaluation.

* :func:`skab_outlier_metrics` - SKAB point-wise F1 / FAR / MAR (micro over files);
* :func:`skab_changepoints`, :func:`skab_nab_score` - SKAB's NAB variant for changepoints (right-hand windows);
* :func:`nab_file_score`, :func:`nab_normalised` - the original NAB score (probationary period, scaled sigmoid,
  earliest detection per window, FP penalty by distance from the previous window);
* :func:`event_metrics` - event-level recall / precision / detection delay of incidents against labelled faults.

Definitions follow /work/shared/datasets/README.md section 6 (implemented here, not vendored).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

SKAB_PROFILES = {"standard": (1.0, -0.11, -1.0), "low_fp": (1.0, -0.22, -1.0), "low_fn": (1.0, -0.11, -2.0)}
NAB_PROFILES = {"standard": (1.0, 0.11, 1.0), "reward_low_FP_rate": (1.0, 0.22, 1.0),
                "reward_low_FN_rate": (1.0, 0.11, 2.0)}


# ------------------------------------------------------------------------------------------------ SKAB outliers
def skab_outlier_metrics(y_true: Sequence[np.ndarray], y_pred: Sequence[np.ndarray]) -> dict[str, float]:
    """Micro F1, FAR % and MAR % over files (lists of 0/1 arrays, one per file; every row predicted)."""
    tp = fp = fn = tn = 0
    for y, p in zip(y_true, y_pred, strict=True):
        y, p = np.asarray(y).astype(bool), np.asarray(p).astype(bool)
        if y.shape != p.shape:
            raise ValueError("every row needs a prediction")
        tp += int((y & p).sum())
        fp += int((~y & p).sum())
        fn += int((y & ~p).sum())
        tn += int((~y & ~p).sum())
    f1 = tp / (tp + (fp + fn) / 2) if tp + fp + fn else 1.0
    far = 100.0 * fp / (fp + tn) if fp + tn else 0.0
    mar = 100.0 * fn / (fn + tp) if fn + tp else 0.0
    return {"f1": f1, "far": far, "mar": mar, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


# ------------------------------------------------------------------------------------------------ SKAB changepoints
def skab_changepoints(pred: np.ndarray) -> np.ndarray:
    """Predicted changepoints from a binary outlier prediction: |diff|, the first element = the first prediction."""
    pred = np.asarray(pred).astype(int)
    if pred.size == 0:
        return pred.astype(bool)
    cp = np.abs(np.diff(pred, prepend=pred[0]))
    cp[0] = pred[0]
    return cp.astype(bool)


def _skab_windows(cp_times: np.ndarray, width: pd.Timedelta) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    windows: list[list[pd.Timestamp]] = []
    for t in sorted(cp_times):
        start, end = pd.Timestamp(t), pd.Timestamp(t) + width
        if windows and start <= windows[-1][1]:
            start = windows[-1][1]  # "cut right window": the later window starts where the earlier ends
        windows.append([start, end])
    return [(a, b) for a, b in windows]


def _skab_detection_score(r: float, a_tp: float, a_fp: float) -> float:
    e = min(int(r * 1000), 999)
    x = np.linspace(-np.pi / 2, np.pi / 2, 1000)[e]
    return (a_tp - a_fp) / 2 * (-np.tanh(x) / np.tanh(np.pi / 2)) + (a_tp - a_fp) / 2 + a_fp


def skab_nab_score(files: Sequence[tuple[pd.Series, np.ndarray, np.ndarray]], window_seconds: float = 60.0
                   ) -> dict[str, dict[str, float]]:
    """SKAB NAB score per profile. ``files``: (timestamps, true changepoint flags, predicted changepoint flags)."""
    width = pd.Timedelta(seconds=window_seconds)
    per_file = []
    n_windows = 0
    for ts, true_cp, pred_cp in files:
        ts = pd.to_datetime(pd.Series(ts)).reset_index(drop=True)
        windows = _skab_windows(ts[np.asarray(true_cp).astype(bool)].to_numpy(), width)
        n_windows += len(windows)
        det_times = ts[np.asarray(pred_cp).astype(bool)]
        detections, in_any = [], np.zeros(len(det_times), dtype=bool)
        for start, end in windows:
            inside = ((det_times >= start) & (det_times <= end)).to_numpy()
            in_any |= inside
            if inside.any():
                t = det_times[inside].iloc[0]
                span = (end - start).total_seconds()
                detections.append((t - start).total_seconds() / span if span > 0 else 0.0)
            else:
                detections.append(None)
        per_file.append((detections, int((~in_any).sum())))
    out = {}
    for name, (a_tp, a_fp, a_fn) in SKAB_PROFILES.items():
        total = 0.0
        missed = fps = 0
        for detections, n_fp in per_file:
            for r in detections:
                if r is None:
                    total += a_fn
                    missed += 1
                else:
                    total += _skab_detection_score(r, a_tp, a_fp)
            total += a_fp * n_fp
            fps += n_fp
        s_null, s_perfect = a_fn * n_windows, a_tp * n_windows
        out[name] = {"score": round(float(100 * (total - s_null) / (s_perfect - s_null)), 2), "missed": missed,
                     "fps": fps}
    return out


# ------------------------------------------------------------------------------------------------ NAB
def _sigma(y: float | np.ndarray) -> float | np.ndarray:
    return 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0


def nab_probation(n: int) -> int:
    """Rows before this index are in the probationary period (not scored)."""
    return min(math.floor(0.15 * n), 750)


def nab_window_rows(ts: pd.Series, windows: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
    """Window [start, end] timestamps -> inclusive row ranges (rows whose timestamp falls inside)."""
    t = pd.to_datetime(pd.Series(ts)).to_numpy()
    out = []
    for a, b in windows:
        lo = int(np.searchsorted(t, np.datetime64(pd.Timestamp(a)), side="left"))
        hi = int(np.searchsorted(t, np.datetime64(pd.Timestamp(b)), side="right")) - 1
        if hi >= lo:
            out.append((lo, hi))
    return out


def nab_file_score(detections: np.ndarray, windows: Sequence[tuple[int, int]], profile: tuple[float, float, float],
                   probation: int) -> float:
    """Raw NAB score of one file: ``detections`` boolean per row, ``windows`` inclusive row ranges."""
    tp_w, fp_w, fn_w = profile
    det = np.flatnonzero(np.asarray(detections, dtype=bool))
    det = det[det >= probation]
    score = 0.0
    starts = np.array([w[0] for w in windows], dtype=int)
    for lo, hi in windows:
        inside = det[(det >= lo) & (det <= hi)]
        if inside.size:
            width = hi - lo + 1
            y = -(hi - inside[0] + 1) / width
            score += tp_w * _sigma(y) / _sigma(-1.0)
        else:
            score -= fn_w
    for i in det:
        if any(lo <= i <= hi for lo, hi in windows):
            continue
        prev = np.flatnonzero(starts <= i)
        if prev.size == 0:
            score += fp_w * -1.0
            continue
        lo, hi = windows[prev[-1]]
        width = hi - lo + 1
        d = (i - hi) / (width - 1) if width > 1 else np.inf
        score += fp_w * (-1.0 if d > 3 else float(_sigma(d)))
    return score


def nab_normalised(raw_total: float, n_windows: int, profile: tuple[float, float, float]) -> float:
    """100 * (S - S_null) / (S_perfect - S_null)."""
    tp_w, _, fn_w = profile
    s_null, s_perfect = -fn_w * n_windows, tp_w * n_windows
    return 100.0 * (raw_total - s_null) / (s_perfect - s_null)


# ------------------------------------------------------------------------------------------------ events
def event_metrics(truth: pd.DataFrame, alerts: pd.DataFrame, tolerance: pd.Timedelta | None = None
                  ) -> dict[str, float]:
    """Event-level recall/precision/delay. ``truth``: fault intervals (key columns + start_ts, end_ts);
    ``alerts``: incidents (same key columns + start_ts, end_ts or None). Key columns are those both share
    among (line, station). A fault is detected when an alert overlaps [start, end + tolerance]; an alert
    that overlaps no fault is a false alarm. Delay = first overlapping alert start - fault start (>= 0)."""
    tolerance = pd.Timedelta(0) if tolerance is None else tolerance
    keys = [c for c in ("line", "station") if c in truth.columns and c in alerts.columns]
    t_s = pd.to_datetime(truth["start_ts"], utc=True).to_numpy()
    t_e = (pd.to_datetime(truth["end_ts"], utc=True) + tolerance).to_numpy()
    a_s = pd.to_datetime(alerts["start_ts"], utc=True).to_numpy() if len(alerts) else np.array([], "datetime64[ns]")
    a_e_raw = pd.to_datetime(alerts["end_ts"], utc=True) if len(alerts) else pd.Series([], dtype="datetime64[ns, UTC]")
    open_end = pd.Timestamp("2200-01-01", tz="UTC").as_unit(a_e_raw.dt.unit)  # an open alert has not ended
    a_e = a_e_raw.fillna(open_end).to_numpy() if len(alerts) else a_s
    same = np.ones((len(truth), len(alerts)), dtype=bool)
    for k in keys:
        same &= truth[k].astype(str).to_numpy()[:, None] == alerts[k].astype(str).to_numpy()[None, :]
    overlap = same & (a_s[None, :] <= t_e[:, None]) & (a_e[None, :] >= t_s[:, None])
    detected = overlap.any(axis=1)
    delays = []
    for i in np.flatnonzero(detected):
        first = a_s[overlap[i]].min()
        delays.append(max(0.0, (first - t_s[i]) / np.timedelta64(1, "s")))
    false_alarms = int((~overlap.any(axis=0)).sum()) if len(alerts) else 0
    n_alerts = len(alerts)
    return {"faults": len(truth), "detected": int(detected.sum()),
            "recall": float(detected.mean()) if len(truth) else float("nan"),
            "alerts": n_alerts, "false_alarms": false_alarms,
            "precision": float((n_alerts - false_alarms) / n_alerts) if n_alerts else float("nan"),
            "median_delay_s": float(np.median(delays)) if delays else float("nan")}
