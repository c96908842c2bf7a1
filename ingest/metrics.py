"""Prometheus metrics of the streaming service (``--metrics-port``, 0 = off).

All metrics live in a private registry so that several services (tests) in one process do not collide;
:func:`Metrics.serve` exposes it with prometheus-client's ``start_http_server``.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The service's counters, gauges and histograms."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.consumed = Counter("cellwatch_readings_consumed", "readings received (valid or not)", registry=r)
        self.scored = Counter("cellwatch_readings_scored", "readings scored and committed", registry=r)
        self.cell_results = Counter("cellwatch_cell_results", "EOL cell results stored", registry=r)
        self.dead_letters = Counter("cellwatch_dead_letters", "messages sent to the DLQ", ["reason"], registry=r)
        self.batches = Counter("cellwatch_batches", "micro-batches committed", registry=r)
        self.store_retries = Counter("cellwatch_store_retries", "failed store writes that were retried", registry=r)
        self.batch_seconds = Histogram("cellwatch_batch_seconds", "micro-batch time: decode to offset commit",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e_seconds = Histogram("cellwatch_end_to_end_seconds",
                                     "reading produced (Kafka timestamp) -> result committed",
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.lag = Gauge("cellwatch_consumer_lag", "messages behind the end of the partition",
                         ["topic", "partition"], registry=r)
        self.model = Info("cellwatch_model", "model version in use", registry=r)
        self.annotations_dropped = Counter("cellwatch_grafana_annotations_dropped",
                                           "incident annotations dropped while Grafana was unreachable", registry=r)
        self.store_up = Gauge("cellwatch_store_up", "1 when the last store write succeeded", registry=r)

    def observe_e2e(self, seconds: np.ndarray) -> None:
        """Record end-to-end latencies (vectorised into histogram buckets, one lock per batch)."""
        if len(seconds) == 0:
            return
        h = self.e2e_seconds
        bounds = getattr(h, "_upper_bounds", None)
        if bounds is None or not hasattr(h, "_buckets"):  # another prometheus-client layout: the slow way
            for s in seconds:
                h.observe(float(s))
            return
        counts = np.bincount(np.searchsorted(np.asarray(bounds, dtype=float), seconds, side="left"),
                             minlength=len(bounds))
        for i, c in enumerate(counts[:len(bounds)]):
            if c:
                h._buckets[i].inc(int(c))
        h._sum.inc(float(np.sum(seconds)))

    def serve(self, port: int) -> None:
        """Expose /metrics on ``port`` (0: not at all); a port in use is a clear error."""
        if not port:
            return
        try:
            start_http_server(port, registry=self.registry)
        except OSError as exc:
            from cellwatch.errors import CellwatchError
            raise CellwatchError(f"cannot serve Prometheus metrics on port {port}: {exc.strerror}; "
                                 "give each worker on one host its own --metrics-port (or 0)") from None
