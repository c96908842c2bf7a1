"""Simulator benchmark: train on one simulated dataset, evaluate on another (different seed).

Targets: incident recall >= 0.98 over the detectable faults with <= 1 false incident per station per shift,
and defect ROC-AUC >= 0.95. Both datasets come from :func:`cellwatch.simulators.simulate.simulate` and go
through the same files, ``train_models`` and ``evaluate`` as the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cellwatch.detect.evaluate import evaluate
from cellwatch.detect.incidents import SEVERE_RULE
from cellwatch.detect.train import CHANGEOVER_MARGIN, INCIDENT_RULE, train_models
from cellwatch.simulators.faults import FAULT_TYPES
from cellwatch.simulators.files import write_parquet
from cellwatch.simulators.simulate import simulate

TARGETS = {"incident_recall": 0.98, "false_incidents_per_station_shift": 1.0, "defect_roc_auc": 0.95}

#: How each setting of the anomaly side was chosen (none on the test seed's data); written to results.json.
CHOICES = {
    "threshold": "per station model: alert budget 1 false incident per stream per 8 h on the last 25 % of each "
                 "line of the training run (held out of fitting)",
    "restart_warmup": "profile per station model learnt from the clean training rows after stops/changeovers "
                      "(detect/warmup.py); bins, horizon (60 min) and taper fixed a priori",
    "incident_rule": f"k/n/close_after = {INCIDENT_RULE['k']}/{INCIDENT_RULE['n']}/{INCIDENT_RULE['close_after']}, "
                     "chosen on simulator seeds 303, 404, 505 (8 h x 2 lines each) among 3/5/10..240, 4/8/60..120, "
                     "5/10/120, with models trained on the training run",
    "severity_path": f"{SEVERE_RULE['severe_m']} readings with anomaly_score >= {SEVERE_RULE['severe_score']:g} "
                     f"(p <= 1e-6) within {SEVERE_RULE['severe_n']} readings of a stream open an incident; chosen on "
                     "seeds 303..909 (false incidents) and spike-only seeds 1111/1212/1313 (62 spike faults) among "
                     "score >= 1 once / twice within 300, 600, 1200 readings and top_sensors-contribution rules",
    "changeover_exclusion": f"training leaves out the readings inside recipe changeovers +- "
                            f"{CHANGEOVER_MARGIN.total_seconds() / 60:g} min (was 2 min), chosen on seeds 303..909 "
                            "among 2 min / 0 / 2 min before only / none",
    "exposure": "false incidents per station-shift: station-shifts = summed operating hours of the (line, station) "
                "streams (first to last reading + one time step) / 8 h",
}

#: The training simulation covers this many times the test hours (default fault rate): a model is trained on
#: more history than one test run, and at 8 h x 2 lines one run often lacks a fault type (train seed 101 at
#: 8 h has no tool wear, the test seed's largest defect source). Missing types are reported in the result.
TRAIN_HOURS_FACTOR = 2.0


def missing_fault_types(faults) -> list[str]:
    """Known fault types absent from a ground-truth faults frame."""
    seen = set(faults["type"].astype(str)) if len(faults) else set()
    return [t for t in FAULT_TYPES if t not in seen]


def _simulated(directory: Path, hours: float, lines: int, seed: int) -> Path:
    if not (directory / "readings.parquet").is_file():
        write_parquet(simulate(hours=hours, lines=lines, seed=seed), directory)
    return directory


def run_simulator(work_dir: str | Path, report_dir: str | Path, hours: float = 24.0, lines: int = 2,
                  train_seed: int = 101, test_seed: int = 202, progress: bool = True,
                  train_hours: float | None = None) -> dict:
    """Simulate (or reuse) the train (``train_hours``, default ``TRAIN_HOURS_FACTOR`` x ``hours``) and test
    datasets under ``work_dir``, train, evaluate, compare."""
    work, report = Path(work_dir), Path(report_dir)
    train_hours = TRAIN_HOURS_FACTOR * hours if train_hours is None else train_hours
    train_dir = _simulated(work / f"train_seed{train_seed}_{train_hours:g}h_{lines}l", train_hours, lines, train_seed)
    untrained = missing_fault_types(pd.read_parquet(train_dir / "faults.parquet", columns=["type"]))
    test_dir = _simulated(work / f"test_seed{test_seed}_{hours:g}h_{lines}l", hours, lines, test_seed)
    models = work / "models"
    summary = train_models(train_dir, models, promote=True, progress=progress)
    m = evaluate(test_dir, models, report / "evaluation", progress=progress)
    e, d = m["events"], m["defect"]
    auc = d.get("all_stages", {}).get("roc_auc", float("nan"))
    ours = {"incident_recall": e["recall"], "false_incidents_per_station_shift": e["false_incidents_per_station_shift"],
            "defect_roc_auc": auc, "defect_roc_auc_latest_stage": d.get("latest_stage", {}).get("roc_auc"),
            "defect_roc_auc_by_stage": {k: v["roc_auc"] for k, v in d.get("by_stage", {}).items()},
            "false_incidents_per_station_shift_strict": e.get("false_incidents_per_station_shift_strict"),
            "station_shifts": e.get("station_shifts"),
            "false_incidents_per_station_shift_run_span": e.get("false_incidents_per_station_shift_run_span"),
            "false_incidents": e.get("false_alarms"), "downstream_incidents": e.get("downstream_incidents"),
            "false_incidents_after_restart": e.get("false_alarms_after_restart"),
            "median_detection_delay_s": e["median_delay_s"], "faults": e["faults"], "detected": e["detected"],
            "missed": e.get("missed", []),
            "fault_types_absent_from_training": untrained, "recall_by_type": e.get("by_type", {}),
            "points": m["points"]}
    met = {"incident_recall": ours["incident_recall"] >= TARGETS["incident_recall"],
           "false_incidents_per_station_shift": ours["false_incidents_per_station_shift"]
           <= TARGETS["false_incidents_per_station_shift"],
           "defect_roc_auc": auc >= TARGETS["defect_roc_auc"]}
    rows = [("incident recall (detectable faults)", ours["incident_recall"], ">= 0.98", met["incident_recall"]),
            ("false incidents / station / shift", ours["false_incidents_per_station_shift"], "<= 1",
             met["false_incidents_per_station_shift"]),
            ("defect ROC-AUC (all stage rows)", auc, ">= 0.95", met["defect_roc_auc"])]
    table = [f"simulator: train seed {train_seed} ({train_hours:g} h), test seed {test_seed} ({hours:g} h), "
             f"{lines} lines each; fault types absent from training: {', '.join(untrained) or 'none'}",
             f"{'figure':<40}{'ours':>10}{'target':>10}  met"]
    table += [f"{name:<40}{value:>10.3f}{target:>10}  {'yes' if ok else 'NO'}" for name, value, target, ok in rows]
    table.append("defect ROC-AUC by stage: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                        ours["defect_roc_auc_by_stage"].items()))
    table.append(f"false incidents: {ours['false_incidents']} in {ours['station_shifts']:.2f} station-shifts (strict "
                 f"{ours['false_incidents_per_station_shift_strict']:.3f}; per run-span exposure "
                 f"{ours['false_incidents_per_station_shift_run_span']:.3f})")
    table.append(f"median detection delay {ours['median_detection_delay_s']:.0f} s; missed faults: "
                 + (", ".join(f"{x['fault_id']} ({x['type']} @ {x['station']})" for x in ours["missed"]) or "none"))
    return {"dataset": "simulator", "ours": ours, "targets": TARGETS, "met": met, "choices": CHOICES, "train": summary,
            "evaluation_report": str(report / "evaluation" / "index.html"), "table": "\n".join(table)}
