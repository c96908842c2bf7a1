"""Top contributing sensors of an anomalous reading, with actual vs expected value.

A sensor's contribution is the largest absolute standardised value among its window features (level,
window mean, spread, slope) - "how many robust standard deviations from normal" on the worst aspect.
Sensors with a data-quality issue come first and carry an ``issue`` code. Expected = the training median.
"""

from __future__ import annotations

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
    """JSON explanation for each row index in ``rows`` (only anomalous rows are passed)."""
    out = []
    for r in rows:
        items: list[dict] = []
        seen: set[int] = set()
        for issue in ISSUES:
            if issue == "gap":
                if gap_rows[r]:
                    items.append({"sensor": "ts", "actual": _num(dt_seconds[r]), "expected": _num(expected_dt),
                                  "contribution": None, "issue": "gap"})
                continue
            for j in np.flatnonzero(issues[issue][r]):
                if j not in seen:
                    seen.add(j)
                    items.append({"sensor": sensors[j], "actual": _num(raw[r, j]), "expected": _num(expected[j]),
                                  "contribution": _num(contrib[r, j]), "issue": issue})
        for j in np.argsort(-contrib[r], kind="stable"):
            if len(items) >= top:
                break
            if j not in seen:
                seen.add(j)
                items.append({"sensor": sensors[j], "actual": _num(raw[r, j]), "expected": _num(expected[j]),
                              "contribution": _num(contrib[r, j])})
        out.append(orjson.dumps(items[:top]).decode())
    return out


def _num(x: float) -> float | None:
    x = float(x)
    return round(x, 6) if np.isfinite(x) else None
