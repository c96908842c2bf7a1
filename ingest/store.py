"""The result store: PostgreSQL (psycopg 3) for the service, SQLite for the embedded demo, one schema.

A micro-batch is written as table-shaped frames (``ingest.schema.TABLE`` columns) in ONE transaction
with idempotent upserts on the natural keys (:data:`POLICIES`), so that replaying a batch after a crash
changes nothing. PostgreSQL batches go through ``COPY`` into a session temp table and one
``INSERT ... SELECT ... ON CONFLICT`` per table (``method="copy"``, the default), or ``executemany`` in
pipeline mode (``method="executemany"``); ``benchmarks/bench_store.py`` measures both.

The store also serves the service's warm-up reads (the last readings of a station, readings of cells
that are still open, open incidents), each returned as frames shaped like the pipeline's inputs.
"""

from __future__ import annotations

import logging
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from cellwatch.contract import READING_KEYS
from cellwatch.errors import CellwatchError, ServiceUnavailable
from cellwatch.ingest.schema import SCHEMA_VERSION, TABLE, create_statements
from cellwatch.logs import redact

log = logging.getLogger(__name__)

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


#: tables whose batch rows are normally all new (facts, or results of readings seen for the first time): COPY goes
#: straight into them, and only a batch that conflicts (a replay) takes the temp-table upsert; every column is given,
#: so a conflict-free upsert and a plain insert store the same rows
_COPY_DIRECT = frozenset({"readings", "scores", "cell_predictions", "dead_letters", "pipeline_stats"})


class StoreUnavailable(ServiceUnavailable):
    """The database cannot be reached (or the connection broke): retry later, nothing was written."""


class StoreConflict(StoreUnavailable):
    """The write transaction was rolled back by the server (a deadlock with another worker writing the same
    ``cells`` rows, a serialization failure): nothing was written, the same write succeeds when retried."""


@dataclass(frozen=True)
class Upsert:
    """How one kind of row is written: the target table, the columns given, and which columns a
    natural-key conflict updates (none: ``DO NOTHING``), optionally only when ``where`` holds."""

    table: str
    columns: tuple[str, ...]
    update: tuple[str, ...] = ()
    where: str | None = None


def _all(table: str) -> tuple[str, ...]:
    return tuple(TABLE[table].column_names)


def _non_key(table: str, cols: Iterable[str] | None = None) -> tuple[str, ...]:
    return tuple(c for c in (cols or _all(table)) if c not in TABLE[table].key)


_CELL_PRED = ("cell_id", "line", "last_station", "last_ts", "defect_probability", "predicted_defect",
              "predicted_type", "top_features", "model_version", "closed")
_CELL_EOL = ("cell_id", "line", "eol_ts", "capacity_ah", "dcir_mohm", "k_value_mv_day", "grade", "defect",
             "defect_type", "closed")

#: Write policies, in the order a batch is written. Readings and dead letters are facts (first write
#: wins); results are replaced by a replay (same values) or by a newer state.
POLICIES: dict[str, Upsert] = {
    "readings": Upsert("readings", _all("readings")),
    "scores": Upsert("scores", _all("scores"), _non_key("scores")),
    "incidents": Upsert("incidents", _all("incidents"), _non_key("incidents"),
                        where="incidents.updated_at <= excluded.updated_at"),
    "cell_predictions": Upsert("cell_predictions", _all("cell_predictions"), _non_key("cell_predictions")),
    # the latest prediction per cell; never reopens a cell and never goes back to an earlier station
    "cells_predicted": Upsert("cells", _CELL_PRED, _non_key("cells", _CELL_PRED[:-1]),
                              where="cells.last_ts IS NULL OR cells.last_ts <= excluded.last_ts"),
    # the EOL label closes the record
    "cells_eol": Upsert("cells", _CELL_EOL, _non_key("cells", _CELL_EOL)),
    "dead_letters": Upsert("dead_letters", _all("dead_letters")),
    "model_versions": Upsert("model_versions", _all("model_versions"), _non_key("model_versions")),
    "sensor_bands": Upsert("sensor_bands", _all("sensor_bands"), _non_key("sensor_bands")),
    "pipeline_stats": Upsert("pipeline_stats", _all("pipeline_stats"), _non_key("pipeline_stats")),
}


def upsert_sql(policy: Upsert, dialect: str, source: str | None = None) -> str:
    """``INSERT ... ON CONFLICT`` for a policy; ``source`` is a ``SELECT`` (else one row of parameters)."""
    cols = ", ".join(policy.columns)
    if source is None:
        mark = "%s" if dialect == "postgresql" else "?"
        source = f"VALUES ({', '.join([mark] * len(policy.columns))})"
    elif dialect == "sqlite":
        source += " WHERE true"  # SQLite needs a WHERE to parse INSERT ... SELECT ... ON CONFLICT
    key = ", ".join(TABLE[policy.table].key)
    if policy.update:
        action = "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in policy.update)
        if policy.where:
            action += f" WHERE {policy.where}"
    else:
        action = "DO NOTHING"
    return f"INSERT INTO {policy.table} ({cols}) {source} ON CONFLICT ({key}) {action}"


# ------------------------------------------------------------------------------------ frame -> rows

def _json_text(s: pd.Series) -> pd.Series:
    """JSON column values as JSON text (None stays None)."""
    def enc(v: Any) -> str | None:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        return v if isinstance(v, str) else orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return s.map(enc).astype(object)


def _time_text(s: pd.Series) -> pd.Series:
    """Times as ISO-8601 UTC text with microseconds (``_TIME_FORMAT``), NaT as None; NumPy-vectorised."""
    t = pd.to_datetime(s, utc=True, format="ISO8601") if s.dtype == object else pd.to_datetime(s, utc=True)
    text = np.char.add(np.datetime_as_string(t.dt.tz_convert(None).to_numpy("datetime64[us]"), unit="us"), "Z")
    out = pd.Series(text.astype(object), index=s.index)
    return out.where(t.notna().to_numpy(), None)


def table_rows(frame: pd.DataFrame, policy: Upsert, dialect: str) -> pd.DataFrame:
    """``frame`` restricted to the policy's columns, deduplicated on the key (last wins), values in the
    representation the dialect takes (times as ISO-8601 UTC text, JSON as text, SQLite bools as 0/1)."""
    table = TABLE[policy.table]
    missing = [c for c in policy.columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{policy.table} rows lack column(s) {missing}")
    out = frame.loc[:, list(policy.columns)].drop_duplicates(list(table.key), keep="last").reset_index(drop=True)
    types = {n: t for n, t, _ in table.columns}
    for c in policy.columns:
        t = types[c]
        if t == "time":
            out[c] = _time_text(out[c])
        elif t == "json":
            out[c] = _json_text(out[c])
        elif t == "int":
            out[c] = out[c].astype("Int64")
        elif t == "bool":
            b = out[c].astype("boolean")
            out[c] = b.astype("Int64") if dialect == "sqlite" else b
        elif t == "float":
            out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    return out


def _csv_bytes(rows: pd.DataFrame) -> bytes:
    """Rows as CSV for ``COPY ... (FORMAT csv)`` by Arrow's C++ writer (~10x pandas' ``to_csv``): nulls unquoted
    and empty (NULL), every string quoted (an empty string stays an empty string), floats round-trip exactly."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf = pa.BufferOutputStream()
    table = pa.Table.from_pandas(rows, preserve_index=False, nthreads=1)
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
    return buf.getvalue().to_pybytes()


def readings_rows(wide: pd.DataFrame) -> pd.DataFrame:
    """A wide readings frame as ``readings`` table rows (sensor values as a JSON object, NaN left out)."""
    sensors = [c for c in wide.columns if c not in READING_KEYS]
    values = wide[sensors].to_numpy(dtype="float64") if sensors else np.empty((len(wide), 0))
    present = ~np.isnan(values)
    dumps = orjson.dumps
    sv = [dumps({sensors[j]: float(row[j]) for j in np.flatnonzero(mask)}).decode()
          for row, mask in zip(values, present, strict=True)]
    out = wide[["line", "station", "seq", "ts", "cell_id", "recipe", "tags"]].reset_index(drop=True).copy()
    out["sensor_values"] = sv
    return out


def wide_readings(rows: pd.DataFrame) -> pd.DataFrame:
    """``readings`` table rows back to a wide readings frame (the inverse of :func:`readings_rows`)."""
    if rows.empty:
        return pd.DataFrame({k: pd.Series(dtype="datetime64[ns, UTC]" if k == "ts" else
                                          ("int64" if k == "seq" else object)) for k in READING_KEYS})
    vals = [v if isinstance(v, dict) else orjson.loads(v) for v in rows["sensor_values"]]
    sensors = pd.DataFrame.from_records(vals, index=rows.index).astype("float64")
    sensors = sensors.reindex(sorted(sensors.columns), axis=1)
    def obj(s: pd.Series) -> pd.Series:
        s = s.astype(object)
        return s.where(s.notna(), None)

    tags = obj(rows["tags"]).map(lambda t: t if t is None or isinstance(t, str) else orjson.dumps(t).decode())
    base = pd.DataFrame({
        "ts": pd.to_datetime(rows["ts"], utc=True, format="ISO8601"),
        "line": obj(rows["line"]), "station": obj(rows["station"]), "cell_id": obj(rows["cell_id"]),
        "seq": rows["seq"].astype("int64"), "recipe": obj(rows["recipe"]), "tags": obj(tags)}, index=rows.index)
    return pd.concat([base, sensors], axis=1).reset_index(drop=True)


# ------------------------------------------------------------------------------------------ stores

class Store(ABC):
    """A result store. ``write`` is all-or-nothing; reads return pandas frames."""

    dialect: str

    @abstractmethod
    def migrate(self) -> None: ...

    @abstractmethod
    def write(self, batch: Mapping[str, pd.DataFrame]) -> None:
        """Write ``{policy name: rows}`` (see :data:`POLICIES`) in one transaction."""

    @abstractmethod
    def query(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame: ...

    @abstractmethod
    def close(self) -> None: ...

    # --- warm-up reads
    def last_readings(self, line: str, station: str, before_seq: int, n: int) -> pd.DataFrame:
        """The last ``n`` readings of one station with ``seq < before_seq``, oldest first (wide frame)."""
        if n <= 0:
            return wide_readings(pd.DataFrame())
        m = self._mark
        rows = self.query(f"SELECT * FROM (SELECT * FROM readings WHERE line = {m} AND station = {m} AND seq < {m} "
                          f"ORDER BY seq DESC LIMIT {m}) r ORDER BY seq", (line, station, int(before_seq), int(n)))
        return wide_readings(rows)

    def stored_seqs(self, line: str, station: str, seqs: list[int]) -> set[int]:
        """Which of ``seqs`` of one station are already in ``readings``."""
        if not seqs:
            return set()
        m = self._mark
        rows = self.query(f"SELECT seq FROM readings WHERE line = {m} AND station = {m} AND seq IN "
                          f"({', '.join([m] * len(seqs))})", (line, station, *map(int, seqs)))
        return set(rows["seq"].astype("int64").tolist())

    def open_cell_readings(self, lines: Iterable[str], before: datetime | None = None) -> pd.DataFrame:
        """Readings of cells of ``lines`` that have no EOL result yet (wide frame, time order)."""
        lines = sorted(set(lines))
        if not lines:
            return wide_readings(pd.DataFrame())
        m = self._mark
        marks = ", ".join([m] * len(lines))
        sql = (f"SELECT r.* FROM readings r WHERE r.line IN ({marks}) AND r.cell_id IS NOT NULL "
               f"AND NOT EXISTS (SELECT 1 FROM cells c WHERE c.cell_id = r.cell_id AND c.closed) "
               f"AND NOT EXISTS (SELECT 1 FROM readings e WHERE e.cell_id = r.cell_id AND e.station = 'eol')")
        params: list[Any] = list(lines)
        if before is not None:
            sql += f" AND r.ts < {m}"
            params.append(self._time_param(before))
        return wide_readings(self.query(sql + " ORDER BY r.ts, r.station, r.seq", params))

    def open_incidents(self, pairs: Iterable[tuple[str, str]], closed_since: datetime | None = None
                       ) -> pd.DataFrame:
        """Open incidents of the given (line, station) pairs (``incidents`` columns), and with
        ``closed_since`` also those closed with ``end_ts`` from then on (a batch being processed again
        may have closed them: the tracker decides from the readings before it)."""
        pairs = sorted(set(pairs))
        cols = TABLE["incidents"].column_names
        if not pairs:
            return pd.DataFrame(columns=cols)
        m = self._mark
        cond = " OR ".join([f"(line = {m} AND station = {m})"] * len(pairs))
        params: list[Any] = [v for p in pairs for v in p]
        status = "status = 'open'"
        if closed_since is not None:
            status = f"(status = 'open' OR end_ts >= {m})"
            params.insert(0, self._time_param(closed_since))
        rows = self.query(f"SELECT * FROM incidents WHERE {status} AND ({cond}) ORDER BY start_ts", params)
        for c in ("start_ts", "end_ts", "peak_ts", "updated_at"):
            rows[c] = pd.to_datetime(rows[c], utc=True, format="ISO8601")
        rows["sensors"] = rows["sensors"].map(lambda v: orjson.loads(v) if isinstance(v, str) else v)
        return rows

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT count(*) AS n FROM {table}")["n"].iloc[0])

    @property
    def _mark(self) -> str:
        return "%s" if self.dialect == "postgresql" else "?"

    def _time_param(self, t: datetime) -> Any:
        return t if self.dialect == "postgresql" else pd.Timestamp(t).tz_convert(UTC).strftime(_TIME_FORMAT)


class SQLiteStore(Store):
    """The embedded store of ``cellwatch demo`` (one file, WAL journal)."""

    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise CellwatchError(f"cannot open SQLite database {self.path}: {exc}") from None
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def migrate(self) -> None:
        with self._tx():
            for stmt in create_statements("sqlite"):
                self.conn.execute(stmt)
            self.conn.execute("INSERT OR IGNORE INTO schema_migrations VALUES (?, ?)",
                              (SCHEMA_VERSION, datetime.now(UTC).isoformat()))

    def _tx(self):
        conn = self.conn

        class _Tx:
            def __enter__(self):
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *_):
                conn.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def write(self, batch: Mapping[str, pd.DataFrame]) -> None:
        with self._tx():
            for name, frame in batch.items():
                if frame is None or frame.empty:
                    continue
                policy = POLICIES[name]
                rows = table_rows(frame, policy, "sqlite")
                rows = rows.astype(object).where(rows.notna(), None)
                self.conn.executemany(upsert_sql(policy, "sqlite"), rows.itertuples(index=False, name=None))

    def query(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        cur = self.conn.execute(sql, tuple(params))
        cols = [d[0] for d in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=cols)

    def close(self) -> None:
        self.conn.close()


class PostgresStore(Store):
    """The service's store: psycopg 3, one connection, reconnects after a failure."""

    dialect = "postgresql"

    def __init__(self, dsn: str, schema: str | None = None, method: str = "copy",
                 connect_timeout: float = 5.0) -> None:
        if method not in ("copy", "executemany"):
            raise ValueError(f"unknown write method {method!r}")
        self._dsn, self.schema, self.method, self.connect_timeout = dsn, schema, method, connect_timeout
        self._conn = None

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self._dsn)!r}, schema={self.schema!r})"

    # --- connection
    def _connect(self):
        import psycopg

        try:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)))
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL unreachable: {redact(str(exc)).strip()}") from None
        if self.schema:
            from psycopg import sql

            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        self._temp_ready: set[str] = set()
        return conn

    @property
    def conn(self):
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._connect()
        return self._conn

    def _run(self, fn):
        """Run ``fn(conn)``; connection-level failures become :class:`StoreUnavailable`."""
        import psycopg

        try:
            return fn(self.conn)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:  # rolled back
            raise StoreConflict(f"transaction rolled back, retrying: {str(exc).splitlines()[0]}") from None
        except psycopg.OperationalError as exc:
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self._conn.close()
                self._conn = None
                raise StoreUnavailable(f"PostgreSQL connection lost: {redact(str(exc)).strip()}") from None
            raise
        except psycopg.errors.AdminShutdown as exc:  # pragma: no cover - a subclass of OperationalError
            self._conn = None
            raise StoreUnavailable(str(exc)) from None

    def migrate(self) -> None:
        def go(conn):
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(4242001)")  # concurrent workers migrate one at a time
                for stmt in create_statements("postgresql"):
                    conn.execute(stmt)
                have = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
                if have is not None and have > SCHEMA_VERSION:
                    raise CellwatchError(f"database schema version {have} is newer than this cellwatch "
                                         f"({SCHEMA_VERSION}); upgrade cellwatch")
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s) ON CONFLICT DO NOTHING",
                             (SCHEMA_VERSION, datetime.now(UTC).isoformat()))
        self._run(go)

    def _ensure_temp(self, conn, table: str) -> None:
        """A session temp table ``tmp_<table>`` without NOT NULLs (a batch may fill only some columns)."""
        if table in self._temp_ready:
            return
        drops = "".join(f", ALTER COLUMN {c} DROP NOT NULL" for c, _, null in TABLE[table].columns if not null)
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS tmp_{table} (LIKE {table}) ON COMMIT DELETE ROWS")
        if drops:
            conn.execute(f"ALTER TABLE tmp_{table} {drops[2:]}")
        self._temp_ready.add(table)

    def write(self, batch: Mapping[str, pd.DataFrame]) -> None:
        def go(conn):
            if self.method == "copy":
                for name, frame in batch.items():
                    if frame is not None and not frame.empty:
                        self._ensure_temp(conn, POLICIES[name].table)
            with conn.transaction():
                for name, frame in batch.items():
                    if frame is None or frame.empty:
                        continue
                    policy = POLICIES[name]
                    rows = table_rows(frame, policy, "postgresql")
                    if self.method == "copy":
                        self._write_copy(conn, policy, rows)
                    else:
                        self._write_many(conn, policy, rows)
        self._run(go)

    @staticmethod
    def _write_copy(conn, policy: Upsert, rows: pd.DataFrame) -> None:
        cols = ", ".join(policy.columns)
        types = {n: t for n, t, _ in TABLE[policy.table].columns}
        for c in policy.columns:
            if types[c] == "bytes":
                rows[c] = rows[c].map(lambda b: None if b is None else "\\x" + bytes(b).hex())
        data = _csv_bytes(rows)
        table = policy.table
        if table in _COPY_DIRECT:
            import psycopg

            try:  # normally every row is new: COPY straight into the table (a savepoint) ...
                with conn.transaction(), conn.cursor() as cur, \
                        cur.copy(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)") as copy:
                    copy.write(data)
                return
            except psycopg.errors.UniqueViolation:
                pass  # ... a replayed batch: some rows are stored already, upsert them through the temp table
        tmp = f"tmp_{table}"
        with conn.cursor() as cur:
            with cur.copy(f"COPY {tmp} ({cols}) FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(data)
            # key order: concurrent workers upserting the same rows lock them in one order (no deadlock between them)
            key = ", ".join(TABLE[table].key)
            cur.execute(upsert_sql(policy, "postgresql", f"SELECT {cols} FROM {tmp} ORDER BY {key}"))
            cur.execute(f"DELETE FROM {tmp}")

    @staticmethod
    def _write_many(conn, policy: Upsert, rows: pd.DataFrame) -> None:
        rows = rows.astype(object).where(rows.notna(), None)
        with conn.cursor() as cur:
            cur.executemany(upsert_sql(policy, "postgresql"), list(rows.itertuples(index=False, name=None)))

    def query(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        def go(conn):
            with conn.cursor() as cur:
                cur.execute(sql, tuple(params))
                cols = [d.name for d in cur.description]
                return pd.DataFrame(cur.fetchall(), columns=cols)
        return self._run(go)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def open_store(url: str, schema: str | None = None, **kw: Any) -> Store:
    """A store for ``postgresql://...`` or ``sqlite:///path`` (the path may be relative)."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, schema=schema, **kw)
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):])
    raise CellwatchError(f"unsupported database URL {redact(url)!r}: use postgresql://... or sqlite:///path")
