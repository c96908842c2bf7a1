"""The ``cellwatch`` command line: one entry point, a subcommand per job.

Each room registers its own subcommands (``register(subparsers)`` in its ``cli`` module); this file
only wires them together and turns user errors into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cellwatch import __version__
from cellwatch.errors import CellwatchError

#: Modules that add subcommands, in the order they appear in ``cellwatch --help``.
COMMAND_MODULES = (
    "cellwatch.simulators.cli",
    "cellwatch.ingest.cli",
    "cellwatch.dashboards.cli",
    "cellwatch.detect.cli_tabular",
    "cellwatch.detect.cli",
)

DESCRIPTION = """\
cellwatch watches battery-cell production lines: it scores sensor readings from Kafka with
anomaly detectors (PyOD) and a defect model (LightGBM) and writes scores, incidents and
predictions to PostgreSQL for Grafana.

try it (no services needed):
  cellwatch demo                                              # simulate, train, score, live view, report

offline workflow (data scientists):
  cellwatch simulate --out data/train --hours 8 --lines 2     # labelled line data (Parquet)
  cellwatch train --data data/train --models models/          # station detectors + defect model
  cellwatch evaluate --data data/test --models models/ --report reports/
  cellwatch models list --models models/                      # promote / rollback versions

online (plant):
  cellwatch run --config cellwatch.toml                       # Kafka -> scores/incidents -> PostgreSQL
  cellwatch grafana sync --url https://grafana.example        # dashboards and alert rules

Run 'cellwatch COMMAND --help' for what each command takes.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellwatch", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cellwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CellwatchError as exc:
        print(f"cellwatch {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"cellwatch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
