"""The pipeline core shared by ``cellwatch run`` (Kafka) and ``cellwatch demo`` (in-process source).

One micro-batch of raw messages goes through: decode + validate (the message contract, vectorised) ->
dead letters for the rejects -> warm-up of cold streams -> ``scorer.process`` (pure) -> table-shaped
frames for the store (:data:`ingest.store.POLICIES`) and messages for the output topics. No Kafka here:
the caller writes, publishes and commits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd

from cellwatch import contract
from cellwatch.ingest.schema import TABLE
from cellwatch.ingest.state import WindowState
from cellwatch.ingest.store import Store, readings_rows

DEAD_LETTER_COLUMNS = TABLE["dead_letters"].column_names


@dataclass(frozen=True, slots=True)
class Message:
    """One raw message as it came off a topic (or out of the in-process source)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None


@dataclass
class Decoded:
    """A decoded micro-batch: valid readings (wide, time order), valid cell results, rejects."""

    readings: pd.DataFrame
    reading_meta: pd.DataFrame  # _partition, _offset, _kafka_ts_ms, _topic, _payload, _key per reading row
    cell_results: pd.DataFrame
    dead_letters: pd.DataFrame  # dead_letters table columns
    dead_keys: list[bytes | None] = field(default_factory=list)
    duplicates: int = 0


@dataclass
class BatchOutput:
    """Everything a batch produced: store rows in write order, and counters."""

    tables: dict[str, pd.DataFrame]
    n_messages: int
    n_readings: int
    n_scored: int
    n_cell_results: int
    n_rejected: int
    reject_reasons: dict[str, int]
    kafka_ts_ms: np.ndarray          # producer timestamps of the scored readings (for e2e latency)
    reading_ts: pd.Series            # reading timestamps
    process_ms: float
    warmed: int = 0
    n_duplicates: int = 0
    n_unscored: int = 0
    dead_keys: list[bytes | None] = field(default_factory=list)  # Kafka keys of tables["dead_letters"] rows


def _dead_letters(messages: Sequence[Message], rejects: Sequence[contract.Reject], received: datetime
                  ) -> tuple[pd.DataFrame, list[bytes | None]]:
    msgs = [messages[r.index] for r in rejects]
    frame = pd.DataFrame({
        "source_topic": [m.topic for m in msgs], "source_partition": [m.partition for m in msgs],
        "source_offset": [m.offset for m in msgs], "received_at": pd.Timestamp(received),
        "reason": [str(r.reason) for r in rejects], "detail": [r.detail for r in rejects],
        "payload": [m.value for m in msgs]}, columns=DEAD_LETTER_COLUMNS)
    return frame, [m.key for m in msgs]


def decode(messages: Sequence[Message], readings_topic: str, cell_results_topic: str,
           now: datetime | None = None) -> Decoded:
    """Split by topic, validate each part with the contract, collect the rejects as dead letters."""
    now = now or datetime.now(UTC)
    rmsgs = [m for m in messages if m.topic == readings_topic]
    cmsgs = [m for m in messages if m.topic == cell_results_topic]
    readings, rrej = contract.validate_readings([m.value for m in rmsgs], now=now)
    cells, crej = contract.validate_cell_results([m.value for m in cmsgs], now=now)
    d1, k1 = _dead_letters(rmsgs, rrej, now)
    d2, k2 = _dead_letters(cmsgs, crej, now)
    dead = pd.concat([d for d in (d1, d2) if not d.empty], ignore_index=True) if (len(d1) or len(d2)) else d1
    pos = readings.index.to_numpy()
    meta = pd.DataFrame({"_partition": np.array([rmsgs[i].partition for i in pos], dtype=np.int64),
                         "_offset": np.array([rmsgs[i].offset for i in pos], dtype=np.int64),
                         "_kafka_ts_ms": np.array([rmsgs[i].timestamp_ms or 0 for i in pos], dtype=np.int64),
                         "_topic": np.array([rmsgs[i].topic for i in pos], dtype=object),
                         "_payload": np.array([rmsgs[i].value for i in pos], dtype=object),
                         "_key": np.array([rmsgs[i].key for i in pos], dtype=object)},
                        index=readings.index)
    # a reading sent twice (producer retry) is scored once: keep the first copy of each natural key
    dup = readings.duplicated(list(contract.READING_ID), keep="first").to_numpy()
    readings, meta = readings[~dup], meta[~dup]
    order = np.argsort(readings["ts"].to_numpy(), kind="stable")
    readings = readings.iloc[order].reset_index(drop=True)
    meta = meta.iloc[order].reset_index(drop=True)
    return Decoded(readings, meta, cells.reset_index(drop=True), dead, k1 + k2, int(dup.sum()))


def cells_from_predictions(pred: pd.DataFrame) -> pd.DataFrame:
    """The latest prediction of each cell in the batch as ``cells`` rows (still open)."""
    if pred is None or pred.empty:
        return pd.DataFrame()
    last = pred.sort_values("ts", kind="stable").drop_duplicates("cell_id", keep="last")
    return pd.DataFrame({
        "cell_id": last["cell_id"], "line": last["line"], "last_station": last["station"], "last_ts": last["ts"],
        "defect_probability": last["defect_probability"], "predicted_defect": last["predicted_defect"],
        "predicted_type": last["predicted_type"], "top_features": last["top_features"],
        "model_version": last["model_version"], "closed": False}).reset_index(drop=True)


def cells_from_results(results: pd.DataFrame) -> pd.DataFrame:
    """EOL results as ``cells`` rows: the label, and the record is closed."""
    if results.empty:
        return pd.DataFrame()
    return pd.DataFrame({
        "cell_id": results["cell_id"], "line": results["line"], "eol_ts": results["ts"],
        "capacity_ah": results["capacity_ah"], "dcir_mohm": results["dcir_mohm"],
        "k_value_mv_day": results["k_value_mv_day"], "grade": results["grade"], "defect": results["defect"],
        "defect_type": results["defect_type"], "closed": True}).reset_index(drop=True)


def _stored(readings: pd.DataFrame, store: Store) -> np.ndarray:
    """Mask of readings whose natural key is already in the store."""
    found = np.zeros(len(readings), dtype=bool)
    for (line, station), idx in readings.groupby(["line", "station"], sort=False).groups.items():
        seqs = readings.loc[idx, "seq"].astype("int64")
        stored = store.stored_seqs(str(line), str(station), seqs.tolist())
        found[readings.index.get_indexer(idx)] = seqs.isin(stored).to_numpy()
    return found


def _late_letters(readings: pd.DataFrame, meta: pd.DataFrame, window: WindowState, received: datetime
                  ) -> pd.DataFrame:
    """Dead letters for readings that arrived after their stream had moved past them (never silently dropped)."""
    nxt = [window.next_seq.get((line, st)) for line, st in zip(readings["line"], readings["station"], strict=True)]
    return pd.DataFrame({
        "source_topic": meta["_topic"].to_numpy(), "source_partition": meta["_partition"].to_numpy(),
        "source_offset": meta["_offset"].to_numpy(), "received_at": pd.Timestamp(received),
        "reason": str(contract.Reason.LATE),
        "detail": [f"seq {q} of {line}/{st} arrived after seq {n - 1} was scored"
                   for q, line, st, n in zip(readings["seq"], readings["line"], readings["station"], nxt,
                                             strict=True)],
        "payload": meta["_payload"].to_numpy()}, columns=DEAD_LETTER_COLUMNS)


def process(decoded: Decoded, window: WindowState, store: Store | None, n_messages: int,
            now: datetime | None = None) -> BatchOutput:
    """Score a decoded batch and shape every result for the store."""
    t0 = time.perf_counter()
    readings, meta = decoded.readings, decoded.reading_meta
    window.note_partitions(pd.concat([readings[["line", "station"]], meta], axis=1))
    seen = window.seen(readings)
    dead, dead_keys = decoded.dead_letters, list(decoded.dead_keys)
    if seen.any():  # behind their stream's position: re-sent (already stored) or late (never stored)
        late = seen & ~_stored(readings, store) if store is not None else np.zeros(len(readings), dtype=bool)
        if late.any():
            letters = _late_letters(readings[late], meta[late], window, now or datetime.now(UTC))
            dead = pd.concat([d for d in (dead, letters) if len(d)], ignore_index=True)
            dead_keys += list(meta.loc[late, "_key"])
        readings, meta = readings[~seen].reset_index(drop=True), meta[~seen].reset_index(drop=True)
    scorer = window.scorer
    accepted = scorer.accepts(readings) if len(readings) else np.zeros(0, dtype=bool)
    scorable = readings[accepted].reset_index(drop=True)
    warmed = window.warm_up(scorable, store)
    if scorable.empty:
        scores = incidents = predictions = pd.DataFrame()
    else:
        result = scorer.process(scorable, window.state)
        scores, incidents, predictions = result.scores, result.incidents, result.predictions
    now = now or datetime.now(UTC)
    if not scores.empty:
        scores = scores.assign(scored_at=pd.Timestamp(now))
    tables = {
        "readings": readings_rows(readings) if not readings.empty else pd.DataFrame(),
        "scores": scores,
        "incidents": incidents,
        "cell_predictions": predictions,
        "cells_predicted": cells_from_predictions(predictions),
        "cells_eol": cells_from_results(decoded.cell_results),
        "dead_letters": dead,
    }
    reasons = dead["reason"].value_counts().to_dict() if len(dead) else {}
    return BatchOutput(tables=tables, n_messages=n_messages, n_readings=len(readings), n_scored=len(scores),
                       n_cell_results=len(decoded.cell_results), n_rejected=len(dead), dead_keys=dead_keys,
                       reject_reasons={str(k): int(v) for k, v in reasons.items()},
                       kafka_ts_ms=meta["_kafka_ts_ms"].to_numpy(),
                       n_duplicates=decoded.duplicates + int(seen.sum()) - (len(dead) - len(decoded.dead_letters)),
                       n_unscored=int((~accepted).sum()),
                       reading_ts=readings["ts"] if len(readings) else pd.Series(dtype="datetime64[ns, UTC]"),
                       process_ms=(time.perf_counter() - t0) * 1e3, warmed=warmed)


# ------------------------------------------------------------------------------------- JSON messages

#: columns holding JSON text that is embedded as JSON (not as a string) in output messages
_JSON_COLUMNS = ("top_sensors", "sensors", "top_features")


def _json_column(s: pd.Series) -> list[Any]:
    """One column's values for orjson: times as ISO-8601 UTC text, missing values as None, JSON text embedded."""
    if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(s):
        from cellwatch.ingest.store import _time_text

        return _time_text(s).tolist()
    if s.dtype.kind in "fiub":  # NumPy numbers/bools: tolist gives Python scalars; orjson writes NaN as null
        return s.tolist()
    values = s.astype(object).where(s.notna(), None).tolist()
    if s.name in _JSON_COLUMNS:
        fragment = orjson.Fragment
        return [fragment(v) if isinstance(v, str) and v[:1] in "[{" else v for v in values]
    return values


def json_messages(frame: pd.DataFrame) -> list[bytes]:
    """Rows as JSON objects (times ISO-8601 UTC, NaN as null) for the output topics."""
    if frame is None or frame.empty:
        return []
    cols = [str(c) for c in frame.columns]
    columns = [_json_column(frame[c]) for c in frame.columns]
    dumps, opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    return [dumps(dict(zip(cols, row, strict=True)), option=opt) for row in zip(*columns, strict=True)]
