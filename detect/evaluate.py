"""Backtest: run the production LineScorer over held-out data and measure what it would have done.

* **events** — incident recall over the ground-truth faults of detectable kinds (faults with sensors that
  show them at their own station: sensor faults, mean shifts, tool wear), false incidents per station per
  shift, median detection delay (:func:`~cellwatch.detect.metrics_events.event_metrics`);
* **points** — precision / recall / F1 of ``is_anomaly`` against "inside a detectable fault window";
* **defect** — ROC-AUC, PR-AUC and precision@k of the per-cell defect probability, over all stage rows, per
  stage (the prediction after winding, filling, ...) and at the latest stage of each cell, plus the
  confusion at the cost threshold.

Everything goes through the same :class:`~cellwatch.detect.core.LineScorer` as the online service.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from cellwatch.detect.cell_features import FEATURE_NAMES, STAGE, ts_ns
from cellwatch.detect.core import LineScorer, load_scorer
from cellwatch.detect.metrics_events import event_metrics
from cellwatch.detect.train import Dataset, load_dataset, replay_features

SHIFT_HOURS = 8.0
#: An incident that starts this long after a fault window still counts as detecting it (hysteresis tails).
EVENT_TOLERANCE = pd.Timedelta(minutes=5)
#: Faults that change the real process (not just a sensor): their material looks wrong at later stations too.
PROCESS_FAULT_TYPES = ("mean_shift", "tool_wear", "contaminated_batch")
#: An incident at a station downstream of a process fault of its line, starting within the fault window + this,
#: is the fault's real after-effect (a line engineer would not call it false); counted apart, not as false.
DOWNSTREAM_TOLERANCE = pd.Timedelta(minutes=15)
#: An incident whose anomalous readings are mostly (this share) on cells a process fault upstream touched, and
#: at least AFTER_EFFECT_RISK times likelier on those cells than on the station's other cells of the same span, is
#: that fault's after-effect too, however late (a contaminated batch reaches aging hours after mixing).
AFTER_EFFECT_SHARE = 0.5
AFTER_EFFECT_RISK = 2.0
#: Diagnosis only: a false incident starting this soon after a stop or changeover of its line ends (warm-up).
RESTART_WINDOW = pd.Timedelta(minutes=30)
STATION_ORDER = {name: i for i, name in enumerate(("mixing", "coating", "calendering", "slitting", "winding", "filling",
                                                  "formation", "aging", "eol"))}


def detectable_faults(faults: pd.DataFrame) -> pd.DataFrame:
    """Faults a station detector can see at its own station: those with sensors that show them."""
    if faults.empty:
        return faults
    has_sensors = faults["sensors"].map(lambda s: s is not None and len(s) > 0) if "sensors" in faults else True
    return faults.loc[has_sensors].reset_index(drop=True)


def run_backtest(scorer: LineScorer, data: Dataset, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Scores, final incident states, predictions and feature rows of a whole dataset."""
    features, results = replay_features(scorer, data.readings, progress=progress, desc="backtest")
    scores = pd.concat([r.scores for r in results if len(r.scores)], ignore_index=True)
    inc = [r.incidents for r in results if len(r.incidents)]
    incidents = pd.concat(inc, ignore_index=True).drop_duplicates("incident_id", keep="last") if inc else \
        pd.DataFrame(columns=results[0].incidents.columns if results else [])
    pred = [r.predictions for r in results if len(r.predictions)]
    predictions = pd.concat(pred, ignore_index=True) if pred else pd.DataFrame()
    return {"scores": scores, "incidents": incidents.reset_index(drop=True), "predictions": predictions,
            "features": features}


def point_labels(scores: pd.DataFrame, faults: pd.DataFrame) -> np.ndarray:
    """True where a reading lies inside a (detectable) fault window of its own (line, station)."""
    y = np.zeros(len(scores), dtype=bool)
    if faults.empty:
        return y
    t = ts_ns(scores["ts"])
    key = (scores["line"].astype(str) + "/" + scores["station"].astype(str)).to_numpy()
    for f in faults.itertuples(index=False):
        sel = key == f"{f.line}/{f.station}"
        s, e = ts_ns(pd.Series([f.start_ts, f.end_ts]))
        y |= sel & (t >= s) & (t <= e)
    return y


def _on_touched_cells(alerts: pd.DataFrame, proc: pd.DataFrame, scores: pd.DataFrame) -> np.ndarray:
    """For each alert: do its anomalous readings sit on cells an upstream process fault of its line touched
    (AFTER_EFFECT_SHARE of them, AFTER_EFFECT_RISK times the anomaly rate of the span's other cells)?"""
    out = np.zeros(len(alerts), dtype=bool)
    if not len(alerts) or not len(proc) or "cells" not in proc or not {"cell_id", "is_anomaly"} <= set(scores):
        return out
    ts = pd.to_datetime(scores["ts"], utc=True)
    for i, a in enumerate(alerts.itertuples(index=False)):
        up = proc.loc[(proc["line"].astype(str) == str(a.line))
                      & (proc["station"].astype(str).map(STATION_ORDER) < STATION_ORDER.get(str(a.station), -1))]
        touched = {c for cells in up["cells"] if cells is not None for c in cells}
        if not touched:
            continue
        end = a.end_ts if pd.notna(a.end_ts) else ts.max()
        span = scores.loc[(scores["line"] == a.line) & (scores["station"] == a.station)
                          & (ts >= pd.Timestamp(a.start_ts)).to_numpy() & (ts <= pd.Timestamp(end)).to_numpy()]
        on = span["cell_id"].isin(touched).to_numpy()
        anom = span["is_anomaly"].astype(bool).to_numpy()
        if not anom.any() or on[anom].mean() < AFTER_EFFECT_SHARE:
            continue
        rate_on = anom[on].mean() if on.any() else 0.0
        rate_off = anom[~on].mean() if (~on).any() else 0.0
        out[i] = rate_on >= AFTER_EFFECT_RISK * rate_off
    return out


def _false_breakdown(alerts: pd.DataFrame, truth: pd.DataFrame, faults: pd.DataFrame,
                     events: pd.DataFrame | None, scores: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """For each alert: is it an after-effect of a process fault of its line (a station downstream within the fault
    window + DOWNSTREAM_TOLERANCE, or anomalous readings on the fault's cells), and does it start within
    RESTART_WINDOW after a stop/changeover of its line ended. (Alerts matching a detectable fault: both False.)"""
    n = len(alerts)
    downstream, restart = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    if not n:
        return downstream, restart
    a_s = pd.to_datetime(alerts["start_ts"], utc=True)
    a_line, a_st = alerts["line"].astype(str).to_numpy(), alerts["station"].astype(str).map(STATION_ORDER).to_numpy()
    proc = faults.loc[faults["type"].astype(str).isin(PROCESS_FAULT_TYPES)] if len(faults) else faults
    for f in proc.itertuples(index=False):
        downstream |= ((a_line == str(f.line)) & (a_st > STATION_ORDER.get(str(f.station), 99))
                       & (a_s >= f.start_ts).to_numpy() & (a_s <= f.end_ts + DOWNSTREAM_TOLERANCE).to_numpy())
    downstream |= _on_touched_cells(alerts, proc, scores)
    if events is not None and len(events) and {"event", "line", "end"} <= set(events.columns):
        for ev in events.loc[events["event"].isin(["stop", "changeover"])].itertuples(index=False):
            end = pd.Timestamp(ev.end)
            end = end.tz_localize("UTC") if end.tzinfo is None else end
            restart |= (a_line == str(ev.line)) & (a_s >= end).to_numpy() & (a_s <= end + RESTART_WINDOW).to_numpy()
    return downstream, restart


def stream_hours(scores: pd.DataFrame) -> pd.Series:
    """Hours each (line, station) stream was in operation: its first to its last reading plus its median time step
    (each reading stands for one step; the same span the alert budget of StationModel counts). A station further
    down the line starts later in a run (the first cells need time to reach aging), so it has fewer hours."""
    if not len(scores):
        return pd.Series(dtype="float64")
    t = pd.DataFrame({"line": scores["line"].astype(str), "station": scores["station"].astype(str),
                      "t": ts_ns(scores["ts"]) / 1e9}).sort_values(["line", "station", "t"], kind="stable")
    g = t.groupby(["line", "station"], sort=True)["t"]
    step = g.diff().groupby([t["line"], t["station"]], sort=True).median().fillna(0.0)
    return ((g.max() - g.min() + step) / 3600.0).rename("hours")


def event_level(scores: pd.DataFrame, incidents: pd.DataFrame, faults: pd.DataFrame,
                events: pd.DataFrame | None = None) -> dict:
    """Incident recall / false incidents. An incident overlapping no detectable fault of its station is false,
    unless it is an after-effect of a process fault of its line (DOWNSTREAM_TOLERANCE, AFTER_EFFECT_SHARE): those are
    counted in ``downstream_incidents``; ``false_incidents_per_station_shift_strict`` counts them as false.

    Exposure: ``station_shifts`` = the summed operating hours of the (line, station) streams (:func:`stream_hours`)
    / SHIFT_HOURS. (Up to the second session it was the number of streams x the whole run's first-to-last reading
    span, which counts hours before the first cell reached a downstream station; ``station_shifts_run_span`` keeps
    that figure for comparison.)"""
    truth = detectable_faults(faults)
    hours = (scores["ts"].max() - scores["ts"].min()).total_seconds() / 3600 if len(scores) else 0.0
    per_stream = stream_hours(scores)
    streams = len(per_stream)
    alerts = incidents[["line", "station", "start_ts", "end_ts"]] if len(incidents) else \
        pd.DataFrame(columns=["line", "station", "start_ts", "end_ts"])
    m = event_metrics(truth[["line", "station", "start_ts", "end_ts"]], alerts, tolerance=EVENT_TOLERANCE)
    shifts = float(per_stream.sum()) / SHIFT_HOURS
    if len(alerts) and len(truth):
        a = alerts.reset_index(drop=True)
        matched = np.array([event_metrics(truth[["line", "station", "start_ts", "end_ts"]], a.iloc[[i]],
                                          tolerance=EVENT_TOLERANCE)["false_alarms"] == 0 for i in range(len(a))])
    else:
        matched = np.zeros(len(alerts), dtype=bool)
    downstream, restart = _false_breakdown(alerts.reset_index(drop=True), truth, faults, events, scores)
    downstream &= ~matched
    m["false_alarms_strict"] = m["false_alarms"]
    m["downstream_incidents"] = int(downstream.sum())
    m["false_alarms"] = m["false_alarms_strict"] - m["downstream_incidents"]
    m["false_alarms_after_restart"] = int((restart & ~matched & ~downstream).sum())
    m["false_incidents_per_station_shift"] = m["false_alarms"] / shifts if shifts else float("nan")
    m["false_incidents_per_station_shift_strict"] = m["false_alarms_strict"] / shifts if shifts else float("nan")
    m["hours"] = hours
    m["streams"] = streams
    m["station_shifts"] = shifts
    m["station_shifts_run_span"] = streams * hours / SHIFT_HOURS
    m["false_incidents_per_station_shift_run_span"] = (m["false_alarms"] / m["station_shifts_run_span"]
                                                       if m["station_shifts_run_span"] else float("nan"))
    m["stream_hours"] = {f"{ln}/{st}": round(float(h), 4) for (ln, st), h in per_stream.items()}
    by_type = {}
    for kind, g in truth.groupby("type"):
        mk = event_metrics(g[["line", "station", "start_ts", "end_ts"]], alerts, tolerance=EVENT_TOLERANCE)
        by_type[str(kind)] = {"faults": mk["faults"], "detected": mk["detected"], "recall": mk["recall"]}
    m["by_type"] = by_type
    if len(truth):
        detected = []
        for f in truth.itertuples(index=False):
            sub = alerts.loc[(alerts["line"] == f.line) & (alerts["station"] == f.station)]
            a_s = pd.to_datetime(sub["start_ts"], utc=True)
            a_e = pd.to_datetime(sub["end_ts"], utc=True)
            a_e = a_e.fillna(pd.Timestamp("2200-01-01", tz="UTC").as_unit(a_e.dt.unit))
            detected.append(bool(((a_s <= f.end_ts + EVENT_TOLERANCE) & (a_e >= f.start_ts)).any()))
        m["missed"] = truth.loc[~np.asarray(detected), ["fault_id", "type", "line", "station"]].to_dict("records")
    return m


def point_level(scores: pd.DataFrame, faults: pd.DataFrame) -> dict:
    y = point_labels(scores, detectable_faults(faults))
    p = scores["is_anomaly"].to_numpy(dtype=bool)
    return {"readings": len(y), "positives": int(y.sum()), "flagged": int(p.sum()),
            "precision": float(precision_score(y, p, zero_division=0)),
            "recall": float(recall_score(y, p, zero_division=0)), "f1": float(f1_score(y, p, zero_division=0))}


def precision_at_k(y: np.ndarray, p: np.ndarray, k: int) -> float:
    k = min(k, len(y))
    if k <= 0:
        return float("nan")
    top = np.argsort(-p, kind="stable")[:k]
    return float(np.mean(y[top]))


def _defect_scores(y: np.ndarray, p: np.ndarray) -> dict:
    out = {"rows": len(y), "defects": int(y.sum())}
    if len(np.unique(y)) < 2:
        return out | {"roc_auc": float("nan"), "pr_auc": float("nan")}
    return out | {"roc_auc": float(roc_auc_score(y, p)), "pr_auc": float(average_precision_score(y, p)),
                  "precision_at_100": precision_at_k(y, p, 100),
                  "precision_at_defects": precision_at_k(y, p, int(y.sum()))}


def labelled_predictions(predictions: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    lab = cells.drop_duplicates("cell_id", keep="last").set_index("cell_id")
    lab = lab.loc[lab["defect"].notna()]
    out = predictions.loc[predictions["cell_id"].isin(lab.index)].copy()
    out["defect"] = out["cell_id"].map(lab["defect"]).astype(bool)
    out["defect_type"] = out["cell_id"].map(lab["defect_type"])
    return out.reset_index(drop=True)


def defect_level(pred: pd.DataFrame) -> dict:
    if pred.empty:
        return {"rows": 0}
    y = pred["defect"].to_numpy(dtype=bool)
    p = pred["defect_probability"].to_numpy(dtype="float64")
    out = {"all_stages": _defect_scores(y, p)}
    out["by_stage"] = {st: _defect_scores(g["defect"].to_numpy(bool), g["defect_probability"].to_numpy())
                       for st, g in pred.groupby("station") if st in STAGE}
    last = pred.assign(_s=pred["station"].map(STAGE)).sort_values("_s").drop_duplicates("cell_id", keep="last")
    out["latest_stage"] = _defect_scores(last["defect"].to_numpy(bool), last["defect_probability"].to_numpy())
    flagged = last["predicted_defect"].to_numpy(dtype=bool)
    yl = last["defect"].to_numpy(dtype=bool)
    out["at_threshold_latest_stage"] = {
        "flagged": int(flagged.sum()), "true_positives": int((flagged & yl).sum()),
        "false_positives": int((flagged & ~yl).sum()), "missed": int((~flagged & yl).sum()),
        "precision": float(precision_score(yl, flagged, zero_division=0)),
        "recall": float(recall_score(yl, flagged, zero_division=0))}
    typed = last.loc[flagged & yl & last["predicted_type"].notna()]
    if len(typed):
        out["type_accuracy_on_caught"] = float((typed["predicted_type"] == typed["defect_type"]).mean())
    return out


def summary_text(metrics: dict) -> str:
    e, p, d = metrics["events"], metrics["points"], metrics["defect"]
    lines = [
        f"events: {e['detected']}/{e['faults']} detectable faults caught (recall {e['recall']:.3f}), "
        f"{e['false_alarms']} false incidents = {e['false_incidents_per_station_shift']:.2f} per station per shift "
        f"({e['false_alarms_after_restart']} within {RESTART_WINDOW.seconds // 60} min after a stop/changeover; "
        f"{e['downstream_incidents']} more downstream of a process fault), "
        f"median delay {e['median_delay_s']:.0f} s",
        f"points: precision {p['precision']:.3f} recall {p['recall']:.3f} F1 {p['f1']:.3f}",
    ]
    if "all_stages" in d:
        a, last = d["all_stages"], d["latest_stage"]
        lines.append(f"defect: ROC-AUC {a['roc_auc']:.3f} PR-AUC {a['pr_auc']:.3f} (all stage rows); latest stage "
                     f"ROC-AUC {last['roc_auc']:.3f} PR-AUC {last['pr_auc']:.3f}")
        lines.append("  by stage: " + ", ".join(f"{k} {v['roc_auc']:.3f}" for k, v in d["by_stage"].items()))
    return "\n".join(lines)


def evaluate(data_dir: str | Path, models_dir: str | Path, report_dir: str | Path, progress: bool = True,
             plots: bool = True) -> dict:
    """Backtest the production models on ``data_dir``; writes metrics.json (+ plots, index.html) to ``report_dir``."""
    t0 = time.perf_counter()
    report = Path(report_dir)
    report.mkdir(parents=True, exist_ok=True)
    scorer = load_scorer(models_dir)
    data = load_dataset(data_dir)
    bt = run_backtest(scorer, data, progress=progress)
    pred = labelled_predictions(bt["predictions"], data.cells) if len(bt["predictions"]) else pd.DataFrame()
    metrics = {
        "model_version": scorer.model_version, "data_dir": str(data_dir),
        "events": event_level(bt["scores"], bt["incidents"], data.faults, data.events),
        "points": point_level(bt["scores"], data.faults),
        "defect": defect_level(pred),
    }
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    metrics["summary_text"] = summary_text(metrics)
    if plots:
        from cellwatch.detect.report import write_report

        importance = None
        if scorer.defect is not None and len(bt["features"]):
            sample = bt["features"].sample(min(2000, len(bt["features"])), random_state=0)
            importance = scorer.defect.feature_importance(sample[FEATURE_NAMES])
        metrics["figures"] = write_report(report, metrics, bt, data, pred, importance)
    (report / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    return metrics
