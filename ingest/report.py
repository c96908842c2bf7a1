"""The demo's HTML report: what was streamed, which injected faults became incidents, plots.

Everything is read back from the store (the tables Grafana reads) and compared with the simulator's
ground truth; plots are matplotlib PNGs embedded in one self-contained HTML file.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cellwatch.ingest.store import Store

#: An incident counts for a fault when it starts before the fault's end + this grace.
MATCH_GRACE = pd.Timedelta(minutes=10)


def _times(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s, utc=True, format="ISO8601").astype("datetime64[us, UTC]")


def match_faults(faults: pd.DataFrame, incidents: pd.DataFrame) -> pd.DataFrame:
    """Each injected fault with the first incident of its (line, station) that overlaps its window."""
    out = faults[["fault_id", "type", "line", "station", "start", "end"]].copy()
    out["incident_id"] = None
    out["delay_s"] = np.nan
    if incidents.empty or faults.empty:
        return out
    inc = incidents.assign(start_ts=_times(incidents["start_ts"]),
                           end_ts=_times(incidents["end_ts"]).fillna(_times(incidents["updated_at"])))
    for i, f in out.iterrows():
        cand = inc[(inc["line"] == f["line"]) & (inc["station"] == f["station"])
                   & (inc["start_ts"] <= f["end"] + MATCH_GRACE) & (inc["end_ts"] >= f["start"])]
        if len(cand):
            first = cand.sort_values("start_ts").iloc[0]
            out.at[i, "incident_id"] = first["incident_id"]
            out.at[i, "delay_s"] = max(0.0, (first["start_ts"] - f["start"]).total_seconds())
    return out


def _event_metrics(scores: pd.DataFrame, incidents: pd.DataFrame, faults: pd.DataFrame) -> list[tuple[str, str]]:
    """Event-level recall and false incidents with the evaluation code of ``cellwatch evaluate``."""
    from cellwatch.detect.evaluate import event_level

    if scores.empty:
        return []
    inc = incidents.assign(end_ts=_times(incidents["end_ts"])) if len(incidents) else incidents
    m = event_level(scores, inc, faults.rename(columns={"start": "start_ts", "end": "end_ts"}))
    return [("detectable faults caught (cellwatch evaluate's event metric)",
             f"{m.get('detected', 0)} of {m.get('faults', 0)}"),
            ("false incidents per station-shift", f"{m.get('false_incidents_per_station_shift', float('nan')):.2f}")]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _score_plot(scores: pd.DataFrame, faults: pd.DataFrame, incidents: pd.DataFrame, line: str) -> str:
    stations = list(dict.fromkeys(scores.loc[scores["line"] == line, "station"]))
    fig, axes = plt.subplots(len(stations), 1, figsize=(11, 1.5 * len(stations) + 0.5), sharex=True, squeeze=False)
    for ax, st in zip(axes[:, 0], stations, strict=True):
        s = scores[(scores["line"] == line) & (scores["station"] == st)]
        ax.plot(s["ts"], s["anomaly_score"], lw=0.6, color="#35618f")
        flagged = s[s["is_anomaly"].astype(bool)]
        ax.scatter(flagged["ts"], flagged["anomaly_score"], s=4, color="#d62728", zorder=3)
        for f in faults[(faults["line"] == line) & (faults["station"] == st)].itertuples():
            ax.axvspan(f.start, f.end, color="orange", alpha=0.25)
        for inc in incidents[(incidents["line"] == line) & (incidents["station"] == st)].itertuples():
            ax.axvline(inc.start_ts, color="#d62728", lw=0.8, ls="--")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(st, rotation=0, ha="right", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_title(f"{line}: anomaly score per station (orange: injected fault, dashed: incident start, "
                         "red dots: anomalous readings)", fontsize=9)
    return _png(fig)


def _defect_plot(cells: pd.DataFrame) -> str | None:
    c = cells[cells["closed"].astype(bool) & cells["defect_probability"].notna()]
    if c.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(0, 1, 26)
    defect = c["defect"].astype(bool)
    ax.hist(c.loc[~defect, "defect_probability"], bins=bins, alpha=0.7, label=f"good ({(~defect).sum()})",
            density=True)
    ax.hist(c.loc[defect, "defect_probability"], bins=bins, alpha=0.7, label=f"defective ({defect.sum()})",
            density=True)
    ax.set_xlabel("predicted defect probability (last station before EOL)")
    ax.legend(fontsize=8)
    return _png(fig)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, classes="t", na_rep="")


def write_report(store: Store, sim, path: Path, totals: dict, stream_seconds: float, wall_seconds: float) -> Path:
    """Write the HTML report to ``path`` and return it."""
    scores = store.query("SELECT line, station, seq, ts, anomaly_score, is_anomaly FROM scores ORDER BY ts")
    scores["ts"] = _times(scores["ts"])
    incidents = store.query("SELECT * FROM incidents ORDER BY start_ts")
    incidents["start_ts"] = _times(incidents["start_ts"])
    cells = store.query("SELECT * FROM cells")
    dead = store.query("SELECT reason, count(*) AS n FROM dead_letters GROUP BY reason")
    faults = sim.faults.copy()
    matched = match_faults(faults, incidents)
    n_detected = int(matched["incident_id"].notna().sum())
    closed = cells[cells["closed"].astype(bool) & cells["defect_probability"].notna()] if len(cells) else cells
    lines = sorted(scores["line"].unique())
    plots = [_score_plot(scores, faults, incidents, line) for line in lines]
    dplot = _defect_plot(cells) if len(cells) else None
    rate = totals.get("scored", 0) / max(stream_seconds, 1e-9)
    events = _event_metrics(scores, incidents, faults)
    summary = pd.DataFrame([
        ("readings scored", f"{totals.get('scored', 0):,}"),
        ("messages rejected (DLQ)", f"{totals.get('rejected', 0):,}"),
        ("streaming time", f"{stream_seconds:.1f} s ({rate:,.0f} readings/s)"),
        ("demo wall time", f"{wall_seconds:.0f} s"),
        ("incidents", f"{len(incidents):,}"), ("injected faults detected", f"{n_detected} of {len(faults)}"),
        ("cells with an EOL result and a prediction", f"{len(closed):,}"),
        *events,
    ], columns=["", "value"])
    by_type = (matched.assign(detected=matched["incident_id"].notna()).groupby("type")["detected"]
               .agg(["sum", "count"]).rename(columns={"sum": "detected", "count": "injected"}).reset_index()
               if len(matched) else pd.DataFrame())
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>cellwatch demo report</title><style>",
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:3px 8px;"
             "border-bottom:1px solid #ddd;text-align:left}img{max-width:100%}",
             "</style></head><body><h1>cellwatch demo report</h1>", _table(summary),
             "<h2>Injected faults by type</h2>", _table(by_type) if len(by_type) else "<p>none</p>",
             "<h2>Anomaly scores</h2>", *[f"<img src='data:image/png;base64,{p}'>" for p in plots]]
    if dplot:
        parts += ["<h2>Defect predictions vs EOL result</h2>", f"<img src='data:image/png;base64,{dplot}'>"]
    parts += ["<h2>Injected faults and the incident that caught them</h2>",
              _table(matched.assign(start=matched["start"].astype(str).str[:19],
                                    end=matched["end"].astype(str).str[:19]))]
    if len(dead):
        parts += ["<h2>Dead letters</h2>", _table(dead)]
    parts += ["<h2>Incidents</h2>", _table(incidents[["incident_id", "kind", "severity", "status", "start_ts",
                                                      "peak_score", "n_anomalous"]].head(200)),
              f"<p style='color:#777'>{html.escape('generated by cellwatch demo')}</p></body></html>"]
    path.write_text("\n".join(parts))
    return path
