"""Data-quality checks per reading: stuck sensor, value outside its physical range, missing value, time gap.

These are problems of the measurement, not of the process, and are reported with kind="data_quality".
Everything a check needs is learnt on clean training data (longest natural run of identical values per
sensor, typical time step) or comes from the station catalogue (:func:`cellwatch.stations.physical_bounds`,
imported lazily; sensors it does not know get no bounds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: Issue codes, in the order of precedence used when a reading has several.
ISSUES = ("out_of_range", "missing", "stuck", "gap")


def physical_bounds_for(sensors: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper physical bounds per sensor from the station catalogue (-inf/+inf when unknown)."""
    lo = np.full(len(sensors), -np.inf)
    hi = np.full(len(sensors), np.inf)
    try:
        from cellwatch.stations import physical_bounds  # owned by the simulator engineer
        bounds = physical_bounds()
    except Exception as exc:  # the catalogue is optional for generic (tabular) data
        log.debug("no physical bounds available: %s", exc)
        return lo, hi
    for i, s in enumerate(sensors):
        b = bounds.get(s) if hasattr(bounds, "get") else None
        if b is not None:
            lo[i] = -np.inf if b[0] is None else float(b[0])
            hi[i] = np.inf if b[1] is None else float(b[1])
    return lo, hi


def longest_identical_run(values: np.ndarray) -> np.ndarray:
    """Longest run of identical consecutive non-NaN values per column of ``values`` (rows x sensors)."""
    if len(values) == 0:
        return np.zeros(values.shape[1], dtype=int)
    same = np.zeros(values.shape, dtype=bool)
    same[1:] = values[1:] == values[:-1]
    # run length ending at each row: rows since the last change, via cumulative maximum of change positions
    idx = np.arange(len(values))[:, None]
    last_change = np.maximum.accumulate(np.where(~same, idx, 0), axis=0)
    return (idx - last_change + 1).max(axis=0)


@dataclass
class QualityChecker:
    """What the data-quality checks need: ``stuck_run_`` per sensor, physical bounds, ``gap_seconds_`` learnt from
    train; the checks themselves run in :func:`cellwatch.detect.kernels.segment_quality`."""

    stuck_run_: np.ndarray
    lower_: np.ndarray
    upper_: np.ndarray
    gap_seconds_: float

    @classmethod
    def fit(cls, sensors: list[str], train_lines: list[np.ndarray], dt_seconds: np.ndarray,
            min_stuck: int, max_stuck: int) -> QualityChecker:
        """``train_lines``: raw values per line; ``dt_seconds``: time steps seen in train (may be empty)."""
        runs = np.max([longest_identical_run(v) for v in train_lines], axis=0) if train_lines else \
            np.zeros(len(sensors), dtype=int)
        # A sensor that naturally repeats a value for r readings is stuck only after 2r (capped to the history).
        stuck = np.clip(np.maximum(min_stuck, 2 * runs + 1), None, max_stuck)
        stuck = np.where(runs * 2 + 1 > max_stuck, 0, stuck)  # constant-ish sensors: no stuck check
        lo, hi = physical_bounds_for(sensors)
        dt = dt_seconds[np.isfinite(dt_seconds) & (dt_seconds > 0)]
        gap = float(max(10 * np.median(dt), 2 * np.max(dt))) if dt.size else np.inf
        return cls(stuck.astype(int), lo, hi, gap)
