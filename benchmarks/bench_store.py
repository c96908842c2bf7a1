"""Store write speed: COPY into a temp table + INSERT ... ON CONFLICT versus executemany (pipeline mode).

    python benchmarks/bench_store.py --database-url postgresql://cellwatch@127.0.0.1:55432/cellwatch

Writes the same batches (readings + scores, one simulated line) with both methods into fresh schemas, twice
each (the second pass is a replay: every row conflicts), and prints rows/s per method.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import numpy as np
import pandas as pd
import psycopg

from cellwatch.ingest.store import PostgresStore, readings_rows


def batches(n_batches: int, size: int) -> list[dict[str, pd.DataFrame]]:
    rng = np.random.default_rng(0)
    out = []
    for b in range(n_batches):
        seq = np.arange(b * size, (b + 1) * size)
        ts = pd.Timestamp("2026-03-02T02:00:00Z") + pd.to_timedelta(seq, unit="s")
        r = pd.DataFrame({"ts": ts, "line": "L1", "station": "winding", "cell_id": [f"L1-{i}" for i in seq],
                          "seq": seq, "recipe": "NMC811", "tags": '{"coil_id": "C1"}',
                          **{f"s{j}": rng.normal(size=size) for j in range(8)}})
        s = pd.DataFrame({"line": "L1", "station": "winding", "seq": seq, "ts": ts, "cell_id": r["cell_id"],
                          "recipe": "NMC811", "anomaly_score": rng.random(size), "is_anomaly": False,
                          "kind": "normal", "top_sensors": '[{"sensor": "s1", "contribution": 0.4}]',
                          "model_version": "stations@1", "scored_at": pd.Timestamp.now(tz="UTC")})
        out.append({"readings": readings_rows(r), "scores": s})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("CELLWATCH_DATABASE_URL",
                                                             "postgresql://cellwatch@127.0.0.1:55432/cellwatch"))
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--size", type=int, default=2000)
    args = ap.parse_args()
    data = batches(args.batches, args.size)
    rows = sum(len(b["readings"]) + len(b["scores"]) for b in data)
    for method in ("copy", "executemany"):
        schema = f"bench_{method}_{uuid.uuid4().hex[:6]}"
        store = PostgresStore(args.database_url, schema=schema, method=method)
        store.migrate()
        try:
            for label in ("insert", "replay"):
                t0 = time.perf_counter()
                for b in data:
                    store.write(b)
                dt = time.perf_counter() - t0
                print(f"{method:12s} {label:7s} {rows:,} rows in {dt:6.2f} s = {rows / dt:10,.0f} rows/s")
        finally:
            store.close()
            with psycopg.connect(args.database_url, autocommit=True) as c:
                c.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
