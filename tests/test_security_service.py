"""Security: Kafka TLS/SASL settings reach kafka-python, secrets never leak, SQL is parameterised.

* the settings object maps ``kafka_security_protocol``, ``kafka_sasl_*``, ``kafka_ssl_*`` into the kwargs of the
  service's KafkaConsumer and KafkaProducer (the client classes are replaced by recorders: no broker needed);
* secrets come only from the environment or ``*_FILE`` files and never appear in stdout/stderr/logs of
  ``cellwatch run`` against unreachable services, in ``--help`` or in error messages;
* every f-string that builds SQL interpolates only reviewed identifiers/placeholders (AST scan), and hostile
  line/station/cell ids round-trip through the real PostgreSQL store and the SQLite store.
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import orjson
import pytest

from cellwatch import contract

REPO = Path(__file__).resolve().parent.parent
HOSTILE = ["'; DROP TABLE scores; --", 'L1"; DROP SCHEMA public CASCADE; --', "Robert'); DELETE FROM readings;--",
           "ünïcødé ✓ 𝔘", "\\x00%s%(x)s?{}"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- Kafka security

SECURE_ENV = {
    "CELLWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CELLWATCH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "CELLWATCH_KAFKA_SASL_USERNAME": "cellwatch", "CELLWATCH_KAFKA_SSL_CAFILE": "/etc/ssl/ca.pem",
    "CELLWATCH_KAFKA_SSL_CERTFILE": "/etc/ssl/client.pem", "CELLWATCH_KAFKA_SSL_KEYFILE": "/etc/ssl/client.key",
}
EXPECTED_KAFKA = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                  "sasl_plain_username": "cellwatch", "sasl_plain_password": "s3cr3t-sasl-pw",
                  "ssl_cafile": "/etc/ssl/ca.pem", "ssl_certfile": "/etc/ssl/client.pem",
                  "ssl_keyfile": "/etc/ssl/client.key"}


class _Recorder:
    """Stands in for kafka.KafkaConsumer/KafkaProducer: records the constructor kwargs."""

    made: ClassVar[list[tuple[str, dict]]] = []

    def __init__(self, *args, **kwargs):
        _Recorder.made.append((type(self).__name__, kwargs))

    def subscribe(self, *a, **k):
        pass

    def close(self, *a, **k):
        pass


class KafkaConsumer(_Recorder):
    pass


class KafkaProducer(_Recorder):
    pass


def test_settings_map_sasl_and_tls_to_kafka_python_kwargs(tmp_path):
    from cellwatch.config import load_settings

    pw = tmp_path / "sasl"
    pw.write_text("s3cr3t-sasl-pw\n")
    s = load_settings({}, environ={**SECURE_ENV, "CELLWATCH_KAFKA_SASL_PASSWORD_FILE": str(pw)})
    assert s.kafka_security() == EXPECTED_KAFKA
    assert "s3cr3t-sasl-pw" not in repr(s) and "s3cr3t-sasl-pw" not in str(s.model_dump())
    plain = load_settings({}, environ={})
    assert plain.kafka_security() == {"security_protocol": "PLAINTEXT"}
    from kafka import KafkaConsumer as Real  # every key we pass is a real kafka-python setting
    assert set(EXPECTED_KAFKA) <= set(Real.DEFAULT_CONFIG)


def test_service_consumer_and_producer_get_the_security_kwargs(monkeypatch, tmp_path, models_dir):
    import kafka

    from cellwatch.config import load_settings
    from cellwatch.ingest.consumer import StreamService
    from cellwatch.ingest.store import SQLiteStore

    monkeypatch.setattr(kafka, "KafkaConsumer", KafkaConsumer)
    monkeypatch.setattr(kafka, "KafkaProducer", KafkaProducer)
    _Recorder.made.clear()
    s = load_settings({"models_dir": str(models_dir), "metrics_port": 0},
                      environ={**SECURE_ENV, "CELLWATCH_KAFKA_SASL_PASSWORD": "s3cr3t-sasl-pw"})
    svc = StreamService(s, store=SQLiteStore(tmp_path / "cw.db"))
    svc.start()
    svc.close()
    kinds = {k for k, _ in _Recorder.made}
    assert kinds == {"KafkaConsumer", "KafkaProducer"}, _Recorder.made
    for kind, kw in _Recorder.made:
        assert {k: kw.get(k) for k in EXPECTED_KAFKA} == EXPECTED_KAFKA, kind


# ------------------------------------------------------------------------------------------- secrets

SECRETS = {"db": "dbPa55-w0rd-xyz", "token": "glsa_SuperSecretGrafanaToken_42", "sasl": "saslPa55-abc-987",
           "url_pw": "urlPa55-qqq-321"}


def _leaks(text: str) -> list[str]:
    return [k for k, v in SECRETS.items() if v in text]


@pytest.mark.parametrize("log_json", [False, True])
def test_run_against_unreachable_services_never_prints_a_secret(tmp_path, models_dir, log_json):
    port = _closed_port()
    (tmp_path / "token").write_text(SECRETS["token"] + "\n")
    (tmp_path / "sasl").write_text(SECRETS["sasl"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLWATCH_")}
    env.update({"CELLWATCH_DATABASE_URL": f"postgresql://cellwatch:{SECRETS['url_pw']}@127.0.0.1:{port}/cw",
                "CELLWATCH_DATABASE_PASSWORD": SECRETS["db"], "CELLWATCH_KAFKA": f"127.0.0.1:{port}",
                "CELLWATCH_GRAFANA_TOKEN_FILE": str(tmp_path / "token"),
                "CELLWATCH_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "sasl"),
                "CELLWATCH_KAFKA_SASL_MECHANISM": "PLAIN", "CELLWATCH_KAFKA_SASL_USERNAME": "u",
                "CELLWATCH_LOG_LEVEL": "DEBUG", "CELLWATCH_LOG_JSON": "true" if log_json else "false"})
    proc = subprocess.Popen([sys.executable, "-m", "cellwatch.cli", "-vv", "run", "--models-dir", str(models_dir),
                             "--metrics-port", "0", "--db-retry-initial-s", "0.2", "--db-retry-max-s", "0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    end = time.monotonic() + 60
    time.sleep(8)  # several retries of the unreachable database, each logged
    while proc.poll() is None and time.monotonic() < end:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        out, err = proc.communicate(timeout=30)
    assert "store unavailable" in err, err[-2000:]  # it really tried (and logged) with the secrets configured
    assert _leaks(out + err) == [], (out + err)[-3000:]
    assert "Traceback" not in err


def test_help_and_error_messages_never_echo_a_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLWATCH_")}
    env.update({"CELLWATCH_DATABASE_PASSWORD": SECRETS["db"], "CELLWATCH_GRAFANA_TOKEN": SECRETS["token"],
                "CELLWATCH_KAFKA_SASL_PASSWORD": SECRETS["sasl"]})
    runs = [["run", "--help"], ["--help"], ["grafana", "sync", "--help"],
            ["run", "--database-url", f"mysql://u:{SECRETS['url_pw']}@db/x", "--metrics-port", "0"],
            ["run", "--batch-max-records", SECRETS["db"]]]
    for argv in runs:
        res = subprocess.run([sys.executable, "-m", "cellwatch.cli", *argv], capture_output=True, text=True,
                             env=env, timeout=120)
        text = res.stdout + res.stderr
        assert _leaks(text) in ([], ["db"] if argv[-1] == SECRETS["db"] else []), (argv, text[-2000:])
    # secrets are never accepted as flags
    res = subprocess.run([sys.executable, "-m", "cellwatch.cli", "run", "--database-password", "x"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0 and "unrecognized arguments" in res.stderr


def test_secret_values_are_redacted_in_log_lines():
    import logging

    from cellwatch.logs import JsonFormatter, RedactingFormatter, redact, register_secret

    register_secret(SECRETS["token"])
    rec = logging.LogRecord("x", logging.ERROR, "f", 1, "connect %s with %s failed", (
        f"postgresql://u:{SECRETS['url_pw']}@h:5432/d", SECRETS["token"]), None)
    for fmt in (RedactingFormatter("%(message)s"), JsonFormatter()):
        line = fmt.format(rec)
        assert _leaks(line) == [] and "***" in line
    assert redact(f"kafka://a:{SECRETS['sasl']}@b x") == "kafka://a:***@b x"


# ------------------------------------------------------------------------------------------- SQL

#: Reviewed interpolations inside SQL f-strings: (file, expression). All are identifiers from
#: ingest/schema.py (table/column names, constants), placeholder lists ("%s"/"?"), or SQL fragments built from
#: them. A new entry must be checked by hand: values always go as parameters.
REVIEWED = {
    ("ingest/schema.py", "t.name"), ("ingest/schema.py", "cols"), ("ingest/schema.py", "', '.join(t.key)"),
    ("ingest/schema.py", "'_'.join(idx)"), ("ingest/schema.py", "', '.join(idx)"), ("ingest/schema.py", "table"),
    ("ingest/schema.py", "', '.join(cols)"), ("ingest/schema.py", "action"),
    ("ingest/schema.py", "', '.join([mark] * len(cols))"),
    ("ingest/store.py", "', '.join([mark] * len(policy.columns))"), ("ingest/store.py", "policy.table"),
    ("ingest/store.py", "cols"), ("ingest/store.py", "source"), ("ingest/store.py", "key"),
    ("ingest/store.py", "action"), ("ingest/store.py", "c"), ("ingest/store.py", "policy.where"),
    ("ingest/store.py", "m"), ("ingest/store.py", "marks"), ("ingest/store.py", "cond"),
    ("ingest/store.py", "table"), ("ingest/store.py", "drops[2:]"), ("ingest/store.py", "tmp"),
    ("ingest/store.py", "', '.join(TABLE[table].key)"),
    # one placeholder per value of an IN list (the values are parameters)
    ("ingest/store.py", "', '.join([m] * len(seqs))"),
    # a fixed status condition with a parameter placeholder
    ("ingest/store.py", "status"),
}
SQL_WORDS = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "CREATE ", "ALTER TABLE", "DROP ", "COPY ",
             "SET search_path", " WHERE ", " FROM ", "ON CONFLICT")  # SQL keywords as we write them: upper case
SOURCES = ["ingest", "detect", "dashboards", "cellwatch", "simulators"]


def _sql_interpolations() -> list[tuple[str, int, str]]:
    found = []
    for folder in SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            tree = ast.parse(path.read_text(), filename=rel)
            for node in ast.walk(tree):
                if isinstance(node, ast.JoinedStr):
                    text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and
                                   isinstance(v.value, str))
                    if any(w in text for w in SQL_WORDS):
                        found += [(rel, node.lineno, ast.unparse(v.value)) for v in node.values
                                  if isinstance(v, ast.FormattedValue)]
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr == "format" and isinstance(node.func.value, ast.Constant)
                      and isinstance(node.func.value.value, str)
                      and any(w in node.func.value.value for w in SQL_WORDS)):
                    found.append((rel, node.lineno, "str.format: " + ast.unparse(node)))
                elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left,
                      ast.Constant) and isinstance(node.left.value, str)
                      and any(w in node.left.value for w in SQL_WORDS)):
                    found.append((rel, node.lineno, "%-format: " + ast.unparse(node)))
    return found


def test_sql_fstrings_interpolate_only_reviewed_identifiers():
    found = _sql_interpolations()
    assert found, "the scan found no SQL at all: it is broken"
    unknown = [(f, line, e) for f, line, e in found if (f, e) not in REVIEWED
               and not f.startswith("dashboards/")]  # dashboards: Grafana panel SQL with $__macros, not executed
    assert unknown == [], "SQL built from unreviewed expressions (use parameters):\n" + "\n".join(
        f"{f}:{line}: {e}" for f, line, e in unknown)


@pytest.fixture
def hostile_batch(models_dir):
    """A real pipeline batch whose line and cell ids are hostile strings (one line per string)."""
    from cellwatch.detect.core import load_scorer
    from cellwatch.ingest.demo import stream_messages
    from cellwatch.ingest.pipeline import Message, decode, process
    from cellwatch.ingest.state import WindowState
    from cellwatch.simulators.simulate import simulate

    sim = simulate(hours=0.1, lines=1, seed=3)
    msgs = [m for m in stream_messages(sim.readings, sim.cell_results()) if m.topic == contract.TOPIC_READINGS]
    out = []
    for i, m in enumerate(msgs[:300]):
        d = orjson.loads(m.value)
        d["line"] = HOSTILE[i % len(HOSTILE)]
        if d.get("cell_id"):
            d["cell_id"] = HOSTILE[(i + 1) % len(HOSTILE)] + d["cell_id"]
        out.append(Message(contract.TOPIC_READINGS, 0, i, orjson.dumps(d), b"k", 0))
    out.append(Message(contract.TOPIC_READINGS, 0, len(out), HOSTILE[0].encode(), b"k", 0))  # a dead letter
    window = WindowState(load_scorer(models_dir))
    return process(decode(out, contract.TOPIC_READINGS, contract.TOPIC_CELL_RESULTS), window, None, len(out))


def _round_trip(store, batch) -> None:
    store.migrate()
    store.write(batch.tables)
    store.write(batch.tables)  # a replay: idempotent
    readings = store.query("SELECT line, station, seq, cell_id FROM readings")
    assert set(readings["line"]) == set(HOSTILE)
    assert len(readings) == batch.n_readings
    assert store.count("scores") == batch.n_scored > 0
    assert store.count("dead_letters") == 1
    payload = store.query("SELECT payload FROM dead_letters")["payload"].iloc[0]
    assert bytes(payload) == HOSTILE[0].encode()
    for line in HOSTILE:  # the warm-up reads with hostile values as parameters
        st_ = readings.loc[readings["line"] == line, "station"].iloc[0]
        got = store.last_readings(line, st_, 10**9, 5)
        assert len(got) > 0 and set(got["line"]) == {line}
    assert store.open_incidents([(h, "coating") for h in HOSTILE]) is not None
    assert store.open_cell_readings(HOSTILE) is not None
    assert {c for c in readings["cell_id"].dropna()} <= {c for c in readings["cell_id"].dropna()
                                                         if any(c.startswith(h) for h in HOSTILE)}


def test_hostile_ids_round_trip_through_sqlite(hostile_batch, tmp_path):
    from cellwatch.ingest.store import SQLiteStore

    store = SQLiteStore(tmp_path / "cw.db")
    _round_trip(store, hostile_batch)
    store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("method", ["copy", "executemany"])
def test_hostile_ids_round_trip_through_postgres(hostile_batch, database_url, pg_schema, pg_conn, method):
    from cellwatch.ingest.store import PostgresStore

    store = PostgresStore(database_url, schema=pg_schema, method=method)
    _round_trip(store, hostile_batch)
    store.close()
    tables = {r[0] for r in pg_conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                            (pg_schema,)).fetchall()}
    assert {"scores", "readings", "incidents", "dead_letters"} <= tables


@pytest.mark.postgres
def test_hostile_schema_name_is_quoted_as_an_identifier(database_url):
    import psycopg
    from psycopg import sql

    from cellwatch.ingest.store import PostgresStore

    name = 'cw_x"; CREATE TABLE public.pwned_by_schema (i int); --'
    try:
        store = PostgresStore(database_url, schema=name)
        with contextlib.suppress(Exception):
            store.migrate()
        store.close()
        with psycopg.connect(database_url) as c:
            pwned = c.execute("SELECT to_regclass('public.pwned_by_schema')").fetchone()[0]
            exists = c.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (name,)).fetchone()[0]
        assert pwned is None and exists == 1
    finally:
        with psycopg.connect(database_url, autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS public.pwned_by_schema")
            c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
            c.execute('DROP SCHEMA IF EXISTS "cw_x" CASCADE')


def test_simulator_and_replay_producers_take_the_kafka_security_settings(monkeypatch):
    from cellwatch.simulators.produce import producer_config

    monkeypatch.setenv("CELLWATCH_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CELLWATCH_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("CELLWATCH_KAFKA_SASL_USERNAME", "line-producer")
    monkeypatch.setenv("CELLWATCH_KAFKA_SASL_PASSWORD", "s3cret-producer")
    monkeypatch.setenv("CELLWATCH_KAFKA_SSL_CAFILE", "/etc/ssl/plant-ca.pem")
    config = producer_config()
    assert config["security_protocol"] == "SASL_SSL" and config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "line-producer" and config["sasl_plain_password"] == "s3cret-producer"
    assert config["ssl_cafile"] == "/etc/ssl/plant-ca.pem"
    assert config["acks"] == "all" and config["enable_idempotence"] is True
