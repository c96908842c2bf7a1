"""Faster evaluation of fitted PyOD members, with the same scores as their ``decision_function``.

Profiled on the service's micro-batches (one station's share of a 2000-record batch is ~200 rows):

* ``IForest``: scikit-learn's ``score_samples`` copies ``X[:, features]`` once per tree (100 copies) and
  pays Python overhead per tree; 8 ms per call on 220 rows x 60 features. :class:`FastIForest` rewrites
  each tree's feature indices to the original columns once (``Tree.__setstate__``), so every tree's
  ``apply`` runs on one float32 copy of X: 1.4 ms per call, identical scores.
* ``HBOS``: PyOD's ``_calculate_outlier_scores`` is ``@njit`` without ``cache=True``: every new process
  compiles it on its first call (seconds; the first batch after every restart waited for it).
  :func:`hbos_decision_function` is the same rule vectorised with NumPy.

Both are built from the fitted PyOD objects (nothing new is stored in the model files) and fall back to
PyOD when the fitted object does not have the expected shape (another scikit-learn/PyOD version).
"""

from __future__ import annotations

import numpy as np


def hbos_decision_function(hbos, X: np.ndarray) -> np.ndarray:
    """PyOD ``HBOS.decision_function`` for a static ``n_bins`` (same bin rules: edge tolerance, outside bins)."""
    edges, hist = hbos.bin_edges_, hbos.hist_  # (n_bins + 1, d), (n_bins, d)
    if isinstance(hbos.n_bins, str) or edges.ndim != 2:
        return hbos.decision_function(X)
    X = np.asarray(X, dtype="float64")
    n_bins = hist.shape[0]
    log_h = np.log2(hist + hbos.alpha)
    lowest = log_h.min(axis=0)
    # np.digitize(x, e, right=True) for every feature at once: the number of edges below x (NaN: past the end)
    b = (X[:, :, None] > edges.T[None, :, :]).sum(axis=2)
    b[np.isnan(X)] = n_bins + 1
    s = log_h[np.clip(b - 1, 0, n_bins - 1), np.arange(X.shape[1])]
    # below the first / above the last edge: the edge bin if within tol bin widths, else the rarest bin
    with np.errstate(invalid="ignore"):
        far_lo = (b == 0) & ~(edges[0] - X <= (edges[1] - edges[0]) * hbos.tol)
        far_hi = (b == n_bins + 1) & ~(X - edges[-1] <= (edges[-1] - edges[-2]) * hbos.tol)
    return -np.where(far_lo | far_hi, lowest, s).sum(axis=1)


class FastIForest:
    """PyOD ``IForest.decision_function`` (= sklearn ``offset_ - score_samples``) with one X copy per call."""

    def __init__(self, iforest) -> None:
        from sklearn.ensemble._iforest import _average_path_length
        from sklearn.tree._tree import Tree

        sk = iforest.detector_
        n_features = int(sk.n_features_in_)
        self.trees = []
        for i, (est, feats) in enumerate(zip(sk.estimators_, sk.estimators_features_, strict=True)):
            state = est.tree_.__getstate__()
            nodes = state["nodes"].copy()
            inner = nodes["feature"] >= 0
            nodes["feature"][inner] = np.asarray(feats)[nodes["feature"][inner]]
            tree = Tree(n_features, np.asarray(est.tree_.n_classes, dtype=np.intp), est.tree_.n_outputs)
            tree.__setstate__({**state, "nodes": nodes})
            depth = sk._decision_path_lengths[i] + sk._average_path_length_per_tree[i] - 1.0
            self.trees.append((tree, np.asarray(depth, dtype="float64")))
        self.denominator = float(_average_path_length([sk.max_samples_])[0])
        self.offset = float(sk.offset_)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        X32 = np.ascontiguousarray(X, dtype=np.float32)
        depths = np.zeros(len(X32))
        for tree, depth in self.trees:
            depths += depth[tree.apply(X32)]
        return -(2.0 ** (-depths / (len(self.trees) * self.denominator)))

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.offset - self.score_samples(X)


def fast_iforest(iforest, n_features: int) -> FastIForest | None:
    """A :class:`FastIForest` that reproduces ``iforest`` on random rows, or None (then use PyOD's own)."""
    try:
        fast = FastIForest(iforest)
        probe = np.random.default_rng(0).normal(scale=3.0, size=(16, n_features))
        if np.allclose(fast.decision_function(probe), iforest.decision_function(probe), rtol=0, atol=1e-12):
            return fast
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    return None
