"""The compiled kernels (detect/kernels.py) give bit for bit the numbers of the NumPy code they replaced.

The reference functions below are that NumPy code (window features per line, the data-quality checks, the
per-feature ``np.interp`` of the ecdf member, HBOS by comparisons), kept here as the oracle.
"""

from __future__ import annotations

import itertools

import numpy as np
import orjson
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from pyod.models.hbos import HBOS

from cellwatch.detect.calibration import TailCalibrator, TailCalibrators, combine, probability_to_score
from cellwatch.detect.features import window_features
from cellwatch.detect.kernels import (
    hbos_scores,
    interp_columns,
    interp_index,
    pairwise_sum,
    segment_quality,
    segment_since,
    segment_window_features,
)
from cellwatch.detect.station_model import StationModel, _epoch_seconds
from cellwatch.detect.warmup import seconds_since_resume


# ---------------------------------------------------------------------------------------------- NumPy oracles
def _ref_window_stats(z, window):
    s = z.shape[1]
    padded = np.concatenate([np.full((window - 1, s), np.nan), z], axis=0)
    view = sliding_window_view(padded, window, axis=0)
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


def _ref_window_features(z_context, n_out, window, ref_std):
    n_ctx, s = z_context.shape
    start = n_ctx - n_out
    z = z_context[max(0, start - (window - 1)):]
    pad = max(0, (window - 1) - start)
    chunk = np.concatenate([np.full((pad, s), np.nan), z], axis=0)
    mean, std, slope, cnt = (x[window - 1:] for x in _ref_window_stats(chunk, window))
    level = chunk[window - 1:]
    enough = cnt >= window
    out = np.empty((n_out, 5 * s))
    out[:, 0:s] = np.nan_to_num(level, nan=0.0)
    out[:, s:2 * s] = np.nan_to_num(mean, nan=0.0)
    out[:, 2 * s:3 * s] = np.where(enough, np.log((std + 0.05) / (ref_std + 0.05)), 0.0)
    out[:, 3 * s:4 * s] = np.where(enough, slope, 0.0)
    prev_mean = (mean * cnt - np.nan_to_num(level)) / np.maximum(cnt - 1, 1)
    out[:, 4 * s:5 * s] = np.where(enough & ~np.isnan(level), (level - prev_mean) / (ref_std + 0.05), 0.0)
    return out


def _ref_quality(raw_context, n_out, dt, lower, upper, stuck_run, gap_seconds):
    rows = raw_context[-n_out:]
    stuck = np.zeros(rows.shape, dtype=bool)
    for L in np.unique(stuck_run[stuck_run > 1]):
        cols = np.flatnonzero(stuck_run == L)
        ctx = raw_context[:, cols]
        if len(ctx) < L:
            continue
        view = sliding_window_view(ctx, int(L), axis=0)
        same = (view.max(axis=2) == view.min(axis=2)) & ~np.isnan(view).any(axis=2)
        full = np.zeros(ctx.shape, dtype=bool)
        full[int(L) - 1:] = same
        stuck[:, cols] = full[-n_out:]
    return (rows < lower) | (rows > upper), np.isnan(rows), stuck, np.asarray(dt[-n_out:]) > gap_seconds


# ---------------------------------------------------------------------------------------------- data
def _lines(rng, n_lines=4, s=6):
    """Per line: (tail length, new rows, values with NaN, stuck runs, spikes and huge values)."""
    out = []
    for k in range(n_lines):
        tail = [0, 3, 19, 60][k % 4]
        n = int(rng.integers(1, 90))
        v = rng.normal(size=(tail + n, s)) * 10 ** rng.uniform(-3, 3, size=s)
        v[rng.random(v.shape) < 0.05] = np.nan
        if len(v) > 30:
            v[5:30, 1] = 2.5  # stuck
        v[rng.random(v.shape) < 0.01] *= 1e6
        out.append((tail, v))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_window_features_bitwise(seed):
    rng = np.random.default_rng(seed)
    window = [20, 5, 8, 33, 20, 1][seed]
    lines = _lines(rng)
    ref_std = rng.uniform(0.1, 3.0, size=6)
    z = np.concatenate([v for _, v in lines])
    ends = np.cumsum([len(v) for _, v in lines])
    ctx = ends - [len(v) for _, v in lines]
    out = ctx + [t for t, _ in lines]
    F, enough = segment_window_features(z, ctx, out, ends, window, ref_std)
    s = 6
    F[:, 2 * s:3 * s] = np.where(enough, np.log(F[:, 2 * s:3 * s]), 0.0)
    expected = np.concatenate([_ref_window_features(v, len(v) - t, window, ref_std) for t, v in lines])
    np.testing.assert_array_equal(F, expected)
    # the public function (training and reference_std use it) is the same kernel on one segment
    t, v = lines[3]
    np.testing.assert_array_equal(window_features(v, len(v) - t, window, ref_std),
                                  _ref_window_features(v, len(v) - t, window, ref_std))


@pytest.mark.parametrize("seed", range(4))
def test_quality_and_since_bitwise(seed):
    rng = np.random.default_rng(10 + seed)
    lines = _lines(rng)
    raw = np.concatenate([v for _, v in lines])
    times = np.concatenate([np.cumsum(rng.choice([1.0, 1.0, 1.0, 90.0], size=len(v))) + 1e9 for _, v in lines])
    ends = np.cumsum([len(v) for _, v in lines])
    ctx = ends - [len(v) for _, v in lines]
    out = ctx + [t for t, _ in lines]
    lower, upper = np.full(6, -50.0), np.full(6, 50.0)
    stuck_run = np.array([10, 12, 0, 1, 25, 10])
    oor, missing, stuck, gap, dt = segment_quality(raw, times, ctx, out, ends, lower, upper, stuck_run, 30.0)
    started = np.array([np.nan, times[ctx[1]], np.nan, times[ctx[3]] + 2])
    since = segment_since(times, ctx, ends, 45.0, started)
    row = 0
    for k, (tail, v) in enumerate(lines):
        n = len(v) - tail
        t = times[ctx[k]:ends[k]]
        d = np.diff(t, prepend=np.nan)
        ref = _ref_quality(v, n, d, lower, upper, stuck_run, 30.0)
        for got, exp in zip((oor, missing, stuck, gap), ref, strict=True):
            np.testing.assert_array_equal(got[row:row + n], exp)
        np.testing.assert_array_equal(dt[row:row + n], d[-n:])
        np.testing.assert_array_equal(since[ctx[k]:ends[k]], seconds_since_resume(t, 45.0, started[k]))
        row += n


def test_interp_columns_is_np_interp():
    rng = np.random.default_rng(5)
    xp = np.sort(rng.normal(size=(257, 7)), axis=0)
    xp[100:120, 2] = xp[100, 2]  # ties, as quantiles of repeated values have
    xp[:, 3] = 0.0               # a constant feature
    fp = np.linspace(0.0, 1.0, 257)
    X = np.vstack([rng.normal(scale=2, size=(500, 7)), xp[::7], np.full((1, 7), np.nan)])
    xp_t = np.ascontiguousarray(xp.T)
    got = interp_columns(X, xp_t, fp, 0.0, 1.0, interp_index(xp_t))
    for j in range(7):
        np.testing.assert_array_equal(got[:, j], np.interp(X[:, j], xp[:, j], fp, left=0.0, right=1.0))


def test_hbos_kernel_is_pyod():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(2000, 9))
    test = np.vstack([rng.normal(scale=3, size=(300, 9)), np.full((1, 9), 40.0), np.full((1, 9), -40.0)])
    test[0, 2] = np.nan
    for tol in (0.5, 0.05):
        m = HBOS(n_bins=20, contamination=0.01, tol=tol).fit(train)
        log_h = np.log2(m.hist_ + m.alpha)
        got = hbos_scores(test, np.ascontiguousarray(m.bin_edges_.T), log_h, log_h.min(axis=0), m.tol)
        np.testing.assert_array_equal(got[1:], m.decision_function(test[1:]))


@pytest.mark.parametrize("n", [1, 7, 8, 9, 20, 127, 128, 129, 1000])
def test_pairwise_sum_is_numpy_sum(n):
    a = np.random.default_rng(n).normal(size=n) * 10 ** np.random.default_rng(n + 1).uniform(-8, 8, size=n)
    assert pairwise_sum(a, 0, n) == a.sum()


def test_tail_calibrators_are_the_numpy_formula():
    rng = np.random.default_rng(8)
    cals = [TailCalibrator.fit(rng.gamma(2.0, size=3000) * k) for k in (1.0, 5.0, 0.01)]
    cals.append(TailCalibrator.fit(np.zeros(50)))  # a degenerate member: all quantiles equal
    raw = rng.gamma(2.0, size=(400, 4)) * rng.choice([0.01, 1.0, 30.0], size=(400, 4))
    raw[0] = [np.nan, np.inf, -np.inf, 0.0]
    got = TailCalibrators(cals).tail_probabilities(raw)
    for j, c in enumerate(cals):
        x = np.nan_to_num(raw[:, j], nan=0.0, posinf=1e300, neginf=-1e300)
        q = c.quantiles_
        body = 1.0 - np.interp(x, q, np.linspace(0.0, 0.95, 191), left=0.0, right=0.95)
        tail = (1.0 - 0.95) * np.exp(-np.maximum(x - q[-1], 0.0) / c.tail_scale_)
        np.testing.assert_array_equal(got[:, j], np.clip(np.where(x > q[-1], tail, body), 1e-300, 1.0))
        np.testing.assert_array_equal(c.tail_probability(raw[:, j]), got[:, j])


# ---------------------------------------------------------------------------------------------- end to end
def _ref_top_sensors_json(rows, contrib, raw, expected, sensors, issues, gap_rows, dt_seconds, expected_dt, top=3):
    """The explanation builder before the fast path (per row: issue scan, argsort, dicts)."""
    def num(x):
        x = float(x)
        return round(x, 6) if np.isfinite(x) else None

    out = []
    for r in rows:
        items, seen = [], set()
        for issue in ("out_of_range", "missing", "stuck", "gap"):
            if issue == "gap":
                if gap_rows[r]:
                    items.append({"sensor": "ts", "actual": num(dt_seconds[r]), "expected": num(expected_dt),
                                  "contribution": None, "issue": "gap"})
                continue
            for j in np.flatnonzero(issues[issue][r]):
                if j not in seen:
                    seen.add(j)
                    items.append({"sensor": sensors[j], "actual": num(raw[r, j]), "expected": num(expected[j]),
                                  "contribution": num(contrib[r, j]), "issue": issue})
        for j in np.argsort(-contrib[r], kind="stable"):
            if len(items) >= top:
                break
            if j not in seen:
                seen.add(j)
                items.append({"sensor": sensors[j], "actual": num(raw[r, j]), "expected": num(expected[j]),
                              "contribution": num(contrib[r, j])})
        out.append(orjson.dumps(items[:top]).decode())
    return out


def _ref_probability(ens, F):
    """Ensemble probability with the NumPy/PyOD members (HBOS by PyOD, ecdf and calibration by np.interp)."""
    Z = ens._standardise(F)
    cols = []
    for m in ens.active_:
        if m == "hbos":
            cols.append(ens.models_[m].decision_function(Z))
        elif m in ens.models_:
            cols.append(ens._member_decision(m, Z))  # IForest/PCA: the fast paths of the last session, unchanged
        elif m == "maxz":
            cols.append(np.abs(Z).max(axis=1))
        else:
            q = ens.quantiles_
            cdf = np.column_stack([np.interp(Z[:, j], q[:, j], np.linspace(0.0, 1.0, 257), left=0.0, right=1.0)
                                   for j in range(Z.shape[1])])
            tail = np.clip(np.minimum(cdf, 1.0 - cdf), 1.0 / 512, 0.5)
            beyond = np.maximum(np.maximum(q[0] - Z, Z - q[-1]), 0.0)
            cols.append(np.cumsum(-np.log(tail) + beyond, axis=1)[:, -1])
    raw = np.column_stack(cols)
    p = []
    for i, c in enumerate(ens.calibrators_):
        x = np.nan_to_num(raw[:, i], nan=0.0, posinf=1e300, neginf=-1e300)
        q = c.quantiles_
        body = 1.0 - np.interp(x, q, np.linspace(0.0, 0.95, 191), left=0.0, right=0.95)
        tail = (1.0 - 0.95) * np.exp(-np.maximum(x - q[-1], 0.0) / c.tail_scale_)
        p.append(np.clip(np.where(x > q[-1], tail, body), 1e-300, 1.0))
    return combine(np.column_stack(p))


def _ref_score(model, readings, state):
    """StationModel.score as it was before the whole-group kernels: line by line, NumPy only."""
    n = len(readings)
    raw, times = model._raw(readings), _epoch_seconds(readings.get("ts"), n)
    s, q, profile = len(model.sensors_), model.quality_, getattr(model, "warmup_", None)
    F = np.empty((n, 5 * s))
    issues = {k: np.zeros((n, s), dtype=bool) for k in ("out_of_range", "missing", "stuck")}
    gap, dt_out = np.zeros(n, dtype=bool), np.full(n, np.nan)
    for line, idx in model._split_lines(readings):
        ctx_v = np.concatenate([state.values.get(line, np.zeros((0, s))), raw[idx]])
        ctx_t = np.concatenate([state.times.get(line, np.zeros(0)), times[idx]])
        if line not in state.times:
            started = model._start_time(raw[idx[0]], times[idx[0]])
            if np.isfinite(started):
                state.started[line] = started
        since = model._since(ctx_t, state.started.get(line, np.nan))
        keep = len(idx) + model.window - 1
        f = _ref_window_features(model._z(ctx_v[-keep:], since[-keep:]), len(idx), model.window, model.ref_std_)
        F[idx] = f if profile is None else profile.adjust_features(f, since[-len(idx):])
        dt = np.diff(ctx_t, prepend=np.nan)[-len(idx):]
        checks = _ref_quality(ctx_v[-(len(idx) + model._context()):], len(idx), dt, q.lower_, q.upper_,
                              q.stuck_run_, q.gap_seconds_)
        for key, mask in zip(issues, checks[:3], strict=True):
            issues[key][idx] = mask
        gap[idx], dt_out[idx] = checks[3], dt
        state.values[line], state.times[line] = ctx_v[-model.history_:].copy(), ctx_t[-model.history_:].copy()
    score = probability_to_score(_ref_probability(model.ensemble_, F), model.score_decades)
    dq = issues["out_of_range"].any(axis=1) | issues["missing"].any(axis=1) | issues["stuck"].any(axis=1) | gap
    process = score >= model.threshold_
    score = np.where(dq, np.maximum(score, model.threshold_), score)
    top = np.full(n, None, dtype=object)
    rows = np.flatnonzero(process | dq)
    contrib = np.abs(model.ensemble_._standardise(F[rows]).reshape(len(rows), 5, s)).max(axis=1)
    top[rows] = _ref_top_sensors_json(np.arange(rows.size), contrib, raw[rows], model.scaler_.median_,
                                      model.sensors_, {k: v[rows] for k, v in issues.items()}, gap[rows],
                                      dt_out[rows], model.median_dt_)
    kind = np.where(dq, "data_quality", np.where(process, "process", "normal"))
    return score, process | dq, kind, top


@pytest.fixture(scope="module")
def simulated_models():
    from cellwatch.detect.train import Dataset, exclusion_mask, fit_station_models
    from cellwatch.simulators.simulate import simulate

    sim = simulate(hours=3, lines=1, seed=5, faults_per_shift=20)  # as tests/test_core.py
    data = Dataset(sim.readings, sim.cells, sim.faults.assign(start_ts=sim.faults["start"], end_ts=sim.faults["end"]))
    stations = fit_station_models(sim.readings, exclusion_mask(data), progress=False)
    test = simulate(hours=1, lines=2, seed=6, faults_per_shift=40).readings
    return stations, test.sort_values("ts", kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("station", ["coating", "winding", "formation"])
def test_station_model_fast_path_equals_the_numpy_path(simulated_models, station):
    """Same scores (bit for bit), flags, kinds and explanations as the line-by-line NumPy code, across batch
    boundaries and a restart from the last readings (new_state(recent))."""
    stations, test = simulated_models
    frame = test[test["station"] == station]
    compared = anomalous = 0
    for (st, rec), model in stations.models.items():
        if st != station:
            continue
        part = frame[frame["recipe"].fillna("*") == rec] if rec != "*" else frame
        if len(part) < 50:
            continue
        cuts = [0, 7, len(part) // 3, len(part) // 3 + 1, 2 * len(part) // 3, len(part)]
        fast, slow = model.new_state(), model.new_state()
        for a, b in itertools.pairwise(cuts):
            if a == 2 * len(part) // 3:  # restart: both rebuild their state from the readings seen so far
                fast, slow = model.new_state(part.iloc[:a]), model.new_state(part.iloc[:a])
            got = model.score(part.iloc[a:b], fast)
            score, flag, kind, top = _ref_score(model, part.iloc[a:b], slow)
            np.testing.assert_array_equal(got["anomaly_score"].to_numpy(), score)
            np.testing.assert_array_equal(got["is_anomaly"].to_numpy(), flag)
            np.testing.assert_array_equal(got["kind"].to_numpy(dtype=object), kind.astype(object))
            assert got["top_sensors"].tolist() == top.tolist()
            compared += b - a
            anomalous += int(flag.sum())
    assert compared > 200 and anomalous > 0


def _restarting_line(hours: float, stops: list[float], seed: int, line: str) -> pd.DataFrame:
    """Coating-like readings every 5 s; after each 10-min stop the speed ramps up and the dryer warms up."""
    rng = np.random.default_rng(seed)
    run = np.arange(0, hours * 3600, 5.0)
    n_stops = np.searchsorted(np.array(stops) * 3600, run, side="right")
    since = run - np.concatenate([[-np.inf], np.array(stops) * 3600])[n_stops]
    n = run.size
    return pd.DataFrame({
        "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(run + n_stops * 600.0, unit="s"), "line": line,
        "station": "coating", "cell_id": None, "seq": np.arange(n), "recipe": "NMC811", "tags": None,
        "coating_speed_m_min": 30 * (1 - 0.7 * np.exp(-since / 90)) + rng.normal(0, 0.05, n),
        "dryer_zone1_temp_c": 110 - 30 * np.exp(-since / 600) + rng.normal(0, 0.3, n),
        "web_tension_n": 120 + rng.normal(0, 2, n) + np.where(run > 0.8 * hours * 3600, 16.0, 0.0),
    })


def test_fast_path_with_a_restart_warm_up_profile():
    train = pd.concat([_restarting_line(10, [1.5, 4, 6.5, 9], 1, "L1"), _restarting_line(10, [2, 5, 7.5], 2, "L2")],
                      ignore_index=True)
    train.loc[train["ts"] >= train["ts"].min() + pd.Timedelta(hours=8.5), "web_tension_n"] -= 16.0  # clean training
    model = StationModel(window=20).fit(train)
    assert model.warmup_ is not None and model.history_ > model.context_
    test = pd.concat([_restarting_line(3, [0.5, 1.2, 2.0], 3, "L1"), _restarting_line(3, [0.7, 1.9], 4, "L2")])
    test = test.sort_values("ts", kind="stable").reset_index(drop=True)
    cuts = [0, 5, 700, 701, 1500, 2200, len(test)]
    fast, slow = model.new_state(), model.new_state()
    flags = 0
    for a, b in itertools.pairwise(cuts):
        if a == 1500:  # restart inside a warm-up: the rebuilt state must bring the resume time back
            fast, slow = model.new_state(test.iloc[:a]), model.new_state(test.iloc[:a])
        got = model.score(test.iloc[a:b], fast)
        score, flag, kind, top = _ref_score(model, test.iloc[a:b], slow)
        np.testing.assert_array_equal(got["anomaly_score"].to_numpy(), score)
        np.testing.assert_array_equal(got["kind"].to_numpy(dtype=object), kind.astype(object))
        assert got["top_sensors"].tolist() == top.tolist()
        flags += int(flag.sum())
    assert flags > 0
