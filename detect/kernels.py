"""Compiled (numba) kernels of the station detectors: a whole (station, recipe) group of a batch in one call.

The scoring of one batch used to run a dozen NumPy operations per line and per window statistic; on the
service's micro-batches (~30 rows per line and group) the fixed cost of each call was most of the time. These
kernels walk all lines of a group at once. The lines are *segments* of one stacked array: segment ``k`` holds
its context rows ``[ctx[k], end[k])`` (the line's tail from the window state, then its new rows) and its output
rows are ``[out[k], end[k])``; a window never reaches before ``ctx[k]`` (missing context = NaN, as before).

Same numbers as the NumPy code they replace, bit for bit: only ``+ - * /`` and ``sqrt`` (correctly rounded
everywhere), sums in the order NumPy summed them (:func:`pairwise_sum` is ``ndarray.sum``'s order along a
contiguous axis; :func:`_window_sum` says which order the window statistics had), ``np.interp``'s exact formula
and search rule. Transcendental functions (``log``, ``exp``, ``**``) stay in NumPy, whose SIMD implementations
may differ from libm in the last bit. Checked against the NumPy reference in tests/test_detect_kernels.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def compiled(fn):
    """numba-compiled ``fn``, cached on disk when the source has a cache location (else compiled per process)."""
    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "no locator available": e.g. source without a file, no writable cache directory
        return njit(nogil=True)(fn)


@compiled
def pairwise_sum(a, lo, n):  # pragma: no cover - compiled
    """``a[lo:lo+n].sum()`` in NumPy's order: 8 running sums for blocks up to 128, halves above, then ``0.0 +``."""
    return 0.0 + _pairwise(a, lo, n)


@compiled
def _window_sum(a, n, pairwise):  # pragma: no cover - compiled
    """The window sums of values and squared deviations as NumPy made them: those (rows x sensors x window)
    temporaries took the sliding view's layout (window-major), so the sum over the window ran in order
    (``0.0 + a0 + a1 ...``), except with one sensor, where the array is contiguous along the window and the sum
    is pairwise. The time-weighted sums (slope) were contiguous: pairwise."""
    if pairwise:
        return pairwise_sum(a, 0, n)
    res = 0.0
    for i in range(n):
        res += a[i]
    return res


@compiled
def _pairwise_block(a, lo, n):  # pragma: no cover - compiled
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    stop = n - (n % 8)
    while i < stop:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@compiled
def _pairwise(a, lo, n):  # pragma: no cover - compiled
    """NumPy's pairwise_sum: blocks of up to 128 as above, larger ranges split in two halves (a multiple of 8
    first) and the halves' sums added; evaluated with explicit stacks (recursion and numba's cache do not mix)."""
    if n <= 128:
        return _pairwise_block(a, lo, n)
    t_lo = np.empty(128, dtype=np.int64)
    t_n = np.empty(128, dtype=np.int64)
    t_add = np.zeros(128, dtype=np.bool_)
    vals = np.empty(128)
    nt, nv = 1, 0
    t_lo[0], t_n[0], t_add[0] = lo, n, False
    while nt > 0:
        nt -= 1
        if t_add[nt]:
            nv -= 1
            vals[nv - 1] = vals[nv - 1] + vals[nv]
        elif t_n[nt] <= 128:
            vals[nv] = _pairwise_block(a, t_lo[nt], t_n[nt])
            nv += 1
        else:
            m, start = t_n[nt], t_lo[nt]
            n2 = m // 2
            n2 -= n2 % 8
            t_add[nt] = True  # after both halves: add them
            t_lo[nt + 1], t_n[nt + 1], t_add[nt + 1] = start + n2, m - n2, False
            t_lo[nt + 2], t_n[nt + 2], t_add[nt + 2] = start, n2, False
            nt += 3
    return vals[0]


_BIG = np.finfo(np.float64).max


@compiled
def _finite_or_zero(x):  # pragma: no cover - compiled
    """``np.nan_to_num(x, nan=0.0)`` of one value."""
    if np.isnan(x):
        return 0.0
    if np.isinf(x):
        return _BIG if x > 0 else -_BIG
    return x


@compiled
def segment_window_stats(z, ctx, out, end, window):  # pragma: no cover - compiled
    """Masked mean, std, slope x window and count over each output row's trailing window (NaN = absent).

    Rows are the output rows of every segment, in order. ``mean`` is NaN where the window holds no value."""
    n_out = 0
    for k in range(ctx.size):
        n_out += end[k] - out[k]
    s = z.shape[1]
    mean = np.empty((n_out, s))
    std = np.empty((n_out, s))
    slope = np.empty((n_out, s))
    cnt = np.empty((n_out, s), dtype=np.int64)
    vals = np.empty(window)
    t = np.arange(window).astype(np.float64)
    buf = np.empty(window)
    tdev = np.empty(window)
    dev = np.empty(window)
    pw = s == 1
    row = 0
    for k in range(ctx.size):
        for i in range(out[k], end[k]):
            first = i - window + 1
            for j in range(s):
                c = 0
                for w in range(window):
                    r = first + w
                    v = z[r, j] if r >= ctx[k] else np.nan
                    buf[w] = v
                    if np.isnan(v):
                        vals[w] = 0.0
                    else:
                        vals[w] = v
                        c += 1
                safe = c if c > 0 else 1
                m = _window_sum(vals, window, pw) / safe
                for w in range(window):
                    vals[w] = t[w] if not np.isnan(buf[w]) else 0.0
                tm = _window_sum(vals, window, pw) / safe
                for w in range(window):
                    if np.isnan(buf[w]):
                        dev[w] = 0.0
                        tdev[w] = 0.0
                    else:
                        dev[w] = buf[w] - m
                        tdev[w] = t[w] - tm
                for w in range(window):
                    vals[w] = dev[w] * dev[w]
                sd = np.sqrt(_window_sum(vals, window, pw) / safe)
                for w in range(window):
                    vals[w] = tdev[w] * tdev[w]
                denom = pairwise_sum(vals, 0, window)
                for w in range(window):
                    vals[w] = tdev[w] * dev[w]
                num = pairwise_sum(vals, 0, window)
                sl = num / denom if denom > 0 else 0.0
                mean[row, j] = m if c > 0 else np.nan
                std[row, j] = sd
                slope[row, j] = sl * window
                cnt[row, j] = c
            row += 1
    return mean, std, slope, cnt


@compiled
def segment_window_features(z, ctx, out, end, window, ref_std):  # pragma: no cover - compiled
    """Window features (:func:`cellwatch.detect.features.window_features`) of every segment's output rows.

    The spread block holds ``(std + 0.05) / (ref_std + 0.05)`` and ``enough`` says where its log is the
    feature (elsewhere 0): the caller takes the log with NumPy."""
    mean, std, slope, cnt = segment_window_stats(z, ctx, out, end, window)
    n_out, s = mean.shape
    F = np.empty((n_out, 5 * s))
    enough = np.empty((n_out, s), dtype=np.bool_)
    row = 0
    for k in range(ctx.size):
        for i in range(out[k], end[k]):
            for j in range(s):
                ref = ref_std[j] + 0.05
                level = z[i, j]
                m = mean[row, j]
                c = cnt[row, j]
                ok = c >= window
                enough[row, j] = ok
                F[row, j] = _finite_or_zero(level)
                m0 = _finite_or_zero(m)
                F[row, s + j] = m0
                F[row, 2 * s + j] = (std[row, j] + 0.05) / ref
                F[row, 3 * s + j] = slope[row, j] if ok else 0.0
                prev = (m * c - _finite_or_zero(level)) / (c - 1 if c - 1 > 1 else 1)
                F[row, 4 * s + j] = (level - prev) / ref if ok and not np.isnan(level) else 0.0
            row += 1
    return F, enough


@compiled
def segment_since(times, ctx, end, resume_gap, started):  # pragma: no cover - compiled
    """:func:`cellwatch.detect.warmup.seconds_since_resume` of every segment (all context rows; ``started`` per
    segment, NaN = none)."""
    since = np.empty(times.size)
    for k in range(ctx.size):
        last = -1
        for i in range(ctx[k], end[k]):
            dt = times[i] - times[i - 1] if i > ctx[k] else np.nan
            if dt > resume_gap:
                last = i
            v = times[i] - times[last] if last >= 0 else np.inf
            if not np.isfinite(v):
                v = np.inf
            if np.isfinite(started[k]) and np.isinf(v) and times[i] >= started[k]:
                v = times[i] - started[k]
            since[i] = v
    return since


@compiled
def segment_quality(raw, times, ctx, out, end, lower, upper, stuck_run, gap_seconds):  # pragma: no cover
    """Data-quality masks of every segment's output rows (thresholds learnt by :class:`QualityChecker`): out of
    range, missing, stuck (the last ``stuck_run[j]`` readings of the line identical and present; 0/1 = no check),
    gap (time step above ``gap_seconds``), plus the time step itself (NaN for a line's first reading)."""
    n_out = 0
    for k in range(ctx.size):
        n_out += end[k] - out[k]
    s = raw.shape[1]
    oor = np.zeros((n_out, s), dtype=np.bool_)
    missing = np.zeros((n_out, s), dtype=np.bool_)
    stuck = np.zeros((n_out, s), dtype=np.bool_)
    gap = np.zeros(n_out, dtype=np.bool_)
    dt = np.empty(n_out)
    run = np.zeros(s, dtype=np.int64)
    row = 0
    for k in range(ctx.size):
        run[:] = 0
        for i in range(ctx[k], end[k]):
            for j in range(s):
                v = raw[i, j]
                if np.isnan(v):
                    run[j] = 0
                elif i > ctx[k] and v == raw[i - 1, j]:
                    run[j] += 1
                else:
                    run[j] = 1
            if i >= out[k]:
                for j in range(s):
                    v = raw[i, j]
                    oor[row, j] = v < lower[j] or v > upper[j]
                    missing[row, j] = np.isnan(v)
                    stuck[row, j] = stuck_run[j] > 1 and run[j] >= stuck_run[j]
                d = times[i] - times[i - 1] if i > ctx[k] else np.nan
                dt[row] = d
                gap[row] = d > gap_seconds
                row += 1
    return oor, missing, stuck, gap, dt


#: Buckets per column of an :func:`interp_index` table.
INTERP_BUCKETS = 512


@compiled
def interp_index(xp_t):  # pragma: no cover - compiled
    """Search table for :func:`interp_columns`: per column j and bucket k of ``[xp[0], xp[-1]]`` cut into
    INTERP_BUCKETS equal parts, the last point at or below the bucket's left end."""
    d, m = xp_t.shape
    table = np.zeros((d, INTERP_BUCKETS), dtype=np.int64)
    for j in range(d):
        lo, hi = xp_t[j, 0], xp_t[j, m - 1]
        width = (hi - lo) / INTERP_BUCKETS
        i = 0
        for k in range(INTERP_BUCKETS):
            edge = lo + k * width
            while i + 1 < m and xp_t[j, i + 1] <= edge:
                i += 1
            table[j, k] = i
    return table


@compiled
def interp_columns(X, xp_t, fp, left, right, table):  # pragma: no cover - compiled
    """``np.interp(X[:, j], xp_t[j], fp, left, right)`` for every column j (``xp_t``: columns x points, each row
    non-decreasing), with NumPy's formula and search rule (the last point at or below x). The point is found
    from ``table`` (:func:`interp_index`): a start at or below x, then a short forward scan (exact whatever the
    rounding of the bucket number, which only picks the start)."""
    n, d = X.shape
    m = fp.size
    nb = table.shape[1]
    out = np.empty((n, d))
    for j in range(d):
        x0, x1 = xp_t[j, 0], xp_t[j, m - 1]
        scale = nb / (x1 - x0) if x1 > x0 else 0.0
        for i in range(n):
            x = X[i, j]
            if np.isnan(x):
                out[i, j] = x
                continue
            if x < x0:
                out[i, j] = left
                continue
            if x > x1:
                out[i, j] = right
                continue
            k = int((x - x0) * scale)
            lo = table[j, min(max(k, 0), nb - 1)]
            if xp_t[j, lo] > x:  # cannot happen with exact bucket arithmetic; halving from the start then
                lo, size = 0, m
                while size > 1:
                    half = size // 2
                    lo = lo + half if xp_t[j, lo + half] <= x else lo
                    size -= half
            while lo + 1 < m and xp_t[j, lo + 1] <= x:
                lo += 1
            if lo == m - 1 or xp_t[j, lo] == x:
                out[i, j] = fp[lo]
                continue
            slope = (fp[lo + 1] - fp[lo]) / (xp_t[j, lo + 1] - xp_t[j, lo])
            r = slope * (x - xp_t[j, lo]) + fp[lo]
            if np.isnan(r):
                r = slope * (x - xp_t[j, lo + 1]) + fp[lo + 1]
                if np.isnan(r) and fp[lo] == fp[lo + 1]:
                    r = fp[lo]
            out[i, j] = r
    return out


@compiled
def tail_parts(raw, q_t, grid, q_last, tail_scale, right, table):  # pragma: no cover - compiled
    """:meth:`TailCalibrator.tail_probability` of every column of ``raw`` (members) but the ``exp``: the empirical
    body ``1 - interp``, the exponent ``-max(raw - q_last, 0) / tail_scale`` and where the tail applies."""
    n, d = raw.shape
    x = np.empty((n, d))
    for i in range(n):
        for j in range(d):
            v = raw[i, j]
            if np.isnan(v):
                v = 0.0
            elif v == np.inf:
                v = 1e300
            elif v == -np.inf:
                v = -1e300
            x[i, j] = v
    body = 1.0 - interp_columns(x, q_t, grid, 0.0, right, table)
    expo = np.empty((n, d))
    in_tail = np.empty((n, d), dtype=np.bool_)
    for i in range(n):
        for j in range(d):
            expo[i, j] = -max(x[i, j] - q_last[j], 0.0) / tail_scale[j]
            in_tail[i, j] = x[i, j] > q_last[j]
    return body, expo, in_tail


@compiled
def hbos_scores(X, edges_t, log_h, lowest, tol):  # pragma: no cover - compiled
    """PyOD ``HBOS.decision_function`` for static bins (``edges_t``: features x edges): per row minus the sum
    (NumPy's order) over features of the log2 density of the value's bin; beyond the outer edges by more than
    ``tol`` bin widths, the rarest bin."""
    n, d = X.shape
    n_bins = log_h.shape[0]
    out = np.empty(n)
    row = np.empty(d)
    inv_width = np.empty(d)
    for j in range(d):
        w = (edges_t[j, n_bins] - edges_t[j, 0]) / n_bins
        inv_width[j] = 1.0 / w if w > 0 else 0.0
    for i in range(n):
        for j in range(d):
            x = X[i, j]
            if np.isnan(x) or x > edges_t[j, n_bins]:
                b = n_bins + 1  # past the last edge (NaN too, as np.searchsorted puts it)
            elif x <= edges_t[j, 0]:
                b = 0
            else:  # the number of edges below x: guessed from the (equal) bin width, then made exact
                b = min(max(int((x - edges_t[j, 0]) * inv_width[j]) + 1, 1), n_bins + 1)
                while b > 1 and edges_t[j, b - 1] >= x:
                    b -= 1
                while b <= n_bins and edges_t[j, b] < x:
                    b += 1
            k = min(max(b - 1, 0), n_bins - 1)
            v = log_h[k, j]
            if b == 0 and not (edges_t[j, 0] - x <= (edges_t[j, 1] - edges_t[j, 0]) * tol):
                v = lowest[j]
            if b == n_bins + 1 and not (x - edges_t[j, n_bins] <= (edges_t[j, n_bins] - edges_t[j, n_bins - 1]) * tol):
                v = lowest[j]
            row[j] = v
        out[i] = -pairwise_sum(row, 0, d)
    return out
