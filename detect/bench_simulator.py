"""Simulator benchmark: train on one simulated dataset, evaluate on another (different seed).

Targets: incident recall >= 0.98 over the detectable faults with <= 1 false incident per station per shift,
and defect ROC-AUC >= 0.95. Both datasets come from :func:`cellwatch.simulators.simulate.simulate` and go
through the same files, ``train_models`` and ``evaluate`` as the CLI.
"""

from __future__ import annotations

from pathlib import Path

from cellwatch.detect.evaluate import evaluate
from cellwatch.detect.train import train_models
from cellwatch.simulators.files import write_parquet
from cellwatch.simulators.simulate import simulate

TARGETS = {"incident_recall": 0.98, "false_incidents_per_station_shift": 1.0, "defect_roc_auc": 0.95}


def _simulated(directory: Path, hours: float, lines: int, seed: int) -> Path:
    if not (directory / "readings.parquet").is_file():
        write_parquet(simulate(hours=hours, lines=lines, seed=seed), directory)
    return directory


def run_simulator(work_dir: str | Path, report_dir: str | Path, hours: float = 24.0, lines: int = 2,
                  train_seed: int = 101, test_seed: int = 202, progress: bool = True) -> dict:
    """Simulate (or reuse) the train and test datasets under ``work_dir``, train, evaluate, compare."""
    work, report = Path(work_dir), Path(report_dir)
    train_dir = _simulated(work / f"train_seed{train_seed}_{hours:g}h_{lines}l", hours, lines, train_seed)
    test_dir = _simulated(work / f"test_seed{test_seed}_{hours:g}h_{lines}l", hours, lines, test_seed)
    models = work / "models"
    summary = train_models(train_dir, models, promote=True, progress=progress)
    m = evaluate(test_dir, models, report / "evaluation", progress=progress)
    e, d = m["events"], m["defect"]
    auc = d.get("all_stages", {}).get("roc_auc", float("nan"))
    ours = {"incident_recall": e["recall"], "false_incidents_per_station_shift": e["false_incidents_per_station_shift"],
            "defect_roc_auc": auc, "defect_roc_auc_latest_stage": d.get("latest_stage", {}).get("roc_auc"),
            "defect_roc_auc_by_stage": {k: v["roc_auc"] for k, v in d.get("by_stage", {}).items()},
            "median_detection_delay_s": e["median_delay_s"], "faults": e["faults"], "detected": e["detected"],
            "missed": e.get("missed", []), "recall_by_type": e.get("by_type", {}), "points": m["points"]}
    met = {"incident_recall": ours["incident_recall"] >= TARGETS["incident_recall"],
           "false_incidents_per_station_shift": ours["false_incidents_per_station_shift"]
           <= TARGETS["false_incidents_per_station_shift"],
           "defect_roc_auc": auc >= TARGETS["defect_roc_auc"]}
    rows = [("incident recall (detectable faults)", ours["incident_recall"], ">= 0.98", met["incident_recall"]),
            ("false incidents / station / shift", ours["false_incidents_per_station_shift"], "<= 1",
             met["false_incidents_per_station_shift"]),
            ("defect ROC-AUC (all stage rows)", auc, ">= 0.95", met["defect_roc_auc"])]
    table = [f"simulator: train seed {train_seed}, test seed {test_seed}, {hours:g} h x {lines} lines each",
             f"{'figure':<40}{'ours':>10}{'target':>10}  met"]
    table += [f"{name:<40}{value:>10.3f}{target:>10}  {'yes' if ok else 'NO'}" for name, value, target, ok in rows]
    table.append("defect ROC-AUC by stage: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                        ours["defect_roc_auc_by_stage"].items()))
    table.append(f"median detection delay {ours['median_detection_delay_s']:.0f} s; missed faults: "
                 + (", ".join(f"{x['fault_id']} ({x['type']} @ {x['station']})" for x in ours["missed"]) or "none"))
    return {"dataset": "simulator", "ours": ours, "targets": TARGETS, "met": met, "train": summary,
            "evaluation_report": str(report / "evaluation" / "index.html"), "table": "\n".join(table)}
