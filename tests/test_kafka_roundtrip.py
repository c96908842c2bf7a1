"""Readings survive a round trip through the real Kafka broker: all of them, valid, and in order per key."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from cellwatch import contract
from cellwatch.stations import STATIONS

pytestmark = pytest.mark.kafka

T0 = pd.Timestamp("2026-11-25T06:00:00Z")
LINES = ("L1", "L2", "L3")
N_READINGS = 20_000


def _readings(n: int, seed: int = 7) -> pd.DataFrame:
    """A wide readings frame spread over every line/station key, with ascending seq per key."""
    rng = np.random.default_rng(seed)
    keys = [(line, st) for line in LINES for st in STATIONS]
    pick = rng.integers(0, len(keys), n)
    line = np.array([keys[k][0] for k in pick], dtype=object)
    station = [keys[k][1] for k in pick]
    seq = pd.Series(pick).groupby(pick).cumcount().to_numpy()
    frame = pd.DataFrame({
        "ts": T0 + pd.to_timedelta(np.arange(n) * 50, unit="ms"),
        "line": line,
        "station": [s.name for s in station],
        "cell_id": [None if s.kind == "time" else f"{ln}-C{q:07d}"
                    for ln, s, q in zip(line, station, seq, strict=True)],
        "seq": seq.astype("int64"),
        "recipe": "NMC811",
        "tags": np.where(seq % 4 == 0, '{"coil_id":"C-0001"}', None).astype(object),
    })
    sensors = sorted({sensor.name for s in STATIONS for sensor in s.sensors})
    values = np.full((n, len(sensors)), np.nan)
    col = {name: j for j, name in enumerate(sensors)}
    for st in STATIONS:
        rows = np.flatnonzero(frame["station"].to_numpy() == st.name)
        for sensor in st.sensors:
            values[rows, col[sensor.name]] = rng.uniform(sensor.lo, sensor.hi, len(rows))
    return pd.concat([frame, pd.DataFrame(values, columns=sensors)], axis=1)


def expected_keys(frame: pd.DataFrame) -> pd.Series:
    """Per (line, station): the list of seq in production order."""
    return frame.groupby(["line", "station"])["seq"].agg(list)


def _produce(bootstrap: str, topic: str, keys: list[bytes | None], values: list[bytes | None]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024,
                             max_request_size=2 * 1024 * 1024, retries=5)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in zip(keys, values, strict=True)]
        producer.flush(timeout=120)
        for f in futures:
            f.get(timeout=1)  # raises if any send failed
    finally:
        producer.close()


def _consume(bootstrap: str, topic: str, n: int, timeout_s: float = 120) -> list:
    """Read the whole topic from the start (partitions assigned directly: no group rebalance in the timing)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, max_poll_records=5000, fetch_max_bytes=8 * 1024 * 1024)
    consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))])
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records.extend(batch)
        # anything beyond n would be a duplicate: give it a moment to show up
        records.extend(r for batch in consumer.poll(timeout_ms=500).values() for r in batch)
    finally:
        consumer.close()
    return records


def test_readings_round_trip_complete_valid_and_ordered_per_key(kafka_bootstrap, kafka_topic):
    topic = kafka_topic(partitions=4, name="roundtrip")
    frame = _readings(N_READINGS)
    payloads = contract.encode_readings(frame)
    keys = [contract.kafka_key(ln, st) for ln, st in zip(frame["line"], frame["station"], strict=True)]

    t0 = time.perf_counter()
    _produce(kafka_bootstrap, topic, keys, payloads)
    t_produced = time.perf_counter()
    records = _consume(kafka_bootstrap, topic, len(payloads))
    t_consumed = time.perf_counter()

    total = t_consumed - t0
    mib = sum(map(len, payloads)) / 2**20
    print(f"\nkafka round trip: {len(payloads)} readings ({mib:.1f} MiB, {len(expected_keys(frame))} keys): "
          f"produced (acks=all) in {t_produced - t0:.2f}s, consumed in {t_consumed - t_produced:.2f}s, "
          f"total {total:.2f}s -> {len(payloads) / total:,.0f} readings/s end to end")

    assert len(records) == len(payloads)
    assert len({r.partition for r in records}) > 1, "4 partitions and 27 keys should spread over partitions"
    got, rejects = contract.validate_readings([r.value for r in records], now=T0 + pd.Timedelta(days=1))
    assert rejects == []
    assert len(got) == len(payloads)

    # per key: the partition's order is the order of production (seq ascending, no gaps)
    seqs: dict[bytes, list[int]] = defaultdict(list)
    for r, seq in zip(records, got["seq"], strict=True):
        seqs[r.key].append(int(seq))
    expected = expected_keys(frame)
    assert set(seqs) == {contract.kafka_key(ln, st) for ln, st in expected.index}
    for (ln, st), want in expected.items():
        assert seqs[contract.kafka_key(ln, st)] == want, f"{ln}/{st} out of order"
    # one key lives in one partition
    parts = defaultdict(set)
    for r in records:
        parts[r.key].add(r.partition)
    assert all(len(p) == 1 for p in parts.values())

    # and the content is what was sent
    back = got.set_index(["line", "station", "seq"]).sort_index()
    sent = frame.set_index(["line", "station", "seq"]).sort_index()
    sensors = contract.sensor_columns(frame)
    np.testing.assert_array_equal(back[sensors].to_numpy(), sent[sensors].to_numpy())
    assert (back["ts"] == sent["ts"]).all()


def test_malformed_payloads_round_trip_as_the_same_bytes(kafka_bootstrap, kafka_topic):
    topic = kafka_topic(partitions=1, name="malformed")
    payloads: list[bytes | None] = [
        b"\xff\xfe not utf-8 \x00\x01",
        b'{"schema": 1, "ts": "2026-11-25T06:00:00Z", "line": "L1"',  # truncated JSON
        b'{"schema": 1, "ts": "2026-11-25T06:00:00Z", "line": "L1", "station": "coating", "seq": 1, '
        b'"values": {"coat_weight_mg_cm2": NaN}}',
        b"[1, 2, 3]",
        b"x" * (contract.MAX_PAYLOAD_BYTES + 1000),
        b"",
        None,  # a tombstone: no value at all
    ]
    _produce(kafka_bootstrap, topic, [b"L1/coating"] * len(payloads), payloads)
    records = _consume(kafka_bootstrap, topic, len(payloads), timeout_s=60)

    assert [r.value for r in records] == payloads
    _, rejects = contract.validate_readings([r.value for r in records])
    assert [r.index for r in rejects] == list(range(len(payloads)))
    assert [r.reason for r in rejects] == [
        contract.Reason.UNDECODABLE, contract.Reason.UNDECODABLE, contract.Reason.NON_FINITE,
        contract.Reason.UNDECODABLE, contract.Reason.OVERSIZED, contract.Reason.UNDECODABLE,
        contract.Reason.UNDECODABLE,
    ]
