"""The message contract: the one home of every field name that crosses a process boundary.

Two messages travel on Kafka as JSON (UTF-8, encoded with orjson):

* a **reading**: one station's snapshot for one cell or one time step::

    {"schema": 1, "ts": "2026-11-25T08:00:00.250Z", "line": "L1", "station": "coating",
     "cell_id": null, "seq": 1234, "values": {"coat_weight_mg_cm2": 20.1, ...},
     "recipe": "NMC811", "tags": {"slurry_batch_id": "L1-SB0042", "coil_id": "L1-C0107"}}

  keyed ``line/station`` so that one station's readings stay ordered in one partition. ``recipe``
  (the product being made) and ``tags`` (string tags: genealogy such as batch, coil, roll, channel)
  are optional; ``seq`` counts per producer stream (one stream per line/station), so
  ``(line, station, seq)`` is a reading's natural key;

* a **cell result** from the end-of-line test: ``cell_id``, ``line``, ``ts``, capacity, DC internal
  resistance, self-discharge (K value), grade, ``defect`` and ``defect_type``.

Decoding is the only per-message work; validation is vectorised over the micro-batch and returns
the valid rows as a wide frame (``ts, line, station, cell_id, seq`` + one float column per sensor,
the same shape as ``readings.parquet``) and one :class:`Reject` per invalid message with a
machine-readable reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from itertools import chain

import numpy as np
import orjson
import pandas as pd

SCHEMA_VERSION = 1
SUPPORTED_SCHEMAS = frozenset({1})

#: Default topic names (configurable in the service settings).
TOPIC_READINGS = "cellwatch.readings"
TOPIC_CELL_RESULTS = "cellwatch.cell-results"
TOPIC_DLQ = "cellwatch.dlq"
TOPIC_SCORES = "cellwatch.scores"
TOPIC_INCIDENTS = "cellwatch.incidents"
TOPIC_PREDICTIONS = "cellwatch.predictions"

#: Payloads above this size are rejected before they are parsed.
MAX_PAYLOAD_BYTES = 64 * 1024
#: Readings stamped further than this in the future are rejected (producer clock skew).
MAX_FUTURE_SKEW = pd.Timedelta(minutes=5)

#: Identity and context columns of a reading, in order; every other column of a readings frame is a
#: sensor. ``tags`` holds the tags as a JSON object string (or None) so that frames round-trip Parquet.
READING_KEYS = ("ts", "line", "station", "cell_id", "seq", "recipe", "tags")
#: The natural key of a reading.
READING_ID = ("line", "station", "seq")
#: Columns of a cell result, in order.
CELL_RESULT_COLUMNS = (
    "ts", "line", "cell_id", "capacity_ah", "dcir_mohm", "k_value_mv_day", "grade", "defect", "defect_type",
)
CELL_RESULT_NUMBERS = ("capacity_ah", "dcir_mohm", "k_value_mv_day")


class Reason(StrEnum):
    """Why a message was rejected (the value goes into the dead-letter record)."""

    UNDECODABLE = "undecodable"
    OVERSIZED = "oversized"
    UNKNOWN_SCHEMA = "unknown_schema"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    FUTURE_TIMESTAMP = "future_timestamp"
    #: set by the pipeline, not the decoder: a reading older than what its stream has already
    #: scored (seq below the stream's position) and not in the store; dead-lettered, never dropped.
    LATE = "late"


@dataclass(frozen=True, slots=True)
class Reject:
    """One rejected message: its position in the batch, the reason and a human-readable detail."""

    index: int
    reason: Reason
    detail: str


def kafka_key(line: str, station: str) -> bytes:
    """Partitioning key of a reading: one station's readings stay ordered in one partition."""
    return f"{line}/{station}".encode()


def sensor_columns(frame: pd.DataFrame) -> list[str]:
    """The sensor columns of a readings frame (everything that is not an identity column)."""
    return [c for c in frame.columns if c not in READING_KEYS]


# --------------------------------------------------------------------------------------------- encode

def _nullable(s: pd.Series) -> list:
    """Values as a list with every missing value (None, NaN, pd.NA) as None."""
    return [None if m else v for v, m in zip(s.tolist(), s.isna().tolist(), strict=True)]


def _iso(ts: pd.Series) -> list[str]:
    ts = pd.to_datetime(ts, utc=True)
    return list(ts.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def encode_reading(ts: datetime | str, line: str, station: str, cell_id: str | None, seq: int,
                   values: dict[str, float], recipe: str | None = None,
                   tags: dict[str, str] | None = None) -> bytes:
    """Encode one reading (for producers and tests)."""
    if not isinstance(ts, str):
        t = pd.Timestamp(ts)
        ts = (t.tz_convert("UTC") if t.tzinfo else t.tz_localize("UTC")).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    msg = {"schema": SCHEMA_VERSION, "ts": ts, "line": line, "station": station,
           "cell_id": cell_id, "seq": int(seq), "values": values}
    if recipe is not None:
        msg["recipe"] = recipe
    if tags:
        msg["tags"] = tags
    return orjson.dumps(msg)


def encode_readings(frame: pd.DataFrame) -> list[bytes]:
    """Encode every row of a wide readings frame; NaN sensor cells are left out of ``values``."""
    sensors = sensor_columns(frame)
    ts = _iso(frame["ts"])
    lines = frame["line"].astype(str).tolist()
    stations = frame["station"].astype(str).tolist()
    cells = _nullable(frame["cell_id"])
    seqs = frame["seq"].astype("int64").tolist()
    n = len(frame)
    recipes = _nullable(frame["recipe"]) if "recipe" in frame else [None] * n
    tags = _nullable(frame["tags"]) if "tags" in frame else [None] * n
    values = frame[sensors].to_numpy(dtype="float64") if sensors else np.empty((n, 0))
    present = ~np.isnan(values)
    out: list[bytes] = []
    dumps, fragment = orjson.dumps, orjson.Fragment
    for i in range(n):
        row, mask = values[i], present[i]
        msg = {"schema": SCHEMA_VERSION, "ts": ts[i], "line": lines[i], "station": stations[i],
               "cell_id": cells[i], "seq": seqs[i],
               "values": {sensors[j]: float(row[j]) for j in np.flatnonzero(mask)}}
        if recipes[i] is not None:
            msg["recipe"] = recipes[i]
        if tags[i] is not None:
            msg["tags"] = fragment(tags[i])
        out.append(dumps(msg))
    return out


def encode_cell_results(frame: pd.DataFrame) -> list[bytes]:
    """Encode every row of a cell-results frame (columns :data:`CELL_RESULT_COLUMNS`)."""
    ts = _iso(frame["ts"])
    records = frame[list(CELL_RESULT_COLUMNS[1:])].to_dict("records")
    out = []
    for t, rec in zip(ts, records, strict=True):
        rec = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
        rec["defect"] = bool(rec["defect"])
        out.append(orjson.dumps({"schema": SCHEMA_VERSION, "ts": t, **rec}, option=orjson.OPT_SERIALIZE_NUMPY))
    return out


# --------------------------------------------------------------------------------------------- decode

def _loads(payload: bytes | bytearray | memoryview | None) -> tuple[object, Reject | None]:
    """Parse one payload. orjson first; the stdlib only to tell NaN/Infinity apart from garbage."""
    try:
        return orjson.loads(payload), None
    except (orjson.JSONDecodeError, TypeError):
        pass
    try:
        obj = json.loads(bytes(payload).decode("utf-8"))
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, Reject(-1, Reason.UNDECODABLE, f"not UTF-8 JSON: {exc}"[:200])
    return obj, None  # parsed only by the lenient parser: NaN/Infinity, caught as non_finite below


class _Collector:
    """Collects rejects; keeps at most one reason per message (the first found)."""

    def __init__(self) -> None:
        self.rejects: dict[int, Reject] = {}

    def add(self, idx: Iterable[int], reason: Reason, detail: str | Sequence[str]) -> None:
        for n, i in enumerate(idx):
            i = int(i)
            if i not in self.rejects:
                d = detail if isinstance(detail, str) else detail[n]
                self.rejects[i] = Reject(i, reason, d)


def _parse_all(payloads: Sequence[bytes | None], col: _Collector) -> list[tuple[int, dict]]:
    parsed: list[tuple[int, dict]] = []
    for i, p in enumerate(payloads):
        if p is None:
            col.add([i], Reason.UNDECODABLE, "empty message (null value)")
            continue
        if len(p) > MAX_PAYLOAD_BYTES:
            col.add([i], Reason.OVERSIZED, f"{len(p)} bytes > {MAX_PAYLOAD_BYTES}")
            continue
        obj, rej = _loads(p)
        if rej is not None:
            col.add([i], rej.reason, rej.detail)
        elif not isinstance(obj, dict):
            col.add([i], Reason.UNDECODABLE, f"top level is {type(obj).__name__}, not an object")
        else:
            parsed.append((i, obj))
    return parsed


_MISSING = object()


def _to_float(v: float) -> float:
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _field(objs: list[dict], name: str) -> pd.Series:
    return pd.Series([o.get(name, _MISSING) for o in objs], dtype=object)


def _is_int(s: pd.Series) -> np.ndarray:
    return s.map(type).isin((int,)).to_numpy(dtype=bool)


def _is_number(s: pd.Series) -> np.ndarray:
    """int or float, but not bool (bool is an int subclass in Python)."""
    return s.map(type).isin((int, float)).to_numpy(dtype=bool)


def _check_common(objs: list[dict], pos: np.ndarray, col: _Collector, now: pd.Timestamp,
                  required: Sequence[str]) -> tuple[pd.Series, np.ndarray]:
    """Schema version, required fields and the timestamp; returns (parsed ts, ok mask)."""
    ok = np.ones(len(objs), dtype=bool)
    schema = _field(objs, "schema")
    missing = schema.map(lambda v: v is _MISSING).to_numpy(dtype=bool)
    col.add(pos[missing], Reason.MISSING_FIELD, "schema")
    ok &= ~missing
    # an int (not a bool: True == 1) among the supported versions
    bad = ok & ~(_is_int(schema) & schema.isin(list(SUPPORTED_SCHEMAS)).to_numpy(dtype=bool))
    col.add(pos[bad], Reason.UNKNOWN_SCHEMA, [f"schema={v!r}" for v in schema[bad]])
    ok &= ~bad
    for name in ("ts", *required):
        miss = ok & _field(objs, name).map(lambda v: v is _MISSING or v is None).to_numpy(dtype=bool)
        col.add(pos[miss], Reason.MISSING_FIELD, name)
        ok &= ~miss
    raw_ts = _field(objs, "ts")
    is_str = raw_ts.map(type).eq(str).to_numpy(dtype=bool)
    wrong = ok & ~is_str
    col.add(pos[wrong], Reason.WRONG_TYPE, "ts must be an ISO-8601 string")
    ok &= ~wrong
    ts = pd.to_datetime(raw_ts.where(ok, None), utc=True, errors="coerce", format="ISO8601")
    unparsable = ok & ts.isna().to_numpy(dtype=bool)
    col.add(pos[unparsable], Reason.WRONG_TYPE, "ts is not an ISO-8601 timestamp")
    ok &= ~unparsable
    future = ok & (ts > now + MAX_FUTURE_SKEW).to_numpy(dtype=bool)
    col.add(pos[future], Reason.FUTURE_TIMESTAMP, [f"ts={t.isoformat()} is after now+{MAX_FUTURE_SKEW}"
                                                   for t in ts[future]])
    ok &= ~future
    return ts, ok


def _check_str(objs: list[dict], name: str, pos: np.ndarray, ok: np.ndarray, col: _Collector,
               nullable: bool = False) -> np.ndarray:
    s = _field(objs, name)
    t = s.map(type)
    good = t.eq(str).to_numpy(dtype=bool) & s.map(bool).to_numpy(dtype=bool)
    if nullable:
        good |= s.map(lambda v: v is None or v is _MISSING).to_numpy(dtype=bool)
    wrong = ok & ~good
    col.add(pos[wrong], Reason.WRONG_TYPE, f"{name} must be a non-empty string")
    return ok & ~wrong


def validate_readings(payloads: Sequence[bytes | None], now: datetime | None = None
                      ) -> tuple[pd.DataFrame, list[Reject]]:
    """Decode and validate a micro-batch of reading payloads.

    Returns the valid readings as a wide frame (``READING_KEYS`` + one float64 column per sensor,
    with a ``pos`` index giving each row's position in ``payloads``) and the rejects, sorted by
    position. Unknown sensors are accepted and kept; a sensor sent as ``null`` counts as not sent.

    A clean batch is checked column by column in one pass; a batch with any malformed message goes
    through the per-message path, which finds each message's reason.
    """
    now_ts = _utc(now)
    fast = [i for i, p in enumerate(payloads)
            if p is not None and 0 < len(p) <= MAX_PAYLOAD_BYTES and b"\n" not in p and b"\r" not in p]
    if len(fast) == len(payloads) and fast:
        result = _fast_readings(payloads, now_ts)
        if result is not None:
            return result
    return _slow_readings(payloads, now_ts)


def _tags_json(tags: dict | None) -> str | None:
    """Tags as a canonical JSON object string (sorted keys, nulls dropped), None when empty."""
    if not tags:
        return None
    tags = {k: v for k, v in tags.items() if v is not None}
    return orjson.dumps(tags, option=orjson.OPT_SORT_KEYS).decode() if tags else None


def _utc(now: datetime | None) -> pd.Timestamp:
    ts = pd.Timestamp(now or datetime.now(UTC))
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts


def _fast_readings(payloads: Sequence[bytes], now: pd.Timestamp) -> tuple[pd.DataFrame, list[Reject]] | None:
    """The common case, a clean batch: parse, then check whole columns at once.

    Returns None as soon as anything is off; the per-message path then finds each message's reason.
    (Arrow's JSON reader would parse faster, but it crashed the interpreter on some malformed input
    in our property tests, and a consumer must survive any bytes.)
    """
    loads = orjson.loads
    try:
        objs = [loads(p) for p in payloads]
    except (orjson.JSONDecodeError, TypeError):
        return None
    if any(type(o) is not dict for o in objs):
        return None
    schema, ts, line, station, cell, seq, recipe, tags, vals = (
        [o.get(k) for o in objs] for k in ("schema", "ts", "line", "station", "cell_id", "seq", "recipe", "tags",
                                           "values"))
    n = len(objs)
    none = type(None)
    if (set(map(type, schema)) != {int} or schema.count(SCHEMA_VERSION) != n
            or set(map(type, ts)) != {str} or set(map(type, line)) != {str} or set(map(type, station)) != {str}
            or set(map(type, seq)) != {int} or set(map(type, vals)) != {dict}
            or not set(map(type, cell)) <= {str, none} or not set(map(type, recipe)) <= {str, none}
            or not set(map(type, tags)) <= {dict, none}
            or "" in line or "" in station or "" in cell or "" in recipe):
        return None
    if any(not set(map(type, t.values())) <= {str, none} for t in tags if t):
        return None
    seq_arr = np.array(seq, dtype=object)
    if not ((seq_arr >= 0) & (seq_arr < 2**63)).all():
        return None
    stamps = pd.to_datetime(pd.Series(ts, dtype=object), utc=True, errors="coerce", format="ISO8601")
    if stamps.isna().any() or (stamps > now + MAX_FUTURE_SKEW).any():
        return None
    lengths = np.fromiter(map(len, vals), dtype=np.int64, count=n)
    names = list(chain.from_iterable(map(dict.keys, vals)))
    raw = list(chain.from_iterable(map(dict.values, vals)))
    kinds = set(map(type, raw))
    if not kinds <= {int, float, none}:
        return None
    rows = np.repeat(np.arange(n), lengths)
    if none in kinds:
        keep = np.fromiter((v is not None for v in raw), dtype=bool, count=len(raw))
        rows, names = rows[keep], [nm for nm, k in zip(names, keep, strict=True) if k]
        raw = [v for v in raw if v is not None]
    try:
        numbers = np.array(raw, dtype=np.float64)
    except OverflowError:
        return None
    if not np.isfinite(numbers).all():
        return None
    codes, sensors = pd.factorize(np.array(names, dtype=object), sort=True)
    wide = np.full((n, len(sensors)), np.nan)
    wide[rows, codes] = numbers
    frame = pd.DataFrame({
        "ts": stamps.array,
        "line": line,
        "station": station,
        "cell_id": np.array(cell, dtype=object),
        "seq": np.array(seq, dtype=np.int64),
        "recipe": np.array(recipe, dtype=object),
        "tags": np.array([_tags_json(t) for t in tags], dtype=object),
        **{str(name): wide[:, j] for j, name in enumerate(sensors)},
    }, index=pd.Index(np.arange(n, dtype=np.int64), name="pos"))
    return frame, []


def _slow_readings(payloads: Sequence[bytes | None], now_ts: pd.Timestamp) -> tuple[pd.DataFrame, list[Reject]]:
    """The per-message path: finds the first reason of every invalid message."""
    col = _Collector()
    parsed = _parse_all(payloads, col)
    pos = np.fromiter((i for i, _ in parsed), dtype=np.int64, count=len(parsed))
    objs = [o for _, o in parsed]
    ts, ok = _check_common(objs, pos, col, now_ts, ("line", "station", "seq", "values"))
    ok = _check_str(objs, "line", pos, ok, col)
    ok = _check_str(objs, "station", pos, ok, col)
    ok = _check_str(objs, "cell_id", pos, ok, col, nullable=True)
    ok = _check_str(objs, "recipe", pos, ok, col, nullable=True)
    tags = _field(objs, "tags")
    tags_ok = tags.map(lambda a: a is None or a is _MISSING or (
        type(a) is dict and all(type(v) is str or v is None for v in a.values()))).to_numpy(dtype=bool)
    col.add(pos[ok & ~tags_ok], Reason.WRONG_TYPE, "tags must be an object of string -> string")
    ok &= tags_ok
    seq = _field(objs, "seq")
    wrong = ok & ~_is_int(seq)
    col.add(pos[wrong], Reason.WRONG_TYPE, "seq must be an integer")
    ok &= ~wrong
    neg = ok & np.array([isinstance(v, int) and not 0 <= v < 2**63 for v in seq], dtype=bool)
    col.add(pos[neg], Reason.WRONG_TYPE, "seq must be in [0, 2^63)")
    ok &= ~neg
    vals = _field(objs, "values")
    wrong = ok & ~vals.map(type).eq(dict).to_numpy(dtype=bool)
    col.add(pos[wrong], Reason.WRONG_TYPE, "values must be an object of sensor -> number")
    ok &= ~wrong

    # Flatten values of the rows still valid into (row, sensor, value) triples, then check vectorised.
    rows_ok = np.flatnonzero(ok)
    row_idx: list[int] = []
    names: list[str] = []
    raw: list[object] = []
    for r in rows_ok:
        d = {k: v for k, v in objs[r]["values"].items() if v is not None}  # null = not sent
        row_idx.extend([r] * len(d))
        names.extend(d.keys())
        raw.extend(d.values())
    row_arr = np.asarray(row_idx, dtype=np.int64)
    raw_s = pd.Series(raw, dtype=object)
    numeric = _is_number(raw_s) if len(raw_s) else np.zeros(0, dtype=bool)
    bad_rows = np.unique(row_arr[~numeric])
    if len(bad_rows):
        first_bad = {}
        for r, n, v, good in zip(row_arr, names, raw, numeric, strict=True):
            if not good and r not in first_bad:
                first_bad[r] = f"values.{n} is {type(v).__name__}, not a number"
        col.add(pos[bad_rows], Reason.WRONG_TYPE, [first_bad[r] for r in bad_rows])
        ok[bad_rows] = False
    num = np.zeros(len(raw), dtype=np.float64)
    if numeric.any():
        picked = [raw[i] for i in np.flatnonzero(numeric)]
        try:
            num[numeric] = np.array(picked, dtype=np.float64)
        except OverflowError:  # an integer beyond float64: treat as infinite
            num[numeric] = [_to_float(v) for v in picked]
    nonfinite = numeric & ~np.isfinite(num)
    # huge ints that overflow float64 become inf: also non-finite
    nf_rows = np.setdiff1d(np.unique(row_arr[nonfinite]), bad_rows)
    if len(nf_rows):
        col.add(pos[nf_rows], Reason.NON_FINITE, "values contain NaN or infinity")
        ok[nf_rows] = False

    keep = np.flatnonzero(ok)
    frame = pd.DataFrame({
        "ts": ts.iloc[keep].to_numpy(),
        "line": [objs[r]["line"] for r in keep],
        "station": [objs[r]["station"] for r in keep],
        "cell_id": np.array([objs[r].get("cell_id") for r in keep], dtype=object),
        "seq": np.array([objs[r]["seq"] for r in keep], dtype=np.int64),
        "recipe": np.array([objs[r].get("recipe") for r in keep], dtype=object),
        "tags": np.array([_tags_json(objs[r].get("tags")) for r in keep], dtype=object),
    }, index=pd.Index(pos[keep], name="pos"))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    if len(keep):
        sel = ok[row_arr]
        long = pd.DataFrame({"row": pos[row_arr[sel]], "sensor": np.asarray(names, dtype=object)[sel],
                             "value": num[sel]})
        # duplicate keys cannot occur in a JSON object parsed to dict; pivot is safe
        wide = long.pivot(index="row", columns="sensor", values="value")
        wide = wide.reindex(sorted(wide.columns), axis=1)
        wide.columns.name = None
        frame = frame.join(wide)
    return frame, sorted(col.rejects.values(), key=lambda r: r.index)


def validate_cell_results(payloads: Sequence[bytes | None], now: datetime | None = None
                          ) -> tuple[pd.DataFrame, list[Reject]]:
    """Decode and validate a micro-batch of cell-result payloads (columns :data:`CELL_RESULT_COLUMNS`)."""
    now_ts = _utc(now)
    col = _Collector()
    parsed = _parse_all(payloads, col)
    pos = np.fromiter((i for i, _ in parsed), dtype=np.int64, count=len(parsed))
    objs = [o for _, o in parsed]
    ts, ok = _check_common(objs, pos, col, now_ts, ("line", "cell_id", "defect", *CELL_RESULT_NUMBERS))
    ok = _check_str(objs, "line", pos, ok, col)
    ok = _check_str(objs, "cell_id", pos, ok, col)
    ok = _check_str(objs, "grade", pos, ok, col, nullable=True)
    ok = _check_str(objs, "defect_type", pos, ok, col, nullable=True)
    defect = _field(objs, "defect")
    wrong = ok & ~defect.map(type).eq(bool).to_numpy(dtype=bool)
    col.add(pos[wrong], Reason.WRONG_TYPE, "defect must be true or false")
    ok &= ~wrong
    numbers = {}
    for name in CELL_RESULT_NUMBERS:
        s = _field(objs, name)
        wrong = ok & ~_is_number(s)
        col.add(pos[wrong], Reason.WRONG_TYPE, f"{name} must be a number")
        ok &= ~wrong
        v = pd.to_numeric(s.where(ok, np.nan), errors="coerce").to_numpy(dtype=np.float64)
        nf = ok & ~np.isfinite(v)
        col.add(pos[nf], Reason.NON_FINITE, f"{name} is NaN or infinite")
        ok &= ~nf
        numbers[name] = v
    keep = np.flatnonzero(ok)
    frame = pd.DataFrame({
        "ts": pd.to_datetime(ts.iloc[keep].to_numpy(), utc=True),
        "line": [objs[r]["line"] for r in keep],
        "cell_id": [objs[r]["cell_id"] for r in keep],
        **{n: numbers[n][keep] for n in CELL_RESULT_NUMBERS},
        "grade": np.array([objs[r].get("grade") for r in keep], dtype=object),
        "defect": np.array([objs[r]["defect"] for r in keep], dtype=bool),
        "defect_type": np.array([objs[r].get("defect_type") for r in keep], dtype=object),
    }, index=pd.Index(pos[keep], name="pos"))
    return frame[list(CELL_RESULT_COLUMNS)], sorted(col.rejects.values(), key=lambda r: r.index)
