"""Restart warm-up: the expected deviation of every sensor as a function of the time since its stream resumed.

After a stop or a recipe changeover a line does not come back at its steady state: dryers are cold, rolls
warm up, the web speeds up. These transients are normal and repeat at every restart, but they are rare in the
training data (a few restarts per shift), so a detector trained on all rows alike flags every one of them.

:class:`WarmupProfile` learns, from clean training rows in robust z units, the median deviation and the
robust spread of each sensor in bins of "seconds since the stream resumed" (a stream resumes at the first
reading after a time gap longer than ``resume_gap_``). Scoring subtracts the expected deviation (linear
interpolation between the bins' median times) and divides by the warm-up spread (never below 1), so a restart
that looks like earlier restarts is normal, while a fault right after a restart (a deviation the earlier
restarts did not show) still stands out. Bins with too few training rows keep offset 0 and spread 1.

Everything a row needs is in its own line's recent readings (the resume time lies at most ``horizon`` seconds
back), so scores stay independent of how a stream is cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Bin edges in seconds since the stream resumed; rows beyond the last edge are at steady state.
WARMUP_EDGES = (0.0, 15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 1800.0, 3600.0)
#: The spread and feature corrections fade out (linearly in log time) from this many seconds to the horizon, so
#: nothing changes abruptly when a row leaves the warm-up.
TAPER_FROM_S = 900.0
#: A bin needs this many clean training rows to learn an offset and spread.
MIN_BIN_ROWS = 8
#: A stream resumes after a time gap of more than this many median time steps (and at least MIN_RESUME_GAP_S).
RESUME_GAP_STEPS = 10.0
MIN_RESUME_GAP_S = 60.0


def seconds_since_resume(times: np.ndarray, resume_gap: float, started: float = np.nan) -> np.ndarray:
    """Seconds since the first reading after the last gap > ``resume_gap`` (inf before any gap or without time).

    ``started``: time of the stream's first reading when that start was itself a restart (see
    :meth:`WarmupProfile.starts_warm`); rows before any gap then count from it."""
    t = np.asarray(times, dtype="float64")
    n = t.size
    if n == 0:
        return np.zeros(0)
    dt = np.diff(t, prepend=np.nan)
    resumed = dt > resume_gap
    last = np.maximum.accumulate(np.where(resumed, np.arange(n), -1))
    since = np.full(n, np.inf)
    ok = last >= 0
    since[ok] = t[ok] - t[last[ok]]
    since[~np.isfinite(since)] = np.inf
    if np.isfinite(started):
        from_start = np.isinf(since) & (t >= started)
        since[from_start] = t[from_start] - started
    return since


@dataclass
class WarmupProfile:
    """Per-bin expected deviation (``offset_``) and spread (``scale_``, >= 1) of each sensor after a restart."""

    edges_: np.ndarray      # (bins + 1,)
    centre_: np.ndarray     # (bins,) median seconds since resume of the training rows in each bin
    offset_: np.ndarray     # (bins, sensors) robust z
    scale_: np.ndarray      # (bins, sensors) >= 1
    resume_gap_: float
    rows_: np.ndarray       # (bins,) training rows per bin
    #: window features of warm-up rows against steady ones, per bin: median and widening factor (>= 1)
    f_offset_: np.ndarray | None = None   # (bins, features)
    f_steady_: np.ndarray | None = None   # (features,) steady-state median
    f_widen_: np.ndarray | None = None    # (bins, features) >= 1

    @property
    def horizon(self) -> float:
        return float(self.edges_[-1])

    @property
    def active(self) -> bool:
        return bool((self.rows_ >= MIN_BIN_ROWS).any())

    @classmethod
    def fit(cls, z: np.ndarray, since: np.ndarray, resume_gap: float,
            edges: tuple[float, ...] = WARMUP_EDGES) -> WarmupProfile:
        """``z``: clean training rows (robust z, rows x sensors); ``since``: their seconds since resume."""
        e = np.asarray(edges, dtype="float64")
        n_bins, s = e.size - 1, z.shape[1]
        offset, scale = np.zeros((n_bins, s)), np.ones((n_bins, s))
        centre = (e[:-1] + e[1:]) / 2
        rows = np.zeros(n_bins, dtype=int)
        b = np.searchsorted(e, since, side="right") - 1
        with np.errstate(all="ignore"):
            for i in range(n_bins):  # a handful of bins, each vectorised over rows and sensors
                sel = b == i
                rows[i] = int(sel.sum())
                if rows[i] < MIN_BIN_ROWS:
                    continue
                zi = z[sel]
                centre[i] = float(np.median(since[sel]))
                med = np.nanmedian(zi, axis=0)
                offset[i] = np.where(np.isfinite(med), med, 0.0)
        profile = cls(e, centre, offset, scale, float(resume_gap), rows)
        # spread of what the interpolated offset leaves, per bin (so a restart unlike the usual ones still shows)
        resid = z - profile.expected(since)
        with np.errstate(all="ignore"):
            for i in range(n_bins):
                sel = b == i
                if rows[i] < MIN_BIN_ROWS:
                    continue
                ri = resid[sel]
                mad = 1.4826 * np.nanmedian(np.abs(ri - np.nanmedian(ri, axis=0)), axis=0)
                profile.scale_[i] = np.maximum(1.0, np.where(np.isfinite(mad), mad, 1.0))
        return profile

    def fit_features(self, F: np.ndarray, since: np.ndarray) -> WarmupProfile:
        """Learn how the window features (computed on adjusted z) of clean warm-up rows differ from steady ones.

        A window that spans the restart, or a steep transient, has unusual spread/slope/jump even when the levels
        match the profile; per bin, the features are re-centred on the steady median and their spread is brought
        back to the steady spread (only ever narrowed, never widened: a bin with less spread is left alone)."""
        b = np.searchsorted(self.edges_, since, side="right") - 1
        steady = since >= self.horizon
        n_bins, f = self.offset_.shape[0], F.shape[1]
        self.f_offset_ = np.zeros((n_bins, f))
        self.f_widen_ = np.ones((n_bins, f))
        if steady.sum() < MIN_BIN_ROWS:
            self.f_steady_ = np.zeros(f)
            return self
        med_s = np.median(F[steady], axis=0)
        mad_s = np.maximum(np.median(np.abs(F[steady] - med_s), axis=0), 1e-6)
        self.f_steady_ = med_s
        for i in range(n_bins):
            sel = b == i
            if sel.sum() < MIN_BIN_ROWS:
                self.f_offset_[i] = med_s
                continue
            med_b = np.median(F[sel], axis=0)
            mad_b = np.median(np.abs(F[sel] - med_b), axis=0)
            self.f_offset_[i] = med_b
            self.f_widen_[i] = np.maximum(1.0, mad_b / mad_s)
        return self

    def adjust_features(self, F: np.ndarray, since: np.ndarray) -> np.ndarray:
        """Window features of warm-up rows mapped onto the steady-state distribution (see :meth:`fit_features`)."""
        if self.f_offset_ is None or not self.active:
            return F
        inside = since < self.horizon
        if not inside.any():
            return F
        b = np.clip(np.searchsorted(self.edges_, since[inside], side="right") - 1, 0, self.f_offset_.shape[0] - 1)
        out = F.copy()
        w = self.taper(since[inside])[:, None]
        mapped = self.f_steady_ + (F[inside] - self.f_offset_[b]) / self.f_widen_[b]
        out[inside] = F[inside] + w * (mapped - F[inside])
        return out

    def starts_warm(self, z_first: np.ndarray) -> bool:
        """Does a stream's first reading (robust z, no earlier reading known) look like a restart?

        True when it lies closer to the expected deviation of the first learnt bin than to the steady state (in
        the warm-up spread's units): a recipe model whose first reading comes after a changeover, say."""
        good = self._bins()
        if good.size == 0:
            return False
        b = int(good[0])
        z = np.asarray(z_first, dtype="float64")
        ok = np.isfinite(z)
        if not ok.any():
            return False
        warm = (((z - self.offset_[b]) / self.scale_[b])[ok] ** 2).sum()
        steady = (z[ok] ** 2).sum()
        return bool(warm < steady)

    def _bins(self) -> np.ndarray:
        return np.flatnonzero(self.rows_ >= MIN_BIN_ROWS)

    def expected(self, since: np.ndarray) -> np.ndarray:
        """Expected deviation (rows x sensors) at ``since`` seconds after a resume; 0 at steady state."""
        out = np.zeros((since.size, self.offset_.shape[1]))
        good = self._bins()
        inside = since < self.horizon
        if good.size == 0 or not inside.any():
            return out
        x = np.log1p(since[inside])
        xp = np.log1p(self.centre_[good])
        last = np.log1p(self.horizon)
        for j in range(self.offset_.shape[1]):  # per sensor: np.interp over the rows
            fp = self.offset_[good, j]
            out[inside, j] = np.interp(x, np.append(xp, last), np.append(fp, 0.0))
        return out

    def taper(self, since: np.ndarray) -> np.ndarray:
        """Weight of the spread and feature corrections: 1 up to TAPER_FROM_S, 0 from the horizon on."""
        lo, hi = np.log1p(min(TAPER_FROM_S, self.horizon / 2)), np.log1p(self.horizon)
        return np.clip((hi - np.log1p(since)) / (hi - lo), 0.0, 1.0)

    def spread(self, since: np.ndarray) -> np.ndarray:
        """Warm-up spread (rows x sensors, >= 1) at ``since`` seconds after a resume; 1 at steady state."""
        out = np.ones((since.size, self.scale_.shape[1]))
        inside = since < self.horizon
        if not inside.any():
            return out
        b = np.searchsorted(self.edges_, since[inside], side="right") - 1
        w = self.taper(since[inside])[:, None]
        out[inside] = 1.0 + w * (self.scale_[np.clip(b, 0, self.scale_.shape[0] - 1)] - 1.0)
        return out

    def adjust(self, z: np.ndarray, since: np.ndarray) -> np.ndarray:
        """``z`` relative to what a restart ``since`` seconds ago makes normal."""
        inside = since < self.horizon
        if not self.active or not inside.any():
            return z
        out = z.copy()
        sub = since[inside]
        out[inside] = (z[inside] - self.expected(sub)) / self.spread(sub)
        return out
