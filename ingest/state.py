"""Window state per station, travelling with its Kafka partition.

A worker keeps ONE scoring state (``scorer.new_state()``) for every stream it owns, plus the set of
(line, station) streams that are *warm*. A stream is cold when the worker starts, when its partition is
(re)assigned, and for every stream when a new model is switched in. Cold streams are warmed lazily from
the store before the first batch that holds them is scored: the last ``scorer.history`` readings with
``seq`` below the batch's smallest ``seq`` of that stream, the readings of cells still in production
(no EOL result yet) and the stream's open incidents go through ``scorer.warm_up``. Because everything a
batch produced is committed to the store before its offsets, the warmed state equals the state an
uninterrupted worker would have had, so scores after a restart or a rebalance equal scores without one.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from cellwatch.ingest.store import Store

log = logging.getLogger(__name__)

StreamKey = tuple[str, str]  # (line, station)


class WindowState:
    """The scorer's state, the streams it holds and the partition each stream came on.

    ``LineScorer.warm_up`` rebuilds the WHOLE state, so when a batch brings a cold stream (or the model
    changed) every stream the worker holds is rebuilt in one call: a warm stream from its readings before
    its next expected ``seq`` (all of them are in the store: batches are committed in order), a cold one
    from its readings before the batch's first ``seq`` of that stream.
    """

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.state = scorer.new_state()
        self.next_seq: dict[StreamKey, int] = {}
        self.stale = False
        self.streams_of: dict[Hashable, set[StreamKey]] = defaultdict(set)
        self.rebuilds = 0

    @property
    def warm(self) -> set[StreamKey]:
        return set(self.next_seq)

    def switch(self, scorer: Any) -> None:
        """Use a new scorer from the next batch on: its state is rebuilt from the store then."""
        self.scorer = scorer
        self.state = scorer.new_state()
        self.stale = bool(self.next_seq)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Partitions were revoked or (re)assigned: their streams are cold (rebuilt before their next use)."""
        for p in partitions:
            for key in self.streams_of.pop(p, set()):
                self.next_seq.pop(key, None)

    def note_partitions(self, readings: pd.DataFrame, partition_col: str = "_partition") -> None:
        """Remember which partition each stream arrived on (so that a revocation cools the right streams)."""
        if partition_col not in readings or readings.empty:
            return
        pairs = readings[[partition_col, "line", "station"]].drop_duplicates()
        for p, line, station in pairs.itertuples(index=False, name=None):
            self.streams_of[p].add((line, station))

    def _firsts(self, readings: pd.DataFrame) -> pd.DataFrame:
        return (readings.groupby(["line", "station"], sort=True)
                .agg(first_seq=("seq", "min"), first_ts=("ts", "min"), last_seq=("seq", "max")).reset_index())

    def warm_up(self, readings: pd.DataFrame, store: Store | None) -> int:
        """Rebuild the state from ``store`` if the batch holds a cold stream or the model changed.

        Returns the number of streams rebuilt (0 when every stream of the batch is warm).
        """
        if readings.empty:
            return 0
        firsts = self._firsts(readings)
        keys = list(zip(firsts["line"], firsts["station"], strict=True))
        cold = [k for k in keys if k not in self.next_seq]
        if not cold and not self.stale:
            self._advance(firsts)
            return 0
        if not self.stale and store is not None and not any(
                self._has_history(store, k, seq) for k, seq in zip(keys, firsts["first_seq"], strict=True)
                if k in cold):
            # brand-new streams: their fresh state IS the uninterrupted state, nothing to rebuild
            self._advance(firsts)
            return 0
        before = dict(self.next_seq)  # warm streams: everything before their next seq
        for k, seq in zip(keys, firsts["first_seq"], strict=True):
            if k in cold:
                before[k] = int(seq)
        if store is not None:
            n = self.scorer.history
            parts = [store.last_readings(line, st, seq, n) for (line, st), seq in sorted(before.items())]
            parts.append(store.open_cell_readings({line for line, _ in before}, before=firsts["first_ts"].min()))
            parts = [p for p in parts if not p.empty]
            history = pd.concat(parts, ignore_index=True) if parts else parts
            if len(parts):
                history = (history.drop_duplicates(["line", "station", "seq"])
                           .sort_values("ts", kind="stable").reset_index(drop=True))
            else:
                history = None
            since = None if history is None else pd.Timestamp(history["ts"].min()).to_pydatetime()
            incidents = store.open_incidents(before, closed_since=since)
            self.scorer.warm_up(history, incidents, self.state)
            log.info("rebuilt the window state of %d stream(s) (%d cold) from the store: %d readings, "
                     "%d open incidents", len(before), len(cold), 0 if history is None else len(history),
                     len(incidents))
        self.next_seq = before
        self.stale = False
        self.rebuilds += 1
        self._advance(firsts)
        return len(before)

    @staticmethod
    def _has_history(store: Store, key: StreamKey, first_seq: int) -> bool:
        return not store.last_readings(key[0], key[1], int(first_seq), 1).empty

    def _advance(self, firsts: pd.DataFrame) -> None:
        for line, st, last in zip(firsts["line"], firsts["station"], firsts["last_seq"], strict=True):
            self.next_seq[(line, st)] = max(self.next_seq.get((line, st), 0), int(last) + 1)

    def needs_store(self, readings: pd.DataFrame) -> bool:
        """Whether processing ``readings`` may READ the store (a cold stream or a model switch to warm up, or a
        reading behind its stream whose key is looked up): such a batch must wait until every earlier batch is
        written (the service overlaps writes with scoring otherwise)."""
        if readings.empty:
            return False
        if self.stale:
            return True
        keys = readings[["line", "station"]].drop_duplicates()
        if any(k not in self.next_seq for k in keys.itertuples(index=False, name=None)):
            return True
        return bool(self.seen(readings).any())

    def sizes(self) -> dict[str, int]:
        """Sizes of the scoring state (items, not bytes) for the memory log: what grows with a long run."""
        st = self.state
        out = {"streams": len(self.next_seq)}
        cells = getattr(st, "cells", None)
        if cells is not None:
            out["open_cells"] = len(cells)
            out["open_cell_lots"] = sum(len(v) for v in getattr(cells, "lots", {}).values())
        buffers = getattr(st, "buffers", None)
        if isinstance(buffers, dict):
            out["buffer_rows"] = sum(len(b) for b in buffers.values())
        tracker = getattr(st, "tracker", None)
        streams = getattr(tracker, "_streams", None)
        if isinstance(streams, dict):
            out["incident_streams"] = len(streams)
        models = getattr(st, "model_states", None)
        if isinstance(models, dict):
            out["model_state_lines"] = sum(len(getattr(m, "values", {}) or {}) for m in models.values())
        return out

    def seen(self, readings: pd.DataFrame) -> np.ndarray:
        """Mask of readings of warm streams whose ``seq`` was already processed (re-sent duplicates)."""
        if readings.empty or not self.next_seq:
            return np.zeros(len(readings), dtype=bool)
        keys = pd.MultiIndex.from_arrays([readings["line"], readings["station"]])
        nxt = pd.Series(self.next_seq, dtype="float64")
        limit = nxt.reindex(keys).to_numpy()
        return np.nan_to_num(limit, nan=-1.0) > readings["seq"].to_numpy()
