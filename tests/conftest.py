"""Shared fixtures: the real local services (Kafka, PostgreSQL) and per-test isolation helpers.

Start the services with ``scripts/services up`` and export the two variables it prints
(``eval "$(scripts/services env)"``). Without them, tests that need a service are skipped locally and
FAIL in CI (env ``CI`` set), so a broken CI environment can never pass silently.

Fixtures:

* ``kafka_bootstrap`` (session): ``host:port`` from ``CELLWATCH_KAFKA``, checked once with a metadata request.
* ``database_url`` (session): from ``CELLWATCH_DATABASE_URL``, checked once with ``SELECT 1``.
* ``kafka_topic``: factory ``kafka_topic(partitions=4, name="x") -> str`` creating a uniquely named topic
  (ready to use: every partition has a leader); every topic it made is deleted at the end of the test.
* ``pg_schema``: the name of a fresh PostgreSQL schema for this test (dropped with CASCADE afterwards).
* ``pg_conn``: a psycopg 3 connection with ``search_path`` set to ``pg_schema`` (closed afterwards).
* ``tmp_sqlite``: path of a not-yet-existing SQLite database file in the test's tmp dir.
* ``models_dir`` (session): models trained once per session (3 simulated hours of one line, seed
  ``MODELS_TRAIN_SEED``) with ``cellwatch train``'s code path; shared by the end-to-end and dashboard tests so
  that the suite trains once. Treat it as read-only.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

KAFKA_ENV = "CELLWATCH_KAFKA"
DATABASE_ENV = "CELLWATCH_DATABASE_URL"
MODELS_TRAIN_SEED = 1024
MODELS_TRAIN_HOURS = 3


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _service_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        msg = f"{name} is not set: run `scripts/services up` and export the variables it prints"
        if _in_ci():
            pytest.fail(f"{msg} (CI is set, so a missing service is a failure, not a skip)", pytrace=False)
        pytest.skip(msg)
    return value


def _unique(kind: str, node_name: str) -> str:
    """A short unique, Kafka- and SQL-safe name that still says which test made it."""
    stem = re.sub(r"[^a-z0-9]+", "_", node_name.lower()).strip("_")[:30]
    return f"{kind}_{stem}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap address of the test broker; fails clearly if it is set but does not answer."""
    bootstrap = _service_env(KAFKA_ENV)
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, client_id="cellwatch-tests")
        try:
            admin.describe_cluster()
        finally:
            admin.close()
    except (KafkaError, OSError) as exc:
        pytest.fail(f"{KAFKA_ENV}={bootstrap} does not answer a metadata request ({exc!r}); "
                    "is `scripts/services up` running?", pytrace=False)
    return bootstrap


@pytest.fixture(scope="session")
def database_url() -> str:
    """URL of the test PostgreSQL database; fails clearly if it is set but does not answer."""
    url = _service_env(DATABASE_ENV)
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"{DATABASE_ENV}={url} does not answer SELECT 1 ({exc}); is `scripts/services up` running?",
                    pytrace=False)
    return url


@pytest.fixture
def kafka_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Factory creating uniquely named topics; all are deleted when the test ends."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=30_000,
                             client_id="cellwatch-tests")
    made: list[str] = []

    def create(partitions: int = 4, name: str = "t", configs: dict[str, str] | None = None) -> str:
        topic = _unique(f"test.{name}", request.node.name).replace("_", "-")
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1,
                                     "configs": configs or {}}})
        made.append(topic)
        admin.wait_for_topics([topic], timeout_ms=30_000)
        return topic

    yield create
    try:
        if made:
            admin.delete_topics(made, timeout_ms=30_000, raise_errors=False)
    finally:
        admin.close()


@pytest.fixture
def pg_schema(database_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty schema owned by the test user; dropped (CASCADE) after the test."""
    import psycopg
    from psycopg import sql

    schema = _unique("t", request.node.name)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield schema
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def pg_conn(database_url: str, pg_schema: str):
    """A psycopg 3 connection whose ``search_path`` is the test's own schema."""
    import psycopg

    with psycopg.connect(database_url, options=f"-c search_path={pg_schema}") as conn:
        yield conn


@pytest.fixture
def tmp_sqlite(tmp_path: Path) -> Path:
    """Path of a fresh SQLite database file (not created yet) inside the test's tmp dir."""
    return tmp_path / "cellwatch.sqlite3"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models trained on their own simulation (not the one a test scores) with ``cellwatch train``'s code path."""
    from cellwatch.detect.train import train_models
    from cellwatch.simulators.simulate import simulate

    root = tmp_path_factory.mktemp("models")
    sim = simulate(hours=MODELS_TRAIN_HOURS, lines=1, seed=MODELS_TRAIN_SEED)
    data = root / "train"
    data.mkdir()
    sim.readings.to_parquet(data / "readings.parquet")
    sim.cells.to_parquet(data / "cells.parquet")
    sim.faults.to_parquet(data / "faults.parquet")
    train_models(data, root / "models", progress=False)
    return root / "models"
