"""Fault injection against real Kafka and real PostgreSQL: every valid reading's result stored exactly once.

Scenarios (each its own topics, consumer group and schema; ``cellwatch run`` as a subprocess):

* SIGKILL at random points, >= 10 times, then drain;
* the broker stopped and restarted mid-stream (a PRIVATE broker from ``scripts/services``, so the shared dev
  broker keeps running);
* a second consumer joining the group while the first one has a batch in flight (rebalance);
* a corrupt model version promoted (the service keeps the last good model, says so, scores keep flowing);
* Grafana's annotation endpoint down, then slow, while the pipeline core scores (scoring unaffected, every
  incident annotated once afterwards) — ``cellwatch run`` does not wire the AnnotationSender yet, so this one
  runs the same pipeline core in process (see docs/reliability.md).

The PostgreSQL outage (private server, service pauses and resumes) is covered by
``tests/test_e2e_streaming.py::test_postgres_outage_pauses_then_resumes_without_loss`` and not repeated here.

Each scenario records (iterations, readings sent, results found, lost, duplicated, incidents lost/extra) in a
table printed at the end of the module (``pytest -s``) and written as JSON to ``reliability.json`` in pytest's
base temp dir (or to ``$CELLWATCH_RELIABILITY_REPORT``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from test_e2e_streaming import Service, count, frame, produce, wait_until
from test_services_script import free_ports

from cellwatch import contract
from cellwatch.ingest.demo import stream_messages

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

SIM_SEED = 24      # one line, faults on mixing and filling (incidents to compare)
SIM_HOURS = 1.8    # ~10.5k readings
GRAFANA_MESSAGES = 4000
REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "scripts" / "services"
RESULTS: list[dict] = []


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def sim():
    from cellwatch.simulators.simulate import simulate

    return simulate(hours=SIM_HOURS, lines=1, seed=SIM_SEED)


@pytest.fixture(scope="module")
def reference(sim, models_dir) -> dict:
    """Score keys and incident ids of an uninterrupted in-process run over the same input."""
    from cellwatch.detect.core import load_scorer

    scorer = load_scorer(models_dir)
    state = scorer.new_state()
    r = sim.readings.sort_values("ts", kind="stable").reset_index(drop=True)
    ids: set[str] = set()
    for i in range(0, len(r), 2000):
        ids |= set(scorer.process(r.iloc[i:i + 2000], state).incidents["incident_id"])
    return {"keys": set(zip(r["line"], r["station"], r["seq"].astype(int), strict=True)), "incidents": ids,
            "n": len(r)}


@pytest.fixture(scope="module", autouse=True)
def report_table(tmp_path_factory):
    """Print the scenario table and write it as JSON when the module ends."""
    yield
    if not RESULTS:
        return
    cols = ["scenario", "iterations", "readings_sent", "results_found", "lost", "duplicated",
            "incidents_reference", "incidents_found", "incidents_lost", "incidents_extra", "seconds"]
    table = pd.DataFrame(RESULTS)[cols]
    text = table.to_string(index=False)
    print("\n\nreliability scenarios\n" + text)
    target = os.environ.get("CELLWATCH_RELIABILITY_REPORT") or str(tmp_path_factory.getbasetemp() /
                                                                   "reliability.json")
    Path(target).write_text(json.dumps(RESULTS, indent=2, default=str))
    print(f"(written to {target})")


def _topics(admin_bootstrap: str, tag: str) -> dict[str, str]:
    """Fresh uniquely named topics on a broker (the conftest fixture only knows the shared broker)."""
    from kafka import KafkaAdminClient

    u = uuid.uuid4().hex[:8]
    names = {"readings": (4, f"rel-{tag}-readings-{u}"), "cells": (2, f"rel-{tag}-cells-{u}"),
             "dlq": (1, f"rel-{tag}-dlq-{u}"), "scores": (1, f"rel-{tag}-scores-{u}"),
             "incidents": (1, f"rel-{tag}-incidents-{u}"), "predictions": (1, f"rel-{tag}-predictions-{u}")}
    admin = KafkaAdminClient(bootstrap_servers=admin_bootstrap, request_timeout_ms=30_000, client_id="rel-tests")
    try:
        admin.create_topics({n: {"num_partitions": p, "replication_factor": 1} for p, n in names.values()})
        admin.wait_for_topics([n for _, n in names.values()], timeout_ms=30_000)
    finally:
        admin.close()
    return {k: n for k, (_, n) in names.items()}


def _delete_topics(bootstrap: str, names) -> None:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000, client_id="rel-tests")
        try:
            admin.delete_topics(list(names), timeout_ms=30_000, raise_errors=False)
        finally:
            admin.close()
    except Exception:  # the broker may be gone already (private broker torn down)
        pass


class Env:
    """Topics, group, schema, and ``cellwatch run`` processes of one scenario."""

    def __init__(self, bootstrap: str, url: str, schema: str, models: Path, tmp: Path, tag: str):
        self.bootstrap, self.url, self.schema, self.models, self.tmp = bootstrap, url, schema, models, tmp
        self.topics = _topics(bootstrap, tag)
        self.group = f"rel-{tag}-{uuid.uuid4().hex[:8]}"
        self.started: list[Service] = []

    def args(self, batch: int = 500) -> list[str]:
        t = self.topics
        return ["--topic-readings", t["readings"], "--topic-cell-results", t["cells"], "--topic-dlq", t["dlq"],
                "--topic-scores", t["scores"], "--topic-incidents", t["incidents"],
                "--topic-predictions", t["predictions"], "--database-schema", self.schema,
                "--models-dir", str(self.models), "--batch-max-records", str(batch), "--batch-max-ms", "300",
                "--metrics-port", "0", "--session-timeout-ms", "6000", "--heartbeat-interval-ms", "1000",
                "--db-retry-initial-s", "0.5", "--db-retry-max-s", "2"]

    def spawn(self, name: str, batch: int = 500, extra: tuple[str, ...] = ()) -> Service:
        env = {"CELLWATCH_KAFKA": self.bootstrap, "CELLWATCH_DATABASE_URL": self.url,
               "CELLWATCH_GROUP_ID": self.group, "CELLWATCH_LOG_LEVEL": "INFO"}
        svc = Service(self.tmp, name, [*self.args(batch), *extra], env).start()
        self.started.append(svc)
        return svc

    def produce(self, readings: pd.DataFrame, cell_results: pd.DataFrame) -> None:
        produce(self.bootstrap, self.topics["readings"], self.topics["cells"],
                stream_messages(readings, cell_results))

    def scored(self) -> int:
        return count(self.url, self.schema, "SELECT count(*) FROM scores")

    def cleanup(self) -> None:
        for svc in self.started:
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.kill()
                svc.proc.wait(timeout=30)
        _delete_topics(self.bootstrap, self.topics.values())


@pytest.fixture
def env_factory(database_url, pg_schema, models_dir, tmp_path, request):
    made: list[Env] = []

    def make(bootstrap: str, tag: str, models: Path | None = None) -> Env:
        e = Env(bootstrap, database_url, pg_schema, models or models_dir, tmp_path, tag)
        made.append(e)
        return e

    yield make
    for e in made:
        e.cleanup()


def tally(e: Env, scenario: str, iterations: int, reference: dict, started: float, keys=None,
          incidents_ref=None) -> dict:
    """Compare the store with what was sent: results per natural key, incidents with the reference run."""
    keys = reference["keys"] if keys is None else keys
    incidents_ref = reference["incidents"] if incidents_ref is None else incidents_ref
    got = frame(e.url, e.schema, "SELECT line, station, seq, count(*) AS n FROM scores GROUP BY 1, 2, 3")
    found = {(a, b, int(c)) for a, b, c in zip(got["line"], got["station"], got["seq"], strict=True)}
    inc = frame(e.url, e.schema, "SELECT incident_id, count(*) AS n FROM incidents GROUP BY 1")
    row = {"scenario": scenario, "iterations": iterations, "readings_sent": len(keys),
           "results_found": int(got["n"].sum()), "lost": len(keys - found),
           "duplicated": int((got["n"] - 1).sum()) + len(found - keys),
           "incidents_reference": len(incidents_ref), "incidents_found": int(inc["n"].sum()),
           "incidents_lost": len(set(incidents_ref) - set(inc["incident_id"])),
           "incidents_extra": len(set(inc["incident_id"]) - set(incidents_ref)) + int((inc["n"] - 1).sum()),
           "seconds": round(time.monotonic() - started, 1)}
    RESULTS.append(row)
    return row


def assert_exactly_once(row: dict) -> None:
    assert row["lost"] == 0 and row["duplicated"] == 0, row
    assert row["results_found"] == row["readings_sent"], row
    assert row["incidents_lost"] == 0 and row["incidents_extra"] == 0, row


# ------------------------------------------------------------------------------------------- SIGKILL

KILLS = 10


def test_sigkill_at_random_points_ten_times_then_drain(env_factory, kafka_bootstrap, sim, reference):
    """kill -9 after a random number of committed batches (or a random delay from start), restart, repeat."""
    t0 = time.monotonic()
    e = env_factory(kafka_bootstrap, "kill")
    e.produce(sim.readings, sim.cell_results())
    n = reference["n"]
    rng = np.random.default_rng(20261125)
    batch = 200
    kills = 0
    points: list[str] = []
    for i in range(KILLS):
        before = e.scored()
        if before >= n:
            break
        svc = e.spawn(f"svc{i}", batch)
        if i % 3 == 2:  # a pure random delay from process start (may land in start-up, warm-up or a write)
            delay = float(rng.uniform(1.0, 10.0))
            time.sleep(delay)
            points.append(f"t+{delay:.1f}s")
        else:           # after 1-2 committed batches of this process, plus 0-1.5 s (mid-batch)
            k = int(rng.integers(1, 3))
            target = min(n, before + k * batch)
            wait_until(lambda t=target: e.scored() >= t, 180, f"kill {i}: {k} batches committed", [svc])
            extra = float(rng.uniform(0.0, 1.5))
            time.sleep(extra)
            points.append(f"{k}b+{extra:.1f}s")
        if svc.proc.poll() is not None:
            raise AssertionError(f"service exited by itself ({svc.proc.returncode}):\n{svc.text()[-3000:]}")
        svc.kill(signal.SIGKILL)
        kills += 1
    assert kills >= KILLS, f"only {kills} kills before everything was scored; make the simulation longer"
    mid = e.scored()
    assert mid < n, "the kills did not interrupt the stream"
    last = e.spawn("drain", batch)
    wait_until(lambda: e.scored() >= n, 300, "every reading after the last restart", [last])
    time.sleep(1.0)  # a replayed batch in flight must not add anything
    assert last.kill(signal.SIGTERM) == 0
    row = tally(e, "SIGKILL at random points", kills, reference, t0)
    row["kill_points"] = points
    assert_exactly_once(row)
    assert count(e.url, e.schema, "SELECT count(*) FROM readings") == n
    assert "rebuilt the window state" in last.text()


# ------------------------------------------------------------------------------------------- private broker

def _main_kafka_libs() -> Path | None:
    root = Path(os.environ.get("CELLWATCH_SERVICES_DIR") or REPO / ".services")
    libs = root / "kafka" / "libs"
    return libs if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")) else None


@pytest.fixture
def private_kafka():
    """A Kafka broker of our own (scripts/services, own data folder and ports) that the test may stop."""
    if shutil.which("java") is None:
        pytest.fail("java is needed for a private Kafka broker")
    root = Path(tempfile.mkdtemp(prefix="cw-rel-kafka-"))
    root.chmod(0o755)
    data = root / "services"
    libs = _main_kafka_libs()
    if libs is not None:  # reuse the jars the dev services already fetched (no Maven run)
        (data / "kafka").mkdir(parents=True)
        (data / "kafka" / "libs").symlink_to(libs, target_is_directory=True)
    kport, cport, pgport = free_ports(3)
    env = {**os.environ, "CELLWATCH_SERVICES_DIR": str(data), "CELLWATCH_KAFKA_PORT": str(kport),
           "CELLWATCH_KAFKA_CONTROLLER_PORT": str(cport), "CELLWATCH_PG_PORT": str(pgport),
           "CELLWATCH_SERVICES_TIMEOUT": "150"}

    def run(*args: str) -> None:
        res = subprocess.run([sys.executable, str(SERVICES), *args], env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, f"scripts/services {' '.join(args)} failed:\n{res.stderr[-3000:]}"

    run("up", "kafka")
    try:
        yield {"bootstrap": f"127.0.0.1:{kport}", "stop": lambda: run("stop-kafka"),
               "start": lambda: run("start-kafka")}
    finally:
        subprocess.run([sys.executable, str(SERVICES), "down", "kafka"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(root, ignore_errors=True)


def test_broker_stopped_and_restarted_mid_stream(env_factory, private_kafka, sim, reference):
    t0 = time.monotonic()
    e = env_factory(private_kafka["bootstrap"], "broker")
    e.produce(sim.readings, sim.cell_results())
    n = reference["n"]
    svc = e.spawn("svc", 500)
    wait_until(lambda: e.scored() >= n // 4, 180, "a quarter scored", [svc])
    private_kafka["stop"]()
    down_at = e.scored()
    time.sleep(15)  # the broker stays down: the service must neither die nor commit anything wrong
    assert svc.proc.poll() is None, svc.text()[-3000:]
    during = e.scored()
    private_kafka["start"]()
    wait_until(lambda: e.scored() >= n, 300, "every reading after the broker came back", [svc])
    time.sleep(1.0)
    assert svc.kill(signal.SIGTERM) == 0
    row = tally(e, "broker stopped 15 s and restarted", 1, reference, t0)
    row["scored_when_stopped"], row["scored_while_down"] = down_at, during
    assert down_at < n, "everything was scored before the broker stopped"
    assert_exactly_once(row)


# ------------------------------------------------------------------------------------------- rebalance

def test_second_consumer_joins_while_a_batch_is_in_flight(env_factory, kafka_bootstrap, sim, reference):
    t0 = time.monotonic()
    e = env_factory(kafka_bootstrap, "rebal")
    e.produce(sim.readings, sim.cell_results())
    n = reference["n"]
    a = e.spawn("a", 1000, ("--worker-id", "worker-a"))
    # after A's first commit it is always busy with the next batch (scoring 1000 readings takes seconds)
    wait_until(lambda: count(e.url, e.schema, "SELECT count(*) FROM pipeline_stats") >= 1 and e.scored() > 0,
               180, "worker A committed a batch", [a])
    time.sleep(0.5)
    b = e.spawn("b", 1000, ("--worker-id", "worker-b"))
    wait_until(lambda: "partitions revoked" in a.text(), 90, "A's partitions revoked by the join", [a, b])
    wait_until(lambda: e.scored() >= n, 300, "every reading with two members", [a, b])
    time.sleep(1.0)
    assert a.kill(signal.SIGTERM) == 0 and b.kill(signal.SIGTERM) == 0
    row = tally(e, "2nd consumer joins mid-batch", 1, reference, t0)
    workers = frame(e.url, e.schema, "SELECT worker, sum(scored) AS n FROM pipeline_stats GROUP BY worker")
    row["scored_by_worker"] = dict(zip(workers["worker"], workers["n"].astype(int), strict=True))
    row["a_commit_after_revocation"] = ("reassigned meanwhile" in a.text() or "offset commit failed" in a.text())
    assert "partitions assigned" in b.text()
    assert_exactly_once(row)


# ------------------------------------------------------------------------------------------- corrupt model

def test_corrupt_model_promoted_keeps_the_last_good_one(env_factory, kafka_bootstrap, sim, reference, models_dir,
                                                        tmp_path):
    t0 = time.monotonic()
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    e = env_factory(kafka_bootstrap, "model", models)
    r = sim.readings.sort_values("ts", kind="stable")
    half = len(r) // 2
    first, second = r.iloc[:half], r.iloc[half:]
    svc = e.spawn("svc", 1000, ("--model-check-s", "0.5"))
    e.produce(first, first.iloc[:0])
    wait_until(lambda: e.scored() >= len(first), 180, "first half", [svc])
    v1 = frame(e.url, e.schema, "SELECT DISTINCT model_version FROM scores")["model_version"].tolist()
    # a bad deploy: a new stations version whose artefact is garbage, put into production behind the
    # registry's back (ModelRegistry.promote refuses unloadable versions, a file copy does not)
    good = models / "stations" / "1"
    bad = models / "stations" / "2"
    shutil.copytree(good, bad)
    (bad / "model.joblib").write_bytes(b"\x80\x04not a pickle at all" + os.urandom(256))
    meta = json.loads((bad / "metadata.json").read_text())
    meta.pop("artefact_sha256", None)  # no checksum: the unpickling itself fails
    (bad / "metadata.json").write_text(json.dumps(meta))
    (models / "stations" / "PRODUCTION").write_text("2\n")
    wait_until(lambda: "loading the newly promoted model failed; keeping" in svc.text(), 60,
               "the failed load logged", [svc])
    e.produce(second, second.iloc[:0])
    wait_until(lambda: e.scored() >= len(r), 180, "second half", [svc])
    time.sleep(1.0)
    assert svc.proc.poll() is None
    assert svc.kill(signal.SIGTERM) == 0
    row = tally(e, "corrupt model promoted", 1, reference, t0)
    versions = frame(e.url, e.schema, "SELECT model_version, count(*) AS n FROM scores GROUP BY 1")
    row["model_versions"] = dict(zip(versions["model_version"], versions["n"].astype(int), strict=True))
    assert len(v1) == 1 and row["model_versions"] == {v1[0]: len(r)}, row["model_versions"]
    assert svc.text().count("loading the newly promoted model failed") == 1  # once per fingerprint
    assert_exactly_once(row)


# ------------------------------------------------------------------------------------------- Grafana

def test_grafana_down_then_slow_scoring_unaffected_annotations_delivered(httpserver, sim, reference, models_dir,
                                                                         tmp_path):
    """The pipeline core + AnnotationSender (what ``cellwatch run`` should wire, see REQUESTS.md)."""
    from fake_grafana import FakeGrafana

    from cellwatch.dashboards import sync
    from cellwatch.dashboards.annotations import AnnotationSender
    from cellwatch.detect.core import load_scorer
    from cellwatch.ingest.demo import micro_batches
    from cellwatch.ingest.pipeline import decode, process
    from cellwatch.ingest.state import WindowState
    from cellwatch.ingest.store import SQLiteStore

    t0 = time.monotonic()
    grafana = FakeGrafana().install(httpserver)
    grafana.fail_status = 503          # phase 1: Grafana answers 503 to everything
    sender = AnnotationSender(sync.connect(httpserver.url_for("/"), "glsa_test", timeout=5), backoff_s=0.05,
                              max_backoff_s=0.5)
    store = SQLiteStore(tmp_path / "cw.db")
    store.migrate()
    window = WindowState(load_scorer(models_dir))
    msgs = stream_messages(sim.readings, sim.cell_results())[:GRAFANA_MESSAGES]  # a slice keeps it short
    sent = {(r["line"], r["station"], int(r["seq"])) for r in
            (orjson.loads(m.value) for m in msgs if m.topic == contract.TOPIC_READINGS)}
    batches = list(micro_batches(msgs, 1000))
    submit_s = 0.0
    for i, b in enumerate(batches):
        if i == len(batches) // 2:     # phase 2: up but 0.5 s per request
            grafana.fail_status, grafana.delay_s = None, 0.5
        out = process(decode(b, contract.TOPIC_READINGS, contract.TOPIC_CELL_RESULTS), window, store, len(b))
        store.write(out.tables)
        t = time.perf_counter()
        sender.submit(out.tables["incidents"])
        submit_s += time.perf_counter() - t
    assert sender.retries > 0, "Grafana was never found down"
    grafana.delay_s = 0.0              # phase 3: healthy; everything queued must arrive
    delivered = sender.flush(timeout=60)
    sender.close(timeout=5)
    scores = store.query("SELECT line, station, seq FROM scores")
    keys = {(a, b, int(c)) for a, b, c in zip(scores["line"], scores["station"], scores["seq"], strict=True)}
    inc = store.query("SELECT incident_id, status, end_ts FROM incidents")
    ann = {a["data"]["incident_id"]: a for a in grafana.annotations.values()}
    ann_per_incident = pd.Series([a["data"]["incident_id"] for a in grafana.annotations.values()]).value_counts()
    row = {"scenario": "Grafana down, then slow", "iterations": 1, "readings_sent": len(sent),
           "results_found": len(scores), "lost": len(sent - keys), "duplicated": len(scores) - len(keys),
           "incidents_reference": len(inc), "incidents_found": len(ann), "incidents_lost": len(set(inc["incident_id"])
                                                                                            - set(ann)),
           "incidents_extra": int((ann_per_incident - 1).sum()),
           "seconds": round(time.monotonic() - t0, 1), "annotations": len(ann), "grafana_retries": sender.retries,
           "annotation_dropped": sender.dropped, "submit_total_s": round(submit_s, 3)}
    RESULTS.append(row)
    assert delivered and sender.dropped == 0 and sender.failed == 0
    assert grafana.violations == []
    assert row["lost"] == 0 and row["duplicated"] == 0 and row["results_found"] == len(sent), row
    assert set(ann) == set(inc["incident_id"])       # every stored incident annotated ...
    assert row["incidents_extra"] == 0, ann_per_incident  # ... once (a timed-out POST is looked up, not re-sent)
    closed = set(inc.loc[inc["status"] == "closed", "incident_id"])
    assert all("timeEnd" in ann[i] for i in closed)  # closed incidents became regions
    assert submit_s < 1.0, f"submit() blocked the scoring loop for {submit_s:.2f}s"
