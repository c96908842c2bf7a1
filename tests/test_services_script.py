"""scripts/services: status and errors, and a full lifecycle on spare ports (restarts keep the data)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "services"


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(data: Path, kafka: int, controller: int, pg: int) -> dict[str, str]:
    return {**os.environ, "CELLWATCH_SERVICES_DIR": str(data), "CELLWATCH_KAFKA_PORT": str(kafka),
            "CELLWATCH_KAFKA_CONTROLLER_PORT": str(controller), "CELLWATCH_PG_PORT": str(pg),
            "CELLWATCH_SERVICES_TIMEOUT": "120"}


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def spare(tmp_path: Path) -> dict[str, str]:
    return _env(tmp_path / "services", *free_ports(3))


def test_status_of_nothing_running_says_down_and_exits_3(spare):
    res = _run(spare, "status")
    assert res.returncode == 3
    assert "kafka: down" in res.stdout
    assert "postgres: down" in res.stdout


def test_down_when_nothing_runs_is_a_no_op(spare):
    res = _run(spare, "down")
    assert res.returncode == 0, res.stderr
    assert "kafka: not running" in res.stderr


def test_up_refuses_a_port_taken_by_someone_else(spare):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        env = {**spare, "CELLWATCH_KAFKA_PORT": str(s.getsockname()[1])}
        res = _run(env, "up", "kafka")
    assert res.returncode == 1
    assert "already in use" in res.stderr


def test_env_prints_the_two_export_lines(spare):
    res = _run(spare, "env")
    assert res.returncode == 0
    pg = spare["CELLWATCH_PG_PORT"]
    assert res.stdout.splitlines() == [
        f"export CELLWATCH_KAFKA=127.0.0.1:{spare['CELLWATCH_KAFKA_PORT']}",
        f"export CELLWATCH_DATABASE_URL=postgresql://cellwatch@127.0.0.1:{pg}/cellwatch",
    ]


def test_wipe_needs_all_services(spare):
    res = _run(spare, "down", "kafka", "--wipe")
    assert res.returncode == 1
    assert "--wipe" in res.stderr


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.postgres
def test_lifecycle_on_spare_ports_restarts_keep_the_data():
    """up -> write -> stop/start each service -> the data is still there -> up is idempotent -> down --wipe."""
    missing = [t for t in ("java", "mvn") if shutil.which(t) is None]
    if missing:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"needs {missing} on PATH")
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    # not under pytest's 0700 tmp root: the postgres OS user must be able to reach the data folder
    root = Path(tempfile.mkdtemp(prefix="cellwatch-services-test-"))
    root.chmod(0o755)
    env = _env(root / "services", *free_ports(3))
    try:
        up = _run(env, "up")
        assert up.returncode == 0, up.stderr
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        bootstrap, url = exports["CELLWATCH_KAFKA"], exports["CELLWATCH_DATABASE_URL"]
        assert bootstrap == f"127.0.0.1:{env['CELLWATCH_KAFKA_PORT']}"
        assert _run(env, "status").returncode == 0

        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for i in range(10):
            producer.send("lifecycle", key=b"k", value=f"m{i}".encode())
        producer.flush(timeout=60)
        producer.close()
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept SELECT generate_series(1, 5)")

        for stop, start in (("stop-kafka", "start-kafka"), ("stop-postgres", "start-postgres")):
            assert _run(env, stop).returncode == 0
            status = _run(env, "status")
            assert status.returncode == 3 and f"{stop.split('-')[1]}: down" in status.stdout
            res = _run(env, start)
            assert res.returncode == 0, res.stderr

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
        parts = [TopicPartition("lifecycle", p) for p in consumer.partitions_for_topic("lifecycle")]
        consumer.assign(parts)
        values: list[bytes] = []
        for _ in range(30):
            values += [r.value for batch in consumer.poll(timeout_ms=1000).values() for r in batch]
            if len(values) >= 10:
                break
        consumer.close()
        assert values == [f"m{i}".encode() for i in range(10)]
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT sum(v) FROM kept").fetchone() == (15,)

        again = _run(env, "up")
        assert again.returncode == 0
        assert "kafka: already running" in again.stderr and "postgres: already running" in again.stderr
    finally:
        down = _run(env, "down", "--wipe")
        shutil.rmtree(root, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert not (root / "services").exists()
    assert _run(env, "status").returncode == 3
