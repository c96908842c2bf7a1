"""`cellwatch fit` / `cellwatch score` end to end on small CSVs, and their error cases."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pandas as pd
import pytest

import cellwatch.cli as cli


@pytest.fixture
def run(monkeypatch, capsys):
    """Run the CLI with only this room's commands (other rooms' modules are not needed here)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("cellwatch.detect.cli_tabular",))

    def _run(*argv: str) -> tuple[int, str, str]:
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return _run


def table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    return pd.DataFrame({"time": pd.date_range("2026-01-01", periods=n, freq="2s").strftime("%Y-%m-%d %H:%M:%S"),
                         "batch": [f"B{i // 100}" for i in range(n)], "pressure": 5 + x,
                         "flow": 20 + 2 * x + rng.normal(0, 0.3, n), "temp": rng.normal(60, 0.5, n)})


@pytest.fixture
def files(tmp_path):
    train = table(2400, 1)
    test = table(1500, 2)
    test.loc[800:830, "temp"] += 6
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    return tmp_path


@pytest.mark.parametrize("model_name", ["model", "model.joblib"])
def test_fit_and_score_end_to_end(run, files, model_name):
    model = files / model_name
    code, out, err = run("fit", "--input", files / "train.csv", "--out", model, "--time-column", "time",
                         "--ignore", "batch")
    assert code == 0, err
    assert "3 sensors" in out
    meta_path = model / "metadata.json" if model.suffix == "" else files / "model.joblib.json"
    meta = json.loads(meta_path.read_text())
    assert meta["format"] == "cellwatch-station-model/1"
    assert meta["sensors"] == ["pressure", "flow", "temp"] and meta["time_column"] == "time"
    code, out, err = run("score", "--model", model, "--input", files / "test.csv", "--out", files / "scored.csv")
    assert code == 0, err
    scored = pd.read_csv(files / "scored.csv")
    original = pd.read_csv(files / "test.csv")
    assert list(scored.columns) == [*original.columns, "anomaly_score", "is_anomaly", "top_sensors"]
    pd.testing.assert_frame_equal(scored[original.columns], original)
    assert scored["anomaly_score"].between(0, 1).all()
    assert set(scored["is_anomaly"].unique()) <= {0, 1}
    assert scored.loc[800:830, "is_anomaly"].mean() > 0.8
    assert scored["is_anomaly"].drop(range(800, 860)).mean() < 0.05
    top = orjson.loads(scored.loc[810, "top_sensors"])
    assert top[0]["sensor"] == "temp" and top[0]["actual"] > top[0]["expected"] + 4


def test_single_column_without_time_column(run, files):
    pd.DataFrame({"v": np.random.default_rng(3).normal(size=400)}).to_csv(files / "one.csv", index=False)
    assert run("fit", "--input", files / "one.csv", "--out", files / "m1")[0] == 0
    code, _out, err = run("score", "--model", files / "m1", "--input", files / "one.csv", "--out", files / "s1.csv")
    assert code == 0, err
    assert len(pd.read_csv(files / "s1.csv")) == 400


def test_unsorted_time_is_scored_in_time_order(run, files):
    run("fit", "--input", files / "train.csv", "--out", files / "m", "--time-column", "time", "--ignore", "batch")
    test = pd.read_csv(files / "test.csv")
    shuffled = test.sample(frac=1.0, random_state=0)
    shuffled.to_csv(files / "shuffled.csv", index=False)
    run("score", "--model", files / "m", "--input", files / "test.csv", "--out", files / "a.csv")
    run("score", "--model", files / "m", "--input", files / "shuffled.csv", "--out", files / "b.csv")
    a = pd.read_csv(files / "a.csv").set_index("time")
    b = pd.read_csv(files / "b.csv").set_index("time").loc[a.index]
    np.testing.assert_allclose(a["anomaly_score"], b["anomaly_score"])


def test_bad_inputs_are_one_line_errors(run, files):
    (files / "empty.csv").write_text("")
    (files / "header.csv").write_text("a,b\n")
    bad_time = table(300, 4)
    bad_time.loc[5, "time"] = "yesterday-ish"
    bad_time.to_csv(files / "badtime.csv", index=False)
    cases = [
        (("fit", "--input", files / "nope.csv", "--out", files / "m"), "input file not found"),
        (("fit", "--input", files / "empty.csv", "--out", files / "m"), "empty"),
        (("fit", "--input", files / "header.csv", "--out", files / "m"), "no data rows"),
        (("fit", "--input", files / "train.csv", "--out", files / "m"), "column 'time' is not numeric"),
        (("fit", "--input", files / "train.csv", "--out", files / "m", "--time-column", "when"),
         "time column 'when' not found"),
        (("fit", "--input", files / "badtime.csv", "--out", files / "m", "--time-column", "time", "--ignore", "batch"),
         "not a time"),
        (("fit", "--input", files / "train.csv", "--out", files / "m", "--time-column", "time",
          "--ignore", "batch", "--ignore", "zzz"), "unknown columns: zzz"),
        (("score", "--model", files / "missing-model", "--input", files / "test.csv", "--out", files / "o.csv"),
         "model not found"),
    ]
    for argv, message in cases:
        code, _out, err = run(*argv)
        assert code == 2, argv
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    # a model, then a test file without one of its columns / with text in a column
    assert run("fit", "--input", files / "train.csv", "--out", files / "m", "--time-column", "time",
               "--ignore", "batch")[0] == 0
    test = pd.read_csv(files / "test.csv")
    test.drop(columns=["flow"]).to_csv(files / "noflow.csv", index=False)
    test.assign(temp=test["temp"].astype(object).where(test.index != 7, "hot")).to_csv(files / "text.csv", index=False)
    code, _, err = run("score", "--model", files / "m", "--input", files / "noflow.csv", "--out", files / "o.csv")
    assert code == 2 and "missing: flow" in err
    code, _, err = run("score", "--model", files / "m", "--input", files / "text.csv", "--out", files / "o.csv")
    assert code == 2 and "column 'temp' is not numeric ('hot' in data row 8)" in err
    assert not (files / "o.csv").exists()
    # a directory that is not a model, and a model of another format
    (files / "notamodel").mkdir()
    code, _, err = run("score", "--model", files / "notamodel", "--input", files / "test.csv", "--out", files / "o.csv")
    assert code == 2 and "not a cellwatch model" in err
    meta = json.loads((files / "m" / "metadata.json").read_text())
    (files / "m" / "metadata.json").write_text(json.dumps({**meta, "format": "cellwatch-station-model/0"}))
    code, _, err = run("score", "--model", files / "m", "--input", files / "test.csv", "--out", files / "o.csv")
    assert code == 2 and "refit the model" in err
