"""Plots (matplotlib, Agg backend) and the one-page HTML report of ``cellwatch evaluate``."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from cellwatch.detect.cell_features import STAGE
from cellwatch.stations import STATION_NAMES


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def plot_timelines(scores: pd.DataFrame, faults: pd.DataFrame, path: Path, line: str | None = None) -> str:
    """Anomaly score per station of one line over time, anomalies marked, true fault windows shaded."""
    line = line or (sorted(scores["line"].unique())[0] if len(scores) else "L1")
    sub = scores.loc[scores["line"] == line]
    stations = [s for s in STATION_NAMES if s in set(sub["station"])]
    fig, axes = plt.subplots(len(stations), 1, figsize=(12, 1.6 * max(1, len(stations))), sharex=True, squeeze=False)
    for ax, st in zip(axes[:, 0], stations, strict=True):
        s = sub.loc[sub["station"] == st]
        ax.plot(s["ts"], s["anomaly_score"], lw=0.4, color="#3465a4")
        a = s.loc[s["is_anomaly"]]
        ax.scatter(a["ts"], a["anomaly_score"], s=3, color="#cc0000", zorder=3)
        for f in faults.loc[(faults["line"] == line) & (faults["station"] == st)].itertuples(index=False):
            ax.axvspan(f.start_ts, f.end_ts, color="#f5c211", alpha=0.35, lw=0)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(st, rotation=0, ha="right", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_title(f"{line}: anomaly score (red: flagged; yellow: true fault windows)", fontsize=9)
    return _save(fig, path)


def plot_roc_pr(pred: pd.DataFrame, path: Path) -> str:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for st in [s for s in STAGE if s in set(pred["station"])]:
        g = pred.loc[pred["station"] == st]
        y, p = g["defect"].to_numpy(bool), g["defect_probability"].to_numpy()
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        a1.plot(fpr, tpr, label=f"after {st}")
        prec, rec, _ = precision_recall_curve(y, p)
        a2.plot(rec, prec, label=f"after {st}")
    a1.plot([0, 1], [0, 1], "k:", lw=0.8)
    a1.set(xlabel="false positive rate", ylabel="true positive rate", title="defect ROC by stage")
    a2.set(xlabel="recall", ylabel="precision", title="defect precision-recall by stage")
    a1.legend(fontsize=8)
    a2.legend(fontsize=8)
    return _save(fig, path)


def plot_calibration(pred: pd.DataFrame, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    y, p = pred["defect"].to_numpy(bool), pred["defect_probability"].to_numpy()
    if len(np.unique(y)) > 1:
        frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
        ax.plot(mean, frac, "o-", label="model")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect")
    ax.set(xlabel="predicted defect probability", ylabel="observed defect rate", title="calibration (held-out)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_importance(importance: pd.Series, path: Path, top: int = 20) -> str:
    imp = importance.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(imp) + 1))
    ax.barh(imp.index, imp.to_numpy(), color="#4e9a06")
    ax.set(xlabel="mean |SHAP contribution| (log-odds)", title="defect model: top features")
    ax.tick_params(labelsize=7)
    return _save(fig, path)


def write_report(report: Path, metrics: dict, bt: dict, data, pred: pd.DataFrame,
                 importance: pd.Series | None) -> list[str]:
    """PNGs and index.html into ``report``; returns the figure file names."""
    figs = []
    for line in sorted(bt["scores"]["line"].unique())[:4]:
        figs.append(plot_timelines(bt["scores"], data.faults, report / f"timeline_{line}.png", line))
    if len(pred):
        figs.append(plot_roc_pr(pred, report / "defect_roc_pr.png"))
        figs.append(plot_calibration(pred, report / "defect_calibration.png"))
    if importance is not None:
        figs.append(plot_importance(importance, report / "defect_top_features.png"))
    body = [f"<h1>cellwatch evaluation</h1><p>models <code>{html.escape(metrics['model_version'])}</code> on "
            f"<code>{html.escape(metrics['data_dir'])}</code></p>",
            f"<pre>{html.escape(metrics['summary_text'])}</pre>"]
    body += [f'<p><img src="{f}" style="max-width:100%"></p>' for f in figs]
    shown = {k: v for k, v in metrics.items() if k not in ("summary_text", "figures")}
    body.append(f"<h2>all metrics</h2><pre>{html.escape(json.dumps(shown, indent=2, default=str))}</pre>")
    (report / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>cellwatch evaluation</title></head><body>"
        + "\n".join(body) + "</body></html>", encoding="utf-8")
    return figs
