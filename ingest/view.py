"""The demo's live terminal view (rich): throughput, open incidents with their top sensors, cells at risk.

The view reads what it shows from the store (the same tables Grafana reads), at most a few times a
second. Without a terminal (or with ``live=False``) it prints one progress line now and then instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

_REFRESH_S = 0.5


def _top_sensors(v: Any, n: int = 3) -> str:
    items = orjson.loads(v) if isinstance(v, str | bytes) else (v or [])
    names = [(i.get("sensor") if isinstance(i, dict) else str(i)) for i in items]
    return ", ".join(str(x) for x in names[:n])


class LiveView:
    """Context manager; ``update`` after each batch, ``say`` for status lines."""

    def __init__(self, live: bool = True, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live_enabled = live and self.console.is_terminal
        self.store = None
        self.total = 0
        self.done = 0
        self.scored = 0
        self.model = ""
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._live: Live | None = None
        self.elapsed = 0.0

    def say(self, msg: str) -> None:
        self.console.print(f"[bold cyan]cellwatch demo[/] {msg}")

    def start(self, total: int, model: str) -> None:
        self.total, self.model = total, model
        self._t0 = time.perf_counter()

    def __enter__(self) -> LiveView:
        if self.live_enabled:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.elapsed = time.perf_counter() - self._t0
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def update(self, messages: int, scored: int) -> None:
        self.done += messages
        self.scored += scored
        now = time.perf_counter()
        if now - self._last < _REFRESH_S and self.done < self.total:
            return
        self._last = now
        if self._live is not None:
            self._live.update(self._render())
        else:
            rate = self.done / max(now - self._t0, 1e-9)
            self.console.print(f"  {self.done:,}/{self.total:,} messages, {self.scored:,} scored, {rate:,.0f} msg/s")

    # ------------------------------------------------------------------------------------------ render
    def _render(self) -> Group:
        elapsed = time.perf_counter() - self._t0
        rate = self.done / max(elapsed, 1e-9)
        head = Table.grid(padding=(0, 3))
        head.add_row(f"[b]{self.done:,}[/]/{self.total:,} messages", f"[b]{self.scored:,}[/] readings scored",
                     f"[b]{rate:,.0f}[/] msg/s", f"model [b]{self.model}[/]", f"{elapsed:.0f} s")
        parts: list[Any] = [Panel(head, title="cellwatch demo - streaming the simulated line", border_style="cyan")]
        if self.store is not None:
            parts += [self._incidents(), self._cells()]
        return Group(*parts)

    def _incidents(self) -> Panel:
        t = Table(expand=True)
        for c in ("line", "station", "kind", "severity", "since", "peak", "top sensors"):
            t.add_column(c)
        try:
            rows = self.store.query("SELECT line, station, kind, severity, start_ts, peak_score, sensors "
                                    "FROM incidents WHERE status = 'open' ORDER BY peak_score DESC LIMIT 8")
            n_all = self.store.count("incidents")
        except Exception:
            rows, n_all = pd.DataFrame(), 0
        for r in rows.itertuples(index=False):
            color = {"critical": "red", "major": "yellow"}.get(r.severity, "white")
            t.add_row(r.line, r.station, r.kind, f"[{color}]{r.severity}[/]", str(r.start_ts)[:19],
                      f"{r.peak_score:.2f}", _top_sensors(r.sensors))
        return Panel(t, title=f"open incidents ({len(rows)} shown, {n_all} in total)", border_style="red")

    def _cells(self) -> Panel:
        t = Table(expand=True)
        for c in ("cell", "last station", "defect probability", "predicted type", "top features"):
            t.add_column(c)
        try:
            rows = self.store.query("SELECT cell_id, last_station, defect_probability, predicted_type, top_features "
                                    "FROM cells WHERE NOT closed AND predicted_defect ORDER BY defect_probability "
                                    "DESC LIMIT 8")
        except Exception:
            rows = pd.DataFrame()
        for r in rows.itertuples(index=False):
            feats = orjson.loads(r.top_features) if isinstance(r.top_features, str) else (r.top_features or [])
            names = ", ".join(str(f.get("feature", f) if isinstance(f, dict) else f) for f in feats[:3])
            t.add_row(r.cell_id, r.last_station, f"{r.defect_probability:.2f}", str(r.predicted_type or ""), names)
        return Panel(t, title="cells at risk (in production, predicted defective)", border_style="yellow")

    def summary(self, totals: dict, report: Path, wall_s: float) -> None:
        self.console.print(f"[bold green]done[/] in {wall_s:.0f} s: {totals.get('scored', 0):,} readings scored, "
                           f"{totals.get('rejected', 0):,} rejected; report: {report}")
