"""Window features per sensor, computed on robust-scaled readings with past-only context.

For every sensor and every row the features look at the last ``window`` readings of the same line
(the row itself included):

* ``level``  - the current robust z value ``(x - median) / scale``;
* ``mean``   - the mean z over the window (a moving-average control chart: small mean shifts);
* ``spread`` - log ratio of the window standard deviation to its training median (noise increase / loss);
* ``slope``  - least-squares slope over the window times the window length (drift in z units per window);
* ``jump``   - the reading minus the mean of the window before it, in units of the typical window spread
  (a spike or step against the local behaviour, even on a sensor whose level moves a lot).

Each window is reduced independently (``sliding_window_view``), so a row's features depend only on its
own window: cutting the stream into batches, or restarting from the last readings, gives bit-identical
features. The first ``window - 1`` rows of a line (warm-up) get the window mean of the readings available and
neutral spread/slope, so a new line does not alarm on noisy small-sample statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FEATURES = ("level", "mean", "spread", "slope", "jump")
#: Rows per chunk so that a chunk's (rows x sensors x window) view stays around 16M floats.
_CHUNK_ELEMENTS = 16_000_000
_EPS = 1e-9


@dataclass
class RobustScaler:
    """Per-sensor median and scale (IQR / 1.349, falling back to the standard deviation) learnt on train."""

    median_: np.ndarray
    scale_: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> RobustScaler:
        with np.errstate(all="ignore"):
            med = np.nanmedian(values, axis=0)
            q75, q25 = np.nanpercentile(values, [75, 25], axis=0)
            iqr = (q75 - q25) / 1.349
            std = np.nanstd(values, axis=0)
        med = np.where(np.isfinite(med), med, 0.0)
        floor = 1e-6 * np.maximum(1.0, np.abs(med))
        scale = np.where(iqr > floor, iqr, np.where(std > floor, std, floor))
        scale = np.where(np.isfinite(scale), scale, 1.0)
        return cls(med.astype("float64"), scale.astype("float64"))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.median_) / self.scale_


def feature_names(sensors: list[str]) -> list[str]:
    """Column names of the feature matrix, feature-major: ``level:s1 .. level:sN, mean:s1 ...``."""
    return [f"{f}:{s}" for f in FEATURES for s in sensors]


def _window_stats(z: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Masked mean, std, slope and count over trailing windows of ``z`` (rows x sensors), NaN = absent."""
    s = z.shape[1]
    padded = np.concatenate([np.full((window - 1, s), np.nan), z], axis=0)
    view = sliding_window_view(padded, window, axis=0)  # (n, s, window), oldest first
    mask = ~np.isnan(view)
    cnt = mask.sum(axis=2)
    vals = np.where(mask, view, 0.0)
    safe = np.maximum(cnt, 1)
    mean = vals.sum(axis=2) / safe
    dev = np.where(mask, view - mean[..., None], 0.0)
    std = np.sqrt((dev * dev).sum(axis=2) / safe)
    t = np.arange(window, dtype="float64")
    tmean = (mask * t).sum(axis=2) / safe
    tdev = np.where(mask, t - tmean[..., None], 0.0)
    denom = (tdev * tdev).sum(axis=2)
    slope = np.where(denom > 0, (tdev * dev).sum(axis=2) / np.where(denom > 0, denom, 1.0), 0.0)
    mean = np.where(cnt > 0, mean, np.nan)
    return mean, std, slope * window, cnt


def window_features(z_context: np.ndarray, n_out: int, window: int, ref_std: np.ndarray) -> np.ndarray:
    """Features of the last ``n_out`` rows of ``z_context`` (one line's robust z, oldest first).

    ``z_context`` holds the line's tail (past readings) followed by the rows to score; NaN = missing
    reading, imputed by the expected value (z = 0) for the level and ignored by the window statistics.
    Returns an (n_out x 5*sensors) matrix in :func:`feature_names` order.
    """
    n_ctx, s = z_context.shape
    start = n_ctx - n_out
    ctx_from = max(0, start - (window - 1))
    z = z_context[ctx_from:]
    off = start - ctx_from
    out = np.empty((n_out, len(FEATURES) * s), dtype="float64")
    step = max(1, _CHUNK_ELEMENTS // max(1, s * window))
    for a in range(0, n_out, step):
        b = min(n_out, a + step)
        lo = off + a - (window - 1)
        chunk = z[max(0, lo): off + b]
        pad = max(0, -lo)
        if pad:
            chunk = np.concatenate([np.full((pad, s), np.nan), chunk], axis=0)
        mean, std, slope, cnt = _window_stats(chunk, window)
        mean, std, slope, cnt = (x[window - 1:] for x in (mean, std, slope, cnt))
        level = chunk[window - 1:]
        enough = cnt >= window  # warm-up rows of a new line: window mean only, no spread/slope
        spread = np.where(enough, np.log((std + 0.05) / (ref_std + 0.05)), 0.0)
        out[a:b, 0:s] = np.nan_to_num(level, nan=0.0)
        out[a:b, s:2 * s] = np.nan_to_num(mean, nan=0.0)
        out[a:b, 2 * s:3 * s] = spread
        out[a:b, 3 * s:4 * s] = np.where(enough, slope, 0.0)
        prev_mean = (mean * cnt - np.nan_to_num(level)) / np.maximum(cnt - 1, 1)  # window mean without the reading
        jump = (level - prev_mean) / (ref_std + 0.05)
        out[a:b, 4 * s:5 * s] = np.where(enough & ~np.isnan(level), jump, 0.0)
    return out


def reference_std(z_lines: list[np.ndarray], window: int) -> np.ndarray:
    """Training median of the per-window standard deviation of each sensor (the spread reference)."""
    stds = []
    for z in z_lines:
        z = z[-50_000:]  # enough rows for a median; bounds the window view's memory
        if len(z) >= 3:
            _, std, _, cnt = _window_stats(z, window)
            stds.append(np.where(cnt >= 3, std, np.nan))
    if not stds:
        return np.ones(z_lines[0].shape[1] if z_lines else 0)
    with np.errstate(all="ignore"):
        ref = np.nanmedian(np.concatenate(stds, axis=0), axis=0)
    return np.where(np.isfinite(ref), ref, 1.0)
