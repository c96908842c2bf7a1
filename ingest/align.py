"""Event-time alignment of a backlog across the readings partitions a worker owns.

Readings are keyed ``line/station``, so a cell's stations are spread over partitions, and a consumer reading a
backlog (a restart after hours, a benchmark's pre-loaded topic) takes every partition at about the same rate in
*messages*, not in *time*: a partition with fewer messages per hour runs ahead. In a 24 h x 28 line replay of the
simulator the partitions drift 4 h apart, so a cell's EOL reading (closing it) can be scored hours before its
winding reading (opening it): the cell then stays in the scorer's open-cell state until ``max_open_cells`` evicts
it, and its genealogy features are computed out of order. :class:`PartitionClock` pauses a backlogged partition
whose newest reading is more than ``ahead_s`` seconds ahead of the slowest backlogged partition, and resumes it
once that one is within ``ahead_s / 2``. Partitions without a backlog (live input) are never paused, and the
slowest backlogged partition never is, so consumption always progresses.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cellwatch.ingest.kafka_client import TP


class PartitionClock:
    """The newest reading time per partition and the partitions paused for being ahead."""

    def __init__(self, ahead_s: float) -> None:
        self.ahead_s = float(ahead_s)
        self.newest: dict[TP, float] = {}
        self.paused: set[TP] = set()

    def observe(self, topic: str, partitions: np.ndarray, ts_s: np.ndarray) -> None:
        """Note the readings of a batch: their partitions and times (epoch seconds)."""
        if not len(partitions):
            return
        order = np.argsort(partitions, kind="stable")
        parts, start = np.unique(partitions[order], return_index=True)
        newest = np.maximum.reduceat(ts_s[order], start)
        for p, t in zip(parts.tolist(), newest.tolist(), strict=True):
            tp = TP(topic, int(p))
            self.newest[tp] = max(self.newest.get(tp, -np.inf), t)

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions revoked or (re)assigned: their position restarts from the committed offset."""
        for tp in tps:
            self.newest.pop(tp, None)
            self.paused.discard(tp)

    def decide(self, lag: dict[TP, int]) -> tuple[set[TP], set[TP]]:
        """(partitions to pause, partitions to resume) given the lag of every owned readings partition."""
        if self.ahead_s <= 0:
            return set(), set(self.paused)
        backlog = {tp for tp, n in lag.items() if n > 0}
        if len(backlog) < 2 or any(tp not in self.newest for tp in backlog):
            return set(), set(self.paused)  # nothing to align, or a partition whose position is unknown yet
        floor = min(self.newest[tp] for tp in backlog)
        pause = {tp for tp in backlog if self.newest[tp] > floor + self.ahead_s} - self.paused
        resume = {tp for tp in self.paused if tp not in backlog or self.newest[tp] <= floor + self.ahead_s / 2}
        return pause, resume
