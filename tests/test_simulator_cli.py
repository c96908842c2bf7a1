"""``cellwatch simulate`` / ``cellwatch replay`` without Kafka: files, summaries and one-line errors."""

from __future__ import annotations

import pandas as pd
import pytest

from cellwatch.cli import main
from cellwatch.simulators.replay import load_readings
from cellwatch.simulators.simulate import simulate


def _one_line_error(capsys, argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and "error:" in err, err
    return err


def test_simulate_writes_the_files_and_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", "--out", str(out), "--hours", "2", "--lines", "1", "--seed", "4"]) == 0
    text = capsys.readouterr().out
    assert "readings" in text and "defect rate" in text and "readings/s" in text and "faults" in text
    for name in ("readings", "cells", "faults", "genealogy", "events"):
        assert (out / f"{name}.parquet").stat().st_size > 0
    r = pd.read_parquet(out / "readings.parquet")
    assert len(r) > 5000 and set(r["line"]) == {"L1"}


def test_simulate_start_now_and_iso(tmp_path):
    now = pd.Timestamp.now(tz="UTC")
    r = simulate(hours=0.2, lines=1, seed=1, faults="none", start="now").readings
    assert abs((r["ts"].min() - now).total_seconds()) < 120
    r = simulate(hours=0.2, lines=1, seed=1, faults="none", start="2026-05-01T06:00:00").readings
    assert r["ts"].min().floor("min") == pd.Timestamp("2026-05-01T06:00:00Z")


@pytest.mark.parametrize("argv, needle", [
    (["simulate", "--hours", "1"], "--out"),
    (["simulate", "--out", "x", "--faults", "stuck,bogus"], "unknown fault type"),
    (["simulate", "--out", "x", "--hours", "0"], "--hours"),
    (["simulate", "--out", "x", "--lines", "0"], "--lines"),
    (["simulate", "--out", "x", "--start", "yesterday-ish"], "--start"),
])
def test_simulate_argument_errors_are_one_line(capsys, argv, needle):
    assert needle in _one_line_error(capsys, argv)


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("content, needle", [
    ("", "cannot read"),
    ("ts,line,station,temp_c\n", "holds no readings"),
    ("ts,line,temp_c\n2026-01-01T00:00:00Z,L1,3.0\n", "lacks required column(s) station"),
    ("ts,line,station,temp_c\n2026-01-01T00:00:00Z,L1,mixing,warm\n", "not numeric"),
    ("ts,line,station,temp_c\nnot-a-time,L1,mixing,3.0\n", "unparseable ts"),
    ("ts,line,station\n2026-01-01T00:00:00Z,L1,mixing\n", "no sensor columns"),
    ("ts,line,station,temp_c\n2026-01-01T00:00:00Z,,mixing,3.0\n", "empty line"),
    ("ts,line,station,seq,temp_c\n2026-01-01T00:00:00Z,L1,mixing,-1,3.0\n", "seq"),
    ('ts,line,station,tags,temp_c\n2026-01-01T00:00:00Z,L1,mixing,"[1,2]",3.0\n', "tags"),
])
def test_replay_rejects_bad_files_with_one_line(tmp_path, capsys, content, needle):
    path = _write(tmp_path, "bad.csv", content)
    err = _one_line_error(capsys, ["replay", "--input", str(path), "--kafka", "127.0.0.1:1"])
    assert needle in err


def test_replay_rejects_missing_and_unknown_files(tmp_path, capsys):
    assert "does not exist" in _one_line_error(capsys, ["replay", "--input", str(tmp_path / "nope.csv"),
                                                        "--kafka", "127.0.0.1:1"])
    path = _write(tmp_path, "x.json", "{}")
    assert "unknown file type" in _one_line_error(capsys, ["replay", "--input", str(path), "--kafka", "x:1"])


def test_historian_file_gets_seq_per_stream_in_time_order(tmp_path):
    rows = pd.DataFrame({
        "ts": ["2026-01-01T00:00:10Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:05Z", "2026-01-01T00:00:01Z"],
        "line": ["L1", "L1", "L2", "L1"], "station": ["coating"] * 4,
        "coat_weight_mg_cm2": [20.0, 20.1, 19.9, 20.2], "plant_extra_sensor": [1, 2, 3, 4],
    })
    path = tmp_path / "h.csv"
    rows.to_csv(path, index=False)
    frame = load_readings(path)
    assert frame["ts"].is_monotonic_increasing
    assert frame[frame["line"] == "L1"]["seq"].tolist() == [0, 1, 2]
    assert frame[frame["line"] == "L2"]["seq"].tolist() == [0]
    assert frame["cell_id"].isna().all() and frame["tags"].isna().all()
    assert frame["plant_extra_sensor"].dtype == "float64"
