"""End-to-end streaming figures: simulator -> Kafka -> ``cellwatch run`` -> PostgreSQL.

    eval "$(scripts/services env)"
    python benchmarks/bench_streaming.py --models models/ [--hours 2] [--lines 1] [--kill-at 0.5]

Produces a simulation to fresh topics, starts ``cellwatch run`` as a subprocess, and reports:

* throughput: readings scored per second between the first and the last committed batch;
* end-to-end latency p50/p99 from ``pipeline_stats`` (Kafka timestamp -> result committed); meaningful
  with ``--rate R`` (a steady stream below capacity), not with a backlog produced up front;
* with ``--kill-at F``: SIGKILL once a fraction F is scored, restart, and report the recovery time
  (restart -> first new batch committed) and that every reading was scored exactly once.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from cellwatch import contract
from cellwatch.ingest.demo import stream_messages
from cellwatch.simulators.simulate import simulate


def q(url: str, schema: str, sql: str):
    try:
        with psycopg.connect(url, options=f"-c search_path={schema}", connect_timeout=3) as c:
            return c.execute(sql).fetchone()
    except psycopg.Error:
        return (None,)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True)
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--lines", type=int, default=1)
    ap.add_argument("--seed", type=int, default=24)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--kill-at", type=float, default=0.0)
    ap.add_argument("--rate", type=float, default=0.0, help="messages/s to produce while running (0 = backlog first)")
    ap.add_argument("--kafka", default=os.environ.get("CELLWATCH_KAFKA", "127.0.0.1:9092"))
    ap.add_argument("--database-url", default=os.environ.get("CELLWATCH_DATABASE_URL",
                                                             "postgresql://cellwatch@127.0.0.1:55432/cellwatch"))
    args = ap.parse_args()
    rid = uuid.uuid4().hex[:8]
    tr, tc, schema = f"bench.readings.{rid}", f"bench.cells.{rid}", f"bench_{rid}"
    admin = KafkaAdminClient(bootstrap_servers=args.kafka)
    admin.create_topics([NewTopic(tr, 4, 1), NewTopic(tc, 2, 1)])
    sim = simulate(hours=args.hours, lines=args.lines, seed=args.seed)
    n = len(sim.readings)
    producer = KafkaProducer(bootstrap_servers=args.kafka, acks="all", linger_ms=20)
    messages = stream_messages(sim.readings, sim.cell_results())

    def produce(part=messages) -> None:
        t0 = time.monotonic()
        for i, m in enumerate(part):
            producer.send(tr if m.topic == contract.TOPIC_READINGS else tc, value=m.value, key=m.key)
            if args.rate > 0 and i % 50 == 0:
                ahead = i / args.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
        print(f"produced {n:,} readings + {len(sim.cells):,} cell results in {time.monotonic() - t0:.1f} s")

    if args.rate <= 0:
        produce()  # a backlog: measures throughput
    cmd = [sys.executable, "-m", "cellwatch.cli", "run", "--kafka", args.kafka, "--database-url", args.database_url,
           "--database-schema", schema, "--models-dir", args.models, "--topic-readings", tr,
           "--topic-cell-results", tc, "--group-id", f"bench-{rid}", "--metrics-port", "0", "--no-publish-outputs",
           "--topic-dlq", f"bench.dlq.{rid}", "--batch-max-records", str(args.batch)]
    log = Path(f"/tmp/bench-streaming-{rid}.log").open("ab")  # noqa: SIM115 - lives as long as the subprocesses
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    if args.rate > 0:  # a steady stream below capacity: measures latency
        while "partitions assigned" not in Path(log.name).read_text(errors="replace"):
            time.sleep(0.2)
        warm = messages[:200]  # the first batch pays the JIT compile of the detectors: not part of the latency
        produce(warm)
        while (q(args.database_url, schema, "SELECT count(*) FROM scores")[0] or 0) < 150:
            time.sleep(0.2)
        threading.Thread(target=produce, args=(messages[200:],), daemon=True).start()
    try:
        if args.kill_at > 0:
            while (q(args.database_url, schema, "SELECT count(*) FROM scores")[0] or 0) < n * args.kill_at:
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            before = q(args.database_url, schema, "SELECT count(*) FROM scores")[0]
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            while (q(args.database_url, schema, "SELECT count(*) FROM scores")[0] or 0) <= before:
                time.sleep(0.1)
            print(f"restart recovery: first new batch committed {time.monotonic() - t0:.1f} s after the restart "
                  f"(process start, imports and model load included)")
        while (q(args.database_url, schema, "SELECT count(*) FROM scores")[0] or 0) < n:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    first, last, scored = q(args.database_url, schema, "SELECT min(batch_end), max(batch_end), sum(scored) "
                                                      "FROM pipeline_stats")
    p50, p99 = q(args.database_url, schema, "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY e2e_p50_ms), "
                                             "max(e2e_p99_ms) FROM pipeline_stats WHERE batch_end > "
                                             "(SELECT min(batch_end) FROM pipeline_stats)")
    dups = q(args.database_url, schema, "SELECT count(*) FROM (SELECT 1 FROM scores GROUP BY line, station, seq "
                                        "HAVING count(*) > 1) d")[0]
    total = q(args.database_url, schema, "SELECT count(*) FROM scores")[0]
    secs = (last - first).total_seconds()
    print(f"scored {total:,} of {n:,} readings, duplicates {dups}")
    print(f"throughput (first -> last batch, last pipeline_stats row rides with the next write): "
          f"{float(scored) / max(secs, 1e-9):,.0f} readings/s over {secs:.1f} s")
    print(f"end-to-end latency (first batch excluded): median batch p50 {p50:,.0f} ms, worst batch p99 {p99:,.0f} ms")
    with psycopg.connect(args.database_url, autocommit=True) as c:
        c.execute(f'DROP SCHEMA "{schema}" CASCADE')
    admin.delete_topics([tr, tc])


if __name__ == "__main__":
    main()
