"""Integration: faults the line simulator injects at a station are found by that station's model."""

from __future__ import annotations

import pandas as pd
import pytest

from cellwatch.detect.incidents import IncidentTracker
from cellwatch.detect.metrics_events import event_metrics
from cellwatch.detect.station_model import StationModel

simulate = pytest.importorskip("cellwatch.simulators.simulate").simulate

#: Fault types that persist over a window of readings (an isolated one-reading spike is an anomalous
#: reading, not an incident, under the k-of-n rule; a contaminated batch shows downstream, not at mixing).
PERSISTENT = ("stuck", "noise", "drift", "mean_shift", "tool_wear")
RECIPE = "NMC811"  # a StationModel models one product; changeovers switch the recipe


def _station(frame: pd.DataFrame, station: str) -> pd.DataFrame:
    return frame[(frame["station"] == station) & (frame["recipe"] == RECIPE)]


@pytest.mark.slow
def test_injected_faults_are_detected():
    clean = simulate(hours=8, lines=1, seed=3, faults="none").readings       # training shift
    validation = simulate(hours=8, lines=1, seed=4, faults="none").readings  # another clean shift
    faulty = simulate(hours=8, lines=1, seed=3, faults="all")                # same normal data + faults
    faults = faulty.faults[faulty.faults["type"].isin(PERSISTENT)].rename(columns={"start": "start_ts",
                                                                                   "end": "end_ts"})
    found = total = 0
    for station, truth in faults.groupby("station"):
        readings = _station(faulty.readings, station)
        inside = [((readings["ts"] >= f.start_ts) & (readings["ts"] <= f.end_ts)).sum() > 20
                  for f in truth.itertuples()]
        truth = truth[inside]  # faults while the modelled recipe runs
        if truth.empty:
            continue
        model = StationModel().fit(_station(clean, station), _station(validation, station))
        scored = pd.concat([readings[["line", "station", "seq", "ts"]], model.score(readings, model.new_state())],
                           axis=1)
        incidents = IncidentTracker(model.k, model.n, model.close_after).update(scored)
        m = event_metrics(truth, incidents)
        found += m["detected"]
        total += m["faults"]
        for f in truth[truth["type"] == "stuck"].itertuples():  # stuck -> a data-quality incident naming it
            dq = incidents[(incidents["kind"] == "data_quality") & (incidents["start_ts"] <= f.end_ts)
                           & (incidents["end_ts"].fillna(f.end_ts) >= f.start_ts)]
            assert dq["sensors"].str.contains(f.sensors[0]).any(), (station, f.sensors)
    assert total >= 3, "the simulated shift should hold several persistent faults"
    assert found / total >= 0.75, f"{found} of {total} injected faults detected"
