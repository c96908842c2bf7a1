"""Simulator figures: generation speed to Parquet (incl. a >= 1 M-reading run), file sizes, defect rates
with and without faults, and (with --kafka) the streaming rate into a real broker.

    python benchmarks/simulate_speed.py [--hours 24 --lines 6] [--kafka 127.0.0.1:9092] [--json out.json]

Wall-clock and CPU seconds are both reported: on a shared machine the wall clock includes waiting for
the CPU; the CPU time is what the simulator itself costs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from cellwatch.simulators.files import write_parquet
from cellwatch.simulators.simulate import simulate


def _timed(fn, *args, **kwargs):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def bench_parquet(hours: float, lines: int, seed: int, out_dir: Path) -> dict:
    result, sim_wall, sim_cpu = _timed(simulate, hours=hours, lines=lines, seed=seed)
    paths, write_wall, write_cpu = _timed(write_parquet, result, out_dir)
    n = len(result.readings)
    sizes = {name: p.stat().st_size for name, p in paths.items()}
    wall, cpu = sim_wall + write_wall, sim_cpu + write_cpu
    return {
        "hours": hours, "lines": lines, "seed": seed, "readings": n, "cells": len(result.cells),
        "faults": len(result.faults),
        "simulate_wall_s": round(sim_wall, 2), "simulate_cpu_s": round(sim_cpu, 2),
        "write_wall_s": round(write_wall, 2), "write_cpu_s": round(write_cpu, 2),
        "readings_per_s_wall": round(n / wall), "readings_per_s_cpu": round(n / cpu),
        "file_bytes": sizes, "readings_bytes_per_reading": round(sizes["readings"] / max(n, 1), 1),
    }


def bench_defects(seeds: range, hours: float = 8, lines: int = 2) -> dict:
    rows = []
    for seed in seeds:
        clean = simulate(hours=hours, lines=lines, seed=seed, faults="none")
        faulty = simulate(hours=hours, lines=lines, seed=seed, faults="all")
        quality = set(faulty.faults.loc[faulty.faults["affects_quality"], "fault_id"])
        hit = faulty.cells["fault_ids"].map(lambda ids, q=quality: bool(q & set(ids)))
        rows.append({
            "seed": seed, "cells": len(clean.cells), "faults": len(faulty.faults),
            "defect_rate_no_faults": round(float(clean.cells["defect"].mean()), 4),
            "defect_rate_all_faults": round(float(faulty.cells["defect"].mean()), 4),
            "defect_rate_cells_hit_by_process_faults": round(float(faulty.cells.loc[hit, "defect"].mean()), 4),
            "defect_rate_same_cells_without_faults": round(float(clean.cells.loc[hit.to_numpy(), "defect"].mean()), 4),
        })
    return {"hours": hours, "lines": lines, "runs": rows}


def bench_kafka(bootstrap: str, hours: float, lines: int) -> dict:
    from kafka import KafkaAdminClient

    from cellwatch.simulators.produce import stream

    result = simulate(hours=hours, lines=lines, seed=1)
    topic_r, topic_c = f"bench.readings.{uuid.uuid4().hex[:8]}", f"bench.cells.{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({topic_r: {"num_partitions": 6, "replication_factor": 1},
                             topic_c: {"num_partitions": 2, "replication_factor": 1}})
        admin.wait_for_topics([topic_r, topic_c], timeout_ms=30_000)
        stats, _wall, cpu = _timed(stream, bootstrap, result.readings, result.cell_results(),
                                  topic_readings=topic_r, topic_cell_results=topic_c)
    finally:
        admin.delete_topics([topic_r, topic_c], raise_errors=False)
        admin.close()
    return {"readings": stats.readings, "cell_results": stats.cell_results, "elapsed_s": round(stats.elapsed_s, 2),
            "messages_per_s": round(stats.rate), "cpu_s": round(cpu, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=24.0, help="hours of the big run (default 24)")
    ap.add_argument("--lines", type=int, default=6, help="lines of the big run (default 6: about 1.08 M readings)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds for the defect-rate comparison (default 5)")
    ap.add_argument("--kafka", metavar="HOST:PORT", help="also measure streaming into this broker")
    ap.add_argument("--kafka-hours", type=float, default=4.0, help="hours streamed in the Kafka run (default 4)")
    ap.add_argument("--json", type=Path, help="write the figures to this JSON file")
    args = ap.parse_args()

    report: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="cellwatch-bench-"))
    try:
        report["parquet_8h_2_lines"] = bench_parquet(8, 2, 0, tmp / "small")
        report["parquet_big"] = bench_parquet(args.hours, args.lines, 0, tmp / "big")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report["defects"] = bench_defects(range(args.seeds))
    if args.kafka:
        report["kafka"] = bench_kafka(args.kafka, args.kafka_hours, 2)

    for key in ("parquet_8h_2_lines", "parquet_big"):
        r = report[key]
        print(f"{key}: {r['readings']:,} readings, {r['cells']:,} cells, {r['faults']} faults | simulate "
              f"{r['simulate_wall_s']} s (cpu {r['simulate_cpu_s']}), write {r['write_wall_s']} s "
              f"(cpu {r['write_cpu_s']}) | {r['readings_per_s_wall']:,} readings/s wall, "
              f"{r['readings_per_s_cpu']:,} /s cpu | readings.parquet {r['file_bytes']['readings'] / 1e6:.1f} MB "
              f"({r['readings_bytes_per_reading']} B/reading), cells.parquet {r['file_bytes']['cells'] / 1e6:.1f} MB")
    for row in report["defects"]["runs"]:
        hit, same = row["defect_rate_cells_hit_by_process_faults"], row["defect_rate_same_cells_without_faults"]
        print(f"defects seed {row['seed']}: no faults {row['defect_rate_no_faults']:.2%}, all faults "
              f"{row['defect_rate_all_faults']:.2%} ({row['faults']} faults); cells hit by process faults "
              f"{hit:.2%} vs {same:.2%} without")
    if "kafka" in report:
        k = report["kafka"]
        print(f"kafka: {k['readings']:,} readings + {k['cell_results']:,} cell results in {k['elapsed_s']} s "
              f"= {k['messages_per_s']:,} msg/s (acks=all, idempotent)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
