"""Restart warm-up: transients after stops are learnt as normal, a fault right after a restart is still caught."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellwatch.detect.incidents import IncidentTracker
from cellwatch.detect.station_model import StationModel
from cellwatch.detect.warmup import seconds_since_resume

SENSORS = ["coating_speed_m_min", "dryer_zone1_temp_c", "web_tension_n"]
STEP = 5.0          # seconds between readings
STOP_S = 900.0      # every stop lasts 15 min


def line_frame(hours: float, restarts: list[float], seed: int, line: str = "L1",
               fault_from: float | None = None) -> pd.DataFrame:
    """Coating-like readings every 5 s with stops at ``restarts`` (running hours); after each restart the speed
    ramps up (time constant 90 s) and the dryer warms up (600 s). ``fault_from``: running hours from which the
    web tension is 8 SDs high (a process fault)."""
    rng = np.random.default_rng(seed)
    run = np.arange(0, hours * 3600, STEP)
    stops = np.array(sorted(restarts)) * 3600
    n_stops = np.searchsorted(stops, run, side="right")
    wall = run + n_stops * STOP_S
    last = np.concatenate([[-np.inf], stops])[n_stops]
    since = run - last
    n = run.size
    frame = pd.DataFrame({
        "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(wall, unit="s"), "line": line,
        "station": "coating", "cell_id": None, "seq": np.arange(n), "recipe": "NMC811", "tags": None,
        "coating_speed_m_min": 30 * (1 - 0.7 * np.exp(-since / 90)) + rng.normal(0, 0.05, n),
        "dryer_zone1_temp_c": 110 - 30 * np.exp(-since / 600) + rng.normal(0, 0.3, n),
        "web_tension_n": 120 + rng.normal(0, 2, n),
    })
    if fault_from is not None:
        frame.loc[run >= fault_from * 3600, "web_tension_n"] += 16.0
    return frame


def incidents(model: StationModel, frame: pd.DataFrame) -> pd.DataFrame:
    out = model.score(frame, model.new_state())
    scored = pd.concat([frame[["line", "station", "seq", "ts"]], out], axis=1)
    return IncidentTracker(model.k, model.n, model.close_after).update(scored)


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return pd.concat([line_frame(12, [1.5, 4, 6.5, 9, 11], 1),
                      line_frame(12, [2, 5, 7.5, 10], 2, line="L2")], ignore_index=True)


@pytest.fixture(scope="module")
def model(train) -> StationModel:
    return StationModel(window=20).fit(train)


@pytest.fixture(scope="module")
def unaware(train) -> StationModel:
    return StationModel(window=20, warmup=False).fit(train)


def test_seconds_since_resume():
    t = np.array([0, 5, 10, 1000, 1005, 1010, np.nan, 1020.0])
    since = seconds_since_resume(t, 60.0)
    assert np.isinf(since[:3]).all()
    assert since[3:6].tolist() == [0, 5, 10]
    assert np.isinf(since[6]) and since[7] == 20


def test_profile_is_learnt(model):
    assert model.warmup_ is not None and model.warmup_.active
    assert model.metadata_["warmup"]["horizon_s"] == model.warmup_.horizon
    # the dryer is ~30 K (100 SDs) cold right after a restart, the speed ~70 % low
    dryer, speed = model.sensors_.index("dryer_zone1_temp_c"), model.sensors_.index("coating_speed_m_min")
    assert model.warmup_.offset_[0, dryer] < -20 and model.warmup_.offset_[0, speed] < -20
    # the state holds enough readings to see a restart up to the horizon back
    assert model.history_ * STEP >= model.warmup_.horizon


def _restart_alarms_and_fault_caught(model: StationModel) -> tuple[bool, bool]:
    clean = line_frame(3, [1.0], 7)
    faulty = line_frame(3, [1.0], 8, fault_from=1.0)
    restart = faulty["ts"].iloc[int(3600 / STEP)]
    inc = incidents(model, faulty)
    starts = pd.to_datetime(inc["start_ts"], utc=True)
    caught = bool(((starts >= restart) & (starts <= restart + pd.Timedelta(minutes=2))).any())
    return len(incidents(model, clean)) > 0, caught


def test_restart_warm_up_is_normal_and_a_fault_right_after_a_restart_is_caught(model):
    alarms, caught = _restart_alarms_and_fault_caught(model)
    assert not alarms
    assert caught


def test_without_the_profile_the_restarts_blind_the_detector(model, unaware):
    # the restarts in the held-out calibration data look like extreme outliers to a restart-unaware detector, so
    # its calibrated tails widen until a 2-SD step of the web tension, far from any restart, scores as normal
    fresh = line_frame(3, [0.5], 8)
    fresh.loc[fresh.index >= 1800, "web_tension_n"] += 4.0
    assert len(incidents(unaware, fresh)) == 0
    inc = incidents(model, fresh)
    starts = pd.to_datetime(inc["start_ts"], utc=True)
    step = fresh["ts"].iloc[1800]
    assert ((starts >= step) & (starts <= step + pd.Timedelta(minutes=2))).any()


def test_scores_after_a_restart_do_not_depend_on_batching_or_state_rebuild(model):
    fresh = line_frame(3, [1.0], 9)
    whole = model.score(fresh, model.new_state())
    cut = int(3600 / STEP) + 30  # 150 s after the restart, inside the warm-up
    state = model.new_state()
    model.score(fresh.iloc[:cut], state)
    rebuilt = model.new_state(fresh.iloc[:cut])
    a = model.score(fresh.iloc[cut:], state)
    b = model.score(fresh.iloc[cut:], rebuilt)
    np.testing.assert_array_equal(a["anomaly_score"].to_numpy(), whole["anomaly_score"].to_numpy()[cut:])
    np.testing.assert_array_equal(b["anomaly_score"].to_numpy(), a["anomaly_score"].to_numpy())
