"""NAB benchmark on the shared 51-file subset: online scoring, NAB normalised score for the three profiles.

Default detector (``detector="context_novelty"``): per file, a
:class:`~cellwatch.detect.univariate.ContextNoveltyDetector` is fitted on the probationary period (the first
``min(15 % of rows, 750)`` rows, which NAB does not score) and scores every later row online (row ``i`` uses rows
``<= i`` only). Its scores already contain the suppression after a detection, independent of the threshold, so a
detection is ``score >= theta`` exactly as NAB prescribes, and ``theta`` is tuned per profile on the whole corpus
by an exact sweep over every distinct score (NAB's optimiser). Every other setting (:data:`NAB_SETTINGS`) was
chosen on a declared split of files, never on the held-out part: :data:`SPLIT_RULE` (choice files = the artificial
files and the odd-indexed real files in sorted order; held-out = the even-indexed real files). The report gives
the score on all files, on the choice files and on the held-out files (with the threshold tuned on the choice
files, and with the corpus threshold).

Baseline (``detector="station_model"``, last session's figure): the multivariate :class:`StationModel` on the one
sensor, refitted every ``refit_every`` rows, with a refractory period after each detection that depends on the
threshold (so its thresholds are a grid, not a sweep).

The scorer is checked on every run against the published per-file scores: our null detector must reproduce the
published null score of every file and profile, and a perfect detector must score 100 (``scorer_checks``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cellwatch.detect.metrics_events import (
    NAB_PROFILES,
    _sigma,
    nab_file_score,
    nab_normalised,
    nab_probation,
    nab_window_rows,
)
from cellwatch.detect.station_model import StationModel
from cellwatch.detect.univariate import ContextNoveltyDetector
from cellwatch.errors import CellwatchError

# ContextNoveltyDetector settings, chosen on the choice files only (see CHOICES); NAB's probation fits it.
NAB_SETTINGS = {"detector": "context_novelty", "n_bins": (10.0, 40.0), "n_grids": 5, "max_order": 8, "short": 10,
                "long": 2000, "z_scale": 30.0, "seq_cap": 0.5, "gap_scale": 0.5, "suppress": None,
                "season_acf": 0.5, "season_div": 12, "season_scale": 16.0}
# last session's StationModel baseline (fixed a priori then)
STATION_SETTINGS = {"detector": "station_model", "window": 10, "refit_every": 1000, "max_fit_rows": 5000,
                    "refractory": 100, "score_decades": 6.0}
THETA_GRID = np.round(np.linspace(0.05, 1.0, 96), 4)
SPLIT_RULE = ("choice files = artificialNoAnomaly + artificialWithAnomaly + the odd-indexed (1, 3, ...) real files "
              "in sorted path order; held-out = the even-indexed (0, 2, ...) real files")
# how every setting was chosen: each step compared variants by the normalised score on the choice files only
# (31 files, 55 windows; threshold tuned on them per variant); the held-out files were not looked at
CHOICES = {
    "detector family": "value-bin context novelty (CAD OSE-like) beat robust-z + Numenta likelihood on the choice "
                       "files (63.5 vs 31.0 standard, single grid)",
    "n_bins (single grid)": "grid {10, 20, 40}: 20 best",
    "max_order, short, long, z_scale": "K {4, 8} x short {3, 10} x long {500, 2000} x z_scale {10, 30}: "
                                       "(8, 10, 2000, 30) best",
    "gap_scale, seq_cap": "{0 (binary), 0.5, 2} x {0.5, 0.999} (and later seq_cap {0.4, 0.5, 0.6} x gap_scale "
                          "{0.5, 1}): (0.5, 0.5) best",
    "bin range": "training min/max; 1 %/99 % quantiles and an asinh-compressed scale were worse",
    "n_bins, n_grids": "5 grids, 10..40 bins geometric, golden-ratio offsets (standard 73.0 vs 71.3 for one grid "
                       "of 20; 3 grids 73.5, 8 grids 72.0, 12 grids 71.6: all grids >= 3 beat one grid on the low-FP "
                       "profile); 5 chosen as the middle of that plateau",
    "suppress": "a fifth of the training rows (CAD OSE's rest period = probation / 5), compared with probation "
                "/ {3, 4, 7, 10, 20} and 30/50/75/100/150/200 rows: /3../7 all 74.0-75.4, fixed rows <= 73.2",
    "not used": "relative-excess value scores, a 'quiet before' bonus, increment-over-recent-max suppression, "
                "an hour-of-day context, value novelty of a rolling mean (6/12/24 rows) or rolling std or of the "
                "first differences, adding instead of maxing the two parts, a margin on the new-peak rule, a "
                "prediction-error part (1 - P(bin | longest supported context)) through Numenta's likelihood "
                "(+0.15 at best): none improved the choice files enough to keep",
    "seasonal part (third session)": "added: choice files 74.90 -> 76.86 standard (70.08 low FP, 81.54 low FN); "
                                     "season_acf {0.2, 0.3, 0.4, 0.5, 0.6} x min lag {4, 12, 24} x season_scale "
                                     "{12, 16, 24} x season_div {12, 24}: plateau 76.76-76.87 at acf 0.4-0.5 and "
                                     "scale 12-16, chosen 0.5 / 16 / 12; autocorrelation of ranks worse (75.5); "
                                     "the two-season echo guard scores the same (76.86) and is kept; seq_cap "
                                     "re-checked {0.4, 0.5, 0.6, 0.7}: 76.98 / 76.86 / 76.19 / 75.49, 0.5 kept",
    "threshold": "tuned per profile on the scored files by NAB's exact sweep (allowed by the protocol)",
    "tried_third_session": "second detectors combined with the raw ContextNovelty score by max, then the same "
                           "suppression and threshold sweep (choice files, standard; default 74.90): a forecast "
                           "residual (|x - trailing median of 5/20/100 rows| / MAD) through a burst-z likelihood "
                           "(scale 15-60, cap 0.5/0.7: 64.6-74.9), a record-breaking nearest-neighbour distance of "
                           "6/12-row windows (raw or shape: 73.9-74.9), ContextNovelty on 6/12-row block means "
                           "(72.4-74.9); value novelty discounted by the stream's own new-bin rate (first-visit "
                           "share: 73.8-75.8 over 12 settings, noisy; Good-Turing N1/N: 69.7-74.4): none kept",
}


def split_files(names: list[str]) -> tuple[list[str], list[str]]:
    """The declared split: (choice files, held-out files). See :data:`SPLIT_RULE`."""
    names = sorted(names)
    real = [n for n in names if not n.startswith("artificial")]
    return [n for n in names if n.startswith("artificial")] + real[1::2], real[0::2]


def nab_files(data_dir: str | Path) -> tuple[Path, dict[str, list]]:
    root = Path(data_dir)
    wfile = root / "labels" / "combined_windows.json"
    if not wfile.is_file():
        raise CellwatchError(f"no NAB labels at {wfile}")
    windows = json.loads(wfile.read_text())
    missing = [f for f in windows if not (root / "data" / f).is_file()]
    if missing:
        raise CellwatchError(f"NAB data files missing under {root / 'data'}: {missing[:3]}")
    return root, windows


def _frame(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"ts": pd.to_datetime(df["timestamp"], utc=True), "line": "L1", "station": "nab",
                         "seq": np.arange(len(df)), "value": df["value"].astype("float64")})


def score_context_novelty(values: np.ndarray, settings: dict | None = None) -> np.ndarray:
    """Online scores of one series: fit on the probationary rows, score the rest (probation rows get 0)."""
    cfg = {**NAB_SETTINGS, **(settings or {})}
    params = {k: v for k, v in cfg.items() if k != "detector"}
    params["n_bins"] = tuple(params["n_bins"])
    start = nab_probation(values.size)
    model = ContextNoveltyDetector(**params).fit(values[:start])
    scores = np.zeros(values.size)
    scores[start:] = model.decision_function(values[start:])
    return scores


def score_series(df: pd.DataFrame, settings: dict | None = None) -> np.ndarray:
    """Baseline: online StationModel scores for one NAB series (0 in the probationary period)."""
    cfg = {**STATION_SETTINGS, **(settings or {})}
    frame = _frame(df)
    n = len(frame)
    start = nab_probation(n)
    scores = np.zeros(n)
    model = state = None
    pos = start
    while pos < n:
        lo = max(0, pos - cfg["max_fit_rows"])
        past = frame.iloc[lo:pos]
        try:
            model = StationModel(sensors=["value"], window=cfg["window"], min_stuck=max(10, cfg["window"]),
                                 score_decades=cfg["score_decades"]).fit(past)
            state = model.new_state(past)
        except ValueError:
            if model is None:
                raise
        end = min(n, pos + cfg["refit_every"])
        scores[pos:end] = model.score(frame.iloc[pos:end], state)["anomaly_score"].to_numpy()
        pos = end
    return scores


def detections(scores: np.ndarray, theta: float, refractory: int) -> np.ndarray:
    """``scores >= theta`` with a refractory period after each detection (online)."""
    above = np.flatnonzero(scores >= theta)
    out = np.zeros(scores.size, dtype=bool)
    j = 0
    while j < above.size:  # one step per detection: jump past the refractory period
        i = above[j]
        out[i] = True
        j = int(np.searchsorted(above, i + refractory + 1))
    return out


def published_anchors(root: Path, windows: dict[str, list]) -> dict[str, dict[str, float]]:
    """Published detectors re-normalised on the files of ``windows`` (README section 6.3, per-file raw scores)."""
    df = pd.read_csv(root / "published_per_file_scores.csv", keep_default_na=False)
    df = df[df["File"].isin(list(windows))]
    n_windows = sum(len(w) for w in windows.values())
    out: dict[str, dict[str, float]] = {}
    for (det, prof), g in df.groupby(["Detector", "Profile"]):
        null = df[(df["Detector"] == "null") & (df["Profile"] == prof)]
        s_null = null["Score"].astype(float).sum()
        tp_w = NAB_PROFILES[prof][0]
        val = 100 * (g["Score"].astype(float).sum() - s_null) / (tp_w * n_windows - s_null)
        out.setdefault(det, {})[prof] = round(float(val), 2)
    return out


def nab_sweep(scores: np.ndarray, windows: list[tuple[int, int]], probation: int,
              profile: tuple[float, float, float], thetas: np.ndarray) -> np.ndarray:
    """Raw NAB score of one file for every threshold in ``thetas`` at once (detection = ``score >= theta``).

    Same rules as :func:`nab_file_score` (README 6.3, upstream ``sweeper.py``): the earliest detection of a
    window scores ``tp_w * sigma(y) / sigma(-1)``, a window without one ``-fn_w``, every detection outside the
    windows ``fp_w * sigma(d)`` (``-fp_w`` when ``d >= 3`` or no window precedes it); probation rows ignored."""
    tp_w, fp_w, fn_w = profile
    scores = np.asarray(scores, dtype=float)
    thetas = np.asarray(thetas, dtype=float)
    n = scores.size
    total = np.zeros(thetas.size)
    inside = np.zeros(n, dtype=bool)
    prev_end = np.full(n, -1)
    prev_width = np.ones(n)
    for k, (lo, hi) in enumerate(windows):
        inside[lo:hi + 1] = True
        width = hi - lo + 1
        rows = np.arange(max(lo, probation), hi + 1)
        if rows.size:
            value = tp_w * _sigma(-(hi - rows + 1) / width) / _sigma(-1.0)
            running_max = np.maximum.accumulate(scores[rows])  # first row reaching theta = first running max >= theta
            first = np.searchsorted(running_max, thetas, side="left")
            total += np.where(first < rows.size, value[np.minimum(first, rows.size - 1)], -fn_w)
        else:
            total -= fn_w
        nxt = windows[k + 1][0] if k + 1 < len(windows) else n
        prev_end[hi + 1:nxt] = hi
        prev_width[hi + 1:nxt] = width
    out = np.flatnonzero(~inside)
    out = out[out >= probation]
    d = np.where(prev_end[out] < 0, 3.0, np.abs(out - prev_end[out]) / np.maximum(prev_width[out] - 1, 1e-12))
    penalty = fp_w * np.where(d >= 3.0, -1.0, _sigma(np.minimum(d, 3.0)))
    order = np.argsort(-scores[out], kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(penalty[order])])
    count = np.searchsorted(-scores[out][order], -thetas, side="right")  # detections with score >= theta
    return total + cum[count]


def scorer_checks(root: Path, windows: dict[str, list], names: list[str]) -> dict:
    """Our scorer against the published per-file scores: the null detector per file and profile, the perfect one."""
    pub = pd.read_csv(root / "published_per_file_scores.csv", keep_default_na=False)
    pub = pub[pub["Detector"] == "null"].set_index(["File", "Profile"])["Score"].astype(float)
    worst, compared, perfect = 0.0, 0, {}
    for prof, weights in NAB_PROFILES.items():
        raw_perfect = n_windows = 0.0
        for name in names:
            ts = pd.read_csv(root / "data" / name, usecols=["timestamp"])["timestamp"]
            n = len(ts)
            rows = nab_window_rows(pd.to_datetime(ts), windows[name])
            p = nab_probation(n)
            if (name, prof) in pub.index:
                worst = max(worst, abs(nab_file_score(np.zeros(n, bool), rows, weights, p) - pub[(name, prof)]))
                compared += 1
            hit = np.zeros(n, bool)
            hit[[lo for lo, _ in rows]] = True
            raw_perfect += nab_file_score(hit, rows, weights, p)
            n_windows += len(rows)
        perfect[prof] = round(nab_normalised(raw_perfect, int(n_windows), weights), 6)
    return {"null_vs_published_max_abs_diff": worst, "null_files_profiles_compared": compared,
            "perfect_detector": perfect}


def _normalised(per_file: dict, names: list[str], weights: tuple, thetas: np.ndarray, refractory: int | None
                ) -> np.ndarray:
    """Normalised score of ``names`` for every threshold (refractory: the baseline's threshold-dependent rule)."""
    raw = np.zeros(thetas.size)
    for name in names:
        s, rows, p = per_file[name]
        if refractory is None:
            raw += nab_sweep(s, rows, p, weights, thetas)
        else:
            raw += np.array([nab_file_score(detections(s, t, refractory), rows, weights, p) for t in thetas])
    n_windows = sum(len(per_file[n][1]) for n in names)
    return np.array([nab_normalised(r, n_windows, weights) for r in raw])


def _candidates(per_file: dict, names: list[str], refractory: int | None) -> np.ndarray:
    if refractory is not None:
        return THETA_GRID
    s = np.concatenate([per_file[n][0] for n in names])
    return np.unique(np.concatenate([s[s > 0], [np.nextafter(1.0, 2.0)]]))  # every distinct score, and "never"


def _tuned(per_file: dict, names: list[str], refractory: int | None) -> dict:
    out = {}
    thetas = _candidates(per_file, names, refractory)
    for prof, weights in NAB_PROFILES.items():
        vals = _normalised(per_file, names, weights, thetas, refractory)
        best = int(np.argmax(vals))
        out[prof] = {"score": round(float(vals[best]), 2), "threshold": float(thetas[best])}
    return out


def _at(per_file: dict, names: list[str], thresholds: dict, refractory: int | None) -> dict:
    return {prof: round(float(_normalised(per_file, names, w, np.array([thresholds[prof]["threshold"]]),
                                          refractory)[0]), 2) for prof, w in NAB_PROFILES.items()}


def _counts(per_file: dict, names: list[str], theta: float, refractory: int | None) -> dict:
    found = windows = fps = 0
    for name in names:
        s, rows, p = per_file[name]
        det = detections(s, theta, refractory) if refractory is not None else s >= theta
        idx = np.flatnonzero(det)
        idx = idx[idx >= p]
        inside = np.zeros(s.size, bool)
        for lo, hi in rows:
            inside[lo:hi + 1] = True
            found += bool(((idx >= lo) & (idx <= hi)).any())
        windows += len(rows)
        fps += int((~inside[idx]).sum())
    return {"windows_detected": found, "windows": windows, "false_detections": fps}


def run_nab(data_dir: str | Path, settings: dict | None = None, files: list[str] | None = None) -> dict:
    """Score the corpus online, tune one threshold per profile, report all / choice / held-out files and anchors."""
    t0 = time.perf_counter()
    baseline = (settings or {}).get("detector") == "station_model"
    cfg = {**(STATION_SETTINGS if baseline else NAB_SETTINGS), **(settings or {})}
    root, windows = nab_files(data_dir)
    names = sorted(windows) if files is None else sorted(files)
    unknown = [n for n in names if n not in windows]
    if unknown:
        raise CellwatchError(f"not NAB files of {root}: {unknown[:3]}")
    per_file = {}
    for name in names:
        df = pd.read_csv(root / "data" / name)
        scores = score_series(df, cfg) if baseline else score_context_novelty(df["value"].to_numpy(float), cfg)
        per_file[name] = (scores, nab_window_rows(pd.to_datetime(df["timestamp"]), windows[name]),
                          nab_probation(len(df)))
    refractory = cfg["refractory"] if baseline else None
    ours = _tuned(per_file, names, refractory)
    ours["counts_at_standard_threshold"] = _counts(per_file, names, ours["standard"]["threshold"], refractory)
    choice, held = split_files(names)
    split: dict = {"rule": SPLIT_RULE, "choice_files": len(choice), "held_out_files": len(held)}
    if choice and held:
        on_choice = _tuned(per_file, choice, refractory)
        split["choice"] = on_choice
        split["held_out_threshold_from_choice"] = _at(per_file, held, on_choice, refractory)
        split["held_out_corpus_threshold"] = _at(per_file, held, ours, refractory)
        split["published_on_held_out"] = published_anchors(root, {n: windows[n] for n in held})
        split["published_on_choice"] = published_anchors(root, {n: windows[n] for n in choice})
    published = published_anchors(root, {n: windows[n] for n in names})
    label = "cellwatch StationModel" if baseline else "cellwatch ContextNovelty"
    return {"dataset": "nab", "files": len(names), "windows": sum(len(v[1]) for v in per_file.values()),
            "detector": label, "settings": cfg, "choices": {} if baseline else CHOICES, "ours": ours,
            "split": split, "published": published, "target": {"standard_above": 77.0},
            "scorer_checks": scorer_checks(root, windows, names),
            "elapsed_s": round(time.perf_counter() - t0, 1), "load_average": list(os.getloadavg()),
            "table": nab_table(ours, published, label, split)}


def nab_table(ours: dict, published: dict, label: str = "cellwatch", split: dict | None = None) -> str:
    profs = list(NAB_PROFILES)
    nan = float("nan")

    def row(name: str, v: dict) -> str:
        return f"{name:<30}" + "".join(f"{v.get(p, nan):>10.2f}" for p in profs)

    lines = ["NAB normalised score (the scored files; published detectors re-normalised on the same files)",
             f"{'Detector':<30}{'Standard':>10}{'LowFP':>10}{'LowFN':>10}",
             row(label, {p: ours[p]["score"] for p in profs})]
    lines += [row(det, v) for det, v in sorted(published.items(), key=lambda kv: -kv[1].get("standard", -1e9))]
    lines.append("thresholds (ours, corpus-tuned): " + ", ".join(f"{p} {ours[p]['threshold']:.4g}" for p in profs))
    if split and "choice" in split:
        best = max(split["published_on_held_out"].items(), key=lambda kv: kv[1].get("standard", -1e9))
        lines.append(f"held-out files ({split['held_out_files']}): ours with the choice-file threshold "
                     + " / ".join(f"{split['held_out_threshold_from_choice'][p]:.2f}" for p in profs)
                     + ", with the corpus threshold "
                     + " / ".join(f"{split['held_out_corpus_threshold'][p]:.2f}" for p in profs)
                     + f"; best published there: {best[0]} "
                     + " / ".join(f"{best[1].get(p, nan):.2f}" for p in profs))
    return "\n".join(lines)
