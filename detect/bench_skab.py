"""SKAB benchmark (leaderboard protocol): per file, fit a detector on the first 400 rows, score the rest.

Protocol (/work/shared/datasets/README.md section 1): the 34 labelled files; first 400 rows train, the
remaining rows test; metrics on the concatenated test parts. Every row is scored online (past-only context,
the train rows being the context of the first test rows); the predicted changepoints are the 0->1 / 1->0
switches of the binary prediction, as in the upstream notebooks.

The reported configuration (:data:`SKAB_DETECTOR`) is :class:`~cellwatch.detect.window_pca.WindowPCAModel` with
its defaults - the same detector as ``cellwatch fit --detector window-pca``: the PCA residual (Q) of 25-reading
windows of the 8 sensors, the control limit = 4 x the 99 % quantile of the 400 training windows, a 15-row
trailing median, and hysteresis: an alarm opens above the limit and closes below 0.75 x the limit. How each
setting was chosen is in :data:`CHOICES` (and results.json): the control-limit rule uses the 400 train rows
only; the design settings were compared on a declared subset of the labelled files (:func:`is_selection_file`,
fixed before any comparison) and the figure on the other files is reported apart.
The previous detector (the StationModel ensemble with its defaults) is reported beside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cellwatch.detect.incidents import open_mask
from cellwatch.detect.metrics_events import skab_changepoints, skab_nab_score, skab_outlier_metrics
from cellwatch.detect.station_model import StationModel
from cellwatch.detect.window_pca import WindowPCAModel, hysteresis
from cellwatch.errors import CellwatchError

TRAIN_ROWS = 400
#: The reported detector: WindowPCAModel defaults (see CHOICES for how each value was chosen).
SKAB_DETECTOR = {"lags": 25, "variance": 0.9, "statistic": "q", "quantile": 0.99, "factor": 4.0, "smooth": 15,
                 "close": 0.75}
#: The comparison row: the StationModel ensemble with its defaults (last session's "defaults" row).
ENSEMBLE_SETTINGS = {"window": 20, "alert_budget": 1.0, "k": 3, "n": 5, "close_after": 10}
CHOICES = {
    "split": "per file: first 400 rows train, rest test (leaderboard protocol); nothing is fitted on test rows",
    "control_limit": "factor x the 0.99 quantile of the statistic on the file's own 400 training windows",
    "selection_files": "valve1/0..15 + other/1,3,5,7,9,11,13 (23 files), declared before any comparison",
    "holdout_files": "valve2/0..3 + other/2,4,6,8,10,12,14 (11 files), never used to choose anything",
    "design": "lags (1/5/10/15/20/25/30), variance kept (0.85/0.9/0.95/0.99), statistic (Q, T2, T2+Q), factor "
              "(1-3.5), smoothing (none, 5, 15 rows) and in-sample vs held-out limits were compared on the "
              "selection files only; rule: the highest selection-file F1 with selection-file FAR <= 13.6 %, "
              "ties broken by NAB standard",
    "hysteresis (third session)": "an open alarm closes only when the smoothed ratio falls below a lower level "
                                  "(SPC action/close limits): on the selection files the rule above over open "
                                  "factor 3-6 x close level 1.5-open (steps 0.25) picks open 4.0 / close 3.0 "
                                  "(close = 0.75 x limit): F1 0.845, FAR 12.46 % (was 0.836 / 13.33 % without)",
    "factor_rule": "recomputed on every run (results.json -> factor_rule): per selection file the smoothed ratio "
                   "is scored once at factor 1 (the median is scale-equivariant, so factor f flags ratio > f), the "
                   "rule above picks (open factor, close level) from FACTOR_GRID, and leave-one-selection-file-out "
                   "repeats the rule on 22 files to score the 23rd (how far the rule's FAR carries to an unseen "
                   "file)",
    "tried_third_session": "on the selection files only, none kept (F1 / FAR % there; default 0.836 / 13.33): "
                           "window-centring of slow sensors (rule: lag-25 autocorrelation >= 0.7/0.8/0.9 on the "
                           "training rows; best 0.779 / 17.8), limits from blocked 2-fold out-of-fold training Q "
                           "(0.789 / 14.1, 0.735 / 10.1), Box's moment-matched chi-square Q limit (0.826 / 12.4 = "
                           "the same trade-off curve), an EWMA of log ratio instead of the median (lambda "
                           "0.05-0.3: 0.839-0.842 / 13.3-13.6, same curve), trailing medians of 25/35 rows (same "
                           "curve), a FAR budget with a margin (file bootstrap 95 % bound <= 13.6 % needs f ~ 6: "
                           "F1 0.72); the leave-one-file-out check keeps f = 3.5",
}
#: (open factor, close level) pairs the selection rule compares: the control limit = open factor x the training
#: quantile; an open alarm closes when the smoothed ratio to the factor-1 limit falls below the close level.
FACTOR_GRID = tuple((3.0 + 0.25 * i, 1.5 + 0.25 * j) for i in range(13) for j in range(7 + i))  # close <= open
FAR_BUDGET = 13.6

PUBLISHED_OUTLIER = {  # README 1.1, test part only (F1, FAR %, MAR %)
    "Conv-AE": (0.78, 13.55, 28.02), "MSET": (0.78, 39.73, 14.13), "T-squared+Q (PCA-based)": (0.76, 26.62, 24.92),
    "LSTM-AE": (0.74, 29.96, 25.92), "T-squared": (0.66, 19.21, 42.6), "LSTM-VAE": (0.56, 9.13, 55.03),
    "Vanilla LSTM": (0.54, 12.54, 59.53), "MSCRED": (0.36, 49.94, 69.88), "Vanilla AE": (0.39, 2.59, 75.15),
    "Isolation forest": (0.29, 2.56, 82.89)}
PUBLISHED_CHANGEPOINT = {  # README 1.1 (standard, low FP, low FN, missed CPs, FPs)
    "MSCRED": (32.42, 16.53, 40.28, 55, 342), "Isolation forest": (26.16, 19.5, 30.82, 76, 135),
    "T-squared+Q (PCA-based)": (25.35, 14.51, 31.33, 72, 232), "Conv-AE": (23.61, 21.54, 27.55, 82, 23),
    "LSTM-AE": (23.51, 20.11, 25.91, 88, 69), "T-squared": (19.54, 10.2, 24.31, 70, 106),
    "MSET": (13.84, 10.22, 17.37, 96, 66), "Vanilla AE": (11.41, 6.53, 13.91, 103, 106),
    "Vanilla LSTM": (11.31, -3.8, 17.25, 90, 342), "ArimaFD": (-0.09, -0.17, -0.06, 127, 2)}


def skab_files(data_dir: str | Path) -> list[Path]:
    """The 34 labelled files (valve1, valve2, other), in a fixed order."""
    root = Path(data_dir)
    files = sorted((p for sub in ("valve1", "valve2", "other") for p in (root / sub).glob("*.csv")),
                   key=lambda p: (p.parent.name, int(p.stem)))
    if not files:
        raise CellwatchError(f"no SKAB files under {root} (expected valve1/, valve2/, other/)")
    return files


def read_skab(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, sep=";", parse_dates=["datetime"])
    return df.rename(columns={"datetime": "ts"})


def is_selection_file(path: Path) -> bool:
    """The declared selection subset: valve1/* and the odd-numbered other/* files."""
    return path.parent.name == "valve1" or (path.parent.name == "other" and int(path.stem) % 2 == 1)


def _as_station_frame(df: pd.DataFrame, sensors: list[str]) -> pd.DataFrame:
    out = df[["ts", *sensors]].copy()
    out.insert(1, "line", "L1")
    out.insert(2, "station", "skab")
    out.insert(3, "seq", np.arange(len(df)))
    return out


def predict_file(df: pd.DataFrame, detector: str = "window-pca", settings: dict | None = None
                 ) -> tuple[np.ndarray, pd.DataFrame]:
    """Fit on the first 400 rows, score the rest online; (predicted 0/1 per test row, scored test rows).

    ``window-pca``: :class:`WindowPCAModel` (:data:`SKAB_DETECTOR`), prediction = ``is_anomaly``;
    ``ensemble``: :class:`StationModel` (:data:`ENSEMBLE_SETTINGS`), prediction = an incident is open (k-of-n).
    """
    sensors = [c for c in df.columns if c not in ("ts", "anomaly", "changepoint")]
    frame = _as_station_frame(df, sensors)
    train, test = frame.iloc[:TRAIN_ROWS], frame.iloc[TRAIN_ROWS:]
    if detector == "window-pca":
        model = WindowPCAModel(sensors=sensors, **{**SKAB_DETECTOR, **(settings or {})}).fit(train)
        scored = model.score(test, model.new_state(train))
        return scored["is_anomaly"].to_numpy().astype(int), scored
    if detector == "ensemble":
        sm = StationModel(sensors=sensors, **{**ENSEMBLE_SETTINGS, **(settings or {})}).fit(train)
        scored = sm.score(test, sm.new_state(train))
        flags = (scored["is_anomaly"]).to_numpy()
        return open_mask(flags, sm.k, sm.n, sm.close_after).astype(int), scored
    raise ValueError(f"unknown detector {detector!r}")


def _metrics(runs: list[tuple[pd.DataFrame, np.ndarray]]) -> dict:
    y_true, y_pred, cp_files = [], [], []
    for test, pred in runs:
        y_true.append(test["anomaly"].to_numpy().astype(int))
        y_pred.append(pred)
        cp_files.append((test["ts"], test["changepoint"].to_numpy().astype(int), skab_changepoints(pred)))
    outlier = skab_outlier_metrics(y_true, y_pred)
    nab = skab_nab_score(cp_files)
    return {"f1": round(outlier["f1"], 4), "far": round(outlier["far"], 2), "mar": round(outlier["mar"], 2),
            "nab_standard": nab["standard"]["score"], "nab_low_fp": nab["low_fp"]["score"],
            "nab_low_fn": nab["low_fn"]["score"], "missed_cps": nab["standard"]["missed"],
            "fps": nab["standard"]["fps"], "files": len(y_true),
            "test_rows": int(sum(len(y) for y in y_true)), "changepoints": int(sum(c[1].sum() for c in cp_files))}


def evaluate(paths: list[Path], detector: str = "window-pca", settings: dict | None = None) -> dict:
    """Metrics over all ``paths``, and apart over the selection and the holdout files among them."""
    runs = {}
    for path in paths:
        df = read_skab(path)
        pred, _ = predict_file(df, detector, settings)
        runs[path] = (df.iloc[TRAIN_ROWS:], pred)
    out = _metrics(list(runs.values()))
    for name, keep in (("selection_files", True), ("holdout_files", False)):
        part = [r for p, r in runs.items() if is_selection_file(p) == keep]
        out[name] = _metrics(part) if part else None
    return out


def _counts_by_factor(path: Path, pairs) -> np.ndarray:
    """(TP, FP, FN, TN) of one file's test rows for every (open factor, close level) pair: scored once at
    factor 1; the smoothed ratio (``s / (1 - s)`` of the score) over the pair's factor drives the hysteresis."""
    df = read_skab(path)
    _, scored = predict_file(df, "window-pca", {"factor": 1.0})
    s = scored["anomaly_score"].to_numpy()
    ratio = s / np.maximum(1.0 - s, 1e-300)
    y = df["anomaly"].to_numpy()[TRAIN_ROWS:] == 1
    flag = np.stack([hysteresis(ratio / f, c / f) for f, c in pairs])
    return np.stack([(flag & y).sum(1), (flag & ~y).sum(1), (~flag & y).sum(1), (~flag & ~y).sum(1)], axis=1)


def _f1_far(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp, fp, fn, tn = (c[..., i].astype(float) for i in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + (fp + fn) / 2), 100 * fp / (fp + tn)


def choose_factor(counts: np.ndarray, factors, budget: float = FAR_BUDGET) -> int:
    """Index of the setting with the highest pooled F1 among those with pooled FAR <= ``budget``
    (``counts``: files x settings x (TP, FP, FN, TN)); the last setting if none meets the budget."""
    f1, far = _f1_far(counts.sum(axis=0))
    ok = np.flatnonzero(far <= budget)
    if ok.size == 0:
        return len(factors) - 1
    return int(ok[np.argmax(f1[ok])])  # first (smallest factor) among equal F1


def factor_rule(paths: list[Path], factors=FACTOR_GRID, budget: float = FAR_BUDGET) -> dict:
    """The declared factor rule on the selection files among ``paths``, and its leave-one-file-out check."""
    sel = [p for p in paths if is_selection_file(p)]
    if len(sel) < 2:
        return {"selection_files": len(sel), "note": "needs at least 2 selection files"}
    counts = np.stack([_counts_by_factor(p, factors) for p in sel])
    best = choose_factor(counts, factors, budget)
    f1, far = _f1_far(counts.sum(axis=0))
    loo = sum(counts[i, choose_factor(np.delete(counts, i, axis=0), factors, budget)] for i in range(len(sel)))
    lf1, lfar = _f1_far(loo)
    f_open, c_level = factors[best]
    default = (SKAB_DETECTOR["factor"], SKAB_DETECTOR["factor"] * SKAB_DETECTOR["close"])
    return {"grid": "open factor 3.0-6.0 x close level 1.5-open, steps 0.25", "settings_compared": len(factors),
            "far_budget": budget, "selection_files": len(sel),
            "chosen": {"factor": f_open, "close_level": c_level, "close": round(c_level / f_open, 4)},
            "selection_f1": round(float(f1[best]), 4), "selection_far": round(float(far[best]), 2),
            "leave_one_file_out": {"f1": round(float(lf1), 4), "far": round(float(lfar), 2)},
            "default": {"factor": default[0], "close_level": default[1]},
            "matches_default": bool(np.allclose((f_open, c_level), default))}


def run_skab(data_dir: str | Path, settings: dict | None = None, files: list[str] | None = None) -> dict:
    """Run the SKAB leaderboard protocol; return our figures, the published ones and a printable table.

    ``ours`` = :data:`SKAB_DETECTOR` (``settings`` overrides it, for experiments only); ``ours_ensemble`` = the
    StationModel ensemble with its defaults. ``files`` (e.g. ``["valve1/0.csv"]``) restricts the run to a subset
    (for tests); the published figures are for all 34 files.
    """
    paths = skab_files(data_dir)
    if files is not None:
        paths = [p for p in paths if f"{p.parent.name}/{p.name}" in set(files)]
        if len(paths) != len(set(files)):
            raise CellwatchError(f"SKAB files not found under {data_dir}: {sorted(files)}")
    cfg = {**SKAB_DETECTOR, **(settings or {})}
    ours = evaluate(paths, "window-pca", cfg)
    ensemble = evaluate(paths, "ensemble")
    best_f1 = max(PUBLISHED_OUTLIER.items(), key=lambda kv: (kv[1][0], -kv[1][1]))
    best_nab = max(PUBLISHED_CHANGEPOINT.items(), key=lambda kv: kv[1][0])
    rows = {"cellwatch window-pca (default)": ours}
    for name in ("selection_files", "holdout_files"):
        if ours[name]:
            rows[f"  same, {name.split('_')[0]} files only ({ours[name]['files']})"] = ours[name]
    rows["cellwatch ensemble (defaults)"] = ensemble
    rule = factor_rule(paths)
    return {"dataset": "skab", "detector": "window-pca", "settings": cfg, "choices": CHOICES, "factor_rule": rule,
            "ours": ours, "ours_ensemble": ensemble, "ensemble_settings": ENSEMBLE_SETTINGS,
            "published": {"outlier": PUBLISHED_OUTLIER, "changepoint": PUBLISHED_CHANGEPOINT,
                          "best_outlier": best_f1[0], "best_changepoint": best_nab[0]},
            "target": {"f1_above": 0.78, "far_at_most": 13.6,
                       "met": bool(ours["f1"] > 0.78 and ours["far"] <= 13.6)},
            "table": skab_table(rows) + _rule_line(rule)}


def _rule_line(rule: dict) -> str:
    if "chosen_factor" not in rule:
        return ""
    lo = rule["leave_one_file_out"]
    c, d = rule["chosen"], rule["default"]
    return (f"\nfactor rule on the {rule['selection_files']} selection files "
            f"(max F1 with FAR <= {rule['far_budget']} %): open {c['factor']:g} / close {c['close_level']:g} "
            f"(F1 {rule['selection_f1']:.3f}, FAR {rule['selection_far']:.2f} %; default {d['factor']:g} / "
            f"{d['close_level']:g}); leave-one-file-out: F1 {lo['f1']:.3f}, FAR {lo['far']:.2f} %")


def skab_table(rows: dict[str, dict]) -> str:
    """Comparison tables (outlier and changepoint) with our rows first."""
    lines = ["SKAB outlier detection (test parts, micro)", f"{'Algorithm':<44}{'F1':>6}{'FAR %':>9}{'MAR %':>9}"]
    lines += [f"{name:<44}{o['f1']:>6.2f}{o['far']:>9.2f}{o['mar']:>9.2f}" for name, o in rows.items()]
    lines += [f"{name:<44}{f1:>6.2f}{far:>9.2f}{mar:>9.2f}" for name, (f1, far, mar) in PUBLISHED_OUTLIER.items()]
    lines += ["", "SKAB changepoint detection (NAB, 60 s right window)",
              f"{'Algorithm':<44}{'Std':>8}{'LowFP':>8}{'LowFN':>8}{'Missed':>8}{'FPs':>6}"]
    lines += [f"{name:<44}{o['nab_standard']:>8.2f}{o['nab_low_fp']:>8.2f}{o['nab_low_fn']:>8.2f}"
              f"{o['missed_cps']:>8}{o['fps']:>6}" for name, o in rows.items()]
    lines += [f"{name:<44}{s:>8.2f}{lfp:>8.2f}{lfn:>8.2f}{m:>8}{f:>6}"
              for name, (s, lfp, lfn, m, f) in PUBLISHED_CHANGEPOINT.items()]
    return "\n".join(lines)
