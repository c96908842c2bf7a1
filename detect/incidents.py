"""Fold anomalous readings into incidents: k-of-n to open, hysteresis to close, state per (line, station).

An incident opens at an anomalous reading when at least ``k`` of the last ``n`` readings of its
(line, station) stream are anomalous; it starts at the first of those ``k`` readings, so its id
``f"{line}/{station}/{first_seq}"`` is the same when a stream is re-processed after a crash. It stays
open while anomalies keep coming and closes once ``close_after`` consecutive readings are normal
(``end_ts`` = the last anomalous reading). Severity grows with the peak score and the number of
anomalous readings (:data:`SEVERITY_BANDS`).

Severity path (:data:`SEVERE_RULE`): isolated extreme readings (a spike fault: a few single readings minutes apart)
never meet k-of-n. A reading at the top of the score scale (``anomaly_score >= severe_score``: tail probability
<= 1e-6 against the clean calibration data, "one in a million clean readings") opens an incident when another such
reading of its stream came less than ``severe_n`` readings before it; the incident starts at the opening reading.

Only anomalous readings are walked in Python; normal readings just advance a position counter.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson
import pandas as pd

from cellwatch.ingest.schema import TABLE

INCIDENT_COLUMNS = TABLE["incidents"].column_names
#: (severity, minimum peak score, minimum anomalous readings): the first band whose peak OR count is met.
SEVERITY_BANDS: tuple[tuple[str, float, int], ...] = (("critical", 0.9, 200), ("major", 0.6, 50))
_TOP_SENSORS = 5
#: Severity path: ``severe_m`` readings with ``anomaly_score >= severe_score`` within ``severe_n`` readings open an
#: incident. Chosen on simulator seeds 303..909 (false incidents) and three spike-only seeds 1111/1212/1313 (62 spike
#: faults), never on the benchmark's test seed: see docs/detection.md. ``severe_score=None`` switches it off.
SEVERE_RULE = {"severe_score": 1.0, "severe_m": 2, "severe_n": 600}


def _open_condition(flags: np.ndarray, k: int, n: int, severe: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the anomalous readings and, per anomalous reading, whether it may open an incident."""
    a = np.flatnonzero(flags)
    cond = np.zeros(a.size, dtype=bool)
    if a.size >= k:
        cond[k - 1:] = a[k - 1:] - a[: a.size - k + 1] < n
    if severe is not None:
        cond |= np.asarray(severe, dtype=bool)[a]
    return a, cond


def severe_openers(flags: np.ndarray, scores: np.ndarray, severe_score: float | None = SEVERE_RULE["severe_score"],
                   severe_m: int = SEVERE_RULE["severe_m"], severe_n: int = SEVERE_RULE["severe_n"]) -> np.ndarray:
    """Per reading of one stream: may it open an incident by the severity path? (flagged, score >= severe_score,
    and ``severe_m - 1`` more such readings less than ``severe_n`` readings before it)."""
    flags = np.asarray(flags, dtype=bool)
    out = np.zeros(flags.size, dtype=bool)
    if severe_score is None:
        return out
    s = np.flatnonzero(flags & (np.asarray(scores, dtype="float64") >= severe_score))
    if s.size >= severe_m:
        out[s[severe_m - 1:]] = s[severe_m - 1:] - s[: s.size - severe_m + 1] < severe_n
    return out


def count_incidents(flags_by_line: list[np.ndarray], k: int, n: int, close_after: int,
                    severe_by_line: list[np.ndarray] | None = None) -> int:
    """How many incidents the k-of-n / hysteresis rule opens on boolean anomaly flags (one array per stream).

    Vectorised twin of :class:`IncidentTracker` (same rule) used to choose thresholds; ``severe_by_line``
    (optional, same shapes, e.g. from :func:`severe_openers`) marks the readings the severity path lets open.
    """
    total = 0
    for i, flags in enumerate(flags_by_line):
        a, cond = _open_condition(flags, k, n, None if severe_by_line is None else severe_by_line[i])
        if not cond.any():
            continue
        segment = np.concatenate([[0], np.cumsum(np.diff(a) - 1 >= close_after)])
        total += np.unique(segment[cond]).size
    return total


@dataclass
class _Open:
    incident_id: str
    start_ts: pd.Timestamp
    peak_score: float
    peak_ts: pd.Timestamp
    last_ts: pd.Timestamp
    n_anomalous: int = 0
    kinds: Counter = field(default_factory=Counter)
    sensors: Counter = field(default_factory=Counter)

    def add(self, score: float, ts: pd.Timestamp, kind: str, sensors: list[str]) -> None:
        self.n_anomalous += 1
        self.kinds[kind] += 1
        for rank, s in enumerate(sensors):
            self.sensors[s] += 1.0 / (rank + 1)
        if score > self.peak_score:
            self.peak_score, self.peak_ts = score, ts
        self.last_ts = max(self.last_ts, ts)


@dataclass
class _Stream:
    pos: int = 0                  # readings seen so far
    last_anomaly: int | None = None
    recent: list = field(default_factory=list)   # last k-1 anomalies: (pos, seq, ts, score, kind, sensors)
    severe: list = field(default_factory=list)   # positions of the last severe_m - 1 severe readings
    open: _Open | None = None
    last_ts: pd.Timestamp | None = None


_TIME_COLUMNS = ("start_ts", "end_ts", "peak_ts", "updated_at")


def _incident_frame(rows: list[dict]) -> pd.DataFrame:
    """Incident rows with the same dtypes whether empty or not (text as object, times as UTC timestamps)."""
    frame = pd.DataFrame(rows, columns=INCIDENT_COLUMNS)
    for c in INCIDENT_COLUMNS:
        if c in _TIME_COLUMNS:
            frame[c] = pd.to_datetime(frame[c], utc=True)
        elif c == "peak_score":
            frame[c] = frame[c].astype("float64")
        elif c == "n_anomalous":
            frame[c] = frame[c].astype("int64")
        else:
            frame[c] = frame[c].astype(object)
    return frame


def _sensor_names(top: object) -> list[str]:
    if not isinstance(top, str) or not top:
        return []
    try:
        items = orjson.loads(top)
    except orjson.JSONDecodeError:
        return []
    return [str(d["sensor"]) for d in items if isinstance(d, dict) and "sensor" in d]


class IncidentTracker:
    """k-of-n to open, hysteresis to close; state per (line, station). Feed scored rows in time order."""

    def __init__(self, k: int = 3, n: int = 5, close_after: int = 10,
                 severity_bands: tuple[tuple[str, float, int], ...] = SEVERITY_BANDS,
                 severe_score: float | None = SEVERE_RULE["severe_score"], severe_m: int = SEVERE_RULE["severe_m"],
                 severe_n: int = SEVERE_RULE["severe_n"]):
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
        if not 1 <= severe_m <= severe_n:
            raise ValueError(f"need 1 <= severe_m <= severe_n, got {severe_m}, {severe_n}")
        self.k, self.n, self.close_after = k, n, close_after
        self.severity_bands = severity_bands
        self.severe_score, self.severe_m, self.severe_n = severe_score, severe_m, severe_n
        self._streams: dict[tuple[str, str], _Stream] = {}

    def _opens_severe(self, st: _Stream, p: int, score: float) -> bool:
        """Severity path for the flagged reading at position ``p``; remembers it when it is severe."""
        if self.severe_score is None or score < self.severe_score:
            return False
        before = st.severe[-(self.severe_m - 1):] if self.severe_m > 1 else []
        st.severe = [*before, p]
        return len(before) == self.severe_m - 1 and (not before or p - before[0] < self.severe_n)

    # ------------------------------------------------------------------------------------------ output
    def _severity(self, inc: _Open) -> str:
        for name, peak, count in self.severity_bands:
            if inc.peak_score >= peak or inc.n_anomalous >= count:
                return name
        return "warning"

    def _row(self, key: tuple[str, str], inc: _Open, status: str, updated: pd.Timestamp) -> dict:
        kind = max(sorted(inc.kinds), key=lambda s: inc.kinds[s]) if inc.kinds else "process"
        sensors = [s for s, _ in sorted(inc.sensors.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_SENSORS]]
        return {"incident_id": inc.incident_id, "line": key[0], "station": key[1], "kind": kind,
                "severity": self._severity(inc), "status": status, "start_ts": inc.start_ts,
                "end_ts": inc.last_ts if status == "closed" else None, "peak_score": float(inc.peak_score),
                "peak_ts": inc.peak_ts, "sensors": orjson.dumps(sensors).decode(),
                "n_anomalous": int(inc.n_anomalous), "model_version": None, "updated_at": updated}

    # ------------------------------------------------------------------------------------------ update
    def update(self, scored: pd.DataFrame) -> pd.DataFrame:
        """Fold scored rows (time order per stream) in; return the incidents they opened/updated/closed."""
        missing = {"line", "station", "seq", "ts", "anomaly_score", "is_anomaly"} - set(scored.columns)
        if missing:
            raise ValueError(f"scored rows lack columns {sorted(missing)}")
        out: dict[str, dict] = {}
        if scored.empty:
            return _incident_frame([])
        ts_all = pd.to_datetime(scored["ts"], utc=True)
        flags_all = scored["is_anomaly"].to_numpy(dtype=bool)
        codes, keys = pd.factorize(pd.MultiIndex.from_arrays([scored["line"].astype(str),
                                                              scored["station"].astype(str)]))
        kinds = scored["kind"].to_numpy(object) if "kind" in scored else np.full(len(scored), "process", object)
        tops = scored["top_sensors"].to_numpy(object) if "top_sensors" in scored else np.full(len(scored), None)
        scores = scored["anomaly_score"].to_numpy(dtype="float64")
        seqs = scored["seq"].to_numpy()
        for code, key in enumerate(keys):
            rows = np.flatnonzero(codes == code)
            st = self._streams.setdefault(key, _Stream())
            base = st.pos
            ts = ts_all.iloc[rows]
            for r in rows[flags_all[rows]]:
                p = base + int(np.searchsorted(rows, r))
                self._close_if_quiet(key, st, p, out, ts_all.iloc[r])
                item = (p, seqs[r], ts_all.iloc[r], float(scores[r]), str(kinds[r]), _sensor_names(tops[r]))
                severe = self._opens_severe(st, p, item[3])
                if st.open is not None:
                    st.open.add(item[3], item[2], item[4], item[5])
                    out[st.open.incident_id] = self._row(key, st.open, "open", ts_all.iloc[r])
                else:
                    window = [*st.recent, item][-self.k:]
                    if not (len(window) == self.k and p - window[0][0] < self.n):
                        window = [item] if severe else None  # severity path: opens at this reading
                    if window is not None:
                        first = window[0]
                        inc = _Open(f"{key[0]}/{key[1]}/{first[1]}", first[2], first[3], first[2], first[2])
                        for _, _, t, sc, kd, sn in window:
                            inc.add(sc, t, kd, sn)
                        st.open = inc
                        out[inc.incident_id] = self._row(key, inc, "open", ts_all.iloc[r])
                st.recent = [*st.recent, item][-(self.k - 1):] if self.k > 1 else []
                st.last_anomaly = p
            st.pos = base + rows.size
            st.last_ts = ts.iloc[-1]
            self._close_if_quiet(key, st, st.pos, out, st.last_ts)
        return _incident_frame(list(out.values()))

    def _close_if_quiet(self, key, st: _Stream, pos: int, out: dict, now: pd.Timestamp) -> None:
        """Close the open incident when at least ``close_after`` normal readings preceded position ``pos``."""
        if st.open is None:
            return
        last = st.last_anomaly if st.last_anomaly is not None else -1
        if pos - last - 1 >= self.close_after:
            out[st.open.incident_id] = self._row(key, st.open, "closed", now)
            st.open = None

    # ------------------------------------------------------------------------------------------ restore
    def restore(self, open_incidents: pd.DataFrame, recent: pd.DataFrame) -> None:
        """Rebuild the state after a restart from the stored open incidents and the latest scored rows.

        ``recent`` holds the last scored rows per stream (at least ``n + close_after``, and ``severe_n`` for the
        severity path to remember an earlier extreme reading), already folded into ``open_incidents``;
        they set the k-of-n window and the close countdown without being
        counted again. The per-sensor tallies of an open incident restart from its stored sensor list.
        """
        self._streams = {}
        seen_rows: dict[tuple[str, str], tuple[pd.Series, np.ndarray]] = {}
        if recent is not None and not recent.empty:
            ts_all = pd.to_datetime(recent["ts"], utc=True)
            for key, idx in recent.groupby([recent["line"].astype(str), recent["station"].astype(str)],
                                           sort=False).indices.items():
                sub = recent.iloc[idx]
                flags = sub["is_anomaly"].to_numpy(dtype=bool)
                seen_rows[key] = (ts_all.iloc[idx], flags)
                anom = np.flatnonzero(flags)
                st = _Stream(pos=len(sub), last_ts=ts_all.iloc[idx[-1]])
                if self.severe_score is not None and self.severe_m > 1:
                    sev = np.flatnonzero(flags & (sub["anomaly_score"].to_numpy(dtype="float64") >= self.severe_score))
                    st.severe = [int(i) for i in sev[-(self.severe_m - 1):]]
                if anom.size:
                    st.last_anomaly = int(anom[-1])
                    tail = anom[-(self.k - 1):] if self.k > 1 else []
                    kinds = sub["kind"] if "kind" in sub else pd.Series("process", index=sub.index)
                    tops = sub["top_sensors"] if "top_sensors" in sub else pd.Series(None, index=sub.index)
                    st.recent = [(int(i), sub["seq"].iloc[i], ts_all.iloc[idx[i]], float(sub["anomaly_score"].iloc[i]),
                                  str(kinds.iloc[i]), _sensor_names(tops.iloc[i])) for i in tail]
                self._streams[key] = st
        if open_incidents is None or open_incidents.empty:
            return
        for rec in open_incidents.to_dict("records"):
            key = (str(rec["line"]), str(rec["station"]))
            start = pd.Timestamp(rec["start_ts"])
            start = start.tz_localize("UTC") if start.tzinfo is None else start
            if not self._open_after(rec, start, seen_rows.get(key)):
                continue
            st = self._streams.setdefault(key, _Stream())
            peak_ts = pd.Timestamp(rec["peak_ts"])
            peak_ts = peak_ts.tz_localize("UTC") if peak_ts.tzinfo is None else peak_ts
            sensors = orjson.loads(rec["sensors"]) if isinstance(rec["sensors"], str) else list(rec["sensors"] or [])
            inc = _Open(str(rec["incident_id"]), start, float(rec["peak_score"]), peak_ts,
                        st.last_ts if st.last_ts is not None else start, int(rec["n_anomalous"]),
                        Counter({str(rec["kind"]): int(rec["n_anomalous"])}),
                        Counter({s: float(len(sensors) - i) for i, s in enumerate(sensors)}))
            if st.last_anomaly is not None:
                inc.last_ts = st.recent[-1][2] if st.recent else inc.last_ts
            st.open = inc


    def _open_after(self, rec: dict, start: pd.Timestamp,
                    rows: tuple[pd.Series, np.ndarray] | None) -> bool:
        """Was this stored incident open right after the ``recent`` rows of its stream?

        The store may already hold what a batch that was written but not committed did (it is being
        processed again): an incident it opened is left to be opened again (same id), and one it closed
        was still open before it.
        """
        if rows is None:
            return rec["status"] == "open"
        ts, flags = rows
        if start > ts.iloc[-1]:
            return False  # opened by the readings being processed again
        if rec["status"] == "open":
            return True
        end = pd.Timestamp(rec["end_ts"]) if rec.get("end_ts") is not None and not pd.isna(rec["end_ts"]) else None
        if end is None:
            return False
        end = end.tz_localize("UTC") if end.tzinfo is None else end
        normal_after = int((~flags[(ts > end).to_numpy()]).sum())
        return normal_after < self.close_after  # closed only by the readings being processed again


def open_mask(flags: np.ndarray, k: int, n: int, close_after: int, severe: np.ndarray | None = None) -> np.ndarray:
    """Per reading of one stream: is an incident open after this reading? (online; same rule as the tracker).

    Open from the reading that meets k-of-n (or is ``severe``) until the ``close_after``-th consecutive normal
    reading closes it.
    """
    flags = np.asarray(flags, dtype=bool)
    out = np.zeros(flags.size, dtype=bool)
    a, cond = _open_condition(flags, k, n, severe)
    if not cond.any():
        return out
    segment = np.concatenate([[0], np.cumsum(np.diff(a) - 1 >= close_after)])
    first_open = pd.Series(np.where(cond, a, np.iinfo(np.int64).max)).groupby(segment).min().to_numpy()
    last_anom = pd.Series(a).groupby(segment).max().to_numpy()
    ok = first_open < np.iinfo(np.int64).max
    starts, ends = first_open[ok], np.minimum(last_anom[ok] + close_after, flags.size)  # end exclusive
    delta = np.zeros(flags.size + 1, dtype=int)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    return np.cumsum(delta)[:-1] > 0
