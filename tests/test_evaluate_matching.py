"""Event matching rules of the backtest: downstream after-effects of process faults, restart diagnosis."""

from __future__ import annotations

import pandas as pd

from cellwatch.detect.bench_simulator import missing_fault_types
from cellwatch.detect.evaluate import event_level

T0 = pd.Timestamp("2026-03-02 02:00", tz="UTC")


def _t(minutes: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=minutes)


def _scores() -> pd.DataFrame:
    ts = [_t(m) for m in range(0, 481, 10)]
    return pd.DataFrame({"ts": ts * 2, "line": "L1", "station": ["coating"] * len(ts) + ["calendering"] * len(ts)})


def _incidents(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame({"line": "L1", "station": [r[0] for r in rows], "start_ts": [_t(r[1]) for r in rows],
                         "end_ts": [_t(r[2]) for r in rows]})


FAULTS = pd.DataFrame({"fault_id": ["L1-F001"], "type": ["tool_wear"], "line": ["L1"], "station": ["coating"],
                       "sensors": [["coat_weight_gsm"]], "start_ts": [_t(60)], "end_ts": [_t(90)]})


def test_downstream_after_effect_of_a_process_fault_is_not_false_but_counted_apart():
    inc = _incidents([("coating", 65, 80), ("calendering", 70, 85), ("calendering", 200, 205)])
    m = event_level(_scores(), inc, FAULTS)
    assert m["detected"] == 1 and m["downstream_incidents"] == 1
    assert m["false_alarms_strict"] == 2 and m["false_alarms"] == 1


def test_upstream_or_late_incidents_stay_false():
    sensor_fault = FAULTS.assign(type="drift", station="calendering")  # a sensor fault has no after-effects
    inc = _incidents([("coating", 70, 75), ("calendering", 200, 201)])
    m = event_level(_scores(), inc, sensor_fault)
    assert m["downstream_incidents"] == 0 and m["false_alarms"] == 2


def test_false_incidents_after_a_restart_are_diagnosed():
    events = pd.DataFrame({"line": ["L1"], "event": ["stop"], "start": [_t(290)], "end": [_t(300)]})
    inc = _incidents([("coating", 305, 320), ("coating", 400, 401)])
    m = event_level(_scores(), inc, FAULTS, events)
    assert m["false_alarms"] == 2 and m["false_alarms_after_restart"] == 1


def test_missing_fault_types_lists_the_absent_ones():
    assert "tool_wear" not in missing_fault_types(FAULTS) and "drift" in missing_fault_types(FAULTS)


def _aging_scores(anomalous_cells: set[str]) -> pd.DataFrame:
    """One aging reading per cell every minute from 4 h to 6 h, cells C000..C119; the given ones anomalous."""
    cells = [f"C{i:03d}" for i in range(120)]
    return pd.DataFrame({"ts": [_t(240 + i) for i in range(120)], "line": "L1", "station": "aging", "cell_id": cells,
                         "is_anomaly": [c in anomalous_cells for c in cells]})


CONTAMINATED = pd.DataFrame({"fault_id": ["L1-F002"], "type": ["contaminated_batch"], "line": ["L1"],
                             "station": ["mixing"], "sensors": [[]], "start_ts": [_t(0)], "end_ts": [_t(30)],
                             "cells": [[f"C{i:03d}" for i in range(40, 80)]]})


def test_a_late_incident_on_the_cells_an_upstream_process_fault_touched_is_its_after_effect():
    inc = pd.DataFrame({"line": ["L1"], "station": ["aging"], "start_ts": [_t(280)], "end_ts": [_t(320)]})
    touched = {f"C{i:03d}" for i in range(45, 75)}
    m = event_level(_aging_scores(touched | {"C100"}), inc, CONTAMINATED)
    assert m["downstream_incidents"] == 1 and m["false_alarms"] == 0 and m["false_alarms_strict"] == 1


def test_a_late_incident_on_other_cells_stays_false():
    inc = pd.DataFrame({"line": ["L1"], "station": ["aging"], "start_ts": [_t(330)], "end_ts": [_t(355)]})
    elsewhere = {f"C{i:03d}" for i in range(90, 115)}  # outside the touched cells C040..C079
    m = event_level(_aging_scores(elsewhere | {"C050"}), inc, CONTAMINATED)
    assert m["downstream_incidents"] == 0 and m["false_alarms"] == 1
    # anomalies spread evenly over touched and untouched cells are no after-effect either
    spread = {f"C{i:03d}" for i in range(0, 120, 2)}
    inc = pd.DataFrame({"line": ["L1"], "station": ["aging"], "start_ts": [_t(240)], "end_ts": [_t(359)]})
    assert event_level(_aging_scores(spread), inc, CONTAMINATED)["downstream_incidents"] == 0


def test_exposure_counts_each_streams_own_operating_hours():
    """coating runs 0..480 min every 10 min (8 h incl. its last step); aging starts at 4 h: 2 h of operation."""
    scores = pd.concat([_scores().iloc[:49], _aging_scores(set())], ignore_index=True)
    inc = _incidents([("coating", 200, 201), ("coating", 300, 301)])
    m = event_level(scores, inc, FAULTS.iloc[0:0])
    assert m["stream_hours"] == {"L1/aging": 2.0, "L1/coating": round(490 / 60, 4)}
    assert abs(m["station_shifts"] - (2.0 + 490 / 60) / 8) < 1e-12
    assert abs(m["false_incidents_per_station_shift"] - 2 / m["station_shifts"]) < 1e-12
    # the run-span figure (streams x first-to-last reading of the whole run) counts aging for 8 h
    assert m["station_shifts_run_span"] == 2 * 8 / 8 and m["false_incidents_per_station_shift_run_span"] == 1.0
