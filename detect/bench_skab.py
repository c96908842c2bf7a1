"""SKAB benchmark (leaderboard protocol): per file, fit a StationModel on the first 400 rows, score the rest.

Protocol (/work/shared/datasets/README.md section 1): the 34 labelled files; first 400 rows train, the
remaining rows test; metrics on the concatenated test parts. Our prediction for a row is "an incident is
open" (k-of-n to open, hysteresis to close - what an operator would see), computed online; the
predicted changepoints are its 0->1 / 1->0 switches, as in the upstream notebooks.

Nothing is tuned on the test parts: the threshold of every file comes from its own train part (alert
budget on the held-out quarter of the 400 rows); the other settings are fixed in :data:`SKAB_SETTINGS`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cellwatch.detect.incidents import open_mask
from cellwatch.detect.metrics_events import skab_changepoints, skab_nab_score, skab_outlier_metrics
from cellwatch.detect.station_model import StationModel
from cellwatch.errors import CellwatchError

TRAIN_ROWS = 400
SKAB_SETTINGS = {"window": 20, "alert_budget": 1.0, "k": 3, "n": 5, "close_after": 10}

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


def _as_station_frame(df: pd.DataFrame, sensors: list[str]) -> pd.DataFrame:
    out = df[["ts", *sensors]].copy()
    out.insert(1, "line", "L1")
    out.insert(2, "station", "skab")
    out.insert(3, "seq", np.arange(len(df)))
    return out


def predict_file(df: pd.DataFrame, settings: dict | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Fit on the first 400 rows, score the rest online; (predicted 0/1 per test row, scored test rows)."""
    cfg = {**SKAB_SETTINGS, **(settings or {})}
    sensors = [c for c in df.columns if c not in ("ts", "anomaly", "changepoint")]
    frame = _as_station_frame(df, sensors)
    train, test = frame.iloc[:TRAIN_ROWS], frame.iloc[TRAIN_ROWS:]
    model = StationModel(sensors=sensors, **cfg).fit(train)
    state = model.new_state(train)  # the train rows are the past context of the first test rows
    scored = model.score(test, state)
    pred = open_mask(scored["is_anomaly"].to_numpy(), model.k, model.n, model.close_after)
    return pred.astype(int), scored


def run_skab(data_dir: str | Path, settings: dict | None = None, files: list[str] | None = None) -> dict:
    """Run the SKAB leaderboard protocol; return our figures, the published ones and a printable table.

    ``files`` (e.g. ``["valve1/0.csv"]``) restricts the run to a subset (for tests); the published figures
    are for all 34 files.
    """
    y_true, y_pred, cp_files = [], [], []
    paths = skab_files(data_dir)
    if files is not None:
        paths = [p for p in paths if f"{p.parent.name}/{p.name}" in set(files)]
        if len(paths) != len(set(files)):
            raise CellwatchError(f"SKAB files not found under {data_dir}: {sorted(files)}")
    for path in paths:
        df = read_skab(path)
        pred, _ = predict_file(df, settings)
        test = df.iloc[TRAIN_ROWS:]
        y_true.append(test["anomaly"].to_numpy().astype(int))
        y_pred.append(pred)
        cp_files.append((test["ts"], test["changepoint"].to_numpy().astype(int), skab_changepoints(pred)))
    outlier = skab_outlier_metrics(y_true, y_pred)
    nab = skab_nab_score(cp_files)
    ours = {"f1": round(outlier["f1"], 4), "far": round(outlier["far"], 2), "mar": round(outlier["mar"], 2),
            "nab_standard": nab["standard"]["score"], "nab_low_fp": nab["low_fp"]["score"],
            "nab_low_fn": nab["low_fn"]["score"], "missed_cps": nab["standard"]["missed"],
            "fps": nab["standard"]["fps"], "files": len(y_true),
            "test_rows": int(sum(len(y) for y in y_true)), "changepoints": int(sum(c[1].sum() for c in cp_files))}
    best_f1 = max(PUBLISHED_OUTLIER.items(), key=lambda kv: (kv[1][0], -kv[1][1]))
    best_nab = max(PUBLISHED_CHANGEPOINT.items(), key=lambda kv: kv[1][0])
    return {"dataset": "skab", "settings": {**SKAB_SETTINGS, **(settings or {})}, "ours": ours,
            "published": {"outlier": PUBLISHED_OUTLIER, "changepoint": PUBLISHED_CHANGEPOINT,
                          "best_outlier": best_f1[0], "best_changepoint": best_nab[0]},
            "target": {"f1_above": 0.78, "far_at_most": 13.6},
            "table": skab_table(ours)}


def skab_table(ours: dict) -> str:
    """Comparison tables (outlier and changepoint) with our row first."""
    lines = ["SKAB outlier detection (test parts, micro)", f"{'Algorithm':<28}{'F1':>6}{'FAR %':>9}{'MAR %':>9}",
             f"{'cellwatch StationModel':<28}{ours['f1']:>6.2f}{ours['far']:>9.2f}{ours['mar']:>9.2f}"]
    lines += [f"{name:<28}{f1:>6.2f}{far:>9.2f}{mar:>9.2f}" for name, (f1, far, mar) in PUBLISHED_OUTLIER.items()]
    lines += ["", "SKAB changepoint detection (NAB, 60 s right window)",
              f"{'Algorithm':<28}{'Std':>8}{'LowFP':>8}{'LowFN':>8}{'Missed':>8}{'FPs':>6}",
              f"{'cellwatch StationModel':<28}{ours['nab_standard']:>8.2f}{ours['nab_low_fp']:>8.2f}"
              f"{ours['nab_low_fn']:>8.2f}{ours['missed_cps']:>8}{ours['fps']:>6}"]
    lines += [f"{name:<28}{s:>8.2f}{lfp:>8.2f}{lfn:>8.2f}{m:>8}{f:>6}"
              for name, (s, lfp, lfn, m, f) in PUBLISHED_CHANGEPOINT.items()]
    return "\n".join(lines)
