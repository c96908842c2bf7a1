"""Helpers shared by the performance benchmarks (benchmarks/run.py): data, models, Kafka, processes, tables.

Everything a benchmark needs that is not the thing being measured lives here: cached simulator data,
a trained model registry, topic set-up and fast pre-loading, ``cellwatch run`` subprocesses, CPU/RSS
sampling from /proc, and the printed table / JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellwatch import contract

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CELLWATCH_BENCH_CACHE", "/tmp/cellwatch-bench"))
KAFKA = os.environ.get("CELLWATCH_KAFKA", "127.0.0.1:9092")
DATABASE_URL = os.environ.get("CELLWATCH_DATABASE_URL", "postgresql://cellwatch@127.0.0.1:55432/cellwatch")
#: readings per simulated line-hour (24 h x 6 lines = 1.08 M readings)
READINGS_PER_LINE_HOUR = 7_480
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------ data and models
def sim_dir(hours: float, lines: int, seed: int) -> Path:
    """A simulator run as Parquet files, cached under :data:`CACHE` (the simulator is deterministic per seed)."""
    from cellwatch.simulators.files import write_parquet
    from cellwatch.simulators.simulate import simulate

    out = CACHE / f"sim-{hours:g}h-{lines}l-s{seed}"
    if not (out / "readings.parquet").exists():
        write_parquet(simulate(hours=hours, lines=lines, seed=seed), out)
    return out


def sim_size(readings: int, min_lines: int = 4) -> tuple[float, int]:
    """(hours, lines) of a simulation with about ``readings`` readings: at least ``min_lines`` lines (keys
    ``line/station`` spread evenly over 4 partitions), 24 h per line at most."""
    line_hours = readings / READINGS_PER_LINE_HOUR
    lines = max(min_lines, int(np.ceil(line_hours / 24)))
    return round(line_hours / lines, 2), lines


def load_sim(readings: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(readings wide frame, contract cell results) of a cached simulation with about ``readings`` readings."""
    hours, lines = sim_size(readings)
    d = sim_dir(hours, lines, seed)
    r = pd.read_parquet(d / "readings.parquet")
    cells = pd.read_parquet(d / "cells.parquet")
    return r, cells[list(contract.CELL_RESULT_COLUMNS)].sort_values("ts", kind="stable").reset_index(drop=True)


#: (hours, lines, seed) of the simulation the default benchmark registry is trained on: as many lines as the
#: benchmark data (>= 4), another seed. A registry trained on one line flagged ~50 % of the readings of 4 other
#: lines as anomalous, which made B1 measure mostly the explanation of false alarms.
MODELS_SIM = (4, 4, 1001)


def models_dir(path: str | None = None) -> Path:
    """The model registry to benchmark: ``path``, or one trained once by ``cellwatch train`` on :data:`MODELS_SIM`."""
    if path:
        return Path(path)
    hours, lines, seed = MODELS_SIM
    out = CACHE / f"models-{hours}h-{lines}l-s{seed}"
    if not (out / "stations").exists():
        from cellwatch.detect.train import train_models

        train_models(sim_dir(hours, lines, seed), out, progress=False)
    return out


# ------------------------------------------------------------------------------------------ /proc sampling
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children are not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# ------------------------------------------------------------------------------------------ Kafka
def new_topics(partitions: int = 4, prefix: str = "bench") -> tuple[str, str, str]:
    """Fresh (readings, cell-results, run id) topic names, created with ``partitions`` / 2 partitions."""
    from kafka.admin import KafkaAdminClient, NewTopic

    rid = uuid.uuid4().hex[:8]
    tr, tc = f"{prefix}.readings.{rid}", f"{prefix}.cells.{rid}"
    admin = KafkaAdminClient(bootstrap_servers=KAFKA)
    try:
        admin.create_topics([NewTopic(tr, partitions, 1), NewTopic(tc, 2, 1)])
        admin.wait_for_topics([tr, tc], timeout_ms=30_000) if hasattr(admin, "wait_for_topics") else time.sleep(2)
    finally:
        admin.close()
    return tr, tc, rid


def delete_topics(names: Iterable[str]) -> None:
    from kafka.admin import KafkaAdminClient

    names = list(names)
    admin = KafkaAdminClient(bootstrap_servers=KAFKA)
    try:
        existing = set(admin.list_topics())
        todo = [n for n in names if n in existing]
        if todo:
            admin.delete_topics(todo)
    except Exception as exc:  # cleanup only
        print(f"(topic cleanup failed: {exc})", file=sys.stderr)
    finally:
        admin.close()


def confluent_available() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


class FastProducer:
    """confluent-kafka's producer when installed (pre-loading millions of messages), else kafka-python's."""

    def __init__(self, bootstrap: str = KAFKA) -> None:
        if confluent_available():
            from confluent_kafka import Producer

            self._p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000,
                                "queue.buffering.max.messages": 1_000_000, "enable.idempotence": True})
            self.kind = "confluent-kafka"
        else:
            from cellwatch.simulators.produce import make_producer

            self._p = make_producer(bootstrap)
            self.kind = "kafka-python"

    def send(self, topic: str, value: bytes, key: bytes | None = None, timestamp_ms: int | None = None) -> None:
        if self.kind == "confluent-kafka":
            while True:
                try:
                    self._p.produce(topic, value=value, key=key, timestamp=timestamp_ms or 0)
                    return
                except BufferError:
                    self._p.poll(0.05)
        else:
            self._p.send(topic, value=value, key=key, timestamp_ms=timestamp_ms)

    def poll(self) -> None:
        if self.kind == "confluent-kafka":
            self._p.poll(0)

    def flush(self) -> None:
        left = self._p.flush(120) if self.kind == "confluent-kafka" else self._p.flush(timeout=120)
        if left:
            raise RuntimeError(f"{left} messages not delivered")


def reading_keys(frame: pd.DataFrame) -> list[bytes]:
    return [contract.kafka_key(a, b) for a, b in zip(frame["line"].astype(str), frame["station"].astype(str),
                                                       strict=True)]


def preload(readings: pd.DataFrame, cells: pd.DataFrame, topic_readings: str, topic_cells: str,
            chunk: int = 50_000) -> dict:
    """Encode (the contract's encoder) and produce everything, readings in time order; returns counts and seconds."""
    t0 = time.perf_counter()
    p = FastProducer()
    for a in range(0, len(readings), chunk):
        part = readings.iloc[a:a + chunk]
        for v, k in zip(contract.encode_readings(part), reading_keys(part), strict=True):
            p.send(topic_readings, v, k)
        p.poll()
    for v, line in zip(contract.encode_cell_results(cells), cells["line"].astype(str), strict=True):
        p.send(topic_cells, v, line.encode())
    p.flush()
    return {"readings": len(readings), "cell_results": len(cells), "seconds": time.perf_counter() - t0,
            "producer": p.kind}


# ------------------------------------------------------------------------------------------ the service
def run_cmd(models: Path, topic_readings: str, topic_cells: str, rid: str, schema: str, group: str,
            worker: str = "w1", extra: Sequence[str] = ()) -> list[str]:
    """``cellwatch run`` with every sink (PostgreSQL, output topics, DLQ) on per-run topics and schema."""
    return [sys.executable, "-m", "cellwatch.cli", "run", "--kafka", KAFKA, "--database-url", DATABASE_URL,
            "--database-schema", schema, "--models-dir", str(models), "--topic-readings", topic_readings,
            "--topic-cell-results", topic_cells, "--group-id", group, "--metrics-port", "0",
            "--topic-dlq", f"bench.dlq.{rid}", "--topic-scores", f"bench.scores.{rid}",
            "--topic-incidents", f"bench.incidents.{rid}", "--topic-predictions", f"bench.predictions.{rid}",
            "--worker-id", worker, *extra]


def output_topics(rid: str) -> list[str]:
    return [f"bench.{t}.{rid}" for t in ("dlq", "scores", "incidents", "predictions")]


def start(cmd: list[str], log_name: str) -> subprocess.Popen:
    log = (CACHE / f"{log_name}.log").open("ab")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pg(sql: str, schema: str | None = None, params: Sequence[Any] = ()) -> list[tuple]:
    import psycopg

    opts = f"-c search_path={schema}" if schema else ""
    try:
        with psycopg.connect(DATABASE_URL, options=opts, connect_timeout=5) as c:
            return c.execute(sql, params).fetchall()
    except psycopg.Error:
        return []


def count(schema: str, table: str = "scores") -> int:
    rows = pg(f"SELECT count(*) FROM {table}", schema)
    return int(rows[0][0]) if rows else 0


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def steady_rate(schema: str, lo: float = 0.1, hi: float = 0.9) -> dict:
    """Readings/s between the batches holding the ``lo`` and ``hi`` quantiles of scored_at (start-up excluded)."""
    rows = pg("SELECT count(*), percentile_disc(%s) WITHIN GROUP (ORDER BY scored_at), "
              "percentile_disc(%s) WITHIN GROUP (ORDER BY scored_at), min(scored_at), max(scored_at) FROM scores",
              schema, (lo, hi))
    n, t_lo, t_hi, t0, t1 = rows[0]
    span = (t_hi - t_lo).total_seconds() if t_lo and t_hi else float("nan")
    return {"scored": int(n), "steady_rate": (hi - lo) * n / span if span and span > 0 else float("nan"),
            "first_to_last_s": (t1 - t0).total_seconds() if t0 and t1 else float("nan")}


def wait_scored(schema: str, n: int, procs: Sequence[subprocess.Popen], timeout_s: float,
                sample: callable | None = None, every_s: float = 2.0) -> float:
    """Poll the scores table until ``n`` rows; calls ``sample()`` every ``every_s``; returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        if sample:
            sample()
        if count(schema) >= n:
            return time.monotonic() - t0
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"cellwatch run exited with {dead[0].returncode}; see {CACHE}/*.log")
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"only {count(schema):,} of {n:,} readings scored after {timeout_s:.0f} s")
        time.sleep(every_s)


# ------------------------------------------------------------------------------------------ report
@dataclass
class Report:
    """Rows of (benchmark, metric, value, goal, met) printed as a table and written as JSON."""

    rows: list[dict] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, bench: str, metric: str, value: float | str, unit: str = "", goal: str = "",
            met: bool | None = None) -> None:
        self.rows.append({"bench": bench, "metric": metric, "value": value, "unit": unit, "goal": goal,
                          "met": None if met is None else bool(met)})

    def table(self) -> str:
        def fmt(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.0f}"
            return f"{v:,}" if isinstance(v, int) else str(v)

        head = ("bench", "metric", "value", "unit", "goal", "met")
        body = [(r["bench"], r["metric"], fmt(r["value"]), r["unit"], r["goal"],
                 {True: "yes", False: "NO", None: ""}[r["met"]]) for r in self.rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths,
                                                                                                 strict=True)))
                  for b in body]
        return "\n".join(lines)

    def write(self, path: Path | None) -> None:
        if path:
            path.write_text(json.dumps({"rows": self.rows, "details": self.details}, indent=2, default=str))
