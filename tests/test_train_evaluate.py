"""The offline workflow end to end through the CLI: simulate -> train -> models -> evaluate (tiny data)."""

from __future__ import annotations

import json

import pytest

from cellwatch.cli import main
from cellwatch.detect.registry import ModelRegistry


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("workflow")
    for name, seed in (("train", 5), ("test", 6)):
        assert main(["simulate", "--out", str(d / name), "--hours", "3", "--lines", "1", "--seed", str(seed),
                     "--faults-per-shift", "20"]) == 0
    assert main(["train", "--data", str(d / "train"), "--models", str(d / "models"), "--no-progress"]) == 0
    return d


def test_train_registers_and_promotes_the_first_versions(workdir, capsys):
    reg = ModelRegistry(workdir / "models")
    assert reg.production("stations") == "1" and reg.production("defect") == "1"
    meta = reg.metadata("defect")
    assert meta["features"] and meta["threshold"] > 0 and "validation" in meta["metrics"]
    assert meta["training_window"]["start"] < meta["training_window"]["end"]
    smeta = reg.metadata("stations")
    assert smeta["excluded_rows"] > 0  # fault windows and touched cells are never learnt as normal
    assert smeta["thresholds"] and smeta["libraries"]["lightgbm"]


def test_models_commands(workdir, capsys):
    models = str(workdir / "models")
    assert main(["models", "list", "--models", models]) == 0
    out = capsys.readouterr().out
    assert "stations" in out and "defect" in out and "*" in out
    reg = ModelRegistry(models)
    _, meta = reg.load("defect")
    v2 = reg.register("defect", reg.load("defect")[0], {k: v for k, v in meta.items() if k != "version"})
    assert main(["models", "promote", "--models", models, "defect", v2]) == 0
    assert reg.production("defect") == v2
    assert main(["models", "show", "--models", models, "defect"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["version"] == v2
    assert main(["models", "rollback", "--models", models, "defect"]) == 0
    assert reg.production("defect") == "1"
    assert main(["models", "promote", "--models", models, "defect", "99"]) == 2
    assert "no version 99" in capsys.readouterr().err


def test_evaluate_writes_metrics_plots_and_html(workdir, capsys):
    report = workdir / "report"
    assert main(["evaluate", "--data", str(workdir / "test"), "--models", str(workdir / "models"),
                 "--report", str(report), "--no-progress"]) == 0
    assert "events:" in capsys.readouterr().out
    m = json.loads((report / "metrics.json").read_text())
    for key in ("recall", "false_incidents_per_station_shift", "median_delay_s"):
        assert key in m["events"]
    assert 0 <= m["points"]["f1"] <= 1
    assert m["defect"]["all_stages"]["rows"] > 0 and "roc_auc" in m["defect"]["all_stages"]
    assert set(m["defect"]["by_stage"]) <= {"winding", "filling", "formation", "aging"}
    html = (report / "index.html").read_text()
    for fig in m["figures"]:
        assert (report / fig).stat().st_size > 1000 and fig in html


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--models", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cellwatch train: error:") and "does not exist" in err and "\n" not in err
    assert main(["models", "list", "--models", str(tmp_path / "none")]) == 2
