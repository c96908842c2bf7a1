"""``cellwatch run``: the consumer loop - poll, process, write, publish, commit.

At-least-once with idempotent sinks, so every reading's result is in the store exactly once:

1. poll a micro-batch (up to ``batch_max_records`` records or ``batch_max_ms``) from
   ``cellwatch.readings`` and ``cellwatch.cell-results`` (consumer group, auto-commit off);
2. decode + validate, score (:mod:`cellwatch.ingest.pipeline`);
3. write every table in ONE database transaction (upserts on natural keys);
4. publish dead letters and results, wait for every acknowledgement (idempotent producer, acks=all);
5. only then commit the batch's offsets.

Steps 3-4 of batch N run in a writer thread while batch N+1 is polled, decoded and scored (``write_overlap``;
psycopg and the Kafka clients release the GIL while they wait). At most one batch is in flight: N+1 is handed to
the writer only after N's offsets are committed, so writes, output messages and commits keep the batch order, and
a batch whose processing reads the store (warm-up of a cold stream, a model switch, a re-sent reading) first waits
for N to be stored. Offsets are committed by the polling thread (Kafka consumers are not thread-safe).

A crash anywhere before 5 replays the batch; the upserts make the replay harmless. When the database is
unreachable the loop pauses its partitions and keeps polling (so the member stays in the group), retries
with exponential backoff, commits nothing, and resumes with the batch it holds.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from cellwatch.config import Settings
from cellwatch.errors import CellwatchError
from cellwatch.ingest.align import PartitionClock
from cellwatch.ingest.kafka_client import TP, KafkaClientError, make_consumer
from cellwatch.ingest.kafka_out import OutputProducer
from cellwatch.ingest.metrics import Metrics
from cellwatch.ingest.models import ModelWatcher
from cellwatch.ingest.pipeline import BatchOutput, Decoded, Message, decode, process
from cellwatch.ingest.state import WindowState
from cellwatch.ingest.store import Store, StoreUnavailable, open_store
from cellwatch.logs import redact

log = logging.getLogger(__name__)

#: seconds between two "scoring state" log lines (sizes of the window state, for memory questions)
STATE_LOG_S = 60.0
_STORE_READS = ("stored_seqs", "last_readings", "open_cell_readings", "open_incidents")


@dataclass
class _Job:
    """One processed batch on its way out: write (one transaction), publish + flush, then commit its offsets."""

    messages: list[Message]
    out: BatchOutput
    tables: dict[str, pd.DataFrame]  # the batch's rows plus the pending rows riding with it
    t0: float
    future: Future | None = None
    stored: bool = False
    published: bool = False
    committed: bool = False


class _StoreReads:
    """The store as :func:`pipeline.process` sees it: every read first completes the batch in flight (a read must
    see every earlier batch stored). The service drains before such batches anyway (``WindowState.needs_store``);
    this is the guard that keeps it true."""

    def __init__(self, service: StreamService) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._service.store, name)
        if name in _STORE_READS and self._service._inflight is not None:
            log.debug("store read %s while a batch is in flight: completing it first", name)
            if not self._service._complete_inflight():
                raise StoreUnavailable("stopped before the batch in flight was written and acknowledged")
        return attr


class StreamService:
    """The long-running consumer. ``run()`` until ``stop()`` (or SIGTERM/SIGINT via :meth:`install_signals`)."""

    def __init__(self, settings: Settings, store: Store | None = None, watcher: ModelWatcher | None = None,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = store or open_store(settings.database_dsn(), schema=settings.database_schema)
        self.watcher = watcher or ModelWatcher(settings.models_dir, settings.model_check_s)
        self._stop = threading.Event()
        self.consumer: Any = None
        self.producer: OutputProducer | None = None
        self.window: WindowState | None = None
        self.owned: set[TP] = set()
        self.paused = False
        self.pending: dict[str, pd.DataFrame] = {}  # rows that ride with the next write (stats, model rows)
        self.totals: dict[str, int] = defaultdict(int)
        self._store_ok = True
        self.annotations: Any = None
        self._annotations_dropped = 0
        self._inflight: _Job | None = None
        # kafka-python 3.0.12 does not reliably fetch a partition again after pause + resume (tests/test_kafka_client.py
        # reproduces it), so the event-time alignment, which pauses partitions routinely, is confluent-only
        self.clock = PartitionClock(settings.align_partitions_s if settings.kafka_client == "confluent" else 0)
        self._writer: ThreadPoolExecutor | None = None
        self._reads = _StoreReads(self)
        self._state_logged = time.monotonic()

    # ----------------------------------------------------------------------------------------- lifecycle
    def stop(self) -> None:
        self._stop.set()

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def _retry_store(self, what: str, fn, failed: StoreUnavailable | None = None) -> Any:
        """Call ``fn()`` until the store answers (exponential backoff), keeping the group membership.
        ``failed``: the first attempt already failed with it (in the writer thread)."""
        delay = self.settings.db_retry_initial_s
        while True:
            try:
                if failed is not None:
                    exc, failed = failed, None
                    raise exc
                out = fn()
                if not self._store_ok:
                    log.warning("store reachable again; %s done", what)
                self.metrics.store_up.set(1)
                self._store_ok = True
                return out
            except StoreUnavailable as exc:
                self.metrics.store_up.set(0)
                self._store_ok = False
                self.metrics.store_retries.inc()
                log.error("store unavailable during %s; not consuming, nothing committed; retry in %.1fs: %s",
                          what, delay, exc)
                self._idle(delay)
                if self._stop.is_set():
                    raise
                delay = min(delay * 2, self.settings.db_retry_max_s)

    def _idle(self, seconds: float) -> None:
        """Wait without consuming: partitions paused, polls of zero records keep the member alive."""
        if self.consumer is None:
            self._stop.wait(seconds)
            return
        self.paused = True
        self.consumer.pause(self.consumer.assignment())
        end = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < end:
            wait = min(0.5, max(0.001, end - time.monotonic()))
            got = self.consumer.poll_batch(self.settings.batch_max_records, wait)
            if got:  # cannot happen while paused; never drop records silently
                raise RuntimeError("records received while paused")
        self.consumer.resume(self.consumer.assignment() - self.clock.paused)
        self.paused = False

    def start(self) -> None:
        s = self.settings
        log.info("starting: kafka=%s (%s) group=%s store=%s models=%s", s.kafka, s.kafka_client, s.group_id,
                 redact(s.database_url), s.models_dir)
        self._retry_store("schema migration", self.store.migrate)
        scorer = self.watcher.load_initial()
        self.window = WindowState(scorer)
        self.metrics.model.info({"version": scorer.model_version})
        self.pending.update(self.watcher.version_rows())
        self.metrics.serve(s.metrics_port)
        self._start_annotations()
        self.producer = OutputProducer(s)
        self.consumer = make_consumer(s)
        self.consumer.subscribe([s.topic_readings, s.topic_cell_results], on_assign=self._on_assign,
                                on_revoke=self._on_revoke)

    # ----------------------------------------------------------------------------------------- rebalances
    def _on_revoke(self, revoked: list[TP]) -> None:
        """Streams of revoked partitions become cold (rebuilt lazily from the store if they come back). The offsets
        of a batch still in flight are not committed for revoked partitions (their new owner replays it:
        idempotent); no commit here: kafka-python 3 runs this callback on its IO thread, where a blocking commit
        raises and stops the consumer."""
        if revoked:
            log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))
        self.window.forget(tp.partition for tp in revoked if tp.topic == self.settings.topic_readings)
        self.owned.difference_update(revoked)
        self.clock.forget(revoked)

    def _on_assign(self, assigned: list[TP]) -> None:
        """Streams of newly assigned partitions are cold: the next batch holding them rebuilds the state."""
        if assigned:
            log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self.window.forget(tp.partition for tp in assigned if tp.topic == self.settings.topic_readings)
        self.owned.update(assigned)
        self.clock.forget(assigned)
        if self.paused:
            self.consumer.pause(assigned)

    def _start_annotations(self) -> None:
        """Incident annotations in Grafana when a token is configured (never blocks scoring)."""
        s = self.settings
        if s.grafana_token is None:
            return
        try:
            from cellwatch.dashboards.annotations import AnnotationSender
            from cellwatch.dashboards.sync import connect

            self.annotations = AnnotationSender(connect(s.grafana_url, s.grafana_token.get_secret_value()))
            log.info("incident annotations go to Grafana at %s", s.grafana_url)
        except Exception as exc:  # Grafana is optional for scoring
            log.warning("no Grafana annotations (%s): %s", s.grafana_url, exc)

    def _annotate(self, tables: dict[str, pd.DataFrame]) -> None:
        sender = self.annotations
        if sender is None:
            return
        incidents = tables.get("incidents")
        if incidents is not None and len(incidents):
            sender.submit(incidents)
        dropped = int(getattr(sender, "dropped", 0))
        if dropped > self._annotations_dropped:
            self.metrics.annotations_dropped.inc(dropped - self._annotations_dropped)
            self._annotations_dropped = dropped

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self.annotations is not None:
            try:
                self.annotations.close(timeout=5)
            except Exception as exc:
                log.warning("closing the Grafana annotation sender: %s", exc)
        for thing, closer in ((self.consumer, "close"), (self.producer, "close"), (self.store, "close")):
            if thing is not None:
                try:
                    getattr(thing, closer)()
                except Exception as exc:
                    log.warning("closing %s: %s", type(thing).__name__, exc)

    # ----------------------------------------------------------------------------------------- the loop
    def run(self) -> dict[str, int]:
        """Consume until stopped; returns the totals."""
        if self.consumer is None:
            self.start()
        log.info("consuming %s and %s", self.settings.topic_readings, self.settings.topic_cell_results)
        try:
            while not self._stop.is_set():
                self._maybe_switch_model()
                messages = self._poll_batch()
                if not messages:
                    self._release_clock()  # nothing came: no partition is held back for another's backlog
                    self._complete_inflight()
                    if self.pending:
                        self._retry_store("writing pending rows", lambda: self._write({}))
                    self._update_lag()
                    continue
                self._handle(messages)
        except StoreUnavailable:
            log.warning("stopped while the store was unavailable; uncommitted batch will be replayed")
        finally:
            self._settle_on_stop()
            log.info("stopping: %s", dict(self.totals))
            self.close()
        return dict(self.totals)

    def _poll_batch(self) -> list[Message]:
        """Up to ``batch_max_records`` records within ``batch_max_ms``; the batch closes as soon as the client's
        buffered records are drained (a slow input is not held back), so under load batches stay full."""
        s = self.settings
        out: list[Message] = []
        end = time.monotonic() + s.batch_max_ms / 1000
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            got = self.consumer.poll_batch(s.batch_max_records - len(out), 0.0 if out else left)
            if not got and out:
                break
            out.extend(got)
            if len(out) >= s.batch_max_records:
                break
        return out

    def _handle(self, messages: list[Message]) -> None:
        s = self.settings
        t0 = time.perf_counter()
        decoded: Decoded = decode(messages, s.topic_readings, s.topic_cell_results)
        self._observe_clock(decoded)
        # a batch that reads the store (warm-up, re-sent readings) waits until the one before it is stored
        if (self._inflight is not None and self.window.needs_store(decoded.readings)
                and not self._complete_inflight()):
            return
        try:
            # the warm-up reads the store: retried like a write (nothing is changed before the reads succeed)
            out: BatchOutput = self._retry_store(
                "state warm-up", lambda: process(decoded, self.window, self._reads, len(messages)))
        except StoreUnavailable:
            raise
        except Exception as exc:
            first = {(m.topic, m.partition): m.offset for m in reversed(messages)}
            log.exception("scoring a batch failed; stopping without committing (the batch is replayed on restart); "
                          "first offsets %s", first)
            raise CellwatchError(f"scoring failed with model {self.window.scorer.model_version}: {exc}") from exc
        if not self._complete_inflight():
            return  # stopped before the batch in flight was acknowledged: commit nothing after it
        job = _Job(messages, out, {**out.tables, **self.pending}, t0)
        self.pending = {}
        self._submit(job)
        if not s.write_overlap:
            self._complete_inflight()
        self._align()
        self._log_state()

    # ----------------------------------------------------------------------------------------- event-time alignment
    def _observe_clock(self, decoded: Decoded) -> None:
        if self.clock.ahead_s <= 0 or decoded.readings.empty:
            return
        ts = decoded.readings["ts"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[ms]")
        self.clock.observe(self.settings.topic_readings, decoded.reading_meta["_partition"].to_numpy(),
                           ts.astype(np.int64) / 1000.0)

    def _align(self) -> None:
        """Pause readings partitions running ahead in event time, resume those the others caught up with."""
        if self.clock.ahead_s <= 0 or self.paused:
            return
        mine = [tp for tp in self.owned if tp.topic == self.settings.topic_readings]
        if len(mine) < 2 and not self.clock.paused:
            return
        pause, resume = self.clock.decide(self.consumer.lag(mine))
        if pause:
            self.consumer.pause(pause)
            self.clock.paused |= pause
            log.debug("paused %s: ahead of the slowest partition with a backlog", sorted(pause))
        if resume:
            self.consumer.resume(resume)
            self.clock.paused -= resume

    def _release_clock(self) -> None:
        if self.clock.paused and not self.paused:
            self.consumer.resume(set(self.clock.paused))
            self.clock.paused.clear()

    # ----------------------------------------------------------------------------------------- batch output
    def _submit(self, job: _Job) -> None:
        """Hand a processed batch to the writer thread (or run it here without ``write_overlap``)."""
        self._inflight = job
        if not self.settings.write_overlap:
            job.future = Future()
            try:
                self._write_and_publish(job)
                job.future.set_result(None)
            except BaseException as exc:
                job.future.set_exception(exc)
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellwatch-writer")
        job.future = self._writer.submit(self._write_and_publish, job)

    def _write_and_publish(self, job: _Job) -> None:
        """One attempt (in the writer thread): the store transaction, then every output message acknowledged.
        Retries, idling and committing are the polling thread's (:meth:`_complete_inflight`)."""
        self.store.write(job.tables)
        job.stored = True
        self.producer.publish(job.out, job.out.dead_keys)
        self.producer.flush()
        job.published = True

    def _complete_inflight(self) -> bool:
        """Wait for the batch in flight; redo what failed (store: backoff while paused; outputs: every 2 s);
        then commit its offsets. False: stopped meanwhile, nothing committed (no later batch may be either)."""
        job = self._inflight
        if job is None:
            return True
        self._inflight = None
        exc = job.future.exception()
        if not job.stored:
            if exc is not None and not isinstance(exc, StoreUnavailable):
                raise exc
            self._retry_store("batch write", lambda: self.store.write(job.tables), failed=exc)
            job.stored, exc = True, None
        self._annotate(job.tables)
        while not job.published:  # the store holds the batch; now every output message must be acknowledged
            if exc is None:
                try:
                    self.producer.publish(job.out, job.out.dead_keys)
                    self.producer.flush()
                    job.published = True
                    break
                except Exception as err:  # OutputError and any client error
                    exc = err
            self.producer.discard()
            log.error("publishing the batch failed, retrying in 2s (offsets not committed): %s", exc)
            exc = None
            self._idle(2.0)
            if self._stop.is_set():
                return False
        if not job.committed:
            self._commit(job.messages)
            job.committed = True
        self._account(job.out, job.messages, job.t0, time.time())
        return True

    def _settle_on_stop(self) -> None:
        """Stopping: a batch in flight that was stored and acknowledged gets its offsets committed; one that
        failed is left uncommitted (replayed on restart). No retries."""
        job, self._inflight = self._inflight, None
        if job is None:
            return
        try:
            exc = job.future.exception()
        except Exception as err:
            exc = err
        if exc is not None or not job.published:
            log.warning("the batch in flight was not completed (%s); its offsets are not committed, it is replayed",
                        exc)
            return
        try:
            if not job.committed:
                self._commit(job.messages)
            self._annotate(job.tables)
            self._account(job.out, job.messages, job.t0, time.time())
        except Exception as err:
            log.warning("committing the last batch at stop: %s", err)

    def _log_state(self) -> None:
        if time.monotonic() - self._state_logged < STATE_LOG_S:
            return
        self._state_logged = time.monotonic()
        log.info("scoring state: %s; readings partitions held back (ahead in event time): %d", self.window.sizes(),
                 len(self.clock.paused))

    def _write(self, tables: dict[str, pd.DataFrame]) -> None:
        merged = {**tables, **self.pending}
        self.store.write(merged)
        self.pending = {}

    def _commit(self, messages: list[Message]) -> None:
        last: dict[TP, int] = {}
        for m in messages:
            tp = TP(m.topic, m.partition)
            last[tp] = max(last.get(tp, -1), m.offset)
        offsets = {tp: o + 1 for tp, o in last.items() if tp in self.owned}
        lost = len(last) - len(offsets)
        if lost:
            log.warning("%d partition(s) of the batch were reassigned meanwhile; their new owner replays them "
                        "(idempotent)", lost)
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaClientError as exc:
            log.warning("offset commit failed (the batch is stored; it will be replayed idempotently): %s", exc)

    def _account(self, out: BatchOutput, messages: list[Message], t0: float, done: float) -> None:
        m = self.metrics
        batch_s = time.perf_counter() - t0
        m.consumed.inc(out.n_readings + out.n_rejected)
        m.scored.inc(out.n_scored)
        m.cell_results.inc(out.n_cell_results)
        for reason, n in out.reject_reasons.items():
            m.dead_letters.labels(reason=reason).inc(n)
        m.batches.inc()
        m.batch_seconds.observe(batch_s)
        ts = out.kafka_ts_ms[out.kafka_ts_ms > 0]
        e2e = (done * 1000 - ts) / 1000.0
        m.observe_e2e(e2e)
        max_lag = self._update_lag()
        for k, v in (("messages", len(messages)), ("readings", out.n_readings), ("scored", out.n_scored),
                     ("rejected", out.n_rejected), ("cell_results", out.n_cell_results),
                     ("duplicates", out.n_duplicates), ("unscored", out.n_unscored), ("batches", 1)):
            self.totals[k] += v
        self.pending["pipeline_stats"] = pd.DataFrame([{
            "worker": self.settings.worker_id, "batch_end": pd.Timestamp(datetime.fromtimestamp(done, UTC)),
            "readings": out.n_readings, "scored": out.n_scored, "rejected": out.n_rejected,
            "batch_ms": batch_s * 1000,
            "e2e_p50_ms": float(np.percentile(e2e, 50) * 1000) if len(e2e) else None,
            "e2e_p99_ms": float(np.percentile(e2e, 99) * 1000) if len(e2e) else None,
            "max_lag": max_lag, "model_version": self.window.scorer.model_version}])
        log.debug("batch: %d messages, %d scored, %d rejected, %.0f ms", len(messages), out.n_scored,
                  out.n_rejected, batch_s * 1000)

    def _update_lag(self) -> int:
        worst = 0
        for tp, lag in self.consumer.lag(list(self.owned)).items():
            self.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
            worst = max(worst, lag)
        return worst

    def _maybe_switch_model(self) -> None:
        scorer = self.watcher.poll()
        if scorer is None:
            return
        self.window.switch(scorer)
        self.metrics.model.info({"version": scorer.model_version})
        self.pending.update(self.watcher.version_rows())


def run_service(settings: Settings) -> dict[str, int]:
    """``cellwatch run``: build the service from settings, handle signals, consume until stopped."""
    service = StreamService(settings)
    service.install_signals()
    return service.run()
