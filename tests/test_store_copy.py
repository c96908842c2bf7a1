"""PostgreSQL COPY path (Arrow CSV, direct COPY with the temp-table upsert as the replay fallback) stores exactly
what the executemany path stores: empty strings stay empty strings, None stays NULL, NaN becomes NULL, floats
round-trip bit for bit, bytes and awkward text survive, and a replayed batch changes nothing."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pandas as pd
import pytest

from cellwatch.ingest.store import PostgresStore

pytestmark = pytest.mark.postgres

T0 = pd.Timestamp("2026-11-25T08:00:00.123456Z")
TEXT = ['a "quoted", comma', "line\nbreak", "", "back\\slash", "ünï ✓", None]


def _batch() -> dict[str, pd.DataFrame]:
    n = len(TEXT)
    seq = np.arange(n)
    scores = pd.DataFrame({
        "line": "L1", "station": "coating", "seq": seq, "ts": T0 + pd.to_timedelta(seq, unit="ms"),
        "cell_id": TEXT, "recipe": [None, "", "NMC", "x", "y", "z"],
        "anomaly_score": [0.1, 1 / 3, 0.5, 1e-300, 0.30000000000000004, 12345678.123456789],
        "is_anomaly": [True, False, True, False, True, False], "kind": "normal",
        "top_sensors": ['[{"sensor": "a", "actual": 1.5}]', None, "[]", '[{"s": "\\"q\\""}]', None, None],
        "model_version": "m@1", "scored_at": pd.Timestamp("2026-11-25T09:00:00Z")})
    dead = pd.DataFrame({
        "source_topic": "t", "source_partition": 0, "source_offset": seq, "received_at": T0, "reason": "undecodable",
        "detail": TEXT, "payload": [b"", b"\x00\xff,\"\n", None, b"{not json", b"x" * 100, b"\\x41"]})
    stats = pd.DataFrame({"worker": ["w", ""], "batch_end": [T0, T0 + pd.Timedelta(seconds=1)], "readings": [1, 2],
                          "scored": [1, 2], "rejected": [0, 0], "batch_ms": [1.5, 2.5],
                          "e2e_p50_ms": [None, 2.0], "e2e_p99_ms": [np.nan, 3.0], "max_lag": [0, 5],
                          "model_version": [None, ""]})
    return {"scores": scores, "dead_letters": dead, "pipeline_stats": stats}


def _dump(store: PostgresStore) -> dict[str, list[tuple]]:
    out = {}
    for table, key in (("scores", "seq"), ("dead_letters", "source_offset"), ("pipeline_stats", "batch_end")):
        rows = store.query(f"SELECT * FROM {table} ORDER BY {key}")
        out[table] = [tuple(None if (isinstance(v, float) and np.isnan(v)) else
                            (bytes(v) if isinstance(v, memoryview) else v) for v in row)
                      for row in rows.itertuples(index=False, name=None)]
    return out


def test_copy_stores_what_executemany_stores_and_replays_change_nothing(database_url, pg_schema):
    copy = PostgresStore(database_url, schema=pg_schema, method="copy")
    many = PostgresStore(database_url, schema=pg_schema + "_m", method="executemany")
    try:
        for st in (copy, many):
            st.migrate()
            st.write(_batch())
        got, want = _dump(copy), _dump(many)
        assert got == want
        assert [r[4] for r in got["scores"]] == TEXT  # cell_id: "" is not NULL
        assert got["scores"][5][6] == 12345678.123456789 and got["scores"][4][6] == 0.30000000000000004
        assert [r[7] for r in got["pipeline_stats"]] == [None, 3.0]  # NaN -> NULL
        copy.write(_batch())  # a replay: the direct COPY conflicts, the upsert path stores nothing new
        assert _dump(copy) == want
    finally:
        copy.close()
        many.close()
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{pg_schema}_m" CASCADE')


def test_a_deadlock_with_another_worker_is_a_retryable_conflict_and_the_retry_stores_the_batch(database_url, pg_schema):
    """Two workers upserting the same ``cells`` rows: PostgreSQL aborts one transaction (deadlock); the store raises
    StoreConflict (a StoreUnavailable: the service retries the batch) instead of a crash, and the retry writes."""
    import threading

    import psycopg

    from cellwatch.ingest.store import StoreConflict, StoreUnavailable

    cells = pd.DataFrame({"cell_id": ["c1", "c2"], "line": "L1", "eol_ts": T0, "capacity_ah": 1.0, "dcir_mohm": 2.0,
                          "k_value_mv_day": 0.1, "grade": "A", "defect": False, "defect_type": None, "closed": True})
    store = PostgresStore(database_url, schema=pg_schema)
    store.migrate()
    store.write({"cells_eol": cells})
    other = psycopg.connect(database_url, options=f"-c search_path={pg_schema}")
    try:
        other.execute("UPDATE cells SET grade = 'B' WHERE cell_id = 'c2'")  # holds c2
        result: list = []

        def write() -> None:
            try:
                store.write({"cells_eol": cells})  # locks c1 (key order), then waits for c2
                result.append("written")
            except Exception as exc:
                result.append(exc)

        t = threading.Thread(target=write)
        t.start()
        time.sleep(0.5)  # the store waits first, so its deadlock check (deadlock_timeout 1 s) fires first: the victim
        with contextlib.suppress(psycopg.errors.DeadlockDetected):
            other.execute("UPDATE cells SET grade = 'B' WHERE cell_id = 'c1'")  # waits for the store: a deadlock
        t.join(timeout=30)
        other.rollback()
        assert len(result) == 1 and isinstance(result[0], StoreConflict) and isinstance(result[0], StoreUnavailable), \
            result
        store.write({"cells_eol": cells.assign(grade="C")})  # the retry goes through
        assert store.query("SELECT grade FROM cells ORDER BY cell_id")["grade"].tolist() == ["C", "C"]
    finally:
        other.close()
        store.close()
