"""Top contributing sensors of an anomalous reading, with actual vs expected value.

A sensor's contribution is the largest absolute standardised value among its window features (level,
window mean, spread, slope) - "how many robust standard deviations from normal" on the worst aspect.
Sensors with a data-quality issue come first and carry an ``issue`` code. Expected = the training median.
"""

from __future__ import annotations

import math

import numpy as np
import orjson

from cellwatch.detect.quality import ISSUES

TOP_N = 3


def sensor_contributions(Z: np.ndarray, n_sensors: int) -> np.ndarray:
    """Per-sensor contribution (rows x sensors) from standardised features in feature-major order."""
    if Z.size == 0:
        return np.zeros((len(Z), n_sensors))
    return np.abs(Z.reshape(len(Z), -1, n_sensors)).max(axis=1)


def top_sensors_json(rows: np.ndarray, contrib: np.ndarray, raw: np.ndarray, expected: np.ndarray,
                     sensors: list[str], issues: dict[str, np.ndarray], gap_rows: np.ndarray,
                     dt_seconds: np.ndarray, expected_dt: float, top: int = TOP_N) -> list[str]:
    """JSON explanation for each row index in ``rows`` (only anomalous rows are passed).

    The sensor order by contribution (stable, largest first) comes from one argsort of all rows; the per-row
    Python work is building the few items, and the rows without a data-quality issue skip the issue scan."""
    rows = np.asarray(rows, dtype=np.intp)
    if rows.size == 0:
        return []
    c = contrib[rows]
    order = np.argsort(-c, axis=1, kind="stable").tolist()
    c_l, raw_l = c.tolist(), raw[rows].tolist()
    exp_l = [_num(e) for e in np.asarray(expected, dtype="float64").tolist()]
    masks = [issues[i][rows] for i in ISSUES if i != "gap"]
    gaps = np.asarray(gap_rows)[rows]
    flagged = (np.any([m.any(axis=1) for m in masks], axis=0) if masks else np.zeros(rows.size, dtype=bool)) | gaps
    out = []
    for i in range(rows.size):
        if not flagged[i]:
            items = [{"sensor": sensors[j], "actual": _num(raw_l[i][j]), "expected": exp_l[j],
                      "contribution": _num(c_l[i][j])} for j in order[i][:top]]
            out.append(orjson.dumps(items).decode())
            continue
        items: list[dict] = []
        seen: set[int] = set()
        for issue in ISSUES:
            if issue == "gap":
                if gaps[i]:
                    items.append({"sensor": "ts", "actual": _num(dt_seconds[rows[i]]), "expected": _num(expected_dt),
                                  "contribution": None, "issue": "gap"})
                continue
            for j in np.flatnonzero(issues[issue][rows[i]]).tolist():
                if j not in seen:
                    seen.add(j)
                    items.append({"sensor": sensors[j], "actual": _num(raw_l[i][j]), "expected": exp_l[j],
                                  "contribution": _num(c_l[i][j]), "issue": issue})
        for j in order[i]:
            if len(items) >= top:
                break
            if j not in seen:
                seen.add(j)
                items.append({"sensor": sensors[j], "actual": _num(raw_l[i][j]), "expected": exp_l[j],
                              "contribution": _num(c_l[i][j])})
        out.append(orjson.dumps(items[:top]).decode())
    return out


def _num(x: float) -> float | None:
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None
