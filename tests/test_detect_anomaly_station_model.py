"""StationModel on synthetic station data: each anomaly kind, batch-split invariance, restart equality, explanations."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from cellwatch.detect.incidents import IncidentTracker
from cellwatch.detect.station_model import StationModel

SENSORS = ["coat_weight_mg_cm2", "wet_thickness_um", "web_tension_n"]  # catalogue names: physical bounds apply


def station_frame(n: int, seed: int, line: str = "L1", start: str = "2026-01-01") -> pd.DataFrame:
    """Clean coating-like readings every 5 s: two correlated sensors and an independent one."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, n)
    return pd.DataFrame({
        "ts": pd.date_range(start, periods=n, freq="5s", tz="UTC"), "line": line, "station": "coating",
        "cell_id": None, "seq": np.arange(n), "recipe": "NMC811", "tags": None,
        "coat_weight_mg_cm2": 20 + 0.2 * base + rng.normal(0, 0.05, n),
        "wet_thickness_um": 150 + 1.5 * base + rng.normal(0, 0.4, n),
        "web_tension_n": 120 + rng.normal(0, 2, n),
    })


@pytest.fixture(scope="module")
def model() -> StationModel:
    train = pd.concat([station_frame(6000, 1), station_frame(6000, 2, line="L2")], ignore_index=True)
    validation = station_frame(5760, 3)  # 8 hours of clean data
    return StationModel(window=20, alert_budget=1.0).fit(train, validation)


def score(model: StationModel, frame: pd.DataFrame) -> pd.DataFrame:
    return model.score(frame, model.new_state())


def test_fit_sets_learnt_attributes(model):
    assert model.sensors_ == SENSORS
    assert 0 < model.threshold_ <= 1
    assert model.history_ >= model.window
    assert list(model.bands_.columns) == ["sensor", "lower", "expected", "upper", "threshold"]
    assert (model.bands_["lower"] < model.bands_["expected"]).all()
    assert (model.bands_["expected"] < model.bands_["upper"]).all()
    assert model.metadata_["sensors"] == SENSORS and model.metadata_["threshold"] == model.threshold_


def test_clean_data_respects_the_alert_budget(model):
    fresh = station_frame(5760, 11)  # another clean shift, never seen
    out = score(model, fresh)
    assert out["anomaly_score"].between(0, 1).all()
    scored = pd.concat([fresh[["line", "station", "seq", "ts"]], out], axis=1)
    incidents = IncidentTracker(model.k, model.n, model.close_after).update(scored)
    assert len(incidents) <= 2  # budget 1 per shift on validation; allow one of slack on unseen data
    assert out["is_anomaly"].mean() < 0.02


def _inject(kind: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, slice, str]:
    f = frame.copy()
    s = slice(2000, 2120)
    col = "web_tension_n"
    if kind == "spike":
        f.loc[2000:2004, col] += 25
        s = slice(2000, 2005)
    elif kind == "drift":
        f.loc[2000:2299, col] += np.linspace(0, 16, 300)
        s = slice(2000, 2300)
    elif kind == "stuck":
        f.loc[2000:2119, col] = f.loc[2000, col]
    elif kind == "noise":
        f.loc[2000:2119, col] += np.random.default_rng(5).normal(0, 8, 120)
    elif kind == "mean_shift":
        col = "coat_weight_mg_cm2"
        f.loc[2000:2119, col] += 0.6  # ~ +3 sigma of the sensor, hidden in single readings by the noise
    elif kind == "out_of_range":
        col = "coat_weight_mg_cm2"
        f.loc[2000:2002, col] = -5.0  # a negative coat weight is outside the physical range
        s = slice(2000, 2003)
    return f, s, col


@pytest.mark.parametrize(("kind", "expected_kind"), [
    ("spike", "process"), ("drift", "process"), ("stuck", "data_quality"), ("noise", "process"),
    ("mean_shift", "process"), ("out_of_range", "data_quality")])
def test_each_anomaly_kind_is_detected_and_explained(model, kind, expected_kind):
    clean = station_frame(3000, 21)
    faulty, where, col = _inject(kind, clean)
    out = score(model, faulty)
    rows = out.iloc[where.start: where.stop + model.window]
    hit = rows[rows["is_anomaly"] & (rows["kind"] == expected_kind)]
    assert len(hit) >= 1, f"{kind} not detected"
    named = [orjson.loads(t)[0]["sensor"] for t in hit["top_sensors"]]
    assert col in named, f"{kind}: top sensor {set(named)} does not include {col}"
    baseline = score(model, clean)
    assert not baseline.iloc[where.start: where.stop + model.window]["is_anomaly"].all()
    if expected_kind == "data_quality":
        first = orjson.loads(hit["top_sensors"].iloc[0])[0]
        assert first["sensor"] == col and first["issue"] == kind
        assert set(first) >= {"sensor", "actual", "expected", "contribution"}


def test_gap_in_time_is_data_quality(model):
    f = station_frame(600, 31)
    f.loc[300:, "ts"] = f.loc[300:, "ts"] + pd.Timedelta(hours=2)
    out = score(model, f)
    assert out.loc[300, "kind"] == "data_quality"
    assert orjson.loads(out.loc[300, "top_sensors"])[0]["issue"] == "gap"
    assert out.loc[301:, "kind"].eq("normal").mean() > 0.9


def test_missing_sensor_value_is_data_quality(model):
    f = station_frame(300, 32)
    f.loc[150, "web_tension_n"] = np.nan
    out = score(model, f)
    assert out.loc[150, "kind"] == "data_quality"
    assert orjson.loads(out.loc[150, "top_sensors"])[0] == {
        "sensor": "web_tension_n", "actual": None, "expected": pytest.approx(120, abs=0.5),
        "contribution": pytest.approx(orjson.loads(out.loc[150, "top_sensors"])[0]["contribution"]),
        "issue": "missing"}


def _two_line_stream(seed: int) -> pd.DataFrame:
    a, b = station_frame(1500, seed, "L1"), station_frame(1500, seed + 1, "L2")
    a.loc[700:760, "web_tension_n"] += 15
    b.loc[900:905, "coat_weight_mg_cm2"] = -1.0
    return pd.concat([a, b]).sort_values(["ts", "line"], kind="stable").reset_index(drop=True)


def test_scores_do_not_depend_on_batching(model):
    stream = _two_line_stream(41)
    whole = score(model, stream)
    state = model.new_state()
    cuts = np.array_split(np.arange(len(stream)), 7)
    parts = pd.concat([model.score(stream.iloc[c], state) for c in cuts])
    pd.testing.assert_frame_equal(whole, parts)
    assert whole["is_anomaly"].any()


def test_restart_from_last_history_readings_gives_identical_scores(model):
    stream = _two_line_stream(51)
    whole = score(model, stream)
    cut = 1900
    state = model.new_state()
    model.score(stream.iloc[:cut], state)
    rebuilt = model.new_state(stream.iloc[:cut])  # as a restarted worker would: from the stored readings
    for line in state.values:
        np.testing.assert_array_equal(rebuilt.values[line], state.values[line])
    tail = model.score(stream.iloc[cut:], rebuilt)
    pd.testing.assert_frame_equal(whole.iloc[cut:], tail)
    assert len(rebuilt.values["L1"]) == model.history_


def test_output_shape_and_index(model):
    f = station_frame(50, 61)
    f.index = f.index + 1000
    out = score(model, f)
    assert list(out.columns) == ["anomaly_score", "is_anomaly", "kind", "top_sensors"]
    assert out.index.equals(f.index)
    assert out["is_anomaly"].dtype == bool
    assert out.loc[~out["is_anomaly"], "top_sensors"].isna().all()
    empty = model.score(f.iloc[:0], model.new_state())
    assert empty.empty and list(empty.columns) == list(out.columns)


def test_pyod_vocabulary(model):
    f, _, _ = _inject("spike", station_frame(3000, 71))
    s = model.decision_function(f)
    p = model.predict(f)
    assert s.shape == (3000,) and p.shape == (3000,)
    assert set(np.unique(p)) <= {0, 1}
    assert p[2000:2005].all()
    np.testing.assert_array_equal(p, (s >= model.threshold_) | (score(model, f)["kind"] == "data_quality"))


def test_exclude_keeps_faults_out_of_the_model():
    train = station_frame(4000, 81)
    train.loc[1000:2499, "web_tension_n"] += 10  # a long labelled fault inside the training data (~5 sigma)
    mask = np.zeros(len(train), dtype=bool)
    mask[1000:2500] = True
    test = station_frame(3000, 82)
    test.loc[500:600, "web_tension_n"] += 10
    learnt = StationModel().fit(train)
    excluded = StationModel().fit(train, exclude=mask)
    assert excluded.metadata_["train_rows"] < learnt.metadata_["train_rows"]
    assert excluded.scaler_.median_[2] == pytest.approx(120, abs=0.3)
    out = excluded.score(test, excluded.new_state())
    out_learnt = learnt.score(test, learnt.new_state())
    assert out.loc[520:600, "is_anomaly"].mean() > 0.9
    assert out_learnt.loc[520:600, "is_anomaly"].mean() < 0.5  # learnt as normal: the reason for ``exclude``


def test_fit_errors():
    with pytest.raises(ValueError, match="empty"):
        StationModel().fit(station_frame(0, 1))
    with pytest.raises(ValueError, match="not in the training frame"):
        StationModel(sensors=["nope"]).fit(station_frame(200, 1))
    with pytest.raises(RuntimeError, match="not fitted"):
        StationModel().new_state()
