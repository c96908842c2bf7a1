"""Output topics and the dead-letter queue, through one idempotent producer (kafka-python or confluent-kafka).

* ``cellwatch.scores`` (key ``line/station``), ``cellwatch.incidents`` (key ``incident_id``) and
  ``cellwatch.predictions`` (key ``cell_id``): one JSON object per row, the store's columns.
* ``cellwatch.dlq``: the rejected message's ORIGINAL bytes as value and its original key, with headers
  ``cellwatch.source_topic``, ``cellwatch.source_partition``, ``cellwatch.source_offset``,
  ``cellwatch.reason`` (a :class:`cellwatch.contract.Reason` value) and ``cellwatch.detail`` (UTF-8).

The producer (:func:`cellwatch.ingest.kafka_client.make_producer`, the ``kafka_client`` setting) runs with
``acks=all`` and idempotence on, so a retried send is not duplicated; :meth:`OutputProducer.flush` returns only
when every message of the batch is acknowledged, and raises if one failed (then the batch's offsets are not committed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pandas as pd

from cellwatch.config import Settings
from cellwatch.ingest.kafka_client import DeliveryError, make_producer
from cellwatch.ingest.pipeline import BatchOutput, json_messages

log = logging.getLogger(__name__)

DLQ_HEADERS = ("cellwatch.source_topic", "cellwatch.source_partition", "cellwatch.source_offset",
               "cellwatch.reason", "cellwatch.detail")


OutputError = DeliveryError  # a message could not be delivered to an output topic


class OutputProducer:
    """Publishes a batch's results and dead letters; ``flush`` waits for every acknowledgement."""

    def __init__(self, settings: Settings, publish_results: bool | None = None) -> None:
        self.settings = settings
        self.publish_results = settings.publish_outputs if publish_results is None else publish_results
        self.producer = make_producer(settings)

    def _send(self, topic: str, values: Iterable[bytes], keys: Iterable[bytes | None],
              headers: Iterable[list[tuple[str, bytes]] | None] | None = None) -> None:
        send = self.producer.send
        if headers is None:
            for v, k in zip(values, keys, strict=True):
                send(topic, v, k)
            return
        for v, k, h in zip(values, keys, headers, strict=True):
            send(topic, v, k, h)

    def publish(self, out: BatchOutput, dead_keys: list[bytes | None]) -> None:
        """Queue the batch's messages (call :meth:`flush` before committing offsets)."""
        s = self.settings
        dead = out.tables.get("dead_letters")
        if dead is not None and len(dead):
            hdrs = [[("cellwatch.source_topic", str(t).encode()), ("cellwatch.source_partition", str(p).encode()),
                     ("cellwatch.source_offset", str(o).encode()), ("cellwatch.reason", str(r).encode()),
                     ("cellwatch.detail", str(d or "").encode())]
                    for t, p, o, r, d in dead[["source_topic", "source_partition", "source_offset", "reason",
                                               "detail"]].itertuples(index=False, name=None)]
            payloads = [b"" if v is None else bytes(v) for v in dead["payload"]]
            self._send(s.topic_dlq, payloads, dead_keys, hdrs)
        if not self.publish_results:
            return
        scores = out.tables.get("scores")
        if scores is not None and len(scores):
            keys = (scores["line"].astype(str) + "/" + scores["station"].astype(str)).str.encode("utf-8")
            self._send(s.topic_scores, json_messages(scores), keys)
        incidents = out.tables.get("incidents")
        if incidents is not None and len(incidents):
            keys = incidents["incident_id"].astype(str).str.encode("utf-8")
            self._send(s.topic_incidents, json_messages(incidents), keys)
        preds = out.tables.get("cell_predictions")
        if preds is not None and len(preds):
            self._send(s.topic_predictions, json_messages(preds), preds["cell_id"].astype(str).str.encode("utf-8"))

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait until every queued message is acknowledged; raises :class:`OutputError` if one failed."""
        return self.producer.flush(timeout_s)

    def discard(self) -> None:
        """Forget queued messages' outcomes after a failed batch (the batch will be redone)."""
        self.producer.discard()

    def close(self) -> None:
        self.producer.close()


def dlq_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """A DLQ message's headers as a dict of text (for readers of the DLQ)."""
    return {k: v.decode("utf-8", "replace") for k, v in (headers or []) if k in DLQ_HEADERS}


def frame_or_empty(frame: pd.DataFrame | None) -> pd.DataFrame:
    return frame if frame is not None else pd.DataFrame()
