"""The LightGBM defect model on small simulated data: discrimination, calibration, cost threshold, SHAP."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cellwatch.detect.cell_features import FEATURE_STATIONS
from cellwatch.detect.defect import DefectModel, round_like_python
from cellwatch.simulators.simulate import simulate
from cellwatch.stations import station


def _stage_rows(readings: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, stage): the raw values of the cell stations passed so far, later ones NaN."""
    r = readings.loc[readings["station"].isin(FEATURE_STATIONS) & readings["cell_id"].isin(cells["cell_id"])]
    wide = {}
    for st in FEATURE_STATIONS:
        sensors = list(station(st).sensor_names)
        sub = r.loc[r["station"] == st].drop_duplicates("cell_id").set_index("cell_id")[sensors]
        wide[st] = sub.add_prefix(f"{st}.")
    full = pd.concat(wide.values(), axis=1).reindex(cells["cell_id"])
    rows = []
    for k, st in enumerate(FEATURE_STATIONS):
        x = full.copy()
        for later in FEATURE_STATIONS[k + 1:]:
            x[[c for c in x.columns if c.startswith(f"{later}.")]] = np.nan
        x.insert(0, "stage", float(k + 1))
        x["_station"] = st
        rows.append(x)
    out = pd.concat(rows).reset_index()
    lab = cells.set_index("cell_id")
    # recipe-relative values (the pipeline uses robust z against the recipe's station model)
    recipe = out["cell_id"].map(lab["recipe"])
    feats = [c for c in out.columns if "." in c]
    out[feats] = out[feats] / out[feats].groupby(recipe).transform("median") - 1.0
    out["defect"] = out["cell_id"].map(lab["defect"]).astype(bool)
    out["defect_type"] = out["cell_id"].map(lab["defect_type"])
    out["t"] = out["cell_id"].map(pd.to_datetime(lab["winding_ts"], utc=True)).astype("int64")
    return out


@pytest.fixture(scope="module")
def data():
    """Stage rows of a 6-hour, one-line simulation (faults included); 30 % of the cells held out."""
    sim = simulate(hours=6, lines=1, seed=3)
    rows = _stage_rows(sim.readings, sim.cells)
    cells = rows["cell_id"].unique()
    held = set(np.random.default_rng(0).choice(cells, len(cells) * 3 // 10, replace=False))
    test = rows["cell_id"].isin(held)
    return rows.loc[~test].reset_index(drop=True), rows.loc[test].reset_index(drop=True)


@pytest.fixture(scope="module")
def model(data):
    train, _ = data
    feats = [c for c in train.columns if c not in ("cell_id", "_station", "defect", "defect_type", "t")]
    return DefectModel(n_estimators=80).fit(train[feats], train["defect"], train["cell_id"], train["t"],
                                             train["defect_type"])


def _X(frame, model):
    return frame[model.features_]


def test_discriminates_well_above_chance_on_held_out_cells(data, model):
    _, test = data
    p = model.predict_proba(_X(test, model))
    assert test["defect"].any()
    assert roc_auc_score(test["defect"], p) > 0.8
    assert model.validation_metrics_["roc_auc"] > 0.75


def test_predictions_sharpen_by_stage(data, model):
    _, test = data
    p = model.predict_proba(_X(test, model))
    auc = {st: roc_auc_score(g["defect"], p[g.index]) for st, g in test.groupby("_station")}
    assert auc["aging"] > auc["winding"] + 0.1, auc
    assert auc["formation"] > auc["winding"], auc


def test_probabilities_are_calibrated(data, model):
    _, test = data
    p = model.predict_proba(_X(test, model))
    y = test["defect"].to_numpy()
    # the time-ordered calibration fold holds more faults than average, hence a loose tolerance
    assert abs(p.mean() - y.mean()) < 0.1
    # the calibrated Brier score beats predicting the base rate
    assert np.mean((p - y) ** 2) < np.mean((y.mean() - y) ** 2)
    # by default classes are not re-weighted: the raw scores are not inflated towards the defect class
    raw = 1 / (1 + np.exp(-model.decision_function(_X(test, model))))
    assert model.scale_pos_weight_ == 1.0
    assert raw.mean() < p.mean() + 0.05



def test_calibrated_probabilities_keep_the_boosters_ranking(data, model):
    """Isotonic steps are flat; the tie-break keeps the raw score's order (same ROC-AUC) and moves p by <= 1e-6."""
    _, test = data
    X = _X(test, model)
    raw, p = model.decision_function(X), model.predict_proba(X)
    order = np.argsort(raw, kind="stable")
    distinct = np.diff(raw[order]) > 0
    assert (np.diff(p[order])[distinct] > 0).all()
    y = test["defect"].to_numpy(dtype=bool)
    assert roc_auc_score(y, p) == pytest.approx(roc_auc_score(y, raw), abs=1e-12)
    iso = np.clip(model.calibrator_.predict(raw), 0, 1)
    assert np.abs(p - iso).max() <= 1e-6 and ((p >= 0) & (p <= 1)).all()


def test_class_weighting_is_undone_by_calibration(data, model):
    train, test = data
    weighted = DefectModel(n_estimators=80, balance_classes=True).fit(
        train[model.features_], train["defect"], train["cell_id"], train["t"])
    assert weighted.scale_pos_weight_ > 1.5
    # raw class-weighted scores are NOT probabilities: calibration moved them
    raw = 1 / (1 + np.exp(-weighted.decision_function(_X(test, weighted))))
    p = weighted.predict_proba(_X(test, weighted))
    assert raw.mean() > p.mean() + 0.05
    assert abs(p.mean() - test["defect"].mean()) < 0.1


def test_monotone_constraints_hold(data, model):
    train, test = data
    feature = "winding.insulation_resistance_mohm"
    m = DefectModel(n_estimators=80, monotone={feature: -1}).fit(
        train[model.features_], train["defect"], train["cell_id"], train["t"])
    X = _X(test, m).iloc[:200].copy()
    low, high = X.copy(), X.copy()
    low[feature], high[feature] = -3.0, 3.0
    assert (m.decision_function(high) <= m.decision_function(low) + 1e-12).all()


def test_cost_threshold_minimises_expected_cost():
    m = DefectModel(missed_defect_cost=10.0, inspection_cost=1.0)
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.1
    p = np.clip(np.where(y, 0.35, 0.05) + rng.normal(0, 0.1, 500), 0, 1)
    t = m.cost_threshold(p, y)

    def cost(th):
        flag = p >= th
        return 10.0 * np.sum(y & ~flag) + 1.0 * np.sum(flag)

    brute = min(cost(th) for th in np.r_[p, 2.0])
    assert cost(t) == pytest.approx(brute)
    # costlier misses -> flag more
    assert DefectModel(missed_defect_cost=100.0).cost_threshold(p, y) <= t


def test_explanations_sum_to_the_logit(data, model):
    _, test = data
    X = _X(test, model).iloc[:50]
    contrib = model.contributions(X)
    np.testing.assert_allclose(contrib.sum(axis=1), model.decision_function(X), rtol=1e-6, atol=1e-6)
    top = model.explain(X, top=3)
    assert len(top) == 50 and all(len(t) <= 3 for t in top)
    first = top[0][0]
    assert set(first) == {"feature", "value", "contribution"} and first["feature"] in model.features_
    j = model.features_.index(first["feature"])
    assert first["contribution"] == pytest.approx(contrib[0, j], abs=1e-5)
    assert abs(first["contribution"]) == pytest.approx(np.abs(contrib[0, :-1]).max(), abs=1e-5)



def test_explain_picks_the_stable_argsort_top_features_with_ties(data, model):
    """The partial sort gives exactly the top-k of a stable argsort by |contribution| (ties by feature order),
    also with ties at the cut, fewer non-zero contributions than k, and k = every feature."""
    _, test = data
    X = _X(test, model).iloc[:40]
    contrib = model.contributions(X)
    contrib[1, :-1] = 0.0
    contrib[1, [4, 9, 2]] = [0.5, -0.5, 0.5]                 # a three-way tie around the cut of k = 2
    contrib[2, :-1] = 0.0
    contrib[2, 7] = -0.25                                   # one non-zero contribution only
    values = X.to_numpy(dtype="float64")
    for k in (2, 5, len(model.features_)):
        got = model.explain(X, top=k, contrib=contrib)
        c = contrib[:, :-1]
        idx = np.argsort(-np.abs(c), axis=1, kind="stable")[:, :k]
        want = [[{"feature": model.features_[j],
                  "value": None if np.isnan(values[i, j]) else round(float(values[i, j]), 6),
                  "contribution": round(float(c[i, j]), 6)} for j in idx[i] if c[i, j] != 0.0] for i in range(len(c))]
        assert got == want
    assert [e["feature"] for e in model.explain(X, top=2, contrib=contrib)[1]] == [model.features_[2],
                                                                                    model.features_[4]]



def test_round_like_python_is_pythons_round_elementwise():
    """Vectorised rounding of the explanations: identical to round(v, 6), near .5 boundaries and extremes too."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 20_000) * 10.0 ** rng.uniform(-9, 9, 20_000),
                        (np.arange(-20_000, 20_000) + 0.5) / 1e6,       # decimal ties, as close as floats get
                        [0.0, -0.0, -1e-9, np.nan, np.inf, -np.inf, 0.0078125, 1e300, 4503599627370497.0]])
    got = round_like_python(x, 6)
    want = np.array([round(float(v), 6) for v in x])
    assert ((got == want) | (np.isnan(got) & np.isnan(want))).all()
    assert (np.signbit(got) == np.signbit(want)).all()


def test_type_model_names_known_types(data, model):
    _, test = data
    types = model.predict_type(_X(test.loc[test["defect"]], model))
    assert set(types) <= set(model.type_classes_)
    assert len(model.type_classes_) >= 2


def test_single_class_training_data_is_a_clear_error():
    X = pd.DataFrame({"a": np.arange(20.0)})
    with pytest.raises(ValueError, match="both defective and good"):
        DefectModel().fit(X, np.zeros(20, bool), np.arange(20), np.arange(20))
