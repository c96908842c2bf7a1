"""Window features per sensor, computed on robust-scaled readings with past-only context.

For every sensor and every row the features look at the last ``window`` readings of the same line
(the row itself included):

* ``level``  - the current robust z value ``(x - median) / scale``;
* ``mean``   - the mean z over the window (a moving-average control chart: small mean shifts);
* ``spread`` - log ratio of the window standard deviation to its training median (noise increase / loss);
* ``slope``  - least-squares slope over the window times the window length (drift in z units per window);
* ``jump``   - the reading minus the mean of the window before it, in units of the typical window spread
  (a spike or step against the local behaviour, even on a sensor whose level moves a lot).

Each window is reduced independently (compiled, :mod:`cellwatch.detect.kernels`), so a row's features depend
only on its own window: cutting the stream into batches, or restarting from the last readings, gives bit-identical
features. The first ``window - 1`` rows of a line (warm-up) get the window mean of the readings available and
neutral spread/slope, so a new line does not alarm on noisy small-sample statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellwatch.detect.kernels import segment_window_features, segment_window_stats

FEATURES = ("level", "mean", "spread", "slope", "jump")
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
    one = np.zeros(1, dtype=np.int64)
    return segment_window_stats(np.ascontiguousarray(z, dtype="float64"), one, one, one + len(z), window)


def segment_features(z: np.ndarray, ctx: np.ndarray, out: np.ndarray, end: np.ndarray, window: int,
                     ref_std: np.ndarray) -> np.ndarray:
    """Window features of the output rows ``[out[k], end[k])`` of every segment (one line's context rows
    ``[ctx[k], end[k])`` of ``z``, oldest first), stacked in segment order; see :func:`window_features`."""
    F, enough = segment_window_features(np.ascontiguousarray(z, dtype="float64"), ctx, out, end, window,
                                        np.asarray(ref_std, dtype="float64"))
    s = z.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        F[:, 2 * s:3 * s] = np.where(enough, np.log(F[:, 2 * s:3 * s]), 0.0)
    return F


def window_features(z_context: np.ndarray, n_out: int, window: int, ref_std: np.ndarray) -> np.ndarray:
    """Features of the last ``n_out`` rows of ``z_context`` (one line's robust z, oldest first).

    ``z_context`` holds the line's tail (past readings) followed by the rows to score; NaN = missing
    reading, imputed by the expected value (z = 0) for the level and ignored by the window statistics.
    Returns an (n_out x 5*sensors) matrix in :func:`feature_names` order.
    """
    n_ctx = len(z_context)
    seg = np.zeros(1, dtype=np.int64)
    return segment_features(z_context, seg, seg + (n_ctx - n_out), seg + n_ctx, window, ref_std)


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
