"""End to end: simulator -> Kafka -> ``cellwatch run`` (a subprocess) -> PostgreSQL, with failures.

Real broker, real PostgreSQL, a real model trained on a separate simulation (``models_dir`` from
conftest). Each test uses its own topics, consumer group and schema. Kept small (1.5 simulated hours
of one line) so the file runs in a few minutes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import psycopg
import pytest

from cellwatch import contract
from cellwatch.ingest.demo import stream_messages

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

#: the Kafka clients of ``cellwatch run`` (--kafka-client); the delivery tests run with each
CLIENTS = ("kafka-python", "confluent")
SIM_SEED = 24          # 1.5 h, one line: contaminated batch (mixing), stuck sensor + mean shift (filling)
SIM_HOURS = 1.5


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def sim():
    from cellwatch.simulators.simulate import simulate

    return simulate(hours=SIM_HOURS, lines=1, seed=SIM_SEED)


@pytest.fixture(scope="session")
def reference(sim, models_dir) -> pd.DataFrame:
    """Scores of an uninterrupted in-process run (one state, time order) to compare the service with."""
    from cellwatch.detect.core import load_scorer

    scorer = load_scorer(models_dir)
    state = scorer.new_state()
    r = sim.readings.sort_values("ts", kind="stable").reset_index(drop=True)
    out = [scorer.process(r.iloc[i:i + 2000], state).scores for i in range(0, len(r), 2000)]
    return pd.concat(out, ignore_index=True).set_index(["line", "station", "seq"]).sort_index()


def bad_messages() -> list[tuple[bytes, bytes, str]]:
    """(key, value, expected reason) for every kind of bad message the DLQ must catch."""
    ts = "2026-03-02T02:30:00.000Z"
    base = {"schema": 1, "ts": ts, "line": "L1", "station": "coating", "cell_id": None, "seq": 10**9,
            "values": {"coat_weight_mg_cm2": 20.0}}
    return [
        (b"L1/coating", b"{this is not json", "undecodable"),
        (b"L1/coating", orjson.dumps({k: v for k, v in base.items() if k != "station"}), "missing_field"),
        (b"L1/coating", orjson.dumps({**base, "seq": "seven"}), "wrong_type"),
        (b"L1/coating", orjson.dumps(base).replace(b"20.0", b"NaN"), "non_finite"),
        (b"L1/coating", orjson.dumps({**base, "values": {f"s{i}": 1.0 for i in range(8000)}}), "oversized"),
    ]


def produce(bootstrap: str, topic_readings: str, topic_cells: str, messages, extra=()) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10, max_request_size=2_000_000)
    for m in messages:
        p.send(topic_readings if m.topic == contract.TOPIC_READINGS else topic_cells, value=m.value, key=m.key)
    for key, value in extra:
        p.send(topic_readings, value=value, key=key)
    p.flush()
    p.close()


class Service:
    """``cellwatch run`` as a subprocess with its own log file."""

    def __init__(self, tmp: Path, name: str, args: list[str], env: dict[str, str]):
        self.log = tmp / f"{name}.log"
        self.args, self.env = args, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        fh = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([sys.executable, "-m", "cellwatch.cli", "run", *self.args],
                                     stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        return self

    def kill(self, sig=signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until(cond, timeout: float, what: str, services=()) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        for s in services:
            if s.proc is not None and s.proc.poll() is not None:
                raise AssertionError(f"service exited ({s.proc.returncode}) while waiting for {what}:\n"
                                     + s.text()[-3000:])
        time.sleep(0.5)
    logs = "\n".join(s.text()[-3000:] for s in services)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def count(url: str, schema: str, sql: str) -> int:
    try:
        with psycopg.connect(url, options=f"-c search_path={schema}", connect_timeout=3) as c:
            return int(c.execute(sql).fetchone()[0])
    except psycopg.Error:
        return -1


def frame(url: str, schema: str, sql: str) -> pd.DataFrame:
    with psycopg.connect(url, options=f"-c search_path={schema}") as c:
        cur = c.execute(sql)
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])


@pytest.fixture
def kafka_client() -> str:
    """The service's Kafka client; tests parametrised over :data:`CLIENTS` override it."""
    return "kafka-python"


@pytest.fixture
def run_env(kafka_bootstrap, kafka_topic, database_url, pg_schema, models_dir, tmp_path, kafka_client):
    """Topics, group, schema and the flags every service of one test shares (kafka-python: the default, no flag)."""
    topics = {"readings": kafka_topic(4, "readings"), "cells": kafka_topic(2, "cells"), "dlq": kafka_topic(1, "dlq"),
              "scores": kafka_topic(1, "scores"), "incidents": kafka_topic(1, "incidents"),
              "predictions": kafka_topic(1, "predictions")}
    args = ["--topic-readings", topics["readings"], "--topic-cell-results", topics["cells"],
            "--topic-dlq", topics["dlq"], "--topic-scores", topics["scores"], "--topic-incidents", topics["incidents"],
            "--topic-predictions", topics["predictions"], "--database-schema", pg_schema,
            "--models-dir", str(models_dir), "--batch-max-records", "1000", "--batch-max-ms", "300",
            "--metrics-port", "0", "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000",
            "--db-retry-initial-s", "0.5", "--db-retry-max-s", "2"]
    if kafka_client != "kafka-python":
        args += ["--kafka-client", kafka_client]
    env = {"CELLWATCH_KAFKA": kafka_bootstrap, "CELLWATCH_DATABASE_URL": database_url,
           "CELLWATCH_GROUP_ID": f"e2e-{uuid.uuid4().hex[:8]}", "CELLWATCH_LOG_LEVEL": "INFO"}
    started: list[Service] = []

    def spawn(name: str, extra_args=(), extra_env=None) -> Service:
        svc = Service(tmp_path, name, [*args, *extra_args], {**env, **(extra_env or {})}).start()
        started.append(svc)
        return svc

    yield {"topics": topics, "args": args, "env": env, "url": database_url, "schema": pg_schema,
           "bootstrap": kafka_bootstrap, "tmp": tmp_path, "spawn": spawn}
    for svc in started:  # never leave a service running after its test, whatever happened
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait(timeout=30)


def _assert_exactly_once(url: str, schema: str, n: int) -> None:
    assert count(url, schema, "SELECT count(*) FROM readings") == n
    assert count(url, schema, "SELECT count(*) FROM scores") == n
    assert count(url, schema, "SELECT count(*) FROM (SELECT line, station, seq FROM scores "
                              "GROUP BY 1, 2, 3 HAVING count(*) > 1) d") == 0


def _assert_scores_equal_reference(url: str, schema: str, reference: pd.DataFrame) -> None:
    got = frame(url, schema, "SELECT line, station, seq, anomaly_score, is_anomaly FROM scores")
    got = got.set_index(["line", "station", "seq"]).sort_index()
    assert got.index.equals(reference.index)
    np.testing.assert_allclose(got["anomaly_score"].to_numpy(), reference["anomaly_score"].to_numpy(),
                               rtol=0, atol=1e-9)
    assert (got["is_anomaly"].to_numpy() == reference["is_anomaly"].to_numpy()).all()


# ------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("kafka_client", CLIENTS)
def test_every_reading_scored_once_faults_become_incidents_bad_messages_dead_lettered(run_env, sim, reference):
    e = run_env
    msgs = stream_messages(sim.readings, sim.cell_results())
    bad = bad_messages()
    produce(e["bootstrap"], e["topics"]["readings"], e["topics"]["cells"], msgs, [(k, v) for k, v, _ in bad])
    port = _free_port()
    svc = e["spawn"]("svc", ["--metrics-port", str(port), "--log-json"])
    n = len(sim.readings)
    wait_until(lambda: count(e["url"], e["schema"], "SELECT count(*) FROM scores") >= n
               and count(e["url"], e["schema"], "SELECT count(*) FROM dead_letters") >= len(bad), 240,
               "every reading scored", [svc])
    wait_until(lambda: count(e["url"], e["schema"], "SELECT count(*) FROM cells WHERE closed") >= len(sim.cells),
               60, "every EOL result stored", [svc])
    import urllib.request

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    # counters move after the offset commit, a moment after the rows are visible in the database
    wait_until(lambda: f"cellwatch_readings_scored_total {float(n)}" in scrape(), 30, "the scored counter", [svc])
    metrics = scrape()
    assert svc.kill(signal.SIGTERM) == 0  # a clean stop
    assert 'cellwatch_dead_letters_total{reason="oversized"} 1.0' in metrics
    assert "cellwatch_end_to_end_seconds_count" in metrics and "cellwatch_consumer_lag{" in metrics
    assert 'cellwatch_model_info{version="stations@' in metrics
    # --log-json: every line of ours is one JSON object
    ours = [line for line in svc.text().splitlines() if line.startswith("{")]
    assert ours and all(orjson.loads(line)["logger"] for line in ours)

    # the results are on the output topics (one score message per reading)
    from kafka import KafkaConsumer
    c = KafkaConsumer(e["topics"]["scores"], bootstrap_servers=e["bootstrap"], auto_offset_reset="earliest",
                      consumer_timeout_ms=5000, group_id=None)
    keys = {(d["line"], d["station"], d["seq"]) for d in (orjson.loads(m.value) for m in c)}
    c.close()
    assert len(keys) == n
    _assert_exactly_once(e["url"], e["schema"], n)
    _assert_scores_equal_reference(e["url"], e["schema"], reference)

    dead = frame(e["url"], e["schema"], "SELECT reason, payload FROM dead_letters ORDER BY source_offset")
    assert sorted(dead["reason"]) == sorted(r for _, _, r in bad)
    assert sorted(bytes(p) for p in dead["payload"]) == sorted(v for _, v, _ in bad)

    # the DLQ topic holds the original bytes with the reason in the headers
    c = KafkaConsumer(e["topics"]["dlq"], bootstrap_servers=e["bootstrap"], auto_offset_reset="earliest",
                      consumer_timeout_ms=5000, group_id=None)
    got = [(m.value, dict((k, v.decode()) for k, v in m.headers)) for m in c]
    c.close()
    assert sorted(v for v, _ in got) == sorted(v for _, v, _ in bad)
    assert sorted(h["cellwatch.reason"] for _, h in got) == sorted(r for _, _, r in bad)
    assert all(h["cellwatch.source_topic"] == e["topics"]["readings"] for _, h in got)

    # cells: a prediction per cell station passed, the EOL result closes the record
    assert count(e["url"], e["schema"], "SELECT count(*) FROM cells WHERE closed AND grade IS NOT NULL") == \
        len(sim.cells)
    assert count(e["url"], e["schema"], "SELECT count(*) FROM cell_predictions") > 0
    assert count(e["url"], e["schema"], "SELECT count(*) FROM pipeline_stats") > 0
    assert count(e["url"], e["schema"], "SELECT count(*) FROM model_versions WHERE in_production") == 1

    # every injected fault of a detectable kind became an incident on its station
    from cellwatch.detect.evaluate import detectable_faults  # the detection engineer's definition
    from cellwatch.ingest.report import match_faults
    incidents = frame(e["url"], e["schema"], "SELECT * FROM incidents")
    faults = detectable_faults(sim.faults)
    assert len(faults) >= 2
    matched = match_faults(faults, incidents)
    missed = matched[matched["incident_id"].isna()]
    assert missed.empty, f"faults without an incident:\n{missed}"


@pytest.mark.parametrize("kafka_client", CLIENTS)
def test_sigkill_mid_run_loses_nothing_duplicates_nothing(run_env, sim, reference, kafka_client):
    e = run_env
    msgs = stream_messages(sim.readings, sim.cell_results())
    produce(e["bootstrap"], e["topics"]["readings"], e["topics"]["cells"], msgs)
    n = len(sim.readings)
    small = ["--batch-max-records", "300"]  # many batches: the kill lands mid-run
    svc = e["spawn"]("svc", small)
    wait_until(lambda: count(e["url"], e["schema"], "SELECT count(*) FROM scores") >= n // 3, 180,
               "a third scored", [svc])
    svc.kill(signal.SIGKILL)
    before = count(e["url"], e["schema"], "SELECT count(*) FROM scores")
    assert before < n, "the run finished before it could be killed; make the simulation longer"
    t0 = time.monotonic()
    svc2 = e["spawn"]("svc2", small)
    wait_until(lambda: count(e["url"], e["schema"], "SELECT count(*) FROM scores") > before, 120,
               "progress after the restart", [svc2])
    recovery = time.monotonic() - t0
    wait_until(lambda: count(e["url"], e["schema"], "SELECT count(*) FROM scores") >= n, 240, "every reading", [svc2])
    svc2.kill(signal.SIGTERM)
    assert f"({kafka_client})" in svc2.text()  # the client asked for is the one that ran
    print(f"restart: first new batch committed {recovery:.1f} s after the process started")
    assert "rebuilt the window state" in svc2.text()
    _assert_exactly_once(e["url"], e["schema"], n)
    _assert_scores_equal_reference(e["url"], e["schema"], reference)
    # incidents equal an uninterrupted run's (same ids: no incident duplicated, none lost)
    from cellwatch.detect.core import load_scorer
    models = Path(e["args"][e["args"].index("--models-dir") + 1])
    scorer = load_scorer(models)
    state = scorer.new_state()
    r = sim.readings.sort_values("ts", kind="stable").reset_index(drop=True)
    ids = set()
    for i in range(0, len(r), 2000):
        ids |= set(scorer.process(r.iloc[i:i + 2000], state).incidents["incident_id"])
    got = frame(e["url"], e["schema"], "SELECT incident_id FROM incidents")["incident_id"]
    assert set(got) == ids


@pytest.mark.parametrize("kafka_client", CLIENTS)
def test_two_consumers_share_partitions_and_take_over(run_env, sim):
    e = run_env
    a = e["spawn"]("a", ["--worker-id", "worker-a"])
    b = e["spawn"]("b", ["--worker-id", "worker-b"])
    wait_until(lambda: "partitions assigned" in a.text() and "partitions assigned" in b.text(), 90,
               "both members assigned", [a, b])
    msgs = stream_messages(sim.readings, sim.cell_results())
    produce(e["bootstrap"], e["topics"]["readings"], e["topics"]["cells"], msgs)
    n = len(sim.readings)
    wait_until(lambda: count(e["url"], e["schema"], "SELECT count(DISTINCT worker) FROM pipeline_stats") >= 2,
               120, "both workers committing", [a, b])
    a.kill(signal.SIGKILL)
    wait_until(lambda: count(e["url"], e["schema"], "SELECT count(*) FROM scores") >= n, 240,
               "every reading after the take-over", [b])
    b.kill(signal.SIGTERM)
    _assert_exactly_once(e["url"], e["schema"], n)
    workers = frame(e["url"], e["schema"], "SELECT worker, sum(scored) AS n FROM pipeline_stats GROUP BY worker")
    assert set(workers["worker"]) == {"worker-a", "worker-b"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_postgres(tmp_path):
    """A PostgreSQL server of our own (initdb in tmp, as the postgres user) that the test may stop."""
    bindir = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip() or
                  "/usr/lib/postgresql/15/bin")
    if not (bindir / "initdb").exists():
        found = shutil.which("initdb")
        if not found:
            pytest.fail("initdb not found (PostgreSQL server binaries are needed)")
        bindir = Path(found).resolve().parent
    root = Path(f"/tmp/cw-pg-{uuid.uuid4().hex[:8]}")
    root.mkdir()
    data = root / "data"
    port = _free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(root, "postgres")
    subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    ctl = [*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    start = [*ctl, "-o", opts, "start"]
    subprocess.run(start, check=True, capture_output=True)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    yield {"url": url, "stop": lambda: subprocess.run([*ctl, "-m", "fast", "stop"], check=True, capture_output=True),
           "start": lambda: subprocess.run(start, check=True, capture_output=True)}
    subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("kafka_client", CLIENTS)
def test_postgres_outage_pauses_then_resumes_without_loss(run_env, sim, private_postgres):
    e = run_env
    url = private_postgres["url"]
    svc = e["spawn"]("svc", extra_env={"CELLWATCH_DATABASE_URL": url})
    msgs = stream_messages(sim.readings, sim.cell_results())
    produce(e["bootstrap"], e["topics"]["readings"], e["topics"]["cells"], msgs)
    n = len(sim.readings)
    wait_until(lambda: count(url, e["schema"], "SELECT count(*) FROM scores") >= n // 4, 180, "a quarter", [svc])
    private_postgres["stop"]()
    stopped = time.monotonic()
    wait_until(lambda: "store unavailable" in svc.text(), 60, "the outage noticed", [svc])
    # PostgreSQL stays down 30 s: the service keeps its group membership, retries with backoff, commits nothing
    time.sleep(max(0.0, 30.0 - (time.monotonic() - stopped)))
    assert svc.proc.poll() is None
    private_postgres["start"]()
    wait_until(lambda: count(url, e["schema"], "SELECT count(*) FROM scores") >= n, 240, "every reading", [svc])
    assert svc.kill(signal.SIGTERM) == 0
    _assert_exactly_once(url, e["schema"], n)


def test_promoted_model_is_used_from_the_next_batch_and_incidents_reach_grafana(run_env, sim, models_dir, tmp_path,
                                                                                  httpserver):
    from fake_grafana import FakeGrafana

    from cellwatch.detect.registry import ModelRegistry

    e = run_env
    grafana = FakeGrafana().install(httpserver)
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    svc = e["spawn"]("svc", ["--models-dir", str(models), "--model-check-s", "0.5",  # the later flag wins
                             "--grafana-url", httpserver.url_for("/")], {"CELLWATCH_GRAFANA_TOKEN": "glsa_e2e_token"})
    r = sim.readings.sort_values("ts", kind="stable")
    half = len(r) // 2
    first, second = r.iloc[:half], r.iloc[half:]
    produce(e["bootstrap"], e["topics"]["readings"], e["topics"]["cells"], stream_messages(first, first.iloc[:0]))
    wait_until(lambda: count(e["url"], e["schema"], "SELECT count(*) FROM scores") >= len(first), 180,
               "first half", [svc])
    v1 = frame(e["url"], e["schema"], "SELECT DISTINCT model_version FROM scores")["model_version"].tolist()
    reg = ModelRegistry(models)
    artefact, _ = reg.load("stations")
    new = reg.register("stations", artefact, {**reg.metadata("stations"), "note": "promoted by test"}, promote=True)
    wait_until(lambda: count(e["url"], e["schema"], "SELECT count(*) FROM model_versions WHERE in_production "
                                                    f"AND version LIKE 'stations@{new}%'") == 1,
               60, "the new version loaded", [svc])
    produce(e["bootstrap"], e["topics"]["readings"], e["topics"]["cells"], stream_messages(second, second.iloc[:0]))
    wait_until(lambda: count(e["url"], e["schema"], "SELECT count(*) FROM scores") >= len(r), 180, "second half",
               [svc])
    svc.kill(signal.SIGTERM)
    versions = frame(e["url"], e["schema"], "SELECT seq, station, model_version FROM scores")
    by = versions.set_index(["station", "seq"])["model_version"]
    assert len(v1) == 1 and v1[0].startswith("stations@1")
    firsts = by.loc[list(zip(first["station"], first["seq"], strict=True))]
    seconds = by.loc[list(zip(second["station"], second["seq"], strict=True))]
    assert (firsts == v1[0]).all()
    assert seconds.str.startswith(f"stations@{new}").all()
    mv = frame(e["url"], e["schema"], "SELECT version, in_production FROM model_versions")
    assert mv.set_index("version")["in_production"].to_dict() == {v1[0]: False, seconds.iloc[0]: True}
    _assert_exactly_once(e["url"], e["schema"], len(r))
    # every incident became one Grafana annotation (the token never reached the log)
    ids = set(frame(e["url"], e["schema"], "SELECT incident_id FROM incidents")["incident_id"])
    assert ids, "the run produced no incident to annotate"
    assert {a["data"]["incident_id"] for a in grafana.annotations.values()} == ids
    assert grafana.violations == []
    assert "glsa_e2e_token" not in svc.text() and "incident annotations go to Grafana" in svc.text()


# ------------------------------------------------------------------------------------------- in-process

def test_in_process_restart_from_the_store_equals_an_uninterrupted_run(sim, models_dir, reference, tmp_path):
    """The pipeline core alone (SQLite store): a fresh worker state warmed from the store mid-stream."""
    from cellwatch.detect.core import load_scorer
    from cellwatch.ingest.demo import micro_batches
    from cellwatch.ingest.pipeline import decode, process
    from cellwatch.ingest.state import WindowState
    from cellwatch.ingest.store import SQLiteStore

    store = SQLiteStore(tmp_path / "cw.db")
    store.migrate()
    msgs = stream_messages(sim.readings, sim.cell_results())
    batches = list(micro_batches(msgs, 700))
    cut = len(batches) // 2
    window = WindowState(load_scorer(models_dir))
    for b in batches[:cut]:
        store.write(process(decode(b, contract.TOPIC_READINGS, contract.TOPIC_CELL_RESULTS), window, store,
                            len(b)).tables)
    window = WindowState(load_scorer(models_dir))  # "restart": nothing in memory
    replay = batches[cut - 1]  # the last batch again, as after a crash before the offset commit
    for b in [replay, *batches[cut:]]:
        store.write(process(decode(b, contract.TOPIC_READINGS, contract.TOPIC_CELL_RESULTS), window, store,
                            len(b)).tables)
    assert window.rebuilds >= 1
    got = store.query("SELECT line, station, seq, anomaly_score FROM scores").set_index(
        ["line", "station", "seq"]).sort_index()
    assert got.index.equals(reference.index)
    np.testing.assert_allclose(got["anomaly_score"].to_numpy(), reference["anomaly_score"].to_numpy(), atol=1e-9)
    assert store.count("readings") == len(sim.readings)


def test_demo_in_process_writes_sqlite_and_a_report(models_dir, tmp_path):
    from cellwatch.ingest.demo import DemoOptions, run_demo

    report = run_demo(DemoOptions(out=tmp_path / "demo", models=models_dir, hours=0.5, live=False, seed=3))
    from cellwatch.ingest.store import SQLiteStore
    store = SQLiteStore(tmp_path / "demo" / "cellwatch.db")
    n = store.count("readings")
    assert n > 1000 and store.count("scores") == n
    assert store.count("pipeline_stats") == 0  # the demo has no consumer: stats are the service's
    text = report.read_text()
    assert "cellwatch demo report" in text and "data:image/png;base64," in text
