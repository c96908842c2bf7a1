"""``cellwatch demo``: the whole system on one machine, through the same pipeline core as the service.

Default (nothing installed): train on a simulated line (or use ``--models``), simulate a run with faults,
feed it in timestamp order as encoded messages through an in-process source (decode + validate ->
:func:`cellwatch.ingest.pipeline.process` -> SQLite store, same schema as PostgreSQL), show a live
terminal view and end with an HTML report. With ``--kafka`` (+ ``--database-url``) the simulation is
produced to Kafka and the real consumer loop (:class:`~cellwatch.ingest.consumer.StreamService`) runs
in-process against PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cellwatch import contract
from cellwatch.errors import CellwatchError
from cellwatch.ingest.pipeline import Message, decode, process
from cellwatch.ingest.state import WindowState
from cellwatch.ingest.store import SQLiteStore, Store, open_store
from cellwatch.ingest.view import LiveView

log = logging.getLogger(__name__)

#: The training simulation uses another seed than the streamed one (never score what was trained on).
TRAIN_SEED_OFFSET = 1000


@dataclass
class DemoOptions:
    out: Path = Path("demo-out")
    models: Path | None = None
    hours: float = 2.0
    lines: int = 1
    train_hours: float = 4.0
    seed: int = 42
    faults_per_shift: float = 20.0
    batch: int = 2000
    live: bool = True
    kafka: str | None = None
    database_url: str | None = None
    speed: float = 0.0


# --------------------------------------------------------------------------------------------- models

def ensure_models(opts: DemoOptions, say) -> Path:
    """The models directory to use: ``--models`` as given, else train into ``<out>/models`` once."""
    from cellwatch.detect.registry import ModelRegistry

    if opts.models is not None:
        return opts.models
    models = opts.out / "models"
    reg = ModelRegistry(models)
    if models.is_dir() and all(reg.production(n) for n in ("stations", "defect") if n in reg.names()) \
            and "stations" in reg.names():
        say(f"using the models already trained in {models}")
        return models
    from cellwatch.detect.train import train_models
    from cellwatch.simulators.simulate import simulate

    t0 = time.perf_counter()
    say(f"simulating {opts.train_hours:g} h x {opts.lines} line(s) of training data ...")
    sim = simulate(hours=opts.train_hours, lines=opts.lines, seed=opts.seed + TRAIN_SEED_OFFSET)
    data = opts.out / "train"
    data.mkdir(parents=True, exist_ok=True)
    sim.readings.to_parquet(data / "readings.parquet")
    sim.cells.to_parquet(data / "cells.parquet")
    sim.faults.to_parquet(data / "faults.parquet")
    say(f"training on {len(sim.readings):,} readings / {len(sim.cells):,} cells ...")
    summary = train_models(data, models, progress=False)
    say(f"trained stations@{summary['stations_version']} + defect@{summary['defect_version']} "
        f"in {time.perf_counter() - t0:.0f} s")
    return models


# --------------------------------------------------------------------------------------------- source

def stream_messages(readings: pd.DataFrame, cell_results: pd.DataFrame,
                    readings_topic: str = contract.TOPIC_READINGS,
                    cell_results_topic: str = contract.TOPIC_CELL_RESULTS) -> list[Message]:
    """A simulation as encoded messages in timestamp order (what a producer would send), offsets per stream."""
    r = readings.sort_values("ts", kind="stable").reset_index(drop=True)
    values = contract.encode_readings(r)
    keys = (r["line"].astype(str) + "/" + r["station"].astype(str)).to_numpy()
    stream_ids = pd.factorize(keys)[0]
    offsets = pd.Series(np.arange(len(r))).groupby(stream_ids).cumcount().to_numpy()
    msgs = [(t, Message(readings_topic, int(p), int(o), v, k.encode()))
            for t, p, o, v, k in zip(_naive_utc(r["ts"]), stream_ids, offsets, values, keys, strict=True)]
    if len(cell_results):
        c = cell_results.sort_values("ts", kind="stable").reset_index(drop=True)
        cvals = contract.encode_cell_results(c)
        msgs += [(t, Message(cell_results_topic, 0, i, v, str(cell).encode()))
                 for i, (t, v, cell) in enumerate(zip(_naive_utc(c["ts"]), cvals, c["cell_id"], strict=True))]
    order = np.argsort(np.array([t for t, _ in msgs], dtype="datetime64[ns]"), kind="stable")
    return [msgs[i][1] for i in order]


def _naive_utc(ts: pd.Series) -> np.ndarray:
    """UTC timestamps as datetime64[ns] (sortable without timezone objects)."""
    return pd.to_datetime(ts, utc=True).dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")


def micro_batches(messages: list[Message], size: int) -> Iterator[list[Message]]:
    for i in range(0, len(messages), size):
        now_ms = int(time.time() * 1000)
        yield [Message(m.topic, m.partition, m.offset, m.value, m.key, now_ms) for m in messages[i:i + size]]


# --------------------------------------------------------------------------------------------- runs

def _run_in_process(opts: DemoOptions, models: Path, sim, store: Store, view: LiveView) -> dict:
    from cellwatch.detect.core import load_scorer

    scorer = load_scorer(models)
    window = WindowState(scorer)
    from cellwatch.ingest.models import ModelWatcher
    watcher = ModelWatcher(models, loader=lambda d: scorer, fingerprint=lambda d: "demo")
    watcher.scorer = scorer
    store.write(watcher.version_rows())
    msgs = stream_messages(sim.readings, sim.cell_results())
    view.start(total=len(msgs), model=scorer.model_version)
    t_sim0 = sim.readings["ts"].min()
    wall0 = time.perf_counter()
    totals = {"readings": 0, "scored": 0, "rejected": 0, "batches": 0}
    for batch in micro_batches(msgs, opts.batch):
        decoded = decode(batch, contract.TOPIC_READINGS, contract.TOPIC_CELL_RESULTS)
        out = process(decoded, window, store, len(batch))
        store.write(out.tables)
        totals["readings"] += out.n_readings
        totals["scored"] += out.n_scored
        totals["rejected"] += out.n_rejected
        totals["batches"] += 1
        view.update(len(batch), out.n_scored)
        if opts.speed > 0 and len(out.reading_ts):
            ahead = (out.reading_ts.max() - t_sim0).total_seconds() / opts.speed - (time.perf_counter() - wall0)
            if ahead > 0:
                time.sleep(ahead)
    return totals


def _produce(opts: DemoOptions, sim, topics: dict[str, str]) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=opts.kafka, acks="all", linger_ms=20, enable_idempotence=True)
    msgs = stream_messages(sim.readings, sim.cell_results(), topics["readings"], topics["cell_results"])
    for m in msgs:
        producer.send(m.topic, value=m.value, key=m.key)
    producer.flush()
    producer.close()
    return len(msgs)


def _run_kafka(opts: DemoOptions, models: Path, sim, store: Store, view: LiveView, say) -> dict:
    from cellwatch.config import load_settings
    from cellwatch.ingest.consumer import StreamService

    run_id = uuid.uuid4().hex[:8]
    topics = {"readings": f"{contract.TOPIC_READINGS}.demo-{run_id}",
              "cell_results": f"{contract.TOPIC_CELL_RESULTS}.demo-{run_id}"}
    settings = load_settings({}, {}, kafka=opts.kafka, database_url=opts.database_url or "sqlite:///x",
                             group_id=f"cellwatch-demo-{run_id}", topic_readings=topics["readings"],
                             topic_cell_results=topics["cell_results"], metrics_port=0, models_dir=models,
                             batch_max_records=opts.batch, publish_outputs=False)
    say(f"producing the simulation to Kafka {opts.kafka} (topics {topics['readings']}, {topics['cell_results']}) ...")
    n = _produce(opts, sim, topics)
    service = StreamService(settings, store=store)
    view.start(total=n, model="loading")
    thread = threading.Thread(target=service.run, name="cellwatch-consumer", daemon=True)
    thread.start()
    expected = len(sim.readings)
    last = 0
    deadline = time.monotonic() + max(300, expected / 200)
    while thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.5)
        done = service.totals.get("readings", 0) + service.totals.get("rejected", 0)
        view.update(service.totals.get("messages", 0) - last, service.totals.get("scored", 0) - view.scored)
        last = service.totals.get("messages", 0)
        if service.window is not None:
            view.model = service.window.scorer.model_version
        if done >= expected and service.totals.get("messages", 0) >= n:
            break
    service.stop()
    thread.join(timeout=30)
    return dict(service.totals)


def run_demo(opts: DemoOptions) -> Path:
    """Run the demo; returns the path of the HTML report."""
    from cellwatch.ingest.report import write_report
    from cellwatch.simulators.simulate import simulate

    if opts.database_url and not opts.kafka:
        raise CellwatchError("--database-url needs --kafka (the embedded demo stores in SQLite)")
    t0 = time.perf_counter()
    opts.out.mkdir(parents=True, exist_ok=True)
    view = LiveView(live=opts.live)
    models = ensure_models(opts, view.say)
    view.say(f"simulating {opts.hours:g} h x {opts.lines} line(s) with ~{opts.faults_per_shift:g} faults per shift "
             f"(seed {opts.seed}) ...")
    sim = simulate(hours=opts.hours, lines=opts.lines, seed=opts.seed, faults_per_shift=opts.faults_per_shift)
    if opts.kafka:
        store = open_store(opts.database_url or f"sqlite:///{opts.out / 'cellwatch.db'}")
    else:
        db = opts.out / "cellwatch.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        store = SQLiteStore(db)
    store.migrate()
    view.store = store
    try:
        with view:
            if opts.kafka:
                totals = _run_kafka(opts, models, sim, store, view, view.say)
            else:
                totals = _run_in_process(opts, models, sim, store, view)
        stream_s = view.elapsed
        report = write_report(store, sim, opts.out / "report.html", totals=totals, stream_seconds=stream_s,
                              wall_seconds=time.perf_counter() - t0)
    finally:
        store.close()
    view.summary(totals, report, time.perf_counter() - t0)
    return report
