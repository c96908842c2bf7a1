"""Wall-clock versus running time of one line, and the small random processes the line model is built from.

A line stops now and then (breakdowns, recipe changeovers). While it stands, no electrode is made and no
cell is wound, so the line model works in *running time* ``p`` (seconds the line has run since the start)
and converts to wall-clock seconds ``t`` only for timestamps. Every electrode station shares the same
stops, so "material coated at running time p is calendered at p + 10 min" holds across a stop.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter


class Timeline:
    """Stops of one line: ``stops`` are (running-time position, duration) pairs in seconds."""

    def __init__(self, wall_s: float, stops: list[tuple[float, float]]):
        stops = sorted(stops)
        self.wall_s = float(wall_s)
        self.stop_p = np.array([p for p, _ in stops], dtype=float)
        self.stop_d = np.array([d for _, d in stops], dtype=float)
        self.cum_d = np.concatenate([[0.0], np.cumsum(self.stop_d)])
        self.run_s = self.wall_s - float(self.cum_d[-1])
        #: wall-clock start of each stop
        self.stop_wall = self.stop_p + self.cum_d[:-1]

    def wall(self, p: np.ndarray | float) -> np.ndarray:
        """Wall-clock seconds of running time ``p`` (a reading at a stop position is after the restart)."""
        p = np.asarray(p, dtype=float)
        return p + self.cum_d[np.searchsorted(self.stop_p, p, side="right")]

    def running(self, t: np.ndarray | float) -> np.ndarray:
        """Running time at wall-clock ``t`` (constant while the line stands)."""
        t = np.asarray(t, dtype=float)
        j = np.searchsorted(self.stop_wall, t, side="right") - 1
        jc = np.clip(j, 0, None)
        in_stop = (j >= 0) & (t < self.stop_wall[jc] + self.stop_d[jc]) if len(self.stop_p) else np.zeros(t.shape, bool)
        p = t - self.cum_d[j + 1]
        if len(self.stop_p):
            p = np.where(in_stop, self.stop_p[jc], p)
        return p

    def since_restart(self, p: np.ndarray) -> np.ndarray:
        """Running seconds since the last restart (inf before the first stop: steady state)."""
        p = np.asarray(p, dtype=float)
        idx = np.searchsorted(self.stop_p, p, side="right")
        last = np.concatenate([[-np.inf], self.stop_p])[idx]
        return p - last

    def is_running(self, t: np.ndarray) -> np.ndarray:
        """True where wall-clock ``t`` is not inside a stop."""
        t = np.asarray(t, dtype=float)
        inside = np.zeros(t.shape, dtype=bool)
        for w, d in zip(self.stop_wall, self.stop_d, strict=True):
            inside |= (t >= w) & (t < w + d)
        return ~inside


def ar1(rng: np.random.Generator, n: int, sd: float, tau: float) -> np.ndarray:
    """Stationary AR(1) series with standard deviation ``sd`` and correlation time ``tau`` steps."""
    if n == 0:
        return np.zeros(0)
    phi = float(np.exp(-1.0 / max(tau, 1e-9)))
    e = rng.normal(0.0, sd * np.sqrt(1 - phi * phi), n)
    e[0] = rng.normal(0.0, sd)
    return lfilter([1.0], [1.0, -phi], e)


def step_offsets(rng: np.random.Generator, index: np.ndarray, sd: float) -> np.ndarray:
    """A constant random offset per integer ``index`` value (e.g. per shift): crew/handover steps."""
    index = np.asarray(index, dtype=np.int64)
    if index.size == 0:
        return np.zeros(0)
    lo, hi = int(index.min()), int(index.max())
    table = rng.normal(0.0, sd, hi - lo + 1)
    return table[index - lo]
