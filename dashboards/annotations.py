"""Incident annotations in Grafana: a point when an incident opens, turned into a region when it closes.

The streaming loop calls ``sender.submit(incidents)`` with the incident rows it just wrote (the
``incidents`` table's columns). ``submit`` only appends to a bounded in-memory queue and returns at once;
a background thread posts to Grafana's annotations API (grafana-client, raw ``POST``/``PATCH`` so unset keys
are left out instead of sent as null). Grafana being slow or down never slows scoring: the thread retries
the oldest pending annotation with capped exponential backoff, and when the queue is full the OLDEST pending
item is dropped and counted in ``dropped`` (the incidents stay in PostgreSQL, and the dashboards' SQL
annotation query still shows them; only the copy in Grafana's own store is lost). Nothing is spilled to disk.

Annotations are org-wide (no dashboard id), tagged ``cellwatch``, ``incident``, ``line:<line>``,
``station:<station>`` and ``severity:<severity>``, so any dashboard can show them with a tag filter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import niquests
import orjson
import pandas as pd
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

log = logging.getLogger(__name__)

_FIELDS = ("incident_id", "line", "station", "kind", "severity", "status", "start_ts", "end_ts", "peak_score",
           "sensors")


@dataclass(frozen=True)
class _Item:
    incident_id: str
    closed: bool
    payload: dict[str, Any]


def _ms(ts: Any) -> int | None:
    if ts is None or (not isinstance(ts, str) and pd.isna(ts)):
        return None
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t
    return int(t.value // 1_000_000)


def _sensors(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return [value]
    return [str(s) for s in value] if isinstance(value, list | tuple) else []


def annotation_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The ``POST /api/annotations`` body for one incident row; keys without a value are left out."""
    closed = row.get("status") == "closed" and _ms(row.get("end_ts")) is not None
    sensors = _sensors(row.get("sensors"))
    text = (f"{str(row.get('severity') or '').capitalize()} {row.get('kind') or ''} incident at "
            f"{row.get('line')}/{row.get('station')}"
            + (f", peak score {float(row['peak_score']):.2f}" if row.get("peak_score") is not None else "")
            + (f", sensors: {', '.join(sensors[:5])}" if sensors else "")
            + (" (closed)" if closed else " (open)"))
    body: dict[str, Any] = {
        "time": _ms(row.get("start_ts")),
        "timeEnd": _ms(row.get("end_ts")) if closed else None,
        "text": text,
        "tags": ["cellwatch", "incident", f"line:{row.get('line')}", f"station:{row.get('station')}",
                 f"severity:{row.get('severity')}"],
        "data": {"incident_id": row.get("incident_id")},
    }
    return {k: v for k, v in body.items() if v is not None}


class AnnotationSender:
    """Posts incident annotations to Grafana from a bounded queue on a background thread.

    ``submit(incidents_df)`` never blocks on the network. Counters: ``sent`` (posted or patched), ``dropped``
    (queue full: oldest pending item discarded), ``failed`` (Grafana rejected the request with a 4xx; not
    retried), ``retries`` (attempts that hit an unreachable, slow or 5xx Grafana).
    """

    def __init__(self, api: GrafanaApi, *, max_queue: int = 1000, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 remember: int = 10_000) -> None:
        self.api, self.max_queue = api, max_queue
        self.backoff_s, self.max_backoff_s, self.remember = backoff_s, max_backoff_s, remember
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._ids: OrderedDict[str, tuple[int, bool]] = OrderedDict()  # incident_id -> (annotation id, closed)
        self._uncertain: set[str] = set()  # a POST failed without a clear answer: Grafana may have stored it
        self._stop = False
        self._inflight = 0
        self.sent = self.dropped = self.failed = self.retries = 0
        self._thread = threading.Thread(target=self._run, name="grafana-annotations", daemon=True)
        self._thread.start()

    # --- producer side (the streaming loop)
    def submit(self, incidents: pd.DataFrame) -> None:
        """Queue annotations for these incident rows: opened ones as points, closed ones as regions."""
        if incidents is None or incidents.empty:
            return
        cols = [c for c in _FIELDS if c in incidents.columns]
        rows = incidents[cols].astype(object).where(incidents[cols].notna(), None).to_dict("records")
        with self._cond:
            for row in rows:
                payload = annotation_payload(row)
                if "time" not in payload or not row.get("incident_id"):
                    self.failed += 1
                    log.warning("incident without id or start time not annotated: %r", row.get("incident_id"))
                    continue
                if len(self._queue) >= self.max_queue:
                    self._queue.popleft()
                    self.dropped += 1
                self._queue.append(_Item(str(row["incident_id"]), "timeEnd" in payload, payload))
            self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._inflight

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued was delivered (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.pending

    def close(self, timeout: float = 5.0) -> None:
        """Try to deliver what is queued within ``timeout``, then stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=1.0)

    # --- consumer side (background thread)
    def _run(self) -> None:
        wait = self.backoff_s
        item: _Item | None = None
        while True:
            with self._cond:
                if item is None:
                    while not self._queue and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                    item = self._queue.popleft()
                    self._inflight = 1
            try:
                self.sent += int(self._deliver(item))
            except (GrafanaException, niquests.exceptions.RequestException) as exc:
                if not isinstance(exc, GrafanaClientError):  # unreachable, timeout or 5xx: back off, retry it
                    self.retries += 1
                    self._uncertain.add(item.incident_id)  # look it up before posting again
                    log.info("Grafana unavailable for annotations (%s); retrying in %.1fs", type(exc).__name__, wait)
                    with self._cond:
                        self._cond.wait(timeout=wait)
                        if self._stop:
                            return
                    wait = min(wait * 2, self.max_backoff_s)
                    continue
                self.failed += 1  # 4xx: Grafana will not take this one, retrying cannot help
                log.warning("Grafana rejected incident annotation %s: HTTP %s", item.incident_id, exc.status_code)
            except Exception:  # never let a bug kill the thread silently
                log.exception("annotation sender: unexpected error for incident %s", item.incident_id)
                self.failed += 1
            with self._cond:
                item, self._inflight = None, 0
            wait = self.backoff_s

    def _deliver(self, item: _Item) -> bool:
        """Post or patch one incident's annotation; False when Grafana already shows this state."""
        known = self._ids.get(item.incident_id)  # (annotation id, closed)
        if known is None and item.incident_id in self._uncertain:
            found = self._find(item)  # a timed-out POST may have been stored: never post it twice
            self._uncertain.discard(item.incident_id)
            if found is not None:
                known = (found, False)  # patch it to this item's state below
                if not item.closed:
                    self._remember(item.incident_id, found, False)
                    return True
        if known is not None and (known[1] or not item.closed):
            return False
        if known is not None:
            patch = {k: item.payload[k] for k in ("time", "timeEnd", "text", "tags") if k in item.payload}
            self.api.client.PATCH(f"/annotations/{known[0]}", json=patch)
            self._remember(item.incident_id, known[0], True)
            return True
        answer = self.api.client.POST("/annotations", json=item.payload)
        ann_id = int(answer["id"]) if isinstance(answer, dict) and "id" in answer else -1
        self._remember(item.incident_id, ann_id, item.closed)
        return True

    def _find(self, item: _Item) -> int | None:
        """Id of an annotation Grafana already holds for this incident (same start time and tags), or None."""
        t = item.payload["time"]
        found = self.api.client.GET("/annotations", params={"from": t, "to": t, "tags": item.payload["tags"],
                                                            "type": "annotation", "limit": 100})
        for ann in found if isinstance(found, list) else []:
            if isinstance(ann, dict) and (ann.get("data") or {}).get("incident_id") == item.incident_id:
                return int(ann["id"])
        return None

    def _remember(self, incident_id: str, ann_id: int, closed: bool) -> None:
        self._ids[incident_id] = (ann_id, closed)
        self._ids.move_to_end(incident_id)
        while len(self._ids) > self.remember:
            self._ids.popitem(last=False)
