"""Online anomaly detector for one univariate stream: novelty of value contexts (the NAB detector).

:class:`ContextNoveltyDetector` quantises the stream on ``n_grids`` value grids whose bin widths come from the
training rows (``(max - min) / m`` for ``m`` spaced geometrically over ``n_bins``, each grid shifted by a different
fraction of a bin; bins are open-ended, so values outside the training range get new bins). Several grids make
"a new value" a graded notion (new on every grid, or only on the finer ones) instead of an artefact of where one
grid's edges fall. For each grid it remembers how often every *context* has occurred: the current bin alone
(order 0) and the current bin with the ``k`` bins before it (orders 1 .. ``max_order - 1``). Per row, online
(row ``i`` uses rows ``<= i`` only), averaged over the grids:

1. **value novelty** - the current bin was never seen before: ``gap / (gap + gap_scale)`` where ``gap`` is how
   many bins the value lies beyond every bin seen so far (at least 1), so a first visit just outside the known
   range scores 0.67 and a far excursion approaches 1 (``gap_scale=0.5``);
2. **sequence novelty** - the fraction of orders 1.. whose context is new, averaged over the last ``short``
   rows and compared with its own history (the ``long`` rows before): a z statistic (the mean of ``short``
   values against the historical mean, in units of the historical std / sqrt(short)), scaled by ``z_scale``
   and capped at ``seq_cap`` (a likelihood step in the spirit of Numenta's anomaly likelihood: it fires on a
   burst of unfamiliar sequences, relative to how unfamiliar this stream usually is);
3. **seasonal novelty** - only for a stream with a season: the lag ``P`` of the strongest autocorrelation peak
   of the training rows (``P >= 4``, at least two seasons in the training rows, autocorrelation at least
   ``season_acf``). The mean of the last ``m = max(3, P // season_div)`` rows minus the same mean one season
   earlier (or two seasons earlier, whichever differs less, so an event one season ago does not echo), as a z
   statistic against its own last ``long`` values, scaled by ``season_scale`` and capped at 1: it fires when a
   season's usual shape is missing (a daily peak that does not come), which no context of a few rows can see
   (``season_acf=None`` turns it off);
4. ``score = max(value, sequence, seasonal novelty)``, then **suppression**: a row keeps its score only if it is
   higher than every raw score of the previous ``suppress`` rows, else it is 0 (a repeat alarm on the same
   event says nothing new). By default ``suppress`` is a fifth of the training rows (CAD OSE's rest period).
   The suppression does not depend on a threshold, so ``score >= theta`` is nested in ``theta`` (NAB's
   protocol: one score series per detector, one threshold).

All of it is NumPy/pandas per batch: context counts are sorted key/count arrays merged per batch, rolling
statistics run over the batch plus the state's tails, so scores do not depend on how the stream is cut into
batches. Estimator style: ``fit`` (training rows learn the bins and seed the counts), ``decision_function``
(scores of rows that follow the training rows), ``predict`` (``score >= threshold``); ``new_state`` /
``score_batch`` for streaming.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

_HASH_MUL = np.int64(1_000_003)
_NO_BIN = np.int64(-(2**40))  # stands for "before the stream began" in a context key


@dataclass
class GridState:
    """One value grid's memory: context counts per order, the last bins, the bin range seen so far."""

    keys: list[np.ndarray]  # per order: sorted context keys seen so far
    counts: list[np.ndarray]  # per order: how often each key occurred
    last_bins: np.ndarray  # the last max_order - 1 bins (oldest first)
    bin_min: float = np.inf
    bin_max: float = -np.inf


@dataclass
class NoveltyState:
    """Everything a stream needs to continue: the grids' memories and the tails of the rolling statistics."""

    grids: list[GridState]
    seq_tail: np.ndarray = field(default_factory=lambda: np.zeros(0))  # sequence novelty of recent rows
    raw_tail: np.ndarray = field(default_factory=lambda: np.zeros(0))  # raw scores of recent rows
    value_tail: np.ndarray = field(default_factory=lambda: np.zeros(0))  # recent values (seasonal part)
    season_tail: np.ndarray = field(default_factory=lambda: np.zeros(0))  # recent seasonal differences
    rows: int = 0


class ContextNoveltyDetector:
    """Univariate online novelty detector; scores in [0, 1]. See the module docstring."""

    def __init__(self, n_bins: tuple[float, float] = (10.0, 40.0), n_grids: int = 5, max_order: int = 8,
                 short: int = 10, long: int = 2000, z_scale: float = 30.0, seq_cap: float = 0.5,
                 gap_scale: float = 0.5, suppress: int | None = None, threshold: float = 0.5,
                 season_acf: float | None = 0.5, season_div: int = 12, season_scale: float = 16.0) -> None:
        self.n_bins = n_bins
        self.n_grids = n_grids
        self.max_order = max_order
        self.short = short
        self.long = long
        self.z_scale = z_scale
        self.seq_cap = seq_cap
        self.gap_scale = gap_scale
        self.suppress = suppress
        self.threshold = threshold
        self.season_acf = season_acf
        self.season_div = season_div
        self.season_scale = season_scale

    # ------------------------------------------------------------------------------------------ estimator API
    def fit(self, X) -> ContextNoveltyDetector:
        """Learn the value grids from the training rows and seed the context counts with them."""
        x = _as_series(X)
        finite = x[np.isfinite(x)]
        if finite.size < 2:
            raise ValueError("ContextNoveltyDetector.fit needs at least 2 finite training values")
        lo_bins, hi_bins = self.n_bins
        if not (0 < lo_bins <= hi_bins) or self.n_grids < 1 or self.max_order < 1 or self.short < 1 \
                or self.long < 2 or (self.suppress is not None and self.suppress < 0):
            raise ValueError("need 0 < n_bins[0] <= n_bins[1], n_grids, max_order, short >= 1, long >= 2, "
                             "suppress >= 0 (or None)")
        lo, hi = float(finite.min()), float(finite.max())
        span = hi - lo if hi > lo else max(abs(lo), 1.0)
        self.low_ = lo
        self.bin_widths_ = span / np.geomspace(lo_bins, hi_bins, self.n_grids)
        self.bin_offsets_ = (np.arange(self.n_grids) * 0.6180339887) % 1.0  # golden-ratio shifts, well spread
        self.suppress_ = max(1, finite.size // 5) if self.suppress is None else int(self.suppress)
        if self.season_div < 1 or self.season_scale <= 0:
            raise ValueError("need season_div >= 1 and season_scale > 0")
        self.period_ = None if self.season_acf is None else season_period(finite, self.season_acf)
        self.season_rows_ = 0 if self.period_ is None else max(3, self.period_ // self.season_div)
        self.season_eps_ = 1e-9 * span
        state = NoveltyState(grids=[GridState(keys=[np.zeros(0, np.int64) for _ in range(self.max_order)],
                                              counts=[np.zeros(0, np.int64) for _ in range(self.max_order)],
                                              last_bins=np.zeros(0, np.int64)) for _ in range(self.n_grids)])
        self.train_scores_ = self.score_batch(x, state)
        self.state_ = state
        return self

    def new_state(self) -> NoveltyState:
        """A stream state that continues right after the training rows."""
        self._check_fitted()
        return copy.deepcopy(self.state_)

    def decision_function(self, X) -> np.ndarray:
        """Scores in [0, 1] of rows that follow the training rows (in order; the fitted state is not changed)."""
        return self.score_batch(X, self.new_state())

    def predict(self, X) -> np.ndarray:
        """1 where ``decision_function >= threshold``."""
        return (self.decision_function(X) >= self.threshold).astype(int)

    # ------------------------------------------------------------------------------------------ streaming
    def score_batch(self, X, state: NoveltyState) -> np.ndarray:
        """Score the next rows of a stream and advance ``state``. Non-finite values score 0 and are skipped."""
        self._check_fitted()
        x = _as_series(X)
        out = np.zeros(x.size)
        ok = np.isfinite(x)
        if ok.any():
            out[ok] = self._score_finite(x[ok], state)
        return out

    def _score_finite(self, x: np.ndarray, state: NoveltyState) -> np.ndarray:
        n = x.size
        value_novelty = np.zeros(n)
        seq = np.zeros(n)
        for grid, width, offset in zip(state.grids, self.bin_widths_, self.bin_offsets_, strict=True):
            b = np.floor((x - self.low_) / width + offset).astype(np.int64)
            new_by_order = self._count_contexts(b, grid)
            # 1. value novelty, by how far beyond the bins seen so far
            seen_max = np.maximum.accumulate(np.concatenate([[grid.bin_max], b[:-1]]))
            seen_min = np.minimum.accumulate(np.concatenate([[grid.bin_min], b[:-1]]))
            gap = np.maximum(np.maximum(b - seen_max, seen_min - b), 1.0)
            gap[~np.isfinite(gap)] = 1.0  # the very first row of a stream
            value_novelty += new_by_order[0] * gap / (gap + self.gap_scale) / self.n_grids
            if self.max_order > 1:
                seq += new_by_order[1:].mean(axis=0) / self.n_grids
            grid.bin_max = float(max(grid.bin_max, b.max()))
            grid.bin_min = float(min(grid.bin_min, b.min()))
        # 2. sequence novelty against its own history
        seq_all = np.concatenate([state.seq_tail, seq])
        z = _burst_z(seq_all, self.short, self.long)[-n:]
        seq_novelty = np.clip(z / self.z_scale, 0.0, self.seq_cap)
        raw = np.maximum(value_novelty, seq_novelty)
        if self.period_ is not None:
            raw = np.maximum(raw, self._season_novelty(x, state))
        # 3. suppression: keep only new peaks over the previous `suppress_` raw scores
        raw_all = np.concatenate([state.raw_tail, raw])
        if self.suppress_ > 0:
            prev = pd.Series(raw_all).shift(1).rolling(self.suppress_, min_periods=1).max().fillna(-1.0).to_numpy()
            score = np.where(raw_all > prev, raw_all, 0.0)[-n:]
        else:
            score = raw
        state.seq_tail = seq_all[-(self.long + self.short):]
        state.raw_tail = raw_all[-self.suppress_:] if self.suppress_ > 0 else raw_all[:0]
        state.rows += n
        return np.clip(score, 0.0, 1.0)

    def _season_novelty(self, x: np.ndarray, state: NoveltyState) -> np.ndarray:
        """z of (mean of the last m rows - the same mean one season earlier) against its last ``long`` values."""
        n, period, m = x.size, self.period_, self.season_rows_
        values = np.concatenate([state.value_tail, x])
        level = pd.Series(values).rolling(m, min_periods=1).mean()
        one = (level - level.shift(period)).to_numpy()[-n:]
        two = (level - level.shift(2 * period)).to_numpy()[-n:]  # an event one season ago does not echo
        diff = np.where(np.isnan(two) | (np.abs(one) <= np.abs(two)), one, two)
        d_all = pd.Series(np.concatenate([state.season_tail, diff]))
        before = d_all.shift(1)
        mu = before.rolling(self.long, min_periods=50).mean()
        sd = before.rolling(self.long, min_periods=50).std()
        z = ((d_all - mu).abs() / (sd + self.season_eps_)).fillna(0.0).to_numpy()[-n:]
        state.value_tail = values[-(2 * period + m - 1):]
        state.season_tail = d_all.to_numpy()[-self.long:]
        return np.clip(z / self.season_scale, 0.0, 1.0)

    def _count_contexts(self, b: np.ndarray, grid: GridState) -> np.ndarray:
        """Per order, whether each row's context is new (never seen before it); updates the grid's counts."""
        n = b.size
        history = np.concatenate([grid.last_bins, b])
        h = history.size - n  # rows of history before this batch
        key = np.zeros(n, dtype=np.int64)
        new_by_order = np.empty((self.max_order, n))
        for k in range(self.max_order):  # one vectorised pass per context order
            lagged = history[h - k:history.size - k] if h >= k else np.concatenate(
                [np.full(k - h, _NO_BIN), history[:history.size - k]])
            with np.errstate(over="ignore"):
                key = key * _HASH_MUL + lagged
            new_by_order[k] = _prior_counts(key, grid.keys[k], grid.counts[k]) == 0
            grid.keys[k], grid.counts[k] = _merge_counts(grid.keys[k], grid.counts[k], key)
        grid.last_bins = history[max(0, history.size - (self.max_order - 1)):] if self.max_order > 1 else b[:0]
        return new_by_order

    # ------------------------------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "bin_widths_"):
            raise RuntimeError("ContextNoveltyDetector is not fitted; call fit() first")


def _as_series(X) -> np.ndarray:
    x = np.asarray(X, dtype="float64")
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"ContextNoveltyDetector is univariate: expected shape (n,) or (n, 1), got {x.shape}")
    return x


def season_period(x: np.ndarray, min_acf: float, min_lag: int = 4) -> int | None:
    """Lag of the strongest local autocorrelation maximum in ``[min_lag, len(x) / 2)`` if it reaches ``min_acf``."""
    x = np.asarray(x, dtype="float64") - np.mean(x)
    n = x.size
    f = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(f * np.conj(f))[:n]
    if n < 2 * min_lag + 2 or ac[0] <= 0:
        return None
    ac = ac / ac[0]
    lags = np.arange(min_lag, n // 2)
    a = ac[lags]
    peak = (a > ac[lags - 1]) & (a >= ac[lags + 1])
    if not peak.any():
        return None
    lag = int(lags[peak][np.argmax(a[peak])])
    return lag if ac[lag] >= min_acf else None


def _prior_counts(key: np.ndarray, known: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """How often each row's key occurred before that row: stored count + earlier occurrences in this batch."""
    stored = np.zeros(key.size, dtype=np.int64)
    if known.size:
        pos = np.minimum(np.searchsorted(known, key), known.size - 1)
        hit = known[pos] == key
        stored[hit] = counts[pos[hit]]
    order = np.argsort(key, kind="stable")  # earlier rows first within equal keys
    sorted_key = key[order]
    idx = np.arange(key.size)
    first = np.ones(key.size, dtype=bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    earlier = np.empty(key.size, dtype=np.int64)
    earlier[order] = idx - np.maximum.accumulate(np.where(first, idx, 0))
    return stored + earlier


def _merge_counts(known: np.ndarray, counts: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add this batch's keys to the sorted key/count arrays (no re-sort of what is known)."""
    new_keys, new_counts = np.unique(key, return_counts=True)
    pos = np.searchsorted(known, new_keys)
    hit = np.zeros(new_keys.size, dtype=bool)
    inside = pos < known.size
    hit[inside] = known[pos[inside]] == new_keys[inside]
    counts = counts.copy()
    np.add.at(counts, pos[hit], new_counts[hit])
    return np.insert(known, pos[~hit], new_keys[~hit]), np.insert(counts, pos[~hit], new_counts[~hit])


def _burst_z(f: np.ndarray, short: int, long: int) -> np.ndarray:
    """z of the mean of the last ``short`` values against the ``long`` values before them (0 until 50 exist)."""
    s = pd.Series(f)
    recent = s.rolling(short, min_periods=1).mean()
    before = s.shift(short)
    mu = before.rolling(long, min_periods=50).mean()
    sd = before.rolling(long, min_periods=50).std()
    return ((recent - mu) / (sd / np.sqrt(short) + 1e-3)).fillna(0.0).to_numpy()
