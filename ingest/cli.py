"""Commands of the streaming room: ``cellwatch run`` (the Kafka service) and ``cellwatch demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from cellwatch.config import add_arguments, load_settings
from cellwatch.logs import setup_logging

RUN_HELP = """\
Consume readings and EOL cell results from Kafka, score them with the production model, and write
scores, incidents, cell predictions and dead letters to PostgreSQL (and the output topics).
Offsets are committed only after the database and the output topics hold a batch.

Every setting below can also come from a TOML/YAML file (--config, key = the setting name) or from
the environment (CELLWATCH_<NAME>); precedence: file < environment < flags. Secrets (database password,
Kafka SASL password, Grafana token) come only from the environment or from *_FILE files.
"""

DEMO_HELP = """\
Run the whole system on this machine with nothing else installed: train models on a simulated line
(or load them from --models), stream a simulation with faults through the same pipeline core, store
the results in SQLite, show a live terminal view, and end with an HTML report.
With --kafka and --database-url the same runs through Kafka and PostgreSQL.
"""


def _run(args: argparse.Namespace) -> int:
    from cellwatch.ingest.consumer import run_service

    settings = load_settings(args)
    setup_logging(settings.log_level, settings.log_json)
    run_service(settings)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cellwatch.ingest.demo import DemoOptions, run_demo

    setup_logging("DEBUG" if args.verbose >= 2 else ("INFO" if args.verbose else "WARNING"), False)
    opts = DemoOptions(out=Path(args.out), models=Path(args.models) if args.models else None,
                       hours=args.hours, lines=args.lines, train_hours=args.train_hours, seed=args.seed,
                       batch=args.batch, live=not args.no_live, kafka=args.kafka, database_url=args.database_url,
                       speed=args.speed, faults_per_shift=args.faults_per_shift)
    run_demo(opts)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="the streaming service: Kafka -> scoring -> PostgreSQL", allow_abbrev=False,
                         description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(run)
    run.set_defaults(func=_run)

    demo = sub.add_parser("demo", help="everything on one machine: simulate, score, SQLite, live view, report",
                          description=DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", default="demo-out", help="folder for the SQLite store, models and report "
                      "(default: demo-out)")
    demo.add_argument("--models", default=None, help="use the models in this registry instead of training")
    demo.add_argument("--hours", type=float, default=2.0, help="simulated hours to stream (default: 2)")
    demo.add_argument("--train-hours", type=float, default=4.0, help="simulated hours to train on (default: 4)")
    demo.add_argument("--lines", type=int, default=1, help="production lines (default: 1)")
    demo.add_argument("--seed", type=int, default=42, help="simulation seed (default: 42)")
    demo.add_argument("--faults-per-shift", type=float, default=20.0,
                      help="faults injected per line and 8 h shift in the streamed run (default: 20)")
    demo.add_argument("--batch", type=int, default=2000, help="readings per micro-batch (default: 2000)")
    demo.add_argument("--speed", type=float, default=0.0,
                      help="replay speed (simulated seconds per wall second; 0 = as fast as possible)")
    demo.add_argument("--no-live", action="store_true", help="no live terminal view (plain progress lines)")
    demo.add_argument("--kafka", default=None, metavar="HOST:PORT",
                      help="go through this Kafka broker (simulator -> Kafka -> consumer loop)")
    demo.add_argument("--database-url", default=None, help="with --kafka: store results in this PostgreSQL")
    demo.set_defaults(func=_demo)
