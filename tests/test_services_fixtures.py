"""The shared service fixtures of conftest.py do what they promise: isolation, cleanup, CI strictness."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaAdminClient

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.kafka
def test_kafka_topic_makes_unique_topics_with_the_asked_partitions(kafka_bootstrap, kafka_topic):
    a, b = kafka_topic(partitions=3, name="fx"), kafka_topic(partitions=1, name="fx")
    assert a != b
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics([a, b])}
    finally:
        admin.close()
    assert len(described[a]["partitions"]) == 3
    assert len(described[b]["partitions"]) == 1
    assert all(p["leader_id"] >= 0 for t in described.values() for p in t["partitions"])


@pytest.mark.postgres
def test_pg_conn_works_inside_its_own_schema(pg_conn, pg_schema):
    assert pg_conn.execute("SELECT current_schema()").fetchone() == (pg_schema,)
    pg_conn.execute("CREATE TABLE t (v int)")  # lands in the test schema, not in public
    assert pg_conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = 't'",
                           (pg_schema,)).fetchone() == (1,)


def _run_pytest(test_source: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a small test module with this repo's conftest.py, in a subprocess."""
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(test_source))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", "-rA",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.postgres
def test_pg_schema_is_dropped_after_the_test(database_url, tmp_path):
    res = _run_pytest("""
        def test_make(pg_schema):
            open("schema.txt", "w").write(pg_schema)
        """, tmp_path, {**os.environ})
    assert res.returncode == 0, res.stdout + res.stderr
    schema = (tmp_path / "schema.txt").read_text()
    with psycopg.connect(database_url) as conn:
        n = conn.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s",
                         (schema,)).fetchone()
    assert n == (0,)


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 error")])
def test_missing_service_skips_locally_and_fails_in_ci(tmp_path, ci, outcome):
    env = {k: v for k, v in os.environ.items() if k not in ("CELLWATCH_KAFKA", "CELLWATCH_DATABASE_URL", "CI")}
    if ci:
        env["CI"] = ci
    res = _run_pytest("""
        def test_needs_db(database_url):
            pass
        """, tmp_path, env)
    assert outcome in res.stdout, res.stdout
    assert "CELLWATCH_DATABASE_URL is not set: run `scripts/services up`" in res.stdout


def test_set_but_unreachable_service_fails_clearly(tmp_path):
    env = {**os.environ, "CELLWATCH_DATABASE_URL": "postgresql://cellwatch@127.0.0.1:9/cellwatch"}
    env.pop("CI", None)
    res = _run_pytest("""
        def test_needs_db(database_url):
            pass
        """, tmp_path, env)
    assert "1 error" in res.stdout, res.stdout
    assert "does not answer SELECT 1" in res.stdout
