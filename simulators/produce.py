"""Stream readings (and cell results) into Kafka in timestamp order, optionally rate-limited.

Readings go to ``cellwatch.readings`` keyed ``line/station`` (:func:`cellwatch.contract.kafka_key`), so one
station's readings stay ordered in one partition; cell results go to ``cellwatch.cell-results`` keyed by
``line``, each at its cell's EOL time in the merged order. The producer uses acks=all and idempotence
(kafka-python >= 2.1 supports it), large batches and a short linger. Message timestamps are left to the
broker (log-append/create time = now): simulated timestamps in the past would make the broker's
time-based retention delete the data at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cellwatch.contract import (
    TOPIC_CELL_RESULTS,
    TOPIC_READINGS,
    encode_cell_results,
    encode_readings,
    kafka_key,
)
from cellwatch.errors import CellwatchError, ServiceUnavailable

log = logging.getLogger(__name__)

PRODUCER_CONFIG = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 50,
    "batch_size": 1024 * 1024,
    "max_in_flight_requests_per_connection": 5,
    "retries": 10,
    "request_timeout_ms": 30000,
    "bootstrap_timeout_ms": 15000,
}


@dataclass(frozen=True, slots=True)
class StreamStats:
    """What a stream run sent."""

    readings: int
    cell_results: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return (self.readings + self.cell_results) / self.elapsed_s if self.elapsed_s > 0 else float("nan")


def producer_config(**overrides) -> dict:
    """:data:`PRODUCER_CONFIG` plus the TLS/SASL settings (``CELLWATCH_KAFKA_*``) plus ``overrides``."""
    from cellwatch.config import load_settings

    return {**PRODUCER_CONFIG, **load_settings({}).kafka_security(), **overrides}


def make_producer(bootstrap: str, **overrides):
    """A kafka-python producer with :data:`PRODUCER_CONFIG`; ServiceUnavailable if no broker answers.

    TLS/SASL come from the same ``CELLWATCH_KAFKA_*`` settings (config file, environment) as the service's.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, KafkaTimeoutError

    config = producer_config(**overrides)
    try:
        return KafkaProducer(bootstrap_servers=bootstrap.split(","), client_id="cellwatch-simulator", **config)
    except KafkaTimeoutError as exc:
        raise ServiceUnavailable(f"no Kafka broker answers at {bootstrap} "
                                 f"(waited {config['bootstrap_timeout_ms'] / 1000:g} s)") from exc
    except (KafkaError, OSError, ValueError) as exc:
        raise ServiceUnavailable(f"cannot connect a Kafka producer to {bootstrap}: {exc}") from exc


def _epoch_ns(ts: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch (UTC) of a timestamp column."""
    t = pd.to_datetime(ts, utc=True).dt.tz_localize(None).dt.as_unit("ns")
    return t.to_numpy().view(np.int64)


class _Pacer:
    """Sleeps so that message ``k`` (with timestamp ``ts_ns``) is not sent before its time."""

    def __init__(self, rate: float | None, speed: float | None, ts0_ns: int):
        if rate is not None and rate <= 0:
            raise CellwatchError(f"--rate must be positive, got {rate}")
        if speed is not None and speed < 0:
            raise CellwatchError(f"--speed must be >= 0, got {speed}")
        self.rate = rate
        self.speed = speed if speed else None
        self.ts0 = ts0_ns
        self.t0 = time.monotonic()

    def chunk_limit(self, default: int) -> int:
        if self.rate is not None:
            return max(1, min(default, int(self.rate / 20) or 1))
        return default

    def wait(self, sent: int, next_ts_ns: int) -> None:
        due = None
        if self.rate is not None:
            due = sent / self.rate
        elif self.speed is not None:
            due = (next_ts_ns - self.ts0) / 1e9 / self.speed
        if due is not None:
            delay = self.t0 + due - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def stream(bootstrap: str, readings: pd.DataFrame, cell_results: pd.DataFrame | None = None,
           topic_readings: str = TOPIC_READINGS, topic_cell_results: str = TOPIC_CELL_RESULTS,
           rate: float | None = None, speed: float | None = None, chunk: int = 5000,
           progress: bool = False, producer=None) -> StreamStats:
    """Send ``readings`` (and ``cell_results``) in timestamp order; returns the counts once all are acked.

    ``rate``: messages per second; ``speed``: multiple of real time following the timestamps (1 = real
    time); neither: as fast as possible.
    """
    cell_results = cell_results if cell_results is not None else pd.DataFrame(columns=["ts"])
    n_r, n_c = len(readings), len(cell_results)
    ts_r = _epoch_ns(readings["ts"])
    ts_c = _epoch_ns(cell_results["ts"]) if n_c else np.zeros(0, dtype=np.int64)
    ts_all = np.concatenate([ts_r, ts_c])
    order = np.argsort(ts_all, kind="stable")      # readings before cell results at equal times
    if order.size == 0:
        return StreamStats(0, 0, 0.0)
    own = producer is None
    prod = make_producer(bootstrap) if own else producer
    errors: list[BaseException] = []
    pacer = _Pacer(rate, speed, int(ts_all[order[0]]))
    step = pacer.chunk_limit(chunk)
    lines_r = readings["line"].astype(str).to_numpy()
    stations_r = readings["station"].astype(str).to_numpy()
    lines_c = cell_results["line"].astype(str).to_numpy() if n_c else np.zeros(0, dtype=object)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=order.size, desc="kafka", unit="msg", unit_scale=True)
    t0 = time.perf_counter()
    sent = 0
    try:
        ts_sorted = ts_all[order]
        a = 0
        while a < order.size:
            b = min(a + step, order.size)
            if pacer.speed is not None:
                # following the timestamps: one chunk spans at most 50 ms of real time
                b = min(b, max(a + 1, int(np.searchsorted(ts_sorted, ts_sorted[a] + 5e7 * pacer.speed, "right"))))
            idx = order[a:b]
            a = b
            pacer.wait(sent, int(ts_all[idx[0]]))
            is_r = idx < n_r
            r_idx, c_idx = idx[is_r], idx[~is_r] - n_r
            r_payloads = iter(encode_readings(readings.iloc[r_idx]) if r_idx.size else [])
            c_payloads = iter(encode_cell_results(cell_results.iloc[c_idx]) if c_idx.size else [])
            for k in idx:
                if k < n_r:
                    fut = prod.send(topic_readings, value=next(r_payloads), key=kafka_key(lines_r[k], stations_r[k]))
                else:
                    fut = prod.send(topic_cell_results, value=next(c_payloads), key=lines_c[k - n_r].encode())
                fut.add_errback(errors.append)
            sent += idx.size
            if bar is not None:
                bar.update(idx.size)
            if errors:
                break
        prod.flush()
    finally:
        if bar is not None:
            bar.close()
        if own:
            prod.close()
    if errors:
        raise ServiceUnavailable(f"Kafka rejected {len(errors)} message(s); first error: {errors[0]}")
    elapsed = time.perf_counter() - t0
    n_sent_c = int(np.count_nonzero(order >= n_r))
    log.info("sent %d readings and %d cell results in %.1f s", sent - n_sent_c, n_sent_c, elapsed)
    return StreamStats(sent - n_sent_c, n_sent_c, elapsed)
