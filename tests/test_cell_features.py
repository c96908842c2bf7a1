"""lot_features (the vectorised genealogy aggregates) against a plain per-event reference on random buffers."""

import numpy as np
import pandas as pd
import pytest

from cellwatch.detect.cell_features import (
    BUFFERED_STATIONS,
    LOCAL_FEATURES,
    LOT_FEATURES,
    LOT_STATIONS,
    SIBLING_STATIONS,
    lot_features,
)
from cellwatch.stations import station

T0 = pd.Timestamp("2026-01-01", tz="UTC")
#: lots per station: slitting links rolls to coils (plus knives), coating coils to batches, mixing tags batches
LINKS = {"slitting": lambda i: (f"C{i // 40}", f"K{i // 25}"), "calendering": lambda i: (f"C{i // 40}",),
         "coating": lambda i: (f"C{i // 40}", f"B{i // 120}"), "mixing": lambda i: (f"B{i // 20 + 1}",),
         # sibling cells: their roll, coil and batch
         "winding": lambda i: (f"R{i // 25}", f"C{i // 50}", f"B{i // 150}")}


def _buffers(rng: np.random.Generator, n: int = 300) -> dict[str, pd.DataFrame]:
    out = {}
    for name in BUFFERED_STATIONS:
        frames = []
        for line in ("L1", "L2"):
            i = np.arange(n)
            flags = rng.random(n) < 0.15
            f = pd.DataFrame({"line": line, "ts": T0 + pd.to_timedelta(i * 5 + rng.uniform(0, 1, n), unit="s"),
                              "anomaly_score": rng.random(n), "is_anomaly": flags})
            for s in station(name).sensor_names:
                f[s] = np.where(rng.random(n) < 0.05, np.nan, rng.normal(0, 1, n))
            f["lots"] = [tuple(sorted(f"{line}-{x}" for x in LINKS[name](k))) for k in i]
            f["pos"] = i
            f["run_start"] = flags & ~np.r_[False, flags[:-1]]
            frames.append(f)
        out[name] = pd.concat(frames, ignore_index=True).sort_values(["ts", "line"], kind="stable"
                                                                     ).reset_index(drop=True)
    return out


def _reference(events, event_lots, buffers, lot_memory, anchors, lags, half_window_s=60.0, match="position"):
    """The definition, one event at a time."""
    lot = pd.DataFrame(np.nan, index=events.index, columns=LOT_FEATURES)
    local = pd.DataFrame(np.nan, index=events.index, columns=LOCAL_FEATURES)
    for e in range(len(events)):
        line, ts = events["line"].iloc[e], events["ts"].iloc[e]
        lots = set(event_lots.loc[event_lots["event"] == e, "lot"])
        for name in (*SIBLING_STATIONS, *reversed(LOT_STATIONS)):
            buf = buffers[name]
            mine = buf.loc[buf["line"] == line]
            before = mine.loc[mine["ts"] <= ts]
            if before.empty:
                continue
            hi = before["pos"].iloc[-1]
            win = mine.loc[(mine["pos"] > hi - lot_memory) & (mine["pos"] <= hi)]
            win = win.loc[[bool(lots & set(x)) for x in win["lots"]]]
            if win.empty:
                continue
            sensors = list(station(name).sensor_names)

            def stats(w):
                n = len(w)
                return [n, w["anomaly_score"].max(), w["anomaly_score"].mean(), w["is_anomaly"].sum(),
                        w["is_anomaly"].sum() / n, w["run_start"].sum()]
            lot.loc[e, [f"{name}.{s}" for s in ("lot_readings", "lot_max_score", "lot_mean_score", "lot_anomalous",
                                                 "lot_anomaly_rate", "lot_runs")]] = stats(win)
            lot.loc[e, [f"{name}.lot_mean.{s}" for s in sensors]] = win[sensors].mean().to_numpy()
            if name in lags and np.isfinite(anchors[e]):
                if match == "position":  # lag / step readings back in the stream (the test streams: 5 s steps)
                    back, half = round(lags[name] / 5.0), round(half_window_s / 5.0)
                    near = win.loc[(win["pos"] - (hi - back)).abs() <= half]
                else:
                    target = anchors[e] - lags[name] * 1e9
                    t = win["ts"].astype("int64").to_numpy(dtype="float64")
                    near = win.loc[np.abs(t - target) <= half_window_s * 1e9]
                if len(near):
                    local.loc[e, [f"{name}.{s}" for s in ("local_readings", "local_max_score", "local_mean_score")]] \
                        = stats(near)[:3]
                    for agg in ("mean", "min", "max"):
                        local.loc[e, [f"{name}.local_{agg}.{s}" for s in sensors]] = \
                            getattr(near[sensors], agg)().to_numpy()
            if name not in SIBLING_STATIONS:  # sibling cells lead no further upstream
                lots |= {x for row in win["lots"] for x in row}
    return lot, local


@pytest.mark.parametrize("match", ["position", "time"])
@pytest.mark.parametrize("seed", [0, 1])
def test_lot_features_match_the_per_event_definition(seed, match):
    rng = np.random.default_rng(seed)
    buffers = _buffers(rng)
    n = 60
    events = pd.DataFrame({"line": rng.choice(["L1", "L2"], n),
                           "ts": T0 + pd.to_timedelta(rng.uniform(-60, 1600, n), unit="s")})
    rows = [(e, f"{events['line'][e]}-R{c}") for e in range(n) for c in rng.choice(12, rng.integers(0, 3))]
    rows += [(e, f"{events['line'][e]}-C{c}") for e in range(n) for c in rng.choice(8, rng.integers(0, 2))]
    rows += [(e, f"{events['line'][e]}-E{e % 7}") for e in range(n)]  # a lot no electrode station carries
    event_lots = pd.DataFrame(rows, columns=["event", "lot"])
    anchors = np.where(rng.random(n) < 0.5, events["ts"].astype("int64").to_numpy(dtype="float64"), np.nan)
    lags = {"slitting": 200.0, "calendering": 400.0, "coating": 600.0}
    for memory in (1000, 90):  # the whole buffer, and a window that cuts lots
        lot, local = lot_features(events, event_lots, buffers, memory, anchors, lags, match=match)
        ref_lot, ref_local = _reference(events, event_lots, buffers, memory, anchors, lags, match=match)
        assert lot.notna().to_numpy().sum() > n  # the test data do match lots
        assert lot["winding.lot_readings"].notna().any()
        assert local.notna().to_numpy().sum() > 0 or memory < 1000
        # sums are exact integer prefix sums of values quantised to 1e-9 (scores) / 1e-6 (z values)
        pd.testing.assert_frame_equal(lot, ref_lot, check_exact=False, rtol=1e-8, atol=1e-6)
        pd.testing.assert_frame_equal(local, ref_local, check_exact=False, rtol=1e-12, atol=1e-12)


def test_local_stretch_is_found_across_a_stop():
    """The cell's own electrode stretch lies lag / step readings back in the stream: a line stop between the
    station and the winder (a gap in the stream) must not shift it; wall-clock matching misses it."""
    n, gap_after, lag = 400, 350, 500.0
    i = np.arange(n)
    sensors = list(station("coating").sensor_names)
    buf = pd.DataFrame({"line": "L1", "ts": T0 + pd.to_timedelta(i * 5.0 + np.where(i > gap_after, 1200, 0), unit="s"),
                        "anomaly_score": 0.1, "is_anomaly": False, **{s: i.astype(float) for s in sensors},
                        "lots": [("L1-C0",)] * n, "pos": i, "run_start": False})
    event_ts = buf["ts"].iloc[-1] + pd.Timedelta(seconds=1)
    events = pd.DataFrame({"line": ["L1"], "ts": [event_ts]})
    event_lots = pd.DataFrame({"event": [0], "lot": ["L1-C0"]})
    anchors = np.array([float(event_ts.value)])
    _, local = lot_features(events, event_lots, {"coating": buf}, 1000, anchors, {"coating": lag})
    target = (n - 1) - round(lag / 5.0)
    assert local.loc[0, "coating.local_readings"] == 25
    assert local.loc[0, f"coating.local_mean.{sensors[0]}"] == pytest.approx(target)
    assert local.loc[0, f"coating.local_min.{sensors[0]}"] == target - 12
    _, by_time = lot_features(events, event_lots, {"coating": buf}, 1000, anchors, {"coating": lag}, match="time")
    assert np.isnan(by_time.loc[0, "coating.local_readings"])  # the stop shifted the wall-clock stretch away
