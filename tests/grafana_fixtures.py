"""Helpers for the Grafana SQL tests: Grafana's PostgreSQL macro expansion, template-variable substitution,
and a PostgreSQL schema filled by a real pipeline run (simulator -> Kafka -> ``cellwatch run`` subprocess).

The macro expansion follows Grafana's ``pkg/tsdb/grafana-postgresql-datasource/macros.go`` as summarised in
../shared/grafana/NOTES.md section 5 (times are RFC3339Nano UTC, intervals as whole or fractional seconds).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from cellwatch import contract

# ------------------------------------------------------------------------------------ macro expansion

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_interval(text: str) -> float:
    """Seconds of a Grafana interval such as ``'5m'`` (quotes stripped, like gtime.ParseInterval)."""
    m = re.fullmatch(r"\s*'?(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)'?\s*", text)
    if not m:
        raise ValueError(f"error parsing interval {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _go_number(seconds: float) -> str:
    """Go's %v of a float64: 300 -> '300', 0.5 -> '0.5'."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def rfc3339nano(t: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: trailing zero fractions dropped, 'Z' suffix."""
    ts = pd.Timestamp(t).tz_convert("UTC")
    base = ts.strftime("%Y-%m-%dT%H:%M:%S")
    nanos = ts.microsecond * 1000 + ts.nanosecond
    frac = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{base}{frac}Z"


def _group(args: list[str]) -> str:
    if len(args) < 2:
        raise ValueError(f"macro needs at least 2 arguments, {len(args)} given")
    seconds = _go_number(parse_interval(args[1]))
    return f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"


def expand_macros(sql: str, start: datetime, end: datetime, interval: str = "1m") -> str:
    """Grafana's server-side expansion of ``$__interval``/``$__interval_ms`` and the ``$__macro(...)`` set."""
    t0, t1 = rfc3339nano(start), rfc3339nano(end)
    e0, e1 = pd.Timestamp(start).value // 10**9, pd.Timestamp(end).value // 10**9
    n0, n1 = pd.Timestamp(start).value, pd.Timestamp(end).value
    sql = sql.replace("$__interval_ms", str(int(parse_interval(interval) * 1000))).replace("$__interval", interval)

    def one(m: re.Match) -> str:
        name, raw = m.group(1), m.group(2)
        args = [a.strip() for a in raw.split(",")] if raw.strip() else []
        if name == "time":
            return f'{args[0]} AS "time"'
        if name == "timeEpoch":
            return f'extract(epoch from {args[0]}) as "time"'
        if name == "timeFilter":
            return f"{args[0]} BETWEEN '{t0}' AND '{t1}'"
        if name == "timeFrom":
            return f"'{t0}'"
        if name == "timeTo":
            return f"'{t1}'"
        if name == "timeGroup":
            return _group(args)
        if name == "timeGroupAlias":
            return _group(args) + ' AS "time"'
        if name == "unixEpochFilter":
            return f"{args[0]} >= {e0} AND {args[0]} <= {e1}"
        if name == "unixEpochNanoFilter":
            return f"{args[0]} >= {n0} AND {args[0]} <= {n1}"
        if name == "unixEpochFrom":
            return str(e0)
        if name == "unixEpochTo":
            return str(e1)
        if name == "unixEpochNanoFrom":
            return str(n0)
        if name == "unixEpochNanoTo":
            return str(n1)
        raise ValueError(f'unknown macro "{name}"')

    return re.sub(r"\$__(\w+)\(([^)]*)\)", one, sql)


def substitute_variables(sql: str, values: dict[str, str | list[str]]) -> str:
    """What Grafana's frontend does before sending a query: ``$var``, ``${var}``, ``${var:text}`` ->
    the value; a multi-value variable becomes a quoted, comma-separated list (SQL datasources' default)."""

    def fmt(name: str) -> str:
        if name not in values:
            raise KeyError(f"no test value for template variable ${name}")
        v = values[name]
        return ", ".join("'" + x.replace("'", "''") + "'" for x in v) if isinstance(v, list) else v

    sql = re.sub(r"\$\{(\w+)(?::\w+)?\}", lambda m: fmt(m.group(1)), sql)
    return re.sub(r"\$(?!__)(\w+)", lambda m: fmt(m.group(1)), sql)


def run_query(conn: psycopg.Connection, sql: str) -> pd.DataFrame:
    cur = conn.execute(sql)
    return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


# ------------------------------------------------------------------------------------ real pipeline data

SIM_SEED, SIM_HOURS = 24, 1.5


@dataclass(frozen=True)
class FilledStore:
    url: str
    schema: str
    start: pd.Timestamp  # first reading
    end: pd.Timestamp    # last reading
    n_readings: int
    log: str

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, options=f"-c search_path={self.schema}", autocommit=True)


def bad_messages(ts: pd.Timestamp) -> list[tuple[bytes, bytes]]:
    """A few messages the pipeline must dead-letter (so the DLQ panels and rule have rows)."""
    import orjson

    base = {"schema": 1, "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "line": "L1", "station": "coating",
            "cell_id": None, "seq": 10**9, "values": {"coat_weight_mg_cm2": 20.0}}
    return [(b"L1/coating", b"{not json"),
            (b"L1/coating", orjson.dumps({k: v for k, v in base.items() if k != "station"})),
            (b"L1/coating", orjson.dumps({**base, "seq": "seven"}))]


def _create_topics(bootstrap: str, names: list[str]) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cellwatch-grafana-tests",
                             request_timeout_ms=30_000)
    try:
        admin.create_topics([NewTopic(n, num_partitions=2, replication_factor=1) for n in names])
        admin.wait_for_topics(names, timeout_ms=30_000)  # leaders elected: the consumer sees every partition
    finally:
        admin.close()


def _delete_topics(bootstrap: str, names: list[str]) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cellwatch-grafana-tests")
    try:
        admin.delete_topics(names)
    except Exception:  # best effort clean-up
        pass
    finally:
        admin.close()


def _count(store: FilledStore, sql: str) -> int:
    try:
        with store.connect() as c:
            return int(c.execute(sql).fetchone()[0])
    except psycopg.Error:
        return -1


def fill_by_pipeline(kafka: str, url: str, schema: str, models: Path, tmp: Path) -> FilledStore:
    """Simulate one line for an hour ending now, produce it to Kafka with a few bad messages, and let a
    ``cellwatch run`` subprocess score it into ``schema``; returns when every reading is scored."""
    from kafka import KafkaProducer

    from cellwatch.ingest.demo import stream_messages
    from cellwatch.simulators.simulate import simulate

    start = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(hours=SIM_HOURS, minutes=2)
    sim = simulate(hours=SIM_HOURS, lines=1, seed=SIM_SEED, start=start)
    run = uuid.uuid4().hex[:8]
    topics = {k: f"grafana-test-{run}-{k}" for k in ("readings", "cells", "dlq")}
    _create_topics(kafka, list(topics.values()))
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=10)
    msgs = stream_messages(sim.readings, sim.cell_results())
    for m in msgs:
        producer.send(topics["readings"] if m.topic == contract.TOPIC_READINGS else topics["cells"],
                      value=m.value, key=m.key)
    bad = bad_messages(sim.readings["ts"].max())
    for key, value in bad:
        producer.send(topics["readings"], value=value, key=key)
    producer.flush()
    producer.close()

    log_path = tmp / "cellwatch-run.log"
    args = ["--topic-readings", topics["readings"], "--topic-cell-results", topics["cells"],
            "--topic-dlq", topics["dlq"], "--no-publish-outputs", "--database-schema", schema,
            "--models-dir", str(models), "--batch-max-records", "2000", "--batch-max-ms", "300",
            "--metrics-port", "0", "--worker-id", "grafana-test-worker"]
    env = {**os.environ, "CELLWATCH_KAFKA": kafka, "CELLWATCH_DATABASE_URL": url,
           "CELLWATCH_GROUP_ID": f"grafana-test-{run}"}
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cellwatch.cli", "run", *args], stdout=fh,
                                stderr=subprocess.STDOUT, env=env)
    store = FilledStore(url, schema, sim.readings["ts"].min(), sim.readings["ts"].max(), len(sim.readings),
                        str(log_path))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (_count(store, "SELECT count(*) FROM scores") >= len(sim.readings)
                    and _count(store, "SELECT count(*) FROM dead_letters") >= len(bad)
                    and _count(store, "SELECT count(*) FROM cells WHERE closed") >= len(sim.cells)):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("cellwatch run did not score the simulation:\n" + log_path.read_text()[-3000:])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        _delete_topics(kafka, list(topics.values()))
    return store


@pytest.fixture(scope="module")
def filled_store(kafka_bootstrap, database_url, models_dir, tmp_path_factory) -> Iterator[FilledStore]:
    """A fresh schema filled by a real pipeline run (module scope: built once for all query tests).

    For quick local iteration, ``CELLWATCH_GRAFANA_TEST_SCHEMA=<schema>`` reuses a schema an earlier
    :func:`fill_by_pipeline` call filled (never in CI)."""
    reuse = os.environ.get("CELLWATCH_GRAFANA_TEST_SCHEMA")
    if reuse and os.environ.get("CI") != "true":
        with psycopg.connect(database_url, options=f"-c search_path={reuse}") as c:
            lo, hi, n = c.execute("SELECT min(ts), max(ts), count(*) FROM readings").fetchone()
        yield FilledStore(database_url, reuse, pd.Timestamp(lo), pd.Timestamp(hi), n, "")
        return
    tmp = tmp_path_factory.mktemp("grafana-store")
    schema = f"grafana_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield fill_by_pipeline(kafka_bootstrap, database_url, schema, models_dir, tmp)
    finally:
        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
