"""``cellwatch simulate`` and ``cellwatch replay``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from cellwatch.contract import TOPIC_CELL_RESULTS, TOPIC_READINGS
from cellwatch.errors import CellwatchError

from .faults import FAULT_TYPES
from .simulate import DEFAULT_FAULTS_PER_SHIFT, DEFAULT_START


def register(subparsers: argparse._SubParsersAction) -> None:
    sim = subparsers.add_parser(
        "simulate", help="simulate battery-cell lines: labelled Parquet files and/or a Kafka stream",
        description="Simulate battery-cell production lines (mixing .. end-of-line test) with injected faults "
                    "and ground truth. Writes Parquet files (--out) and/or streams into Kafka (--kafka).")
    sim.add_argument("--out", type=Path, help="output directory for readings/cells/faults Parquet files")
    sim.add_argument("--hours", type=float, default=8.0, help="simulated wall-clock hours (default 8)")
    sim.add_argument("--lines", type=int, default=2, help="number of lines L1..LN (default 2)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sim.add_argument("--faults", default="all",
                     help=f"all | none | comma list of {', '.join(FAULT_TYPES)} (default all)")
    sim.add_argument("--faults-per-shift", type=float, default=DEFAULT_FAULTS_PER_SHIFT,
                     help=f"mean number of faults per line per 8-hour shift (default {DEFAULT_FAULTS_PER_SHIFT:g})")
    sim.add_argument("--start", default=None,
                     help=f"ISO start time of the run, or 'now' (default {DEFAULT_START})")
    sim.add_argument("--progress", action="store_true", help="show progress bars")
    k = sim.add_argument_group("Kafka streaming")
    k.add_argument("--kafka", metavar="HOST:PORT", help="stream the run into Kafka at this bootstrap server")
    pace = k.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="messages per second (default: as fast as possible)")
    pace.add_argument("--realtime", action="store_true", help="follow the timestamps in real time")
    k.add_argument("--topic-readings", default=TOPIC_READINGS, help=f"default {TOPIC_READINGS}")
    k.add_argument("--topic-cell-results", default=TOPIC_CELL_RESULTS, help=f"default {TOPIC_CELL_RESULTS}")
    sim.set_defaults(func=run_simulate)

    rep = subparsers.add_parser(
        "replay", help="stream an existing CSV/Parquet file of readings into Kafka",
        description="Replay a plant-historian export (columns ts, line, station, optional cell_id/seq/recipe/tags, "
                    "every other column a numeric sensor) into Kafka in timestamp order.")
    rep.add_argument("--input", type=Path, required=True, help="CSV (.csv, .csv.gz) or Parquet file")
    rep.add_argument("--kafka", metavar="HOST:PORT", required=True, help="Kafka bootstrap server")
    rep.add_argument("--speed", type=float, default=0.0,
                     help="multiple of real time (0 = as fast as possible, the default)")
    rep.add_argument("--topic", default=TOPIC_READINGS, help=f"default {TOPIC_READINGS}")
    rep.add_argument("--progress", action="store_true", help="show a progress bar")
    rep.set_defaults(func=run_replay)


def _summary(result, elapsed: float) -> str:
    cells = result.cells
    rate = f"{cells['defect'].mean() * 100:.2f} %" if len(cells) else "n/a (no cell finished)"
    by_type = result.faults["type"].value_counts().sort_index() if len(result.faults) else {}
    faults = ", ".join(f"{t} {n}" for t, n in by_type.items()) or "none"
    lines = [
        f"readings {len(result.readings):,}  cells {len(cells):,}  defect rate {rate}",
        f"faults {len(result.faults)}: {faults}",
        f"elapsed {elapsed:.2f} s  ({len(result.readings) / max(elapsed, 1e-9):,.0f} readings/s)",
    ]
    return "\n".join(lines)


def _quiet_kafka(args: argparse.Namespace) -> None:
    """kafka-python logs every refused connection at ERROR; our own error line says it once."""
    if not getattr(args, "verbose", 0):
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


def run_simulate(args: argparse.Namespace) -> int:
    from .simulate import simulate

    if args.out is None and args.kafka is None:
        raise CellwatchError("give --out DIR and/or --kafka HOST:PORT")
    t0 = time.perf_counter()
    result = simulate(hours=args.hours, lines=args.lines, seed=args.seed, faults=args.faults, start=args.start,
                      faults_per_shift=args.faults_per_shift, progress=args.progress)
    if args.out is not None:
        from .files import write_parquet

        manifest = {"hours": args.hours, "lines": args.lines, "seed": args.seed, "faults": args.faults,
                    "faults_per_shift": args.faults_per_shift,
                    "start": str(result.readings["ts"].min()) if len(result.readings) else args.start}
        paths = write_parquet(result, args.out, manifest)
        size = sum(p.stat().st_size for p in paths.values()) / 1e6
        print(f"wrote {args.out} ({size:.1f} MB)")
    print(_summary(result, time.perf_counter() - t0))
    if args.kafka:
        from .produce import stream

        _quiet_kafka(args)
        if str(args.start).strip().lower() == "now" and not args.realtime:
            print("note: --start now without --realtime sends future timestamps; consumers reject readings "
                  "more than 5 minutes ahead of their clock")

        stats = stream(args.kafka, result.readings, result.cell_results(), topic_readings=args.topic_readings,
                       topic_cell_results=args.topic_cell_results, rate=args.rate,
                       speed=1.0 if args.realtime else None, progress=args.progress)
        print(f"kafka {args.kafka}: sent {stats.readings:,} readings to {args.topic_readings} and "
              f"{stats.cell_results:,} cell results to {args.topic_cell_results} in {stats.elapsed_s:.1f} s "
              f"({stats.rate:,.0f} msg/s)")
    return 0


def run_replay(args: argparse.Namespace) -> int:
    from .replay import replay

    _quiet_kafka(args)
    stats = replay(args.input, args.kafka, topic=args.topic, speed=args.speed, progress=args.progress)
    print(f"kafka {args.kafka}: replayed {stats.readings:,} readings from {args.input} to {args.topic} in "
          f"{stats.elapsed_s:.1f} s ({stats.rate:,.0f} msg/s)")
    return 0
