"""The result store: one schema in SQLite and PostgreSQL, idempotent batched upserts, warm-up reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellwatch import contract
from cellwatch.ingest.pipeline import Message, cells_from_results, decode
from cellwatch.ingest.store import PostgresStore, SQLiteStore, readings_rows

T0 = pd.Timestamp("2026-11-25T08:00:00Z")


def _readings(n: int = 30, station: str = "coating", line: str = "L1", start_seq: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(start_seq)
    seq = np.arange(start_seq, start_seq + n)
    frame = pd.DataFrame({
        "ts": T0 + pd.to_timedelta(seq, unit="s"), "line": line, "station": station,
        "cell_id": np.where(seq % 3 == 0, None, [f"{line}-C{i}" for i in seq]).astype(object), "seq": seq,
        "recipe": "NMC811", "tags": np.where(seq % 2 == 0, '{"coil_id": "C1"}', None).astype(object),
        "a_um": rng.normal(100, 1, n), "b_pct": np.where(seq % 5 == 0, np.nan, rng.normal(5, 1, n))})
    return frame


def _scores(readings: pd.DataFrame, version: str = "m@1", bump: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({
        "line": readings["line"], "station": readings["station"], "seq": readings["seq"], "ts": readings["ts"],
        "cell_id": readings["cell_id"], "recipe": readings["recipe"], "anomaly_score": 0.1 + bump,
        "is_anomaly": False, "kind": "normal", "top_sensors": [[{"sensor": "a_um", "actual": 1.0}]] * len(readings),
        "model_version": version, "scored_at": pd.Timestamp.now(tz="UTC")})


@pytest.fixture(params=["sqlite", "postgresql-copy", "postgresql-executemany"])
def store(request, tmp_path):
    if request.param == "sqlite":
        st = SQLiteStore(tmp_path / "cw.db")
    else:
        database_url = request.getfixturevalue("database_url")
        schema = request.getfixturevalue("pg_schema")
        st = PostgresStore(database_url, schema=schema, method=request.param.split("-")[1])
    st.migrate()
    st.migrate()  # idempotent
    yield st
    st.close()


@pytest.mark.postgres
def test_replayed_batches_are_stored_exactly_once(store):
    r = _readings(40)
    batch = {"readings": readings_rows(r), "scores": _scores(r)}
    store.write(batch)
    store.write(batch)  # a replay after a crash
    store.write({"readings": readings_rows(r.iloc[10:]), "scores": _scores(r.iloc[10:], "m@2", 0.5)})
    assert store.count("readings") == 40
    assert store.count("scores") == 40
    per_key = store.query("SELECT line, station, seq, count(*) AS n FROM scores GROUP BY line, station, seq")
    assert (per_key["n"] == 1).all()
    v = store.query("SELECT model_version, count(*) AS n FROM scores GROUP BY model_version ORDER BY 1")
    assert v.set_index("model_version")["n"].to_dict() == {"m@1": 10, "m@2": 30}


@pytest.mark.postgres
def test_readings_round_trip_to_a_wide_frame(store):
    r = _readings(25)
    store.write({"readings": readings_rows(r)})
    back = store.last_readings("L1", "coating", before_seq=20, n=8)
    assert back["seq"].tolist() == list(range(12, 20))
    want = r.iloc[12:20].reset_index(drop=True)
    pd.testing.assert_frame_equal(back[["a_um", "b_pct"]], want[["a_um", "b_pct"]])
    def norm(s: pd.Series) -> list:
        return [None if pd.isna(v) else str(v).replace(" ", "") for v in s]
    assert norm(back["cell_id"]) == norm(want["cell_id"])
    assert norm(back["tags"]) == norm(want["tags"])
    assert (back["ts"] == want["ts"]).all()


@pytest.mark.postgres
def test_cells_prediction_never_reopens_an_eol_closed_cell(store):
    eol = pd.DataFrame({"ts": [T0 + pd.Timedelta(hours=2)], "line": ["L1"], "cell_id": ["L1-C1"],
                        "capacity_ah": [5.0], "dcir_mohm": [20.0], "k_value_mv_day": [1.0], "grade": ["A"],
                        "defect": [False], "defect_type": [None]})
    pred = pd.DataFrame({"cell_id": ["L1-C1"], "line": ["L1"], "last_station": ["aging"], "last_ts": [T0],
                         "defect_probability": [0.7], "predicted_defect": [True], "predicted_type": ["short"],
                         "top_features": ['[{"feature": "x", "contribution": 0.3}]'], "model_version": ["m@1"],
                         "closed": [False]})
    store.write({"cells_eol": cells_from_results(eol)})
    store.write({"cells_predicted": pred})  # arrives after the label (other partition)
    row = store.query("SELECT * FROM cells").iloc[0]
    assert bool(row["closed"]) and row["grade"] == "A" and row["last_station"] == "aging"
    older = pred.assign(last_station="winding", last_ts=T0 - pd.Timedelta(minutes=30), defect_probability=0.1)
    store.write({"cells_predicted": older})  # an earlier station late: does not go back
    assert store.query("SELECT last_station FROM cells")["last_station"].iloc[0] == "aging"
    assert store.open_cell_readings(["L1"]).empty


@pytest.mark.postgres
def test_dead_letters_keep_the_original_bytes(store):
    good = contract.encode_readings(_readings(2))
    msgs = [Message("cellwatch.readings", 0, i, v) for i, v in enumerate(
        [good[0], b"{not json", b'{"schema": 1}', b"\xff\xfe" * 10, good[1]])]
    d = decode(msgs, "cellwatch.readings", "cellwatch.cell-results")
    assert len(d.readings) == 2 and len(d.dead_letters) == 3
    store.write({"dead_letters": d.dead_letters})
    store.write({"dead_letters": d.dead_letters})
    rows = store.query("SELECT * FROM dead_letters ORDER BY source_offset")
    assert rows["source_offset"].tolist() == [1, 2, 3]
    assert rows["reason"].tolist() == ["undecodable", "missing_field", "undecodable"]
    assert [bytes(p) for p in rows["payload"]] == [b"{not json", b'{"schema": 1}', b"\xff\xfe" * 10]


def test_decode_drops_duplicate_keys_and_orders_by_time():
    r = _readings(6)
    enc = contract.encode_readings(r)
    msgs = [Message("cellwatch.readings", 1, i, v, timestamp_ms=1000 + i)
            for i, v in enumerate([enc[3], enc[1], enc[1], enc[0]])]
    d = decode(msgs, "cellwatch.readings", "cellwatch.cell-results")
    assert d.readings["seq"].tolist() == [0, 1, 3] and d.duplicates == 1
    assert d.reading_meta["_offset"].tolist() == [3, 1, 0]
