"""``cellwatch fit`` / ``cellwatch score``: the anomaly detector on any CSV of numeric columns."""

from __future__ import annotations

import argparse
from pathlib import Path

from cellwatch.errors import CellwatchError


def register(sub: argparse._SubParsersAction) -> None:
    fit = sub.add_parser("fit", help="train an anomaly detector on the numeric columns of a CSV",
                         description="Train an anomaly detector (one station; every numeric column a sensor) "
                                     "on clean data. The last quarter of the rows chooses the threshold.")
    fit.add_argument("--input", required=True, type=Path, help="training CSV (clean data, header row)")
    fit.add_argument("--out", required=True, type=Path,
                     help="model directory, or a single file ending in .joblib/.pkl (+ .json metadata)")
    fit.add_argument("--time-column", help="column with the row times (rows are put in time order)")
    fit.add_argument("--ignore", action="append", default=[], metavar="COL",
                     help="a column to leave out (repeatable, one column each)")
    fit.add_argument("--detector", choices=("ensemble", "window-pca"), default="ensemble",
                     help="ensemble: calibrated PyOD ensemble on window features, threshold from an alert budget, "
                          "data-quality checks (default); window-pca: PCA residual (Q) control chart on short "
                          "windows of all sensors, limit = factor x the 99%% training quantile")
    fit.add_argument("--window", type=int, default=20, help="ensemble: readings per feature window (default 20)")
    fit.add_argument("--alert-budget", type=float, default=1.0,
                     help="ensemble: false incidents allowed per 8-hour shift on the held-out rows (default 1)")
    fit.add_argument("--lags", type=int, default=25, help="window-pca: readings per window (default 25)")
    fit.add_argument("--factor", type=float, default=3.5,
                     help="window-pca: control limit = factor x the 99%% training quantile (default 3.5)")
    fit.set_defaults(func=_fit)

    score = sub.add_parser("score", help="score a CSV with a detector trained by 'cellwatch fit'",
                           description="Score every row in time order with past-only context; writes the input "
                                       "columns plus anomaly_score (0..1), is_anomaly (0/1) and top_sensors (JSON).")
    score.add_argument("--model", required=True, type=Path, help="model written by 'cellwatch fit'")
    score.add_argument("--input", required=True, type=Path, help="CSV to score")
    score.add_argument("--out", required=True, type=Path, help="scored CSV to write")
    score.add_argument("--time-column", help="time column (default: the one used for training)")
    score.set_defaults(func=_score)


def _fit(args: argparse.Namespace) -> int:
    from cellwatch.detect.tabular import fit_table, save_model

    if args.window < 2:
        raise CellwatchError("--window must be at least 2")
    if args.alert_budget < 0:
        raise CellwatchError("--alert-budget must not be negative")
    if args.detector == "window-pca":
        if args.lags < 1 or args.factor <= 0:
            raise CellwatchError("--lags must be at least 1 and --factor positive")
        params = {"lags": args.lags, "factor": args.factor}
    else:
        params = {"window": args.window, "alert_budget": args.alert_budget}
    model = fit_table(args.input, args.time_column, args.ignore, args.detector, **params)
    path = save_model(model, args.out)
    print(f"{args.detector} model written to {path} ({len(model.sensors_)} sensors, threshold {model.threshold_:.3f}, "
          f"{model.metadata_['train_rows']} training rows)")
    return 0


def _score(args: argparse.Namespace) -> int:
    from cellwatch.detect.tabular import load_model, score_table

    model = load_model(args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".partial")
    rows = flagged = 0
    try:
        with tmp.open("w", newline="") as fh:
            for i, chunk in enumerate(score_table(model, args.input, args.time_column)):
                chunk.to_csv(fh, header=i == 0, index=False)
                rows += len(chunk)
                flagged += int(chunk["is_anomaly"].sum())
        tmp.replace(args.out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{rows} rows scored, {flagged} anomalous -> {args.out}")
    return 0
