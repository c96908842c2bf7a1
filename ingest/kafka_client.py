"""The Kafka client behind ``cellwatch run``: one small consumer/producer interface, two implementations.

* ``kafka-python`` (the default, pure Python, a core dependency);
* ``confluent`` (confluent-kafka on librdkafka; ``pip install 'cellwatch[confluent]'``): the same broker
  consumed and decoded with ~20x less CPU in benchmark B2, and a producer that is not a per-message Python cost.

Chosen by the ``kafka_client`` setting (``--kafka-client``, ``CELLWATCH_KAFKA_CLIENT``). Both give the service
the same semantics: a consumer group with auto-commit off and explicit commits of the offsets the caller
passes, pause/resume, rebalance callbacks with the revoked/assigned ``(topic, partition)`` pairs (called
from inside :meth:`Consumer.poll_batch`), the high-water lag of owned partitions; and an idempotent
(``acks=all``) producer whose :meth:`Producer.flush` returns only when every queued message is acknowledged
and raises :class:`DeliveryError` otherwise. TLS/SASL come from :meth:`Settings.kafka_security` (kafka-python
names) and are mapped to librdkafka's names by :func:`confluent_security`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from cellwatch.config import Settings
from cellwatch.errors import CellwatchError
from cellwatch.ingest.pipeline import Message

log = logging.getLogger(__name__)

CLIENTS = ("kafka-python", "confluent")
#: how long the confluent client waits for broker metadata at start-up before "unreachable"
REACH_TIMEOUT_S = 15.0


class TP(NamedTuple):
    """A topic partition (equal to kafka-python's ``TopicPartition`` tuple)."""

    topic: str
    partition: int


Callback = Callable[[list[TP]], None]
Headers = list[tuple[str, bytes]] | None


class KafkaClientError(RuntimeError):
    """An offset commit or another client call failed (the caller decides: replay, retry)."""


class DeliveryError(RuntimeError):
    """A message could not be delivered to an output topic."""


class Consumer(Protocol):
    def subscribe(self, topics: Sequence[str], on_assign: Callback, on_revoke: Callback) -> None: ...
    def poll_batch(self, max_records: int, timeout_s: float) -> list[Message]: ...
    def commit(self, offsets: dict[TP, int]) -> None: ...
    def pause(self, partitions: Iterable[TP]) -> None: ...
    def resume(self, partitions: Iterable[TP]) -> None: ...
    def assignment(self) -> set[TP]: ...
    def lag(self, partitions: Iterable[TP]) -> dict[TP, int]: ...
    def close(self) -> None: ...


class Producer(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers = None) -> None: ...
    def flush(self, timeout_s: float) -> int: ...
    def discard(self) -> None: ...
    def close(self) -> None: ...


def _unreachable(settings: Settings, exc: BaseException) -> CellwatchError:
    return CellwatchError(f"Kafka at {settings.kafka} unreachable: {exc}")


# ============================================================================================ kafka-python
class KafkaPythonConsumer:
    """kafka-python's ``KafkaConsumer`` (manual commits, ``ConsumerRebalanceListener``)."""

    def __init__(self, settings: Settings) -> None:
        import kafka
        from kafka.errors import KafkaError

        s = settings
        try:
            self._c = kafka.KafkaConsumer(
                bootstrap_servers=s.bootstrap_servers(), group_id=s.group_id, enable_auto_commit=False,
                auto_offset_reset=s.auto_offset_reset, max_poll_records=s.batch_max_records,
                max_poll_interval_ms=s.max_poll_interval_ms, session_timeout_ms=s.session_timeout_ms,
                heartbeat_interval_ms=s.heartbeat_interval_ms, client_id=f"cellwatch-{s.worker_id}",
                **s.kafka_security())
        except KafkaError as exc:
            raise _unreachable(s, exc) from None

    def subscribe(self, topics: Sequence[str], on_assign: Callback, on_revoke: Callback) -> None:
        from kafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked) -> None:
                on_revoke([TP(tp.topic, tp.partition) for tp in revoked])

            def on_partitions_assigned(self, assigned) -> None:
                on_assign([TP(tp.topic, tp.partition) for tp in assigned])

        self._c.subscribe(list(topics), listener=Listener())

    def poll_batch(self, max_records: int, timeout_s: float) -> list[Message]:
        got = self._c.poll(timeout_ms=max(1, int(timeout_s * 1000)), max_records=max(1, max_records))
        return [Message(r.topic, r.partition, r.offset, r.value, r.key, r.timestamp)
                for records in got.values() for r in records]

    def commit(self, offsets: dict[TP, int]) -> None:
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        try:
            self._c.commit({TopicPartition(*tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except KafkaError as exc:  # CommitFailedError included
            raise KafkaClientError(str(exc)) from exc

    def pause(self, partitions: Iterable[TP]) -> None:
        from kafka import TopicPartition

        self._c.pause(*(TopicPartition(*tp) for tp in partitions))

    def resume(self, partitions: Iterable[TP]) -> None:
        from kafka import TopicPartition

        self._c.resume(*(TopicPartition(*tp) for tp in partitions))

    def assignment(self) -> set[TP]:
        return {TP(tp.topic, tp.partition) for tp in self._c.assignment()}

    def lag(self, partitions: Iterable[TP]) -> dict[TP, int]:
        from kafka import TopicPartition

        out: dict[TP, int] = {}
        for tp in partitions:
            try:
                ktp = TopicPartition(*tp)
                hw = self._c.highwater(ktp)
                pos = self._c.position(ktp, timeout_ms=100) if hw is not None else None
            except Exception:
                continue
            if hw is not None and pos is not None:
                out[tp] = max(0, hw - pos)
        return out

    def close(self) -> None:
        self._c.close()


class KafkaPythonProducer:
    """kafka-python's idempotent ``KafkaProducer``; futures checked at :meth:`flush`."""

    def __init__(self, settings: Settings) -> None:
        import kafka
        from kafka.errors import KafkaError

        try:
            self._p = kafka.KafkaProducer(
                bootstrap_servers=settings.bootstrap_servers(), acks="all", enable_idempotence=True,
                linger_ms=20, compression_type=None, max_in_flight_requests_per_connection=5,
                client_id=f"cellwatch-out-{settings.worker_id}", **settings.kafka_security())
        except KafkaError as exc:
            raise _unreachable(settings, exc) from None
        self._futures: list[Any] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers = None) -> None:
        self._futures.append(self._p.send(topic, value=value, key=key, headers=headers))

    def flush(self, timeout_s: float) -> int:
        futures, self._futures = self._futures, []
        if not futures:
            return 0
        self._p.flush(timeout=timeout_s)
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            exc = failed[0].exception if failed[0].is_done else "not acknowledged in time"
            raise DeliveryError(f"{len(failed)} of {len(futures)} output message(s) not delivered: {exc}")
        return len(futures)

    def discard(self) -> None:
        self._futures.clear()

    def close(self) -> None:
        self._p.close(timeout=10)


# ============================================================================================ confluent-kafka
#: kafka-python keyword (Settings.kafka_security) -> librdkafka property
CONFLUENT_NAMES = {"security_protocol": "security.protocol", "sasl_mechanism": "sasl.mechanism",
                   "sasl_plain_username": "sasl.username", "sasl_plain_password": "sasl.password",
                   "ssl_cafile": "ssl.ca.location", "ssl_certfile": "ssl.certificate.location",
                   "ssl_keyfile": "ssl.key.location"}


def confluent_security(settings: Settings) -> dict[str, Any]:
    """The TLS/SASL settings under librdkafka's property names."""
    return {CONFLUENT_NAMES[k]: v for k, v in settings.kafka_security().items()}


def _confluent():
    try:
        import confluent_kafka
    except ImportError:
        raise CellwatchError("kafka_client = confluent needs confluent-kafka: pip install 'cellwatch[confluent]'"
                             ) from None
    return confluent_kafka


def _rd_log(name: str) -> logging.Logger:
    return logging.getLogger(f"{__name__}.{name}")


def _check_reachable(client: Any, settings: Settings) -> None:
    """librdkafka connects in the background; ask for metadata once so a wrong address fails at start-up."""
    ck = _confluent()
    try:
        client.list_topics(timeout=REACH_TIMEOUT_S)
    except ck.KafkaException as exc:
        raise _unreachable(settings, exc.args[0] if exc.args else exc) from None


class ConfluentConsumer:
    """confluent-kafka's ``Consumer`` (librdkafka): manual commits, ``on_assign``/``on_revoke`` callbacks."""

    def __init__(self, settings: Settings) -> None:
        ck = _confluent()
        s = settings
        self._ck = ck
        self._c = ck.Consumer({
            "bootstrap.servers": s.kafka, "group.id": s.group_id, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": s.auto_offset_reset,
            "max.poll.interval.ms": s.max_poll_interval_ms, "session.timeout.ms": s.session_timeout_ms,
            "heartbeat.interval.ms": s.heartbeat_interval_ms, "client.id": f"cellwatch-{s.worker_id}",
            **confluent_security(s)}, logger=_rd_log("consumer"))
        _check_reachable(self._c, s)
        self._paused: set[TP] = set()

    def subscribe(self, topics: Sequence[str], on_assign: Callback, on_revoke: Callback) -> None:
        def assigned(consumer, partitions) -> None:
            tps = [TP(p.topic, p.partition) for p in partitions]
            consumer.assign(partitions)  # assign now, so the callback may pause them
            on_assign(tps)

        def revoked(consumer, partitions) -> None:
            tps = [TP(p.topic, p.partition) for p in partitions]
            self._paused.difference_update(tps)
            on_revoke(tps)

        self._c.subscribe(list(topics), on_assign=assigned, on_revoke=revoked, on_lost=revoked)

    def poll_batch(self, max_records: int, timeout_s: float) -> list[Message]:
        """What the client holds, up to ``max_records``; waits at most ``timeout_s`` for the FIRST message only
        (``consume`` alone would wait for all ``max_records``), like kafka-python's ``poll``."""
        n = max(1, max_records)
        got = self._c.consume(num_messages=n, timeout=0)
        if not got and timeout_s > 0:
            got = self._c.consume(num_messages=1, timeout=timeout_s)
            if got and n > 1:
                got += self._c.consume(num_messages=n - 1, timeout=0)
        out: list[Message] = []
        for m in got:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise KafkaClientError(f"fatal consumer error: {err}")
                log.warning("consumer: %s", err)
                continue
            out.append(Message(m.topic(), m.partition(), m.offset(), m.value(), m.key(), m.timestamp()[1]))
        return out

    def commit(self, offsets: dict[TP, int]) -> None:
        tps = [self._ck.TopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        try:
            self._c.commit(offsets=tps, asynchronous=False)
        except self._ck.KafkaException as exc:
            raise KafkaClientError(str(exc.args[0] if exc.args else exc)) from exc

    def pause(self, partitions: Iterable[TP]) -> None:
        tps = list(partitions)
        if tps:
            self._c.pause([self._ck.TopicPartition(*tp) for tp in tps])
            self._paused.update(tps)

    def resume(self, partitions: Iterable[TP]) -> None:
        tps = list(partitions)
        if tps:
            self._c.resume([self._ck.TopicPartition(*tp) for tp in tps])
            self._paused.difference_update(tps)

    def assignment(self) -> set[TP]:
        return {TP(p.topic, p.partition) for p in self._c.assignment()}

    def lag(self, partitions: Iterable[TP]) -> dict[TP, int]:
        tps = list(partitions)
        if not tps:
            return {}
        out: dict[TP, int] = {}
        try:
            positions = self._c.position([self._ck.TopicPartition(*tp) for tp in tps])
        except self._ck.KafkaException:
            return out
        for p in positions:
            if p.offset < 0:  # nothing consumed yet
                continue
            try:  # cached: the high-water mark of the last fetch response, no broker round trip
                _low, high = self._c.get_watermark_offsets(p, cached=True)
            except self._ck.KafkaException:
                continue
            if high >= 0:
                out[TP(p.topic, p.partition)] = max(0, high - p.offset)
        return out

    def close(self) -> None:
        self._c.close()


class ConfluentProducer:
    """confluent-kafka's idempotent ``Producer``; delivery reports collected until :meth:`flush`."""

    def __init__(self, settings: Settings) -> None:
        ck = _confluent()
        self._p = ck.Producer({
            "bootstrap.servers": settings.kafka, "acks": "all", "enable.idempotence": True, "linger.ms": 20,
            "client.id": f"cellwatch-out-{settings.worker_id}", **confluent_security(settings)},
            logger=_rd_log("producer"))
        _check_reachable(self._p, settings)
        self._queued = 0
        self._failed: list[Any] = []

    def _report(self, err, _msg) -> None:
        if err is not None:
            self._failed.append(err)

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Headers = None) -> None:
        while True:
            try:
                if headers:
                    self._p.produce(topic, value, key, headers=headers, on_delivery=self._report)
                else:
                    self._p.produce(topic, value, key, on_delivery=self._report)
                break
            except BufferError:  # the local queue is full: serve delivery reports, then retry
                self._p.poll(0.05)
        self._queued += 1

    def flush(self, timeout_s: float) -> int:
        queued, self._queued = self._queued, 0
        if not queued:
            return 0
        left = self._p.flush(timeout_s)
        failed, self._failed = self._failed, []
        if left or failed:
            why = failed[0] if failed else "not acknowledged in time"
            raise DeliveryError(f"{len(failed) + left} of {queued} output message(s) not delivered: {why}")
        return queued

    def discard(self) -> None:
        self._queued = 0
        self._failed = []

    def close(self) -> None:
        left = self._p.flush(10)
        if left:
            log.warning("%d output message(s) still queued at close", left)


# ============================================================================================ factory
def make_consumer(settings: Settings) -> Consumer:
    return ConfluentConsumer(settings) if settings.kafka_client == "confluent" else KafkaPythonConsumer(settings)


def make_producer(settings: Settings) -> Producer:
    return ConfluentProducer(settings) if settings.kafka_client == "confluent" else KafkaPythonProducer(settings)
