"""WindowPCAModel: Q / T^2 control charts on lagged windows (the `cellwatch fit --detector window-pca` detector)."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

import cellwatch.cli as cli
from cellwatch.detect.window_pca import WindowPCAModel, hysteresis, lagged


def process(n: int, seed: int, break_at: tuple[int, int] | None = None) -> pd.DataFrame:
    """Three slowly varying sensors; pressure and flow share one latent factor. ``break_at`` shifts flow away from
    what pressure implies over a row range (by 5)."""
    rng = np.random.default_rng(seed)
    latent, latent2 = (np.convolve(rng.normal(size=n + 30), np.ones(30) / np.sqrt(30), mode="valid")[:n]
                       for _ in range(2))
    pressure = 5 + latent + rng.normal(0, 0.1, n)
    flow = 20 + 2 * latent + rng.normal(0, 0.2, n)
    if break_at:
        a, b = break_at
        flow[a:b] += 5.0
    temp = 60 + 0.5 * latent2 + rng.normal(0, 0.05, n)
    return pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=n, freq="1s"), "line": "L1",
                         "pressure": pressure, "flow": flow, "temp": temp})


def test_lagged_windows_use_the_past_only():
    z = np.arange(12, dtype=float).reshape(6, 2)
    W = lagged(z, 3)
    np.testing.assert_array_equal(W[4], [8, 9, 6, 7, 4, 5])  # row 4, then rows 3 and 2
    np.testing.assert_array_equal(W[0], [0, 1, 0, 1, 0, 1])  # the start repeats the first reading
    np.testing.assert_array_equal(lagged(z, 3, np.array([4])), W[[4]])


def test_broken_correlation_is_found_and_clean_data_stays_quiet():
    model = WindowPCAModel(sensors=["pressure", "flow", "temp"]).fit(process(1500, 1))
    test = process(1500, 2, break_at=(700, 900))
    scored = model.score(test, model.new_state())
    flagged = scored["is_anomaly"].to_numpy()
    assert flagged[720:900].mean() > 0.9
    assert np.delete(flagged, np.arange(700, 930)).mean() < 0.01
    assert scored["anomaly_score"].between(0, 1).all()
    score = scored["anomaly_score"].to_numpy()
    opened = flagged & ~np.r_[False, flagged[:-1]]
    assert (score[opened] > 0.5).all() and (score[~flagged] <= 0.5).all()  # opens above the limit
    assert (score[flagged] >= 0.75 / 1.75).all()  # stays open down to 0.75 x the limit (hysteresis)
    plain = WindowPCAModel(sensors=["pressure", "flow", "temp"], close=1.0).fit(process(1500, 1))
    scored1 = plain.score(test, plain.new_state())
    np.testing.assert_array_equal(scored1["is_anomaly"].to_numpy(), scored1["anomaly_score"].to_numpy() > 0.5)
    top = orjson.loads(scored["top_sensors"].iloc[800])
    assert {t["sensor"] for t in top[:2]} == {"pressure", "flow"}
    row = next(t for t in top if t["sensor"] == "flow")
    implied = 20 + 2 * (test["pressure"].iloc[800] - 5)  # the flow pressure implies
    assert abs(row["expected"] - implied) < abs(row["actual"] - implied)


def test_hysteresis_opens_above_the_limit_and_closes_below_the_lower_level():
    r = np.array([0.5, 0.9, 1.2, 0.9, 0.8, 0.7, 0.9, 1.1, 1.0, 0.6])
    assert hysteresis(r, 0.75).tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 1, 0]
    assert hysteresis(r, 1.0).tolist() == (r > 1).tolist()  # close = 1: no hysteresis
    assert hysteresis(r[3:6], 0.75, was_open=True).tolist() == [1, 1, 0]  # open, carried from the last batch
    assert hysteresis(r[3:6], 0.75).tolist() == [0, 0, 0]


def test_scores_do_not_depend_on_batching_or_restarts():
    train, test = process(800, 3), process(600, 4, break_at=(300, 400))
    model = WindowPCAModel(sensors=["pressure", "flow", "temp"], statistic="t2q").fit(train)
    whole = model.score(test, model.new_state(train))
    state = model.new_state(train)
    parts = [model.score(test.iloc[a:a + 37], state) for a in range(0, 600, 37)]
    pd.testing.assert_frame_equal(pd.concat(parts), whole)
    restarted = model.score(test.iloc[250:], model.new_state(pd.concat([train, test.iloc[:250]])))
    pd.testing.assert_frame_equal(restarted, whole.iloc[250:])


def test_missing_readings_and_bad_parameters():
    train = process(500, 5)
    model = WindowPCAModel().fit(train)
    assert model.sensors_ == ["pressure", "flow", "temp"]
    test = process(200, 6)
    test.loc[50:60, "temp"] = np.nan
    assert np.isfinite(model.score(test, model.new_state())["anomaly_score"]).all()
    for bad in ({"statistic": "x"}, {"lags": 0}, {"factor": 0}, {"quantile": 1.0}, {"close": 0}, {"close": 1.5}):
        with pytest.raises(ValueError):
            WindowPCAModel(**bad).fit(train)
    with pytest.raises(RuntimeError):
        WindowPCAModel().new_state()


def test_cli_fit_and_score_with_window_pca(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("cellwatch.detect.cli_tabular",))
    process(1200, 7).drop(columns="line").to_csv(tmp_path / "train.csv", index=False)
    process(900, 8, break_at=(500, 650)).drop(columns="line").to_csv(tmp_path / "test.csv", index=False)
    assert cli.main(["fit", "--input", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"),
                     "--time-column", "ts", "--detector", "window-pca", "--lags", "10"]) == 0
    assert "window-pca model" in capsys.readouterr().out
    meta = orjson.loads((tmp_path / "m" / "metadata.json").read_bytes())
    assert meta["kind"] == "window_pca" and meta["lags"] == 10 and meta["time_column"] == "ts"
    assert cli.main(["score", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "test.csv"),
                     "--out", str(tmp_path / "scored.csv")]) == 0
    scored = pd.read_csv(tmp_path / "scored.csv")
    assert scored.loc[520:650, "is_anomaly"].mean() > 0.9
    assert scored["is_anomaly"].drop(range(500, 680)).mean() < 0.02
    assert cli.main(["fit", "--input", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m2"),
                     "--time-column", "ts", "--detector", "window-pca", "--factor", "0"]) == 2
    assert "--factor" in capsys.readouterr().err


def test_big_tables_fit_on_a_window_subset_and_score_in_chunks(monkeypatch):
    import cellwatch.detect.window_pca as wp

    train, test = process(1000, 9), process(300, 10, break_at=(100, 200))
    whole = WindowPCAModel(lags=10).fit(train)
    expected = whole.score(test, whole.new_state(train))
    monkeypatch.setattr(wp, "_CHUNK_ELEMENTS", 100)  # 3 rows per window-matrix chunk
    pd.testing.assert_frame_equal(whole.score(test, whole.new_state(train)), expected)
    monkeypatch.setattr(wp, "MAX_FIT_ROWS", 200)
    small = WindowPCAModel(lags=10).fit(train)
    assert small.q_limit_ != whole.q_limit_  # fitted on a subset of the windows
    assert small.score(test, small.new_state(train))["is_anomaly"].iloc[120:200].mean() > 0.9
