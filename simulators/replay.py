"""Replay a plant-historian export (CSV or Parquet) of readings into Kafka.

The file needs ``ts``, ``line`` and ``station`` columns; ``cell_id``, ``seq``, ``recipe`` and ``tags`` are
optional; every other column is a sensor and must be numeric. Without ``seq`` the readings are numbered
per (line, station) in timestamp order. Bad files raise :class:`CellwatchError` with a one-line message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from cellwatch.contract import READING_KEYS
from cellwatch.errors import CellwatchError

REQUIRED = ("ts", "line", "station")
OPTIONAL = ("cell_id", "seq", "recipe", "tags")


def _load(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CellwatchError(f"input file {path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz", ".txt")):
            return pd.read_csv(path, low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellwatchError(f"cannot read {path}: {first}") from exc
    raise CellwatchError(f"{path}: unknown file type (use .csv, .csv.gz or .parquet)")


def _check_tags(tags: pd.Series, path: Path) -> np.ndarray:
    """Tags as compact JSON object strings with sorted keys (the contract's form), or None.

    Each distinct value is parsed once (tags repeat: a batch or coil spans many readings)."""
    codes, uniques = pd.factorize(tags.astype(object), use_na_sentinel=True)
    good = np.full(len(uniques) + 1, None, dtype=object)        # last slot: missing (code -1)
    for u, v in enumerate(uniques):
        if v == "":
            continue
        try:
            obj = orjson.loads(v) if isinstance(v, str | bytes) else v
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or not all(isinstance(x, str) for x in obj.values()):
            row = int(np.flatnonzero(codes == u)[0]) + 1
            raise CellwatchError(f"{path}: tags at row {row} is not a JSON object of strings: {str(v)[:60]!r}")
        good[u] = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode() if obj else None
    return good[codes]


def load_readings(path: str | Path) -> pd.DataFrame:
    """Read and check a historian export; returns a contract readings frame sorted by ``ts``."""
    path = Path(path)
    raw = _load(path)
    if raw.empty:
        raise CellwatchError(f"{path} holds no readings")
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise CellwatchError(f"{path} lacks required column(s) {', '.join(missing)} (has: "
                             f"{', '.join(map(str, raw.columns[:12]))})")
    sensors = [c for c in raw.columns if c not in READING_KEYS]
    if not sensors:
        raise CellwatchError(f"{path} has no sensor columns (numeric columns besides {', '.join(READING_KEYS)})")
    bad = [c for c in sensors if not (pd.api.types.is_numeric_dtype(raw[c]) and not pd.api.types.is_bool_dtype(raw[c]))]
    if bad:
        raise CellwatchError(f"{path}: sensor column(s) {', '.join(map(str, bad[:5]))} are not numeric")
    ts = pd.to_datetime(raw["ts"], utc=True, errors="coerce", format="ISO8601") \
        if not pd.api.types.is_datetime64_any_dtype(raw["ts"]) else pd.to_datetime(raw["ts"], utc=True)
    if ts.isna().any():
        row = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise CellwatchError(f"{path}: unparseable ts {raw['ts'].iloc[row]!r} at row {row + 1}")
    for col in ("line", "station"):
        empty = raw[col].isna() | (raw[col].astype(str).str.strip() == "")
        if empty.any():
            raise CellwatchError(f"{path}: empty {col} at row {int(np.flatnonzero(empty.to_numpy())[0]) + 1}")
    frame = pd.DataFrame({"ts": ts.dt.as_unit("us"), "line": raw["line"].astype(str).to_numpy(dtype=object),
                          "station": raw["station"].astype(str).to_numpy(dtype=object)})
    frame["cell_id"] = raw["cell_id"].astype(object).where(raw["cell_id"].notna(), None).map(
        lambda v: v if v is None else str(v)) if "cell_id" in raw else None
    if "seq" in raw:
        seq = pd.to_numeric(raw["seq"], errors="coerce")
        if seq.isna().any() or (seq < 0).any() or (seq % 1 != 0).any():
            raise CellwatchError(f"{path}: seq must be a non-negative integer in every row")
        frame["seq"] = seq.astype(np.int64).to_numpy()
    frame["recipe"] = raw["recipe"].astype(object).where(raw["recipe"].notna(), None) if "recipe" in raw else None
    frame["tags"] = _check_tags(raw["tags"], path) if "tags" in raw else None
    for c in sensors:
        frame[str(c)] = pd.to_numeric(raw[c]).astype(np.float64).to_numpy()
    frame = frame.sort_values("ts", kind="stable").reset_index(drop=True)
    if "seq" not in frame:
        frame.insert(4, "seq", frame.groupby(["line", "station"], sort=False).cumcount().astype(np.int64))
    return frame[[*READING_KEYS, *[str(c) for c in sensors]]]


def replay(path: str | Path, bootstrap: str, topic: str | None = None, speed: float | None = None,
           progress: bool = False):
    """Stream the readings of ``path`` into Kafka; ``speed`` = multiple of real time (0/None: as fast as
    possible). Returns :class:`~cellwatch.simulators.produce.StreamStats`."""
    from cellwatch.contract import TOPIC_READINGS

    from .produce import stream

    frame = load_readings(path)
    return stream(bootstrap, frame, None, topic_readings=topic or TOPIC_READINGS, speed=speed or None,
                  progress=progress)
