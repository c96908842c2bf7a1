"""Streaming the simulator and replaying files into the real Kafka broker."""

from __future__ import annotations

import time
from collections import defaultdict

import pandas as pd
import pytest
from kafka import KafkaConsumer, TopicPartition

from cellwatch.cli import main
from cellwatch.contract import kafka_key, validate_cell_results, validate_readings
from cellwatch.simulators.produce import stream
from cellwatch.simulators.simulate import simulate

pytestmark = pytest.mark.kafka
FUTURE = pd.Timestamp("2100-01-01", tz="UTC")


def _consume(bootstrap: str, topic: str, n: int, timeout_s: float = 90) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, max_poll_records=5000)
    try:
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))])
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        records.extend(r for batch in consumer.poll(timeout_ms=500).values() for r in batch)  # no extras
        return records
    finally:
        consumer.close()


def _check_readings(records: list, expected: pd.DataFrame) -> pd.DataFrame:
    assert len(records) == len(expected)
    frame, rejects = validate_readings([r.value for r in records], now=FUTURE)
    assert rejects == []
    # key = line/station, and one key's readings arrive in seq order
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for rec, (line, station, seq) in zip(records, frame[["line", "station", "seq"]].itertuples(index=False),
                                          strict=True):
        assert rec.key == kafka_key(line, station)
        per_key[rec.key].append(seq)
    for seqs in per_key.values():
        assert seqs == sorted(seqs)
    got = frame.sort_values(["line", "station", "seq"]).reset_index(drop=True)
    want = expected.sort_values(["line", "station", "seq"]).reset_index(drop=True)
    assert (got["seq"].to_numpy() == want["seq"].to_numpy()).all()
    assert (got["ts"].to_numpy() == want["ts"].to_numpy()).all()
    return got


@pytest.fixture(scope="module")
def small_run():
    return simulate(hours=1.6, lines=2, seed=8)


def test_stream_sends_every_reading_and_cell_result_in_order(kafka_bootstrap, kafka_topic, small_run):
    t_r, t_c = kafka_topic(partitions=4, name="readings"), kafka_topic(partitions=2, name="cells")
    cells = small_run.cell_results()
    assert len(cells) > 100
    stats = stream(kafka_bootstrap, small_run.readings, cells, topic_readings=t_r, topic_cell_results=t_c)
    assert (stats.readings, stats.cell_results) == (len(small_run.readings), len(cells))
    _check_readings(_consume(kafka_bootstrap, t_r, stats.readings), small_run.readings)
    records = _consume(kafka_bootstrap, t_c, len(cells))
    assert len(records) == len(cells)
    frame, rejects = validate_cell_results([r.value for r in records], now=FUTURE)
    assert rejects == []
    assert sorted(frame["cell_id"]) == sorted(cells["cell_id"])
    assert {r.key for r in records} == {b"L1", b"L2"}


def test_rate_limit_slows_the_stream(kafka_bootstrap, kafka_topic, small_run):
    topic = kafka_topic(partitions=1, name="rate")
    part = small_run.readings.iloc[:1500]
    stats = stream(kafka_bootstrap, part, None, topic_readings=topic, rate=2000)
    assert stats.readings == 1500 and stats.elapsed_s >= 0.6
    assert len(_consume(kafka_bootstrap, topic, 1500)) == 1500


def test_realtime_follows_the_timestamps(kafka_bootstrap, kafka_topic, small_run):
    topic = kafka_topic(partitions=1, name="realtime")
    r = small_run.readings
    part = r[r["ts"] < r["ts"].min() + pd.Timedelta(minutes=5)]
    stats = stream(kafka_bootstrap, part, None, topic_readings=topic, speed=300.0)   # 5 min at 300x = 1 s
    assert stats.readings == len(part) and stats.elapsed_s >= 0.9
    assert len(_consume(kafka_bootstrap, topic, len(part))) == len(part)


def test_cli_simulate_streams_into_kafka(kafka_bootstrap, kafka_topic, capsys):
    t_r, t_c = kafka_topic(name="cli-readings"), kafka_topic(name="cli-cells")
    argv = ["simulate", "--kafka", kafka_bootstrap, "--hours", "1.5", "--lines", "1", "--seed", "3",
            "--topic-readings", t_r, "--topic-cell-results", t_c]
    assert main(argv) == 0
    out = capsys.readouterr().out
    expected = simulate(hours=1.5, lines=1, seed=3)
    assert f"sent {len(expected.readings):,} readings" in out
    _check_readings(_consume(kafka_bootstrap, t_r, len(expected.readings)), expected.readings)
    assert len(_consume(kafka_bootstrap, t_c, len(expected.cells))) == len(expected.cells)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_replay_a_historian_file(kafka_bootstrap, kafka_topic, small_run, tmp_path, capsys, fmt):
    topic = kafka_topic(partitions=3, name=f"replay-{fmt}")
    r = small_run.readings
    part = r[r["line"] == "L1"].iloc[:3000].reset_index(drop=True)
    path = tmp_path / f"historian.{fmt}"
    if fmt == "csv":
        # a historian export: ISO timestamps, no seq column (generated per stream in ts order)
        part.drop(columns=["seq"]).assign(ts=part["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")).to_csv(path, index=False)
    else:
        part.to_parquet(path, index=False)
    assert main(["replay", "--input", str(path), "--kafka", kafka_bootstrap, "--topic", topic]) == 0
    assert f"replayed {len(part):,} readings" in capsys.readouterr().out
    got = _check_readings(_consume(kafka_bootstrap, topic, len(part)), part)
    sensors = ["coat_weight_mg_cm2", "burr_height_um"]
    want = part.sort_values(["line", "station", "seq"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[sensors], want[sensors])
