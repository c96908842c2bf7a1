"""The pluggable Kafka client (ingest/kafka_client.py): both implementations on the real broker, settings wiring.

The service-level delivery guarantees (exactly once per key, DLQ, SIGKILL restart, two consumers in one group,
PostgreSQL outage) are tested with each client in tests/test_e2e_streaming.py; here the client interface itself:
consume what was produced (original bytes, keys, Kafka timestamps), manual commits that a new group member
resumes from, pause/resume, lag, rebalance callbacks, and TLS/SASL mapped to each client's own setting names.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import ClassVar

import pytest

from cellwatch.config import load_settings
from cellwatch.errors import CellwatchError
from cellwatch.ingest import kafka_client as K

CLIENTS = ("kafka-python", "confluent")


def _settings(bootstrap: str, client: str, group: str, **kw):
    return load_settings({}, environ={}, kafka=bootstrap, kafka_client=client, group_id=group, metrics_port=0,
                         session_timeout_ms=6000, heartbeat_interval_ms=1000, **kw)


def _drain(consumer, want: int, timeout_s: float = 60) -> list:
    got: list = []
    end = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < end:
        got += consumer.poll_batch(1000, 0.5)
    return got


@pytest.mark.kafka
@pytest.mark.parametrize("client", CLIENTS)
def test_client_consumes_commits_pauses_and_resumes(kafka_bootstrap, kafka_topic, client):
    topic = kafka_topic(2, "kc")
    group = f"kc-{uuid.uuid4().hex[:8]}"
    s = _settings(kafka_bootstrap, client, group)
    prod = K.make_producer(s)
    values = [f"v{i}".encode() + bytes([0, 255, i % 256]) for i in range(200)]  # arbitrary bytes round-trip
    for i, v in enumerate(values):
        prod.send(topic, v, b"k%d" % (i % 4), [("h", b"x")] if i % 2 else None)
    assert prod.flush(30) == len(values)
    assert prod.flush(30) == 0
    prod.close()

    events: list[tuple[str, list]] = []
    cons = K.make_consumer(s)
    cons.subscribe([topic], on_assign=lambda tps: events.append(("assign", tps)),
                   on_revoke=lambda tps: events.append(("revoke", tps)))
    first = _drain(cons, 120)
    assigned = [tps for kind, tps in events if kind == "assign"]
    assert sorted(assigned[-1]) == [K.TP(topic, 0), K.TP(topic, 1)]
    assert cons.assignment() == {K.TP(topic, 0), K.TP(topic, 1)}
    assert all(m.timestamp_ms and m.timestamp_ms > 1e12 for m in first)
    # commit only what was processed: the next offset of each partition
    last: dict[K.TP, int] = {}
    for m in first[:120]:
        last[K.TP(m.topic, m.partition)] = max(last.get(K.TP(m.topic, m.partition), -1), m.offset)
    cons.commit({tp: o + 1 for tp, o in last.items()})
    lag = cons.lag(cons.assignment())
    assert set(lag) <= cons.assignment() and all(v >= 0 for v in lag.values())

    cons.pause(cons.assignment())
    assert cons.poll_batch(1000, 1.0) == []  # paused: nothing, yet still polling (group membership kept)
    cons.resume(cons.assignment())
    cons.close()

    # a new member of the group starts at the committed offsets: exactly the unprocessed rest, nothing lost
    cons2 = K.make_consumer(s)
    cons2.subscribe([topic], on_assign=lambda tps: None, on_revoke=lambda tps: None)
    rest = _drain(cons2, len(values) - 120)
    time.sleep(0.5)
    rest += cons2.poll_batch(1000, 0.5)
    cons2.close()
    processed = {(m.partition, m.offset) for m in first[:120]}
    done_before = {(tp.partition, o) for tp, top in last.items() for o in range(top + 1)}
    assert processed <= done_before
    assert {(m.partition, m.offset) for m in rest} == {(m.partition, m.offset) for m in first + rest} - done_before
    assert sorted(m.value for m in [*[m for m in first if (m.partition, m.offset) in done_before], *rest]) == \
        sorted(values)
    assert {m.key for m in rest} <= {b"k0", b"k1", b"k2", b"k3"}


@pytest.mark.kafka
@pytest.mark.parametrize("client", [pytest.param("kafka-python", marks=pytest.mark.xfail(
    reason="kafka-python 3.0.12: a paused partition is often never fetched again after resume (a re-seek does not "
           "fix it reliably); the service's event-time alignment is therefore confluent-only", strict=False)),
    "confluent"])
def test_a_partition_paused_with_a_backlog_delivers_all_of_it_after_resume(kafka_bootstrap, kafka_topic, client):
    """The service holds back partitions ahead in event time (ingest/align.py); resuming must deliver the rest."""
    topic = kafka_topic(2, "kc-pause")
    s = _settings(kafka_bootstrap, client, f"kc-p-{uuid.uuid4().hex[:8]}")
    prod = K.make_producer(s)
    for i in range(4000):
        prod.send(topic, b"v%d" % i, b"k%d" % (i % 2))
    assert prod.flush(30) == 4000
    prod.close()
    cons = K.make_consumer(s)
    cons.subscribe([topic], on_assign=lambda tps: None, on_revoke=lambda tps: None)
    got = _drain(cons, 1)
    held = K.TP(topic, got[0].partition)
    cons.pause([held])
    end = time.monotonic() + 60
    while time.monotonic() < end and len(got) < 4000:  # every other partition drained, the held one not
        batch = cons.poll_batch(500, 0.5)
        if not batch:
            break
        got += batch
    assert len(got) < 4000
    cons.resume([held])
    got += _drain(cons, 4000 - len(got))
    cons.close()
    assert len({(m.partition, m.offset) for m in got}) == 4000


@pytest.mark.kafka
def test_confluent_rebalance_moves_partitions_between_members(kafka_bootstrap, kafka_topic):
    topic = kafka_topic(4, "kc-rb")
    s = _settings(kafka_bootstrap, "confluent", f"kc-{uuid.uuid4().hex[:8]}")
    a_events: list[tuple[str, list]] = []
    a = K.make_consumer(s)
    a.subscribe([topic], on_assign=lambda t: a_events.append(("assign", t)),
                on_revoke=lambda t: a_events.append(("revoke", t)))
    end = time.monotonic() + 30
    while len(a.assignment()) < 4 and time.monotonic() < end:
        a.poll_batch(10, 0.2)
    assert len(a.assignment()) == 4
    b = K.make_consumer(s)
    b.subscribe([topic], on_assign=lambda t: None, on_revoke=lambda t: None)
    end = time.monotonic() + 60
    while (len(a.assignment()) + len(b.assignment()) != 4 or not b.assignment()) and time.monotonic() < end:
        a.poll_batch(10, 0.2)
        b.poll_batch(10, 0.2)
    assert a.assignment() and b.assignment() and not a.assignment() & b.assignment()
    assert any(kind == "revoke" for kind, _ in a_events)  # the service forgets the streams of revoked partitions
    a.close()
    b.close()


# ------------------------------------------------------------------------------------------- settings wiring

def test_kafka_client_setting_from_env_file_and_flag(tmp_path):
    assert load_settings({}, environ={}).kafka_client == "kafka-python"  # the default
    assert load_settings({}, environ={"CELLWATCH_KAFKA_CLIENT": "confluent"}).kafka_client == "confluent"
    cfg = tmp_path / "c.toml"
    cfg.write_text('kafka_client = "confluent"\n')
    assert load_settings({"config": str(cfg)}, environ={}).kafka_client == "confluent"
    assert load_settings({"kafka_client": "kafka-python", "config": str(cfg)}, environ={}).kafka_client == \
        "kafka-python"
    with pytest.raises(CellwatchError, match="kafka_client"):
        load_settings({"kafka_client": "librdkafka"}, environ={})


class _Recorder:
    made: ClassVar[list[tuple[str, dict]]] = []

    def __init__(self, conf, **kw):
        _Recorder.made.append((type(self).__name__, dict(conf)))

    def list_topics(self, timeout=None):
        return None


class Consumer(_Recorder):
    pass


class Producer(_Recorder):
    pass


SECURE = {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512",
          "kafka_sasl_username": "cellwatch", "kafka_ssl_cafile": "/etc/ssl/ca.pem",
          "kafka_ssl_certfile": "/etc/ssl/client.pem", "kafka_ssl_keyfile": "/etc/ssl/client.key"}
EXPECTED_CONFLUENT = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                      "sasl.username": "cellwatch", "sasl.password": "s3cr3t", "ssl.ca.location": "/etc/ssl/ca.pem",
                      "ssl.certificate.location": "/etc/ssl/client.pem", "ssl.key.location": "/etc/ssl/client.key"}


def test_confluent_consumer_and_producer_get_the_security_settings_under_librdkafka_names(monkeypatch):
    import confluent_kafka

    monkeypatch.setattr(confluent_kafka, "Consumer", Consumer)
    monkeypatch.setattr(confluent_kafka, "Producer", Producer)
    _Recorder.made.clear()
    s = load_settings({}, environ={"CELLWATCH_KAFKA_SASL_PASSWORD": "s3cr3t"}, kafka_client="confluent", **SECURE)
    assert K.confluent_security(s) == EXPECTED_CONFLUENT
    K.make_consumer(s)
    K.make_producer(s)
    assert [k for k, _ in _Recorder.made] == ["Consumer", "Producer"]
    for kind, conf in _Recorder.made:
        assert {k: conf.get(k) for k in EXPECTED_CONFLUENT} == EXPECTED_CONFLUENT, kind
    producer_conf = _Recorder.made[1][1]
    assert producer_conf["enable.idempotence"] is True and producer_conf["acks"] == "all"
    consumer_conf = _Recorder.made[0][1]
    assert consumer_conf["enable.auto.commit"] is False


def test_every_mapped_name_is_a_librdkafka_property():
    """librdkafka rejects an unknown property at construction ("No such configuration property")."""
    import confluent_kafka

    s = load_settings({}, environ={"CELLWATCH_KAFKA_SASL_PASSWORD": "s3cr3t"}, **SECURE)
    conf = K.confluent_security(s)
    assert set(conf) == set(K.CONFLUENT_NAMES.values())
    for name, value in conf.items():
        try:
            confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:1", name: value})
        except confluent_kafka.KafkaException as exc:  # e.g. a missing certificate file: a known property
            assert "No such configuration property" not in str(exc), name


def test_confluent_without_the_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # import fails as if not installed
    s = load_settings({}, environ={}, kafka_client="confluent")
    with pytest.raises(CellwatchError, match=r"cellwatch\[confluent\]"):
        K.make_consumer(s)


def test_confluent_unreachable_broker_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(K, "REACH_TIMEOUT_S", 2.0)
    s = load_settings({}, environ={}, kafka="127.0.0.1:1", kafka_client="confluent")
    for make in (K.make_consumer, K.make_producer):
        with pytest.raises(CellwatchError, match=r"Kafka at 127\.0\.0\.1:1 unreachable"):
            make(s)
