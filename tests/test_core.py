"""LineScorer: the pure pipeline core gives the same output however the stream is cut, and after a warm_up."""

from __future__ import annotations

import itertools

import numpy as np
import orjson
import pandas as pd
import pytest

from cellwatch.detect.cell_features import FEATURE_NAMES, lot_features
from cellwatch.detect.core import INCIDENT_COLUMNS, PREDICTION_COLUMNS, SCORE_COLUMNS, LineScorer
from cellwatch.detect.defect import DefectModel
from cellwatch.detect.train import (
    Dataset,
    exclusion_mask,
    fit_station_models,
    labelled_rows,
    material_lags,
    replay_features,
)
from cellwatch.ingest.schema import TABLE
from cellwatch.simulators.simulate import simulate

LOT_MEMORY = 600


@pytest.fixture(scope="module")
def trained():
    sim = simulate(hours=3, lines=1, seed=5, faults_per_shift=20)
    data = Dataset(sim.readings, sim.cells, sim.faults.assign(start_ts=sim.faults["start"], end_ts=sim.faults["end"]))
    stations = fit_station_models(sim.readings, exclusion_mask(data), progress=False)
    stations.material_lags = material_lags(sim.cells)
    feats, _ = replay_features(LineScorer(stations, None, "t", lot_memory=LOT_MEMORY), sim.readings, progress=False)
    rows = labelled_rows(feats, sim.cells)
    defect = DefectModel(n_estimators=40, early_stopping_rounds=10).fit(
        rows[FEATURE_NAMES], rows["defect"], rows["cell_id"], pd.to_datetime(rows["ts"]).astype("int64"),
        rows["defect_type"])
    scorer = LineScorer(stations, defect, "stations@t+defect@t", lot_memory=LOT_MEMORY)
    t0 = sim.readings["ts"].min()
    window = sim.readings.loc[(sim.readings["ts"] >= t0 + pd.Timedelta(minutes=70))
                              & (sim.readings["ts"] < t0 + pd.Timedelta(minutes=130))].reset_index(drop=True)
    return scorer, window


def _run(scorer: LineScorer, readings: pd.DataFrame, cuts: list[int], state=None):
    state = state or scorer.new_state()
    bounds = [0, *cuts, len(readings)]
    out = [scorer.process(readings.iloc[a:b], state) for a, b in itertools.pairwise(bounds)]
    scores = pd.concat([o.scores for o in out], ignore_index=True)
    preds = pd.concat([o.predictions for o in out if len(o.predictions)], ignore_index=True)
    inc = [o.incidents for o in out if len(o.incidents)]
    incidents = (pd.concat(inc, ignore_index=True).drop_duplicates("incident_id", keep="last")
                 .sort_values("incident_id").reset_index(drop=True) if inc else pd.DataFrame(columns=INCIDENT_COLUMNS))
    return scores, preds, incidents, state


def test_outputs_follow_the_result_store_tables(trained):
    scorer, window = trained
    res = scorer.process(window.iloc[:3000], scorer.new_state())
    assert list(res.scores.columns) == SCORE_COLUMNS
    assert list(res.predictions.columns) == PREDICTION_COLUMNS == TABLE["cell_predictions"].column_names
    assert len(res.scores) == 3000
    assert (res.scores["model_version"] == "stations@t+defect@t").all()
    assert res.scores["anomaly_score"].between(0, 1).all()
    assert len(res.predictions) > 0 and res.predictions["defect_probability"].between(0, 1).all()
    assert set(res.predictions["station"]) <= {"winding", "filling", "formation", "aging"}
    risky = res.predictions["defect_probability"] >= 0.5 * scorer.defect.threshold_
    assert res.predictions.loc[risky, "top_features"].notna().all()
    assert res.predictions.loc[~risky, "top_features"].isna().all()
    if risky.any():
        first = orjson.loads(res.predictions.loc[risky, "top_features"].iloc[0])
        assert first and {"feature", "value", "contribution"} <= set(first[0])
    bands = scorer.bands()
    assert list(bands.columns) == TABLE["sensor_bands"].column_names and len(bands) > 0


def test_batch_split_invariance(trained):
    scorer, window = trained
    s1, p1, i1, _ = _run(scorer, window, [])
    rng = np.random.default_rng(1)
    cuts = sorted(rng.choice(np.arange(1, len(window)), 9, replace=False).tolist())
    s2, p2, i2, _ = _run(scorer, window, cuts)
    pd.testing.assert_frame_equal(s1, s2)
    pd.testing.assert_frame_equal(p1, p2)
    assert len(i1) > 0
    pd.testing.assert_frame_equal(i1.drop(columns="updated_at"), i2.drop(columns="updated_at"))


def test_warm_up_gives_the_same_results_as_an_uninterrupted_run(trained):
    scorer, window = trained
    k = int(len(window) * 0.6)
    cuts = [1500, 3000, k, k + 1000, k + 2500]
    s_all, p_all, i_all, _ = _run(scorer, window, cuts)
    before, after = window.iloc[:k], window.iloc[k:].reset_index(drop=True)
    _, _, i_before, _ = _run(scorer, before, [1500, 3000])
    # what the service reads back from the store after a restart
    tail = before.groupby(["line", "station"], group_keys=False).tail(scorer.history)
    cell_rows = before.loc[before["cell_id"].notna()]
    closed = set(cell_rows.loc[cell_rows["station"] == "eol", "cell_id"])
    open_cells = cell_rows.loc[~cell_rows["cell_id"].isin(closed)]
    history = pd.concat([tail, open_cells]).drop_duplicates(["line", "station", "seq"])
    history = history.sample(frac=1.0, random_state=0)  # the store returns rows in any order
    open_incidents = i_before.loc[i_before["status"] == "open"]
    state = scorer.new_state()
    scorer.warm_up(history, open_incidents, state)
    s_re, p_re, i_re, _ = _run(scorer, after, [1000, 2500], state)

    pd.testing.assert_frame_equal(s_re, s_all.iloc[k:].reset_index(drop=True))
    expected_p = p_all.loc[pd.to_datetime(p_all["ts"]) >= after["ts"].min()].reset_index(drop=True)
    assert len(p_re) > 0
    pd.testing.assert_frame_equal(p_re, expected_p)
    cols = ["incident_id", "status", "start_ts", "end_ts", "n_anomalous", "peak_score", "peak_ts"]
    touched = i_all.loc[i_all["incident_id"].isin(i_re["incident_id"]), cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(i_re[cols].reset_index(drop=True), touched)


def test_unknown_station_is_a_clear_error(trained):
    scorer, window = trained
    bad = window.iloc[:5].assign(station="teleporter")
    assert not scorer.accepts(bad).any()
    with pytest.raises(ValueError, match="no station model for station"):
        scorer.process(bad, scorer.new_state())


def _buffer(rows: list[tuple[str, str, float, bool, dict]]) -> pd.DataFrame:
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    return pd.DataFrame({
        "line": [r[0] for r in rows], "ts": [t0 + pd.Timedelta(seconds=5 * i) for i in range(len(rows))],
        "anomaly_score": [r[2] for r in rows], "is_anomaly": [r[3] for r in rows],
        "run_start": [r[3] and (i == 0 or not rows[i - 1][3]) for i, r in enumerate(rows)],
        "lots": [tuple(sorted(r[4].values())) for r in rows], "pos": list(range(len(rows))),
        **{s: [1.0] * len(rows) for s in ("slurry_viscosity_pas", "solid_content_pct", "slurry_temp_c",
                                          "mixer_speed_rpm", "mixer_vacuum_mbar", "mixer_power_kw",
                                          "wet_thickness_um", "coat_weight_mg_cm2", "coating_speed_m_min",
                                          "dryer_zone1_temp_c", "dryer_zone2_temp_c", "dryer_zone3_temp_c",
                                          "residual_nmp_ppm", "web_tension_n", "burr_height_um", "slit_width_mm",
                                          "slitting_tension_n", "slitting_speed_m_min", "edge_defects_per_100m")}})


def test_genealogy_links_roll_to_coil_to_batch_and_raises_the_anomaly_features():
    bad_coil, good_coil = "L1-C0001", "L1-C0002"
    coating = _buffer([("L1", "", 0.9, True, {"coil_id": bad_coil, "slurry_batch_id": "L1-SB0001"})] * 3
                      + [("L1", "", 0.1, False, {"coil_id": good_coil, "slurry_batch_id": "L1-SB0002"})] * 3)
    slitting = _buffer([("L1", "", 0.2, False, {"coil_id": bad_coil, "knife_id": "K1"}),
                        ("L1", "", 0.2, False, {"coil_id": good_coil, "knife_id": "K1"})])
    mixing = _buffer([("L1", "", 0.95, True, {"slurry_batch_id": "L1-SB0001"}),
                      ("L1", "", 0.05, False, {"slurry_batch_id": "L1-SB0002"})])
    events = pd.DataFrame({"line": ["L1", "L1"], "ts": [pd.Timestamp("2026-01-02", tz="UTC")] * 2})
    # the cells name only their rolls; the coil (id prefix) and the batch (co-occurring tag) are found
    event_lots = pd.DataFrame({"event": [0, 0, 1, 1], "lot": [f"{bad_coil}-S1", bad_coil, f"{good_coil}-S3",
                                                                good_coil]})
    lot, _ = lot_features(events, event_lots, {"coating": coating, "slitting": slitting, "mixing": mixing}, 100)
    assert lot.loc[0, "coating.lot_max_score"] == pytest.approx(0.9)
    assert lot.loc[1, "coating.lot_max_score"] == pytest.approx(0.1)
    assert lot.loc[0, "coating.lot_anomalous"] == 3 and lot.loc[1, "coating.lot_anomalous"] == 0
    assert lot.loc[0, "coating.lot_runs"] == 1
    assert lot.loc[0, "mixing.lot_max_score"] == pytest.approx(0.95)  # batch reached through the coating row
    assert lot.loc[1, "mixing.lot_max_score"] == pytest.approx(0.05)
    assert lot.loc[0, "slitting.lot_readings"] == 1
    # readings beyond the lot memory are forgotten
    lot_short, _ = lot_features(events, event_lots, {"coating": coating}, 2)
    assert np.isnan(lot_short.loc[0, "coating.lot_max_score"])


def test_upstream_anomalies_raise_the_defect_risk():
    """Trained on cells whose defects follow upstream anomalies, the model's risk rises with the genealogy."""
    rng = np.random.default_rng(0)
    n = 4000
    X = pd.DataFrame(np.nan, index=range(n), columns=FEATURE_NAMES)
    X["stage"] = 1.0
    X["winding.winding_tension_n"] = rng.normal(0, 1, n)
    X["coating.lot_max_score"] = rng.uniform(0, 1, n)
    y = rng.random(n) < 1 / (1 + np.exp(-(6 * X["coating.lot_max_score"] - 5)))
    m = DefectModel(n_estimators=60).fit(X, y, np.arange(n), np.arange(n))
    probe = X.iloc[:200].copy()
    probe["coating.lot_max_score"] = 0.05
    low = m.predict_proba(probe)
    probe["coating.lot_max_score"] = 0.95
    high = m.predict_proba(probe)
    assert high.mean() > low.mean() + 0.3
    assert (high >= low).mean() > 0.95


def test_load_scorer_rejects_artefacts_that_cannot_score(trained, tmp_path):
    from cellwatch.detect.core import load_scorer
    from cellwatch.detect.registry import ModelLoadError, ModelRegistry

    scorer, _ = trained
    reg = ModelRegistry(tmp_path / "models")
    reg.register("stations", scorer.stations, {"lot_memory": LOT_MEMORY})
    reg.register("defect", scorer.defect, {})
    good = load_scorer(reg.root)
    assert good.model_version == "stations@1+defect@1"
    broken = scorer.stations
    model = next(iter(broken.models.values()))
    saved = model.scaler_
    try:
        del model.scaler_  # what an artefact pickled by older code looks like to newer code
        reg.register("stations", broken, {"lot_memory": LOT_MEMORY}, promote=False)
    finally:
        model.scaler_ = saved
    reg.root.joinpath("stations", "PRODUCTION").write_text("2\n")
    with pytest.raises(ModelLoadError, match="cannot score with this cellwatch code"):
        load_scorer(reg.root)


def test_groups_on_one_model_are_scored_together_in_stream_order(trained):
    """A recipe without its own model and readings without a recipe both fall back to the station's ANY model:
    they share its window state, so their rows must enter it in stream order (same scores as one recipe)."""
    scorer, window = trained
    st = next(s for s, rec in scorer.stations.models if rec == "*")
    rows = window.loc[window["station"] == st].reset_index(drop=True).iloc[:400]
    plain = rows.assign(recipe=None)
    mixed = plain.copy()
    mixed.loc[mixed.index % 3 == 0, "recipe"] = "a-recipe-without-a-model"
    cols = ["anomaly_score", "is_anomaly", "kind", "top_sensors"]
    a = scorer.process(plain, scorer.new_state()).scores[cols]
    b = scorer.process(mixed, scorer.new_state()).scores[cols]
    pd.testing.assert_frame_equal(a, b)
