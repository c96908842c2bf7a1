"""``cellwatch train | evaluate | models | benchmark``: the offline model workflow."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cellwatch.errors import CellwatchError

DEFAULT_MODELS = "models"
BENCHMARKS = ("skab", "nab", "secom", "simulator")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the station detectors and the defect model into the registry",
                       description="Train station anomaly detectors and the LightGBM defect model from simulator-"
                                   "format data (readings/cells/faults.parquet) and register new versions.")
    p.add_argument("--data", required=True, help="dataset directory (written by `cellwatch simulate --out`)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="model registry directory (default: %(default)s)")
    p.add_argument("--promote", action="store_true",
                   help="put the new versions into production (the first versions always are)")
    p.add_argument("--alert-budget", type=float, default=1.0,
                   help="false incidents allowed per station per shift on clean validation data (default: 1)")
    p.add_argument("--missed-defect-cost", type=float, default=20.0,
                   help="cost of a defective cell that is not flagged, in inspections (default: 20)")
    p.add_argument("--inspection-cost", type=float, default=1.0, help="cost of inspecting a flagged cell")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="backtest the production models on held-out data; metrics, plots, HTML",
                       description="Run the production LineScorer over held-out simulator data and report "
                                   "event-level, point-level and defect metrics with plots (PNG + index.html).")
    p.add_argument("--data", required=True, help="held-out dataset directory (e.g. another seed)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="model registry directory (default: %(default)s)")
    p.add_argument("--report", required=True, help="output directory for metrics.json, PNGs and index.html")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("models", help="list, show, promote or roll back registered models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    for name, helptext in (("list", "list every registered version"), ("show", "print a version's metadata"),
                           ("promote", "put a version into production"),
                           ("rollback", "return to the previous production version")):
        q = msub.add_parser(name, help=helptext)
        q.add_argument("--models", default=DEFAULT_MODELS, help="model registry directory (default: %(default)s)")
        if name in ("list", "show", "promote", "rollback"):
            q.add_argument("name", nargs="?" if name in ("list", "show") else None,
                           help="model name (stations | defect)")
        if name in ("show", "promote"):
            q.add_argument("version", nargs="?" if name == "show" else None,
                           help="version (default for show: production)")
        q.set_defaults(func=_models)

    p = sub.add_parser("benchmark", help="run a public or simulated benchmark; print ours beside published figures",
                       description="Benchmarks: skab (tabular detector, 400-row train per file), nab (univariate "
                                   "ContextNoveltyDetector, NAB scoring), secom (LightGBM defect model, "
                                   "leakage-free CV), simulator (train on one simulated dataset, test on another).")
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("--data", help="dataset directory (default: ../shared/datasets/<name>; for simulator: a "
                                  "working directory for the simulated data)")
    p.add_argument("--report", required=True, help="output directory (results.json)")
    p.add_argument("--hours", type=float, default=24.0, help="simulator: hours per simulated dataset")
    p.add_argument("--lines", type=int, default=2, help="simulator: lines per simulated dataset")
    p.set_defaults(func=_benchmark)


def _train(args: argparse.Namespace) -> int:
    from cellwatch.detect.train import train_models

    summary = train_models(args.data, args.models, promote=True if args.promote else None,
                           alert_budget=args.alert_budget, progress=not args.no_progress,
                           defect_params={"missed_defect_cost": args.missed_defect_cost,
                                          "inspection_cost": args.inspection_cost})
    v = summary["defect_validation"]
    print(f"trained on {summary['readings']} readings ({summary['excluded_readings']} excluded as faults) "
          f"in {summary['seconds']} s")
    print(f"  stations v{summary['stations_version']}: {summary['station_models']} station models, "
          f"lot memory {summary['lot_memory']} readings")
    print(f"  defect   v{summary['defect_version']}: {summary['defect_cells']} cells / {summary['defect_rows']} "
          f"stage rows, defect rate {summary['defect_rate']:.3f}; validation ROC-AUC {v['roc_auc']:.3f}, "
          f"PR-AUC {v['pr_auc']:.3f}, threshold {v['threshold']:.3f}")
    prod = summary["production"]
    print(f"  production: stations v{prod['stations']}, defect v{prod['defect']}  ({summary['models_dir']})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cellwatch.detect.evaluate import evaluate

    result = evaluate(args.data, args.models, args.report, progress=not args.no_progress)
    print(result["summary_text"])
    print(f"report: {Path(args.report) / 'index.html'}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from cellwatch.detect.registry import ModelRegistry

    reg = ModelRegistry(args.models)
    if not reg.root.is_dir():
        raise CellwatchError(f"no model registry at {reg.root}")
    action = args.models_command
    if action == "list":
        rows = reg.list(args.name)
        if not rows:
            print(f"no models in {reg.root}")
        for v in rows:
            m = v.metadata
            metric = (m.get("metrics", {}).get("validation", {}) or {}).get("roc_auc")
            extra = f"  val ROC-AUC {metric:.3f}" if isinstance(metric, float) else ""
            if "error" in m:
                extra = f"  UNLOADABLE: {m['error']}"
            print(f"{'*' if v.in_production else ' '} {v.name:<10} v{v.version:<4} {v.created_at or '?':<26}"
                  f"{m.get('data_hash', '')}{extra}")
        return 0
    if action == "show":
        if not args.name:
            raise CellwatchError("models show needs a model NAME (stations | defect)")
        print(json.dumps(reg.metadata(args.name, args.version), indent=2))
        return 0
    if action == "promote":
        reg.promote(args.name, args.version)
        print(f"{args.name}: version {args.version} is in production")
        return 0
    previous = reg.rollback(args.name)
    print(f"{args.name}: rolled back to version {previous}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else Path("..") / "shared" / "datasets" / args.name
    if args.name == "simulator":
        from cellwatch.detect.bench_simulator import run_simulator

        result = run_simulator(data if args.data else report / "data", report, hours=args.hours, lines=args.lines)
    else:
        if not data.is_dir():
            raise CellwatchError(f"dataset directory {data} does not exist (pass --data)")
        if args.name == "skab":
            from cellwatch.detect.bench_skab import run_skab as run
        elif args.name == "nab":
            from cellwatch.detect.bench_nab import run_nab as run
        else:
            from cellwatch.detect.bench_secom import run_secom as run
        result = run(data)
    (report / "results.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(result.get("table") or json.dumps(result.get("ours", result), indent=2, default=str))
    print(f"results: {report / 'results.json'}")
    return 0
