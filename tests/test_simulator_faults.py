"""Every fault type is visible exactly where its ground truth says, and only there.

The simulator keeps normal variation identical for one seed with and without faults, so a run with
faults is compared value by value against the same seed without faults ("paired").
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cellwatch.errors import CellwatchError
from cellwatch.simulators.faults import FAULT_TYPES, parse_fault_types
from cellwatch.simulators.simulate import simulate
from cellwatch.stations import SENSOR_NAMES

SEED, HOURS, LINES = 5, 8, 2


@pytest.fixture(scope="module")
def clean():
    return simulate(hours=HOURS, lines=LINES, seed=SEED, faults="none")


@pytest.fixture(scope="module")
def runs():
    cache: dict[str, object] = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = simulate(hours=HOURS, lines=LINES, seed=SEED, faults=kind, faults_per_shift=5)
        return cache[kind]
    return get


def _stream(result, fault) -> pd.DataFrame:
    r = result.readings
    return r[(r["line"] == fault.line) & (r["station"] == fault.station)].reset_index(drop=True)


def _inside(rows: pd.DataFrame, fault) -> np.ndarray:
    return ((rows["ts"] >= fault.start) & (rows["ts"] < fault.end)).to_numpy()


def _any_window(result, fault, rows: pd.DataFrame) -> np.ndarray:
    """Rows inside the window of any fault on the same line, station and sensor (faults of one kind can
    hit the same stream more than once, one after the other)."""
    m = np.zeros(len(rows), dtype=bool)
    for g in result.faults.itertuples():
        if g.line == fault.line and g.station == fault.station and set(g.sensors) & set(fault.sensors):
            m |= _inside(rows, g)
    return m


def _changed(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """(row, sensor) pairs whose value differs between two paired readings frames."""
    assert len(a) == len(b) and (a["seq"].to_numpy() == b["seq"].to_numpy()).all()
    cols = list(SENSOR_NAMES)
    x, y = a[cols].to_numpy(), b[cols].to_numpy()
    diff = ~np.isclose(x, y, rtol=1e-12, atol=0, equal_nan=True)
    rows, c = np.nonzero(diff)
    return pd.DataFrame({"row": rows, "sensor": np.array(cols)[c]})


def _covered(result, changed: pd.DataFrame, same_station_only: bool = True) -> np.ndarray:
    """Mask of changed values explained by a fault (its line, station, one of its sensors, inside its window)."""
    r = result.readings.iloc[changed["row"].to_numpy()].reset_index(drop=True)
    ok = np.zeros(len(changed), dtype=bool)
    for f in result.faults.itertuples():
        ok |= ((r["line"] == f.line) & (r["station"] == f.station) & changed["sensor"].isin(f.sensors).to_numpy()
               & (r["ts"] >= f.start) & (r["ts"] < f.end)).to_numpy()
    return ok


@pytest.mark.parametrize("kind", ["drift", "spike", "stuck", "noise"])
def test_sensor_fault_changes_only_its_sensor_inside_its_window_and_not_the_cells(kind, runs, clean):
    res = runs(kind)
    assert len(res.faults) >= 3 and set(res.faults["type"]) == {kind}
    assert not res.faults["affects_quality"].any()
    changed = _changed(res.readings, clean.readings)
    assert _covered(res, changed).all()
    for f in res.faults.itertuples():
        r = res.readings.iloc[changed["row"]]
        assert ((r["line"] == f.line) & (r["station"] == f.station)).any(), f.fault_id
    # a lying sensor does not change the product
    cols = [c for c in clean.cells.columns if c != "fault_ids"]
    pd.testing.assert_frame_equal(res.cells[cols], clean.cells[cols])


def test_stuck_is_a_flatline_at_the_last_good_value(runs):
    res = runs("stuck")
    for f in res.faults.itertuples():
        rows = _stream(res, f)
        inside = _inside(rows, f)
        v = rows[f.sensors[0]].to_numpy()
        first = int(np.flatnonzero(inside)[0])
        assert np.ptp(v[inside]) == 0
        assert v[inside][0] == v[first - 1]
        assert np.ptp(v[max(first - 30, 0):first]) > 0


def test_spikes_are_extreme_at_the_listed_times(runs, clean):
    res = runs("spike")
    for f in res.faults.itertuples():
        params = json.loads(f.params)
        times = pd.to_datetime(params["spike_ts"], utc=True)
        assert len(times) >= 3
        rows, base = _stream(res, f), _stream(clean, f)
        at = rows["ts"].isin(times).to_numpy()
        assert at.sum() == len(times) and _inside(rows, f)[at].all()
        jump = np.abs(rows[f.sensors[0]].to_numpy() - base[f.sensors[0]].to_numpy())
        assert (jump[at] >= 8 * params["scale_sd"] * 0.999).all()
        inside = _inside(rows, f)
        assert (jump[inside & ~at] == 0).all()
        assert (jump[~_any_window(res, f, rows)] == 0).all()


def test_drift_is_a_trend_over_the_window(runs, clean):
    res = runs("drift")
    for f in res.faults.itertuples():
        rows, base = _stream(res, f), _stream(clean, f)
        inside = _inside(rows, f)
        t = (rows["ts"][inside] - f.start).dt.total_seconds().to_numpy()
        diff = (rows[f.sensors[0]] - base[f.sensors[0]]).to_numpy()[inside]
        slope = np.polyfit(t, diff, 1)[0]
        duration = (f.end - f.start).total_seconds()
        assert slope * duration == pytest.approx(f.magnitude, rel=0.05)
        if f.station == "mixing":
            continue  # each batch has its own viscosity/temperature profile: only the paired check applies
        # visible in the faulty data alone: the last part of the window is far from the level before it
        v = rows[f.sensors[0]].to_numpy()
        first = int(np.flatnonzero(inside)[0])
        before = v[max(first - 60, 0):first]
        tail = v[inside][-max(3, inside.sum() // 5):]
        assert abs(tail.mean() - before.mean()) > 2 * before.std(), f.fault_id


def test_noise_raises_the_variance(runs):
    res = runs("noise")
    for f in res.faults.itertuples():
        rows = _stream(res, f)
        inside = _inside(rows, f)
        v = rows[f.sensors[0]].to_numpy()
        first = int(np.flatnonzero(inside)[0])
        before = v[max(first - 120, 0):first]
        # white noise on top of a slowly moving signal: the step-to-step spread jumps
        assert np.diff(v[inside]).var() > 4 * np.diff(before).var(), f.fault_id


def test_mean_shift_moves_the_process_level(runs, clean):
    res = runs("mean_shift")
    assert res.faults["affects_quality"].all()
    changed = _changed(res.readings, clean.readings)
    for f in res.faults.itertuples():
        rows, base = _stream(res, f), _stream(clean, f)
        inside = _inside(rows, f)
        primary = f.sensors[0]
        diff = (rows[primary] - base[primary]).to_numpy()
        assert np.abs(diff[inside]).mean() > 0
        # at the fault's own station nothing changes before the window or after it
        assert (diff[~_any_window(res, f, rows)] == 0).all()
        v = rows[primary].to_numpy()
        first = int(np.flatnonzero(inside)[0])
        before = v[max(first - 120, 0):first]
        assert abs(v[inside].mean() - before.mean()) > 3 * before.std(), f.fault_id
    # every change of a fault's primary sensor at its own station is inside a window of such a fault
    # (other listed sensors can also move downstream of another fault, e.g. CE after a dew-point excursion)
    r = res.readings.iloc[changed["row"]].reset_index(drop=True)
    own = np.zeros(len(changed), dtype=bool)
    for f in res.faults.itertuples():
        own |= ((r["line"] == f.line) & (r["station"] == f.station) & (changed["sensor"] == f.sensors[0])).to_numpy()
    assert _covered(res, changed[own]).all()


def test_tool_wear_ramps_up_and_resets(runs, clean):
    res = runs("tool_wear")
    assert len(res.faults) >= 3
    for f in res.faults.itertuples():
        rows, base = _stream(res, f), _stream(clean, f)
        inside = _inside(rows, f)
        primary = f.sensors[0]
        diff = (rows[primary] - base[primary]).to_numpy()
        t = rows["ts"][inside].astype("int64").to_numpy()
        assert np.corrcoef(t, diff[inside])[0, 1] * np.sign(f.magnitude) > 0.95
        n = inside.sum()
        assert abs(diff[inside][-n // 10:].mean()) > 0.8 * abs(f.magnitude)
        other = _any_window(res, f, rows) & ~inside
        after = (rows["ts"] >= f.end).to_numpy() & ~other
        if primary == "burr_height_um":
            # the knife is changed at the end of the window: the new knife cuts cleaner than the old one would
            assert (diff[after] <= 1e-9).all()
            assert rows.loc[after, "tags"].iloc[0] != rows.loc[inside, "tags"].iloc[-1]
        else:
            assert (diff[after] == 0).all()
        first_start = res.faults.loc[(res.faults["line"] == f.line) & (res.faults["station"] == f.station), "start"]
        assert (diff[(rows["ts"] < first_start.min()).to_numpy()] == 0).all()


def test_contaminated_batch_hits_its_cells_with_self_discharge(runs, clean):
    res = runs("contaminated_batch")
    assert len(res.faults) >= 1
    # invisible to every sensor: metal particles show up only at aging/EOL
    changed = _changed(res.readings, clean.readings)
    changed_rows = res.readings.iloc[changed["row"]]
    assert set(changed_rows["station"]) <= {"winding", "aging", "eol"}
    cells = res.cells.set_index("cell_id")
    for f in res.faults.itertuples():
        assert f.station == "mixing" and list(f.sensors) == []
        touched = cells.loc[f.cells]
        assert len(touched) > 300
        assert touched["slurry_batch_id"].nunique() == 1
        batch = touched["slurry_batch_id"].iloc[0]
        assert set(cells.index[cells["slurry_batch_id"] == batch]) == set(f.cells)
        others = cells[cells["fault_ids"].map(len) == 0]
        assert touched["defect"].mean() > max(0.15, 3 * others["defect"].mean())
        assert (touched["defect_type"] == "high_self_discharge").mean() > 0.08
        assert touched["k_value_mv_day"].mean() > others["k_value_mv_day"].mean() + 0.5


def test_cells_listed_by_a_cell_station_fault_are_the_cells_visiting_in_its_window(runs):
    res = runs("noise")
    r = res.readings
    for f in res.faults.itertuples():
        if f.station not in ("winding", "filling", "formation", "aging", "eol"):
            continue
        rows = r[(r["line"] == f.line) & (r["station"] == f.station) & (r["ts"] >= f.start) & (r["ts"] < f.end)]
        finished = set(res.cells["cell_id"])
        assert set(f.cells) == set(rows["cell_id"]) & finished


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_schedule_has_10_to_20ish_faults_spread_and_not_overlapping(seed):
    res = simulate(hours=8, lines=2, seed=seed)
    f = res.faults
    assert 8 <= len(f) <= 26
    assert f["station"].nunique() >= 4 and f["type"].nunique() >= 5
    minutes = (f["end"] - f["start"]).dt.total_seconds() / 60
    sized = f["type"] != "contaminated_batch"
    assert minutes[sized].between(10, 60.01).all()
    for _, g in f.groupby(["line", "station"]):
        g = g.sort_values("start")
        assert (g["start"].iloc[1:].to_numpy() >= g["end"].iloc[:-1].to_numpy()).all()
    assert set(f.loc[f["affects_quality"], "type"]) <= {"mean_shift", "tool_wear", "contaminated_batch"}


def test_fault_selection():
    assert parse_fault_types("all") == FAULT_TYPES
    assert parse_fault_types("none") == ()
    assert parse_fault_types("stuck, spike") == ("stuck", "spike")
    with pytest.raises(CellwatchError, match="unknown fault type"):
        parse_fault_types("stuck,bogus")
    res = simulate(hours=4, lines=1, seed=1, faults="none")
    assert res.faults.empty and list(res.faults.columns)[:3] == ["fault_id", "type", "line"]
