"""Raw detector scores -> tail probabilities -> one anomaly score in [0, 1], and the alert-budget threshold.

* :class:`TailCalibrator` maps a member's raw score to its upper-tail probability against a calibration
  sample (held-out clean data): the empirical tail up to the 95th percentile, an exponential tail fitted
  to the excesses above it beyond (so scores far outside the calibration sample still order).
* :func:`combine` joins the members' tail probabilities with a Bonferroni-corrected minimum.
* :func:`probability_to_score` turns the combined probability into the dashboard score
  ``min(1, -log10(p) / SCORE_DECADES)``: 0.5 means "1 in 1000 of clean readings look like this".
* :func:`threshold_for_budget` picks the lowest score threshold at which clean validation data opens at
  most ``alert_budget`` incidents per station per shift under the k-of-n rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellwatch.detect.incidents import count_incidents
from cellwatch.detect.kernels import interp_index, tail_parts

#: Decades of tail probability mapped onto the score scale: p = 1e-6 -> score 1.
SCORE_DECADES = 6.0
_TAIL_Q = 0.95
_GRID = np.linspace(0.0, _TAIL_Q, 191)
_P_FLOOR = 1e-300


@dataclass
class TailCalibrator:
    """Upper-tail probability of a raw score: P(score_clean >= raw)."""

    quantiles_: np.ndarray  # raw-score quantiles at _GRID
    tail_scale_: float

    @classmethod
    def fit(cls, raw: np.ndarray) -> TailCalibrator:
        raw = np.asarray(raw, dtype="float64")
        raw = raw[np.isfinite(raw)]
        if raw.size == 0:
            raw = np.zeros(1)
        q = np.quantile(raw, _GRID)
        q = np.maximum.accumulate(q)
        excess = raw[raw > q[-1]] - q[-1]
        scale = float(excess.mean()) if excess.size else 0.0
        spread = float(q[-1] - q[0])
        scale = max(scale, 1e-3 * spread, 1e-9)
        return cls(q, scale)

    def tail_probability(self, raw: np.ndarray) -> np.ndarray:
        """Empirical part ``1 - F(raw)`` by interpolation on the quantile grid (monotone non-increasing); beyond the
        last quantile the exponential tail. NaN counts as 0, +-inf as +-1e300."""
        return TailCalibrators([self]).tail_probabilities(np.asarray(raw, dtype="float64")[:, None])[:, 0]


class TailCalibrators:
    """Several calibrators applied to the columns of one raw-score matrix at once (one compiled pass, then
    NumPy's ``exp``): the same numbers as each :meth:`TailCalibrator.tail_probability` on its column."""

    def __init__(self, calibrators: list[TailCalibrator]):
        self.q_t = np.ascontiguousarray(np.array([c.quantiles_ for c in calibrators], dtype="float64"))
        self.q_last = self.q_t[:, -1].copy() if len(calibrators) else np.zeros(0)
        self.scale = np.array([c.tail_scale_ for c in calibrators], dtype="float64")
        self.table = interp_index(self.q_t)

    def tail_probabilities(self, raw: np.ndarray) -> np.ndarray:
        """(rows x calibrators) tail probabilities of the raw scores (rows x calibrators)."""
        body, expo, in_tail = tail_parts(np.ascontiguousarray(raw, dtype="float64"), self.q_t, _GRID, self.q_last,
                                         self.scale, _TAIL_Q, self.table)
        p = np.where(in_tail, (1.0 - _TAIL_Q) * np.exp(expo), body)
        return np.clip(p, _P_FLOOR, 1.0)


def combine(p_members: np.ndarray) -> np.ndarray:
    """Bonferroni-corrected minimum of the members' tail probabilities (rows x members) -> (rows,)."""
    p_members = np.atleast_2d(p_members)
    return np.minimum(1.0, p_members.shape[1] * p_members.min(axis=1))


def probability_to_score(p: np.ndarray, decades: float = SCORE_DECADES) -> np.ndarray:
    """Tail probability -> anomaly score in [0, 1] (monotone: smaller p, higher score; p = 10**-decades -> 1)."""
    return np.clip(-np.log10(np.clip(p, _P_FLOOR, 1.0)) / decades, 0.0, 1.0) + 0.0  # no -0.0


def threshold_for_budget(scores_by_line: list[np.ndarray], allowed_incidents: float, k: int, n: int,
                         close_after: int, floor: float = 1.0 / 3.0) -> float:
    """Lowest threshold on the score scale at which clean data opens at most ``allowed_incidents`` incidents.

    Candidates are the distinct high scores of the validation data; the count is monotone in practice,
    and the scan keeps the lowest threshold for which it and every higher candidate respect the budget.
    ``floor`` (default: score of p = 0.01) keeps a generous budget from pulling the threshold into the bulk.
    """
    allowed = int(np.floor(allowed_incidents + 1e-9))
    every = np.concatenate([s for s in scores_by_line if len(s)]) if scores_by_line else np.zeros(0)
    if every.size == 0:
        return max(floor, 0.5)
    cand = np.unique(np.quantile(every, np.linspace(0.5, 1.0, 401)))
    cand = np.unique(np.concatenate([cand, np.nextafter(cand, 2.0)]))
    cand = cand[(cand >= floor) & (cand <= 1.0)]
    best = float(min(1.0, np.nextafter(every.max(), 2.0)))
    for theta in cand[::-1]:
        flags = [s >= theta for s in scores_by_line]
        if count_incidents(flags, k, n, close_after) > allowed:
            break
        best = float(theta)
    return best
