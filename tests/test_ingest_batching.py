"""Micro-batching of the service: batches close when the client's buffer is drained, and the rule that decides
whether a batch must wait for the batch in flight (overlapped writes) before it is processed.

The delivery guarantees with overlapped writes (exactly once per key after SIGKILL, PostgreSQL outage, two
consumers, restart equal to an uninterrupted run) are tested end to end in tests/test_e2e_streaming.py and
tests/test_reliability_faults.py, where ``write_overlap`` is on (the default).
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pandas as pd
import pytest

from cellwatch.config import load_settings
from cellwatch.ingest import kafka_client as K
from cellwatch.ingest.align import PartitionClock
from cellwatch.ingest.consumer import StreamService
from cellwatch.ingest.state import WindowState
from cellwatch.ingest.store import SQLiteStore

CLIENTS = ("kafka-python", "confluent")


class _Scorer:
    """The two things WindowState asks of a scorer."""

    history = 10

    def new_state(self) -> dict:
        return {}


def _readings(line: str, station: str, seqs: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"line": line, "station": station, "seq": seqs,
                         "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(seqs, unit="s")})


def test_a_batch_waits_for_the_one_in_flight_only_when_it_reads_the_store():
    w = WindowState(_Scorer())
    batch = _readings("L1", "mixing", [1, 2, 3])
    assert w.needs_store(batch)                      # a cold stream: warm-up reads the store
    w.warm_up(batch, None)                           # (no store: nothing to read) now warm, next seq 4
    assert not w.needs_store(_readings("L1", "mixing", [4, 5]))   # warm, in order: scored from memory
    assert w.needs_store(_readings("L1", "mixing", [3, 4]))       # seq 3 re-sent: its key is looked up
    assert w.needs_store(pd.concat([_readings("L1", "mixing", [4]), _readings("L1", "coating", [1])]))
    w.switch(_Scorer())                              # a new model: every stream is rebuilt from the store
    assert w.needs_store(_readings("L1", "mixing", [4]))
    assert not w.needs_store(_readings("L1", "mixing", [])[:0])


def test_a_backlogged_partition_ahead_in_event_time_waits_for_the_slowest():
    a, b, c = (K.TP("r", i) for i in range(3))
    clock = PartitionClock(ahead_s=300)
    clock.observe("r", np.array([0, 0, 1, 2, 2]), np.array([100.0, 50, 900, 1000, 200]))
    assert clock.newest == {a: 100.0, b: 900.0, c: 1000.0}
    assert clock.decide({a: 5, b: 5, c: 5}) == ({b, c}, set())        # b, c > 100 + 300: held back
    clock.paused |= {b, c}
    assert clock.decide({a: 5, b: 5, c: 0}) == (set(), {c})            # c has no backlog: never held
    clock.paused -= {c}
    clock.observe("r", np.array([0]), np.array([800.0]))              # a catches up: b within 300/2
    assert clock.decide({a: 5, b: 5, c: 0}) == (set(), {b})
    clock.paused.clear()
    assert clock.decide({a: 5, b: 0, c: 0}) == (set(), set())          # one backlog: nothing to align
    clock.forget([a])
    assert clock.decide({a: 5, b: 5, c: 5}) == (set(), set())          # a's position unknown: no pausing
    assert PartitionClock(0).decide({a: 5, b: 5}) == (set(), set())    # off


@pytest.mark.kafka
@pytest.mark.parametrize("client", CLIENTS)
def test_a_batch_closes_once_the_buffered_records_are_drained(kafka_bootstrap, kafka_topic, tmp_path, client):
    topic = kafka_topic(2, "drain")
    s = load_settings({}, environ={}, kafka=kafka_bootstrap, kafka_client=client, metrics_port=0,
                      group_id=f"drain-{uuid.uuid4().hex[:8]}", topic_readings=topic, batch_max_records=1000,
                      batch_max_ms=8000, session_timeout_ms=6000, heartbeat_interval_ms=1000)
    prod = K.make_producer(s)
    for i in range(50):
        prod.send(topic, b"v%d" % i, b"k%d" % (i % 4))
    assert prod.flush(30) == 50
    prod.close()
    svc = StreamService(s, store=SQLiteStore(tmp_path / "cw.db"))
    svc.consumer = K.make_consumer(s)
    svc.consumer.subscribe([topic], on_assign=lambda tps: None, on_revoke=lambda tps: None)
    try:
        got, t0 = [], time.monotonic()
        while len(got) < 50 and time.monotonic() - t0 < 60:  # joining the group takes a few seconds
            t_batch = time.monotonic()
            batch = svc._poll_batch()
            got += batch
        took = time.monotonic() - t_batch
        # the batch that emptied the topic returned well before batch_max_ms (8 s): it closed when drained
        assert len(got) == 50 and took < 4.0, (len(got), took)
        t1 = time.monotonic()
        assert svc._poll_batch() == []  # nothing buffered: an empty batch after batch_max_ms
        assert time.monotonic() - t1 >= 7.5
    finally:
        svc.consumer.close()
        svc.store.close()
