"""cellwatch performance benchmarks B1-B6: where the time goes, measured side by side in one run.

    eval "$(scripts/services env)"
    python benchmarks/run.py b1 [--quick] [--models models/] [--json b1.json]
    python benchmarks/run.py b2|b3|b4|b5|b6 [--quick] ...
    python benchmarks/run.py b25 [--service-readings K]              # B2 then B5 on the same pre-loaded topic
    python benchmarks/run.py all [--quick] --json perf.json
    python benchmarks/run.py profile core|service [--quick]       # pyinstrument / py-spy

B1 scoring core (readings/s of LineScorer, one process, no I/O) vs river's HalfSpaceTrees on the same readings;
B2 end to end: bare kafka-python consumer (poll + orjson.loads) vs ``cellwatch run`` with every sink, plus
confluent-kafka's consume rate as a reference; B3 latency at a fixed input rate; B4 RSS over a long run;
B5 two ``cellwatch run`` in one group vs one; B6 training wall time and peak memory.

The machine is shared: absolute numbers move with the load, so every goal is a ratio measured in the same
run (B1, B2, B5) or a bound that load only makes harder to meet (B3, B4). CPU seconds are reported next to
wall seconds: a process's CPU time is what it costs, the wall time includes waiting for a core.
``--quick`` uses small sizes (development while others work); the defaults are the issue's sizes.
"""

from __future__ import annotations

import argparse
import resource
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

from cellwatch import contract

SCORING_BATCH = 2000  # = the service's default batch_max_records


# ================================================================================================ B1
def _core_batches(readings: pd.DataFrame, batch: int) -> list[pd.DataFrame]:
    r = readings.sort_values("ts", kind="stable").reset_index(drop=True)
    return [r.iloc[a:a + batch].reset_index(drop=True) for a in range(0, len(r), batch)]


def _time_core(scorer, batches: list[pd.DataFrame], counts: dict | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of LineScorer.process over the batches; ``counts`` gets the work that scales with
    the alarms (anomalous readings are explained, cell predictions above half the threshold get SHAP)."""
    state = scorer.new_state()
    results = []
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        results.append(scorer.process(b, state))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if counts is not None:
        counts["anomalous_readings"] = int(sum(r.scores["is_anomaly"].sum() for r in results))
        counts["predictions"] = int(sum(len(r.predictions) for r in results))
        counts["explained_predictions"] = int(sum(r.predictions["top_features"].notna().sum() for r in results))
    return wall, cpu


def _time_detectors(scorer, batches: list[pd.DataFrame]) -> tuple[float, float]:
    """The station detectors alone through the frame API (StationModel.score per (station, recipe) group)."""
    models = scorer.stations
    states = {k: m.new_state() for k, m in models.models.items()}
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        for (st, rec), idx in b.groupby(["station", b["recipe"].fillna("*")], sort=False).indices.items():
            key, model = models.model_for(st, rec)
            model.score(b.iloc[idx], states[key])
    return time.perf_counter() - t0, time.process_time() - c0


def _time_detector_step(scorer, batches: list[pd.DataFrame]) -> tuple[float, float]:
    """The detector step exactly as LineScorer.process runs it (LineScorer._score: the batch's arrays, grouping,
    StationModel.score_arrays per (station, recipe) group, z values), on the batches LineScorer prepares."""
    state = scorer.new_state()
    prepared = [b.assign(ts=pd.to_datetime(b["ts"], utc=True), line=b["line"].astype(str),
                         station=b["station"].astype(str)) for b in batches]
    t0, c0 = time.perf_counter(), time.process_time()
    for b in prepared:
        scorer._score(b, state)
    return time.perf_counter() - t0, time.process_time() - c0


class _StepTimes:
    """Context: CPU seconds spent in each step of LineScorer.process (timing wrappers around its methods)."""

    STEPS = ("_score", "_update_buffers", "_cell_events", "_predict", "_trim")

    def __init__(self, scorer):
        self.scorer, self.cpu = scorer, dict.fromkeys((*self.STEPS, "incidents"), 0.0)

    def _wrap(self, name, fn):
        def timed(*a, **kw):
            c0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                self.cpu[name] += time.process_time() - c0
        return timed

    def __enter__(self):
        from cellwatch.detect.incidents import IncidentTracker

        for name in self.STEPS:
            setattr(self.scorer, name, self._wrap(name, getattr(self.scorer, name)))
        self.tracker_cls, self.saved = IncidentTracker, IncidentTracker.update
        wrapped = self._wrap("incidents", IncidentTracker.update)
        IncidentTracker.update = lambda tracker, scored: wrapped(tracker, scored)
        return self

    def __exit__(self, *exc):
        for name in self.STEPS:
            delattr(self.scorer, name)
        self.tracker_cls.update = self.saved


class _PyodMembers:
    """Context: the ensemble members scored by PyOD's own decision_function (the code before the fast paths)."""

    def __enter__(self):
        from cellwatch.detect.ensemble import FeatureEnsemble

        self.cls, self.saved = FeatureEnsemble, FeatureEnsemble._member_decision
        FeatureEnsemble._member_decision = lambda ens, m, Z: ens.models_[m].decision_function(Z)

    def __exit__(self, *exc):
        self.cls._member_decision = self.saved


def _river_inputs(readings: pd.DataFrame) -> list[tuple[str, dict]]:
    sensors = contract.sensor_columns(readings)
    vals = readings[sensors].to_numpy(dtype="float64")
    present = ~np.isnan(vals)
    st = readings["station"].astype(str).to_numpy()
    return [(st[i], {sensors[j]: float(vals[i, j]) for j in np.flatnonzero(present[i])}) for i in range(len(vals))]


def _time_river(inputs: list[tuple[str, dict]]) -> tuple[float, float]:
    """river's streaming peer: per station MinMaxScaler | HalfSpaceTrees, score_one then learn_one per reading."""
    from river import anomaly, compose, preprocessing

    models: dict[str, compose.Pipeline] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for st, x in inputs:
        m = models.get(st)
        if m is None:
            m = models[st] = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=42))
        m.score_one(x)
        m.learn_one(x)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_b1(args, rep: C.Report) -> None:
    from cellwatch.detect.core import load_scorer

    n = 20_000 if args.quick else args.b1_readings
    n_river = 5_000 if args.quick else 40_000
    readings, _ = C.load_sim(n, seed=7)
    scorer = load_scorer(C.models_dir(args.models))
    batches = _core_batches(readings, SCORING_BATCH)
    _time_core(scorer, batches[:3])  # warm caches / lazy imports
    inputs = _river_inputs(readings.sort_values("ts", kind="stable").iloc[:n_river])
    # interleaved: ours, river, ours, river - the ratio of the two under the same load
    ours, det, riv, det_pyod = [], [], [], []
    with _PyodMembers():
        _time_detectors(scorer, batches[:3])  # warm-up of the PyOD paths, not in the timed runs
    counts: dict = {}
    step, step_big = [], []
    big = [pd.concat(batches[a:a + 10], ignore_index=True) for a in range(0, len(batches), 10)]
    for _ in range(2):
        ours.append(_time_core(scorer, batches, counts))
        riv.append(_time_river(inputs))
        step.append(_time_detector_step(scorer, batches))
        det.append(_time_detectors(scorer, batches))
        with _PyodMembers():
            det_pyod.append(_time_detectors(scorer, batches))
        step_big.append(_time_detector_step(scorer, big))
    with _StepTimes(scorer) as parts:  # one more run, split by step (the wrappers cost ~1 us per call)
        parts_cpu = _time_core(scorer, batches)[1]
    nr = len(readings)
    core_cpu = nr / np.median([c for _, c in ours])
    core_wall = nr / np.median([w for w, _ in ours])
    det_cpu = nr / np.median([c for _, c in det])
    river_cpu = n_river / np.median([c for _, c in riv])
    river_wall = n_river / np.median([w for w, _ in riv])
    ratio = core_cpu / river_cpu
    rep.add("B1", f"LineScorer.process, {nr:,} readings, batches of {SCORING_BATCH}", core_cpu, "readings/CPU-s",
            ">= 200k/core", core_cpu >= 200_000)
    rep.add("B1", "LineScorer.process (wall clock)", core_wall, "readings/s")
    rep.add("B1", "  readings flagged anomalous (explained)", round(100 * counts["anomalous_readings"] / nr, 1), "%")
    rep.add("B1", "  cell predictions explained (SHAP)", counts["explained_predictions"],
            f"of {counts['predictions']:,}")
    det_pyod_cpu = nr / np.median([c for _, c in det_pyod])
    step_cpu = nr / np.median([c for _, c in step])
    rep.add("B1", "station detectors as LineScorer runs them (_score step)", step_cpu, "readings/CPU-s",
            ">= 200k/core", step_cpu >= 200_000)
    rep.add("B1", "  the same, batches of 20,000", nr / np.median([c for _, c in step_big]), "readings/CPU-s")
    rep.add("B1", "ratio detector step / river (CPU)", round(step_cpu / river_cpu, 2), "x", ">= 10x",
            step_cpu / river_cpu >= 10)
    for name, label in (("_score", "station detectors"), ("incidents", "incident tracker"),
                        ("_update_buffers", "lot buffers"), ("_cell_events", "cell features + genealogy"),
                        ("_predict", "defect model (LightGBM, type, SHAP)"), ("_trim", "state trim")):
        rep.add("B1", f"  per reading: {label}", round(1e6 * parts.cpu[name] / nr, 1), "us CPU")
    rest = parts_cpu - sum(parts.cpu.values())
    rep.add("B1", "  per reading: rest of LineScorer.process", round(1e6 * rest / nr, 1), "us CPU")
    rep.add("B1", "station detectors alone (StationModel.score)", det_cpu, "readings/CPU-s")
    rep.add("B1", "  before: members via PyOD decision_function", det_pyod_cpu, "readings/CPU-s")
    rep.add("B1", "  speed-up of the fast IForest/HBOS paths", round(det_cpu / det_pyod_cpu, 2), "x")
    rep.add("B1", f"river HalfSpaceTrees + MinMaxScaler, {n_river:,} readings", river_cpu, "readings/CPU-s")
    rep.add("B1", "river (wall clock)", river_wall, "readings/s")
    rep.add("B1", "ratio LineScorer / river (CPU)", round(ratio, 2), "x", ">= 10x", ratio >= 10)
    rep.add("B1", "ratio station detectors alone / river (CPU)", round(det_cpu / river_cpu, 2), "x")
    rep.details["B1"] = {"readings": nr, "river_readings": n_river, "core_cpu_runs": ours, "river_runs": riv,
                         "detector_runs": det, "detector_pyod_runs": det_pyod, "models": str(C.models_dir(args.models)),
                         "detector_step_runs": step, "detector_step_runs_batch20000": step_big,
                         "step_cpu_seconds": parts.cpu, "step_run_cpu_seconds": parts_cpu, "counts": counts}


# ================================================================================================ B2
def _bare_kafka_python(topics: list[str], total: int) -> dict:
    from kafka import KafkaConsumer

    cons = KafkaConsumer(*topics, bootstrap_servers=C.KAFKA, group_id=f"bench-bare-{uuid.uuid4().hex[:6]}",
                         auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=SCORING_BATCH)
    got, t_first, c0 = 0, None, time.process_time()
    try:
        while got < total:
            for recs in cons.poll(timeout_ms=500).values():
                if t_first is None:
                    t_first, c_first = time.perf_counter(), time.process_time()
                for r in recs:
                    orjson.loads(r.value)
                got += len(recs)
        t_last, c_last = time.perf_counter(), time.process_time()
    finally:
        cons.close()
    return {"messages": got, "wall_s": t_last - t_first, "cpu_s": c_last - c_first, "startup_cpu_s": c_first - c0}


def _bare_confluent(topics: list[str], total: int) -> dict:
    from confluent_kafka import Consumer

    cons = Consumer({"bootstrap.servers": C.KAFKA, "group.id": f"bench-conf-{uuid.uuid4().hex[:6]}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
    cons.subscribe(topics)
    got, t_first = 0, None
    try:
        while got < total:
            msgs = cons.consume(num_messages=SCORING_BATCH, timeout=0.5)
            if msgs and t_first is None:
                t_first, c_first = time.perf_counter(), time.process_time()
            for m in msgs:
                if m.error() is None:
                    orjson.loads(m.value())
                    got += 1
        t_last, c_last = time.perf_counter(), time.process_time()
    finally:
        cons.close()
    return {"messages": got, "wall_s": t_last - t_first, "cpu_s": c_last - c_first}


def _relay(client: str, topics: list[str], total: int, out_topic: str) -> dict:
    """The service's minimum Kafka work without scoring or a store: poll + ``orjson.loads`` each message, produce
    one message per message (the score messages) with the service's producer, flush every batch, commit offsets."""
    from cellwatch.config import load_settings
    from cellwatch.ingest import kafka_client as K

    s = load_settings({}, environ={}, kafka=C.KAFKA, kafka_client=client, metrics_port=0,
                      group_id=f"bench-relay-{uuid.uuid4().hex[:6]}", batch_max_records=SCORING_BATCH)
    cons, prod = K.make_consumer(s), K.make_producer(s)
    cons.subscribe(topics, on_assign=lambda tps: None, on_revoke=lambda tps: None)
    got, t_first = 0, None
    try:
        while got < total:
            msgs = cons.poll_batch(SCORING_BATCH, 0.5)
            if not msgs:
                continue
            if t_first is None:
                t_first, c_first = time.perf_counter(), time.process_time()
            last: dict = {}
            for m in msgs:
                orjson.loads(m.value)
                prod.send(out_topic, m.value, m.key)
                last[K.TP(m.topic, m.partition)] = m.offset + 1
            prod.flush(60)
            cons.commit(last)
            got += len(msgs)
        t_last, c_last = time.perf_counter(), time.process_time()
    finally:
        cons.close()
        prod.close()
    return {"messages": got, "wall_s": t_last - t_first, "cpu_s": c_last - c_first}


def _service_run(models: Path, tr: str, tc: str, rid: str, n: int, workers: int, timeout_s: float,
                 extra: list[str] | None = None) -> dict:
    """``workers`` cellwatch run processes in one group until every reading is stored; rates and CPU."""
    schema = f"bench_{rid}_{workers}w_{uuid.uuid4().hex[:4]}"
    group = f"bench-{rid}-{workers}w-{uuid.uuid4().hex[:4]}"
    procs = [C.start(C.run_cmd(models, tr, tc, rid, schema, group, worker=f"w{i}", extra=extra or []),
                     f"run-{rid}-{workers}w-{i}") for i in range(workers)]
    try:
        # each process's CPU is counted from its own first pipeline_stats row on (its start-up - imports, model
        # loading, joining the group - is excluded, whenever it happens), against the readings it committed since
        first: dict[int, tuple[float, int]] = {}

        def done_by_worker() -> dict[str, int]:
            rows = C.pg("SELECT worker, sum(readings) FROM pipeline_stats GROUP BY worker", schema)
            return {w: int(s) for w, s in rows}

        def sample() -> None:
            if len(first) == workers:
                return
            done = done_by_worker()
            for i, p in enumerate(procs):
                if i not in first and f"w{i}" in done:
                    first[i] = (C.cpu_seconds(p.pid), done[f"w{i}"])

        C.wait_scored(schema, n, procs, timeout_s, sample=sample)
        end_cpu, done = [C.cpu_seconds(p.pid) for p in procs], done_by_worker()
        counted = [i for i in first]
        cpu = sum(end_cpu[i] - first[i][0] for i in counted)
        n_cpu = sum(done.get(f"w{i}", 0) - first[i][1] for i in counted)
        rate = C.steady_rate(schema)
        n = rate["scored"]  # what was scored when the processes were sampled (>= n: the last batch may overshoot)
        e2e = C.pg("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY batch_ms), count(*) FROM pipeline_stats",
                   schema)
    finally:
        for p in procs:
            C.stop(p)
    C.drop_schema(schema)
    return {**rate, "cpu_s_after_first_batch": cpu, "cpu_rate": n_cpu / cpu if cpu > 0 else float("nan"),
            "cpu_counted_workers": len(counted), "readings_cpu_counted": n_cpu,
            "first_to_last_rate": n / rate["first_to_last_s"], "median_batch_ms": e2e[0][0] if e2e else None,
            "workers": workers}


def _prepare_topic(n: int, partitions: int = 4, seed: int = 11) -> tuple[str, str, str, int, int]:
    readings, cells = C.load_sim(n, seed=seed)
    tr, tc, rid = C.new_topics(partitions)
    info = C.preload(readings, cells, tr, tc)
    print(f"pre-loaded {info['readings']:,} readings + {info['cell_results']:,} cell results into {tr} "
          f"({partitions} partitions) in {info['seconds']:.0f} s with {info['producer']}", flush=True)
    return tr, tc, rid, len(readings), len(cells)


def _clients(args) -> list[str]:
    """The service's Kafka clients to measure (``--clients``); confluent only when installed."""
    out = [c.strip() for c in args.clients.split(",") if c.strip()]
    bad = set(out) - {"kafka-python", "confluent"}
    if bad:
        raise SystemExit(f"--clients: unknown client(s) {', '.join(sorted(bad))}")
    if "confluent" in out and not C.confluent_available():
        print("confluent-kafka not installed: measuring kafka-python only", flush=True)
        out.remove("confluent")
    return out


def _client_flag(client: str) -> list[str]:
    return ["--kafka-client", client]


#: ``cellwatch run`` flags that give the second session's behaviour (``--compare-old``)
OLD_SERVICE_FLAGS = ["--no-write-overlap", "--batch-max-ms", "500"]


def _service_readings(args, nr: int) -> int:
    """Readings each service run consumes from the pre-loaded topic: all, or the first ``--service-readings``."""
    return min(nr, args.service_readings) if args.service_readings else nr


def bench_b2(args, rep: C.Report, keep_topic: bool = False) -> dict:
    """(a) bare consumers of both clients, (b) ``cellwatch run`` with each client; ratios b/a per client."""
    n = 30_000 if args.quick else args.readings
    models = C.models_dir(args.models)
    clients = _clients(args)
    tr, tc, rid, nr, nc = _prepare_topic(n)
    out = {"topic": (tr, tc, rid, nr, nc), "service": {}}
    try:
        bare = {"kafka-python": _bare_kafka_python([tr, tc], nr + nc)}
        if C.confluent_available():
            bare["confluent"] = _bare_confluent([tr, tc], nr + nc)
        rate = {c: b["messages"] / b["wall_s"] for c, b in bare.items()}
        cpu = {c: b["messages"] / b["cpu_s"] for c, b in bare.items()}
        relay = {}
        if args.relay_messages:  # the Kafka ceiling of a service: consume + produce one message per message
            for client in clients:
                relay[client] = _relay(client, [tr, tc], min(args.relay_messages, nr + nc), f"bench.relay.{rid}")
                r = relay[client]
                rep.add("B2", f"(c) {client} relay: poll + loads + produce 1 msg each + flush + commit, "
                              f"first {r['messages']:,} messages", r["messages"] / r["wall_s"], "msg/s")
                rep.add("B2", f"(c) {client} relay per CPU second (ceiling of a service with this client)",
                        r["messages"] / r["cpu_s"], "msg/CPU-s")
                rep.add("B2", f"(c) {client} relay / bare kafka-python (wall): the b/a a zero-cost scorer and "
                              "store would reach", round(r["messages"] / r["wall_s"] / rate["kafka-python"], 3), "")
        rep.add("B2", f"(a) bare kafka-python poll + orjson.loads, {nr + nc:,} messages", rate["kafka-python"],
                "msg/s")
        rep.add("B2", "(a) bare kafka-python, per CPU second", cpu["kafka-python"], "msg/CPU-s")
        if "confluent" in bare:
            rep.add("B2", "(a') bare confluent-kafka consume + orjson.loads", rate["confluent"], "msg/s")
            rep.add("B2", "(a') bare confluent-kafka, per CPU second", cpu["confluent"], "msg/CPU-s")
            rep.add("B2", "bare confluent-kafka / bare kafka-python", round(rate["confluent"] / rate["kafka-python"],
                                                                            1), "x")
        variants = [("", [])]
        if args.compare_old:  # the second session's service: writes not overlapped, batches wait up to 500 ms
            variants.append((" [old: --no-write-overlap --batch-max-ms 500]", OLD_SERVICE_FLAGS))
        for client, (label, flags) in ((c, v) for c in clients for v in variants):
            load = C.load_average()
            svc = _service_run(models, tr, tc, rid, _service_readings(args, nr), 1, args.timeout,
                               extra=_client_flag(client) + flags)
            svc["load_average"] = load
            out["service"][client + label] = svc
            svc_rate = svc["first_to_last_rate"]
            tag = f"(b) cellwatch run --kafka-client {client}{label}"
            rep.add("B2", f"{tag}, all sinks, first {svc['scored']:,} readings of the topic (first -> last batch), "
                          f"load {load:.1f}", svc_rate, "readings/s")
            rep.add("B2", f"{tag}, steady 10 %-90 %", svc["steady_rate"], "readings/s")
            rep.add("B2", f"{tag}, per CPU second of the service", svc["cpu_rate"], "readings/CPU-s")
            ratio = svc_rate / rate["kafka-python"]
            rep.add("B2", f"ratio b/a: {client}{label} service / bare kafka-python (wall)", round(ratio, 3), "",
                    ">= 0.8", ratio >= 0.8)
            if client != "kafka-python" and client in rate:
                rep.add("B2", f"ratio b/a: {client}{label} service / bare {client} (wall)",
                        round(svc_rate / rate[client], 3), "")
            if client in cpu:
                rep.add("B2", f"ratio b/a: {client}{label} service / bare {client} (per CPU second)",
                        round(svc["cpu_rate"] / cpu[client], 3), "")
        rep.details["B2"] = {"readings": nr, "cell_results": nc, "bare": bare, "relay": relay,
                             "service": out["service"]}
    finally:
        if not keep_topic:
            C.delete_topics([tr, tc, f"bench.relay.{rid}", *C.output_topics(rid)])
    return out


# ================================================================================================ B5
def bench_b5(args, rep: C.Report, prepared: dict | None = None) -> None:
    """Per client: two ``cellwatch run`` in one group vs one (B2's single run when B2 ran before)."""
    n = 30_000 if args.quick else args.readings
    models = C.models_dir(args.models)
    if prepared:
        tr, tc, rid, nr, _ = prepared["topic"]
        ones = dict(prepared["service"])
    else:
        tr, tc, rid, nr, _ = _prepare_topic(n)
        ones = {}
    details: dict = {}
    try:
        for client in _clients(args):
            flag = _client_flag(client)
            load = C.load_average()
            k = _service_readings(args, nr)
            one = ones.get(client) or _service_run(models, tr, tc, rid, k, 1, args.timeout, extra=flag)
            two = _service_run(models, tr, tc, rid, k, 2, args.timeout, extra=flag)
            ratio = two["steady_rate"] / one["steady_rate"]
            tag = f"[{client}]"
            rep.add("B5", f"{tag} 1 x cellwatch run, first {one['scored']:,} of {nr:,} readings, 4 partitions, steady, "
                          f"load {load:.1f}",
                    one["steady_rate"], "readings/s")
            rep.add("B5", f"{tag} 2 x cellwatch run in one group, steady", two["steady_rate"], "readings/s")
            rep.add("B5", f"{tag} speed-up 2 vs 1 (steady 10 %-90 %)", round(ratio, 2), "x", ">= 1.7x", ratio >= 1.7)
            rep.add("B5", f"{tag} speed-up 2 vs 1 (first -> last batch)",
                    round(two["first_to_last_rate"] / one["first_to_last_rate"], 2), "x")
            rep.add("B5", f"{tag} readings per CPU second, 1 process", one["cpu_rate"], "readings/CPU-s")
            rep.add("B5", f"{tag} readings per CPU second, 2 processes together", two["cpu_rate"], "readings/CPU-s")
            rep.add("B5", f"{tag} CPU efficiency 2 vs 1 (1.0 = no work duplicated by splitting)",
                    round(two["cpu_rate"] / one["cpu_rate"], 2), "")
            details[client] = {"one": one, "two": two, "load_average": load}
        rep.details["B5"] = details
    finally:
        C.delete_topics([tr, tc, f"bench.relay.{rid}", *C.output_topics(rid)])


# ================================================================================================ B3
def _paced_producer(readings: pd.DataFrame, topic: str, rate: float, seconds: float, stop: threading.Event,
                    sent: list[int]) -> None:
    """Produce ``rate`` readings/s for ``seconds``, each with ts = now (re-encoded per 20 ms tick)."""
    p = C.FastProducer()
    tick = 0.02
    per_tick = max(1, round(rate * tick))
    r = readings.sort_values("ts", kind="stable").reset_index(drop=True)
    keys = C.reading_keys(r)
    pos, t0 = 0, time.monotonic()
    k = 0
    while not stop.is_set() and time.monotonic() - t0 < seconds and pos < len(r):
        chunk = r.iloc[pos:pos + per_tick].copy()
        now = pd.Timestamp.now(tz="UTC")
        chunk["ts"] = now
        now_ms = int(now.value // 1_000_000)
        for v, key in zip(contract.encode_readings(chunk), keys[pos:pos + per_tick], strict=True):
            p.send(topic, v, key, timestamp_ms=now_ms)
        p.poll()
        pos += len(chunk)
        k += 1
        delay = t0 + k * tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    p.flush()
    sent.append(pos)


def _output_latencies(topic: str, ts_field: str, since: float = 0.0, timeout_s: float = 20.0) -> np.ndarray:
    """Seconds from the message's ``ts_field`` (a reading time) to its Kafka timestamp (published after commit)."""
    from kafka import KafkaConsumer

    cons = KafkaConsumer(topic, bootstrap_servers=C.KAFKA, auto_offset_reset="earliest", enable_auto_commit=False,
                         group_id=None, consumer_timeout_ms=int(timeout_s * 1000))
    out = []
    try:
        for m in cons:
            t = orjson.loads(m.value).get(ts_field)
            if t and pd.Timestamp(t).timestamp() >= since:
                out.append(m.timestamp / 1000 - pd.Timestamp(t).timestamp())
    finally:
        cons.close()
    return np.asarray(out)


def bench_b3(args, rep: C.Report) -> None:
    """Latency at a fixed input rate, once per Kafka client (each on fresh topics)."""
    for client in _clients(args):
        _b3_one(args, rep, client)
        if args.compare_old:
            _b3_one(args, rep, client, OLD_SERVICE_FLAGS)


def _b3_one(args, rep: C.Report, client: str, flags: list[str] | None = None) -> None:
    b = f"B3 {client}" + (" [old: " + " ".join(flags) + "]" if flags else "")
    rate = args.rate
    warm, seconds = (10, 20) if args.quick else (args.b3_warm, args.b3_seconds)
    models = C.models_dir(args.models)
    readings, _ = C.load_sim(int(rate * (warm + seconds) * 2), seed=13)
    tr, tc, rid = C.new_topics(4)
    schema = f"bench_{rid}_lat"
    load = C.load_average()
    proc = C.start(C.run_cmd(models, tr, tc, rid, schema, f"bench-{rid}-lat",
                             extra=_client_flag(client) + (flags or [])), f"run-{rid}-lat")
    try:
        log = C.CACHE / f"run-{rid}-lat.log"
        t0 = time.monotonic()
        while b"partitions assigned" not in (log.read_bytes() if log.exists() else b""):
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                raise RuntimeError(f"cellwatch run did not join the group; see {log}")
            time.sleep(0.5)
        stop, sent = threading.Event(), []
        t_start = time.monotonic()
        # the first `warm` seconds (first-batch JIT compilation, connections) are produced but not measured
        measured_from = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=warm)
        _paced_producer(readings, tr, rate, warm + seconds, stop, sent)
        achieved = sent[0] / (time.monotonic() - t_start)
        C.wait_scored(schema, sent[0], [proc], args.timeout)
        time.sleep(1.5)
    finally:
        C.stop(proc)
    since = measured_from.to_pydatetime()
    sc = C.pg("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM scored_at - ts)), "
              "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM scored_at - ts)), count(*) "
              "FROM scores WHERE ts >= %s", schema, (since,))
    ps = C.pg("SELECT e2e_p50_ms, e2e_p99_ms, readings FROM pipeline_stats WHERE e2e_p50_ms IS NOT NULL "
              "AND batch_end >= %s", schema, (since + pd.Timedelta(seconds=1),))
    ps = np.array(ps, dtype="float64") if ps else np.zeros((0, 3))
    cutoff = measured_from.timestamp()
    out_lat = _output_latencies(f"bench.scores.{rid}", "ts", since=cutoff)
    inc_lat = _output_latencies(f"bench.incidents.{rid}", "updated_at", since=cutoff)
    n_inc = C.count(schema, "incidents")
    C.drop_schema(schema)
    C.delete_topics([tr, tc, *C.output_topics(rid)])
    rep.add(b, f"input rate (target {rate:,.0f}/s, {warm} s warm-up + {seconds} s measured, ts = now), "
               f"load {load:.1f}", achieved, "readings/s")
    rep.add(b, f"reading ts -> scored (scores.scored_at - ts) p50, {int(sc[0][2]):,} readings",
            float(sc[0][0]) * 1000, "ms")
    rep.add(b, "reading ts -> scored p99", float(sc[0][1]) * 1000, "ms")
    if len(ps):
        p99 = float(np.percentile(ps[:, 1], 99))
        rep.add(b, f"Kafka ts -> batch committed (pipeline_stats), median of {len(ps)} batch p50s",
                float(np.median(ps[:, 0])), "ms")
        rep.add(b, "Kafka ts -> batch committed, 99th pct of batch p99s", p99, "ms", "< 500 ms", p99 < 500)
    if len(out_lat):
        p99 = float(np.percentile(out_lat, 99) * 1000)
        rep.add(b, "reading ts -> score published (after commit) p50", float(np.median(out_lat) * 1000), "ms")
        rep.add(b, "reading ts -> score published (after commit) p99", p99, "ms", "< 500 ms", p99 < 500)
    if len(inc_lat):
        p99 = float(np.percentile(inc_lat, 99) * 1000)
        rep.add(b, f"reading ts -> incident published (after commit) p50, {len(inc_lat)} updates",
                float(np.median(inc_lat) * 1000), "ms")
        rep.add(b, "reading ts -> incident published p99", p99, "ms", "< 500 ms", p99 < 500)
    rep.details[b] = {"client": client, "rate": rate, "achieved": achieved, "warm_s": warm, "seconds": seconds,
                      "sent": sent[0], "incidents": n_inc, "batches": len(ps), "load_average": load}


# ================================================================================================ B4
def bench_b4(args, rep: C.Report) -> None:
    n = 60_000 if args.quick else args.b4_readings
    models = C.models_dir(args.models)
    client = args.b4_client or ("confluent" if C.confluent_available() else "kafka-python")
    tr, tc, rid, nr, _ = _prepare_topic(n, seed=17)
    schema = f"bench_{rid}_mem"
    load = C.load_average()
    proc = C.start(C.run_cmd(models, tr, tc, rid, schema, f"bench-{rid}-mem",
                             extra=_client_flag(client) + shlex.split(args.b4_args)), f"run-{rid}-mem")
    samples: list[tuple[float, int, int]] = []  # (t, readings done, rss)
    try:
        t0 = time.monotonic()
        while True:
            done = C.pg("SELECT coalesce(sum(readings), 0) FROM pipeline_stats", schema)
            done = int(done[0][0]) if done else 0
            samples.append((time.monotonic() - t0, done, C.rss_bytes(proc.pid)))
            if done >= nr * 0.995 and C.count(schema, "readings") >= nr:
                break
            if args.b4_minutes and time.monotonic() - t0 > args.b4_minutes * 60:
                print(f"B4: time budget reached after {done:,} readings", flush=True)
                break
            if proc.poll() is not None:
                raise RuntimeError("cellwatch run exited")
            if time.monotonic() - t0 > args.timeout * 5:
                raise TimeoutError("B4 did not finish")
            time.sleep(3)
    finally:
        C.stop(proc)
        C.drop_schema(schema)
        C.delete_topics([tr, tc, *C.output_topics(rid)])
    s = np.array(samples, dtype="float64")
    nr_topic, nr = nr, max(1, int(s[:, 1].max()))  # readings committed by the service (all, or within the budget)

    def rss_at(frac: float) -> float:
        """Median RSS of the samples within 10 % of progress up to ``frac`` (single samples swing with batches)."""
        sel = (s[:, 1] >= (frac - 0.1) * nr) & (s[:, 1] <= frac * nr)
        if not sel.any():
            sel = np.arange(len(s)) == min(int(np.searchsorted(s[:, 1], frac * nr)), len(s) - 1)
        return float(np.median(s[sel, 2])) / 2**20

    tail = s[s[:, 1] >= 0.1 * nr]
    slope = np.polyfit(tail[:, 1] / 1e6, tail[:, 2] / 2**20, 1)[0] if len(tail) >= 3 else float("nan")
    growth = rss_at(1.0) - rss_at(0.1)
    rep.add("B4", f"readings committed (of {nr_topic:,} pre-loaded), --kafka-client {client}, "
                  f"{s[-1, 0] / 60:.0f} min, load at start {load:.1f}", nr, "readings")
    rep.add("B4", f"RSS at 10 % of {nr:,} readings (median of the samples 0-10 %)", rss_at(0.1), "MiB")
    rep.add("B4", "RSS at 50 % (median 40-50 %)", rss_at(0.5), "MiB")
    rep.add("B4", "RSS at 100 % (median 90-100 %)", rss_at(1.0), "MiB")
    rep.add("B4", "largest RSS sample (transient per-batch allocations)", float(s[:, 2].max()) / 2**20, "MiB")
    rep.add("B4", "RSS slope 10 % -> 100 % (least squares)", round(slope, 1), "MiB per M readings",
            "flat (< 10 % growth)", growth < 0.1 * rss_at(0.1))
    states = _state_lines(C.CACHE / f"run-{rid}-mem.log")
    if states:
        first, last = states[0], states[-1]
        for key in ("open_cells", "buffer_rows", "incident_streams", "streams"):
            if key in last:
                rep.add("B4", f"scoring state {key}: first -> last log line (every 60 s)",
                        f"{first.get(key, 0):,} -> {last[key]:,}", "items")
    rep.details["B4"] = {"readings": nr, "preloaded": nr_topic, "client": client, "load_average": load,
                         "samples": samples, "state_sizes": states}


def _state_lines(log: Path) -> list[dict]:
    """The service's "scoring state: {...}" log lines (WindowState.sizes, once a minute) as dicts."""
    import ast
    import re

    if not log.exists():
        return []
    found = re.findall(r"scoring state: (\{[^}]*\})", log.read_text(errors="replace"))
    return [ast.literal_eval(s) for s in found]


# ================================================================================================ B6
def _train_worker(data: str, models: str, out: str) -> None:
    """Runs in a fresh process: train_models with every stage timed; peak RSS (ru_maxrss) after each stage."""
    import json

    import cellwatch.detect.train as T
    from cellwatch.detect.defect import DefectModel

    stages: list[dict] = []
    t_all = time.perf_counter()

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            res = fn(*a, **kw)
            stages.append({"stage": name, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            Path(out + ".partial").write_text(json.dumps(stages))  # stages so far, if the run is cut short
            return res
        return wrapper

    T.load_dataset = timed("load data", T.load_dataset)
    T.fit_station_models = timed("station detectors (fit_station_models)", T.fit_station_models)
    T.replay_features = timed("defect features (replay through LineScorer)", T.replay_features)
    DefectModel.fit = timed("defect model (LightGBM fit + calibration)", DefectModel.fit)
    summary = T.train_models(data, models, progress=False)
    Path(out).write_text(json.dumps({"stages": stages, "total_wall_s": time.perf_counter() - t_all,
                                     "total_cpu_s": time.process_time(),
                                     "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                     "summary": summary}, default=str))


def bench_b6(args, rep: C.Report) -> None:
    import json
    import tempfile

    hours, lines, seed = (4, 1, 1001) if args.quick else (args.b6_hours, 6, 0)
    data = C.sim_dir(hours, lines, seed=seed)
    with tempfile.TemporaryDirectory(prefix="cellwatch-b6-") as tmp:
        out = C.CACHE / f"b6-{uuid.uuid4().hex[:6]}.json"
        print(f"training in a subprocess; stage figures so far in {out}.partial", flush=True)
        subprocess.run([sys.executable, __file__, "_train", str(data), str(Path(tmp) / "models"), str(out)],
                       check=True)
        res = json.loads(out.read_text())
    s = res["summary"]
    label = f"{s['readings']:,} readings / {s['defect_cells']:,} cells"
    for st in res["stages"]:
        rep.add("B6", f"{st['stage']}", round(st["wall_s"], 1), "s wall", f"cpu {st['cpu_s']:.0f} s")
        rep.add("B6", f"  peak RSS after: {st['stage'].split(' (')[0]}", round(st["peak_rss_mib"]), "MiB")
    rep.add("B6", f"cellwatch train total, {label}", round(res["total_wall_s"], 1), "s wall",
            f"cpu {res['total_cpu_s']:.0f} s")
    rep.add("B6", "peak RSS of the training process", round(res["peak_rss_mib"]), "MiB")
    rep.details["B6"] = res


# ================================================================================================ profile
def profile(args) -> None:
    """pyinstrument on the scoring core (B1 data), or py-spy on a ``cellwatch run`` consuming a B2-style topic."""
    if args.target == "core":
        from pyinstrument import Profiler

        from cellwatch.detect.core import load_scorer

        readings, _ = C.load_sim(50_000 if args.quick else 200_000, seed=7)
        scorer = load_scorer(C.models_dir(args.models))
        batches = _core_batches(readings, SCORING_BATCH)
        state = scorer.new_state()
        prof = Profiler(interval=0.001)
        prof.start()
        for b in batches:
            scorer.process(b, state)
        prof.stop()
        print(prof.output_text(unicode=False, color=False, show_all=False))
        if args.html:
            Path(args.html).write_text(prof.output_html())
        return
    n = 40_000 if args.quick else 200_000
    tr, tc, rid, _nr, _ = _prepare_topic(n)
    schema = f"bench_{rid}_prof"
    proc = C.start(C.run_cmd(C.models_dir(args.models), tr, tc, rid, schema, f"bench-{rid}-prof"),
                   f"run-{rid}-prof")
    try:
        while C.count(schema) == 0:
            time.sleep(0.5)
        spy = subprocess.run(["py-spy", "record", "--pid", str(proc.pid), "--duration", str(args.duration),
                              "--format", "speedscope" if args.html else "raw", "--output",
                              args.html or str(C.CACHE / f"pyspy-{rid}.txt"), "--rate", "50"], check=False)
        print(f"py-spy exit {spy.returncode}; output {args.html or C.CACHE / f'pyspy-{rid}.txt'}")
    finally:
        C.stop(proc)
        C.drop_schema(schema)
        C.delete_topics([tr, tc, *C.output_topics(rid)])


# ================================================================================================ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("b1", "b2", "b3", "b4", "b5", "b6", "b25", "all", "profile"):
        p = sub.add_parser(name)
        p.add_argument("--quick", action="store_true", help="small sizes (while others use the machine)")
        p.add_argument("--models", help="model registry (default: trained once on 4 h x 1 line, cached)")
        p.add_argument("--json", type=Path, help="write the figures to this JSON file")
        p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for a service run")
        p.add_argument("--rate", type=float, default=5000, help="B3 input rate (readings/s)")
        p.add_argument("--b3-warm", type=int, default=30, help="B3: seconds produced before measuring")
        p.add_argument("--b3-seconds", type=int, default=120, help="B3: seconds measured")
        p.add_argument("--b6-hours", type=float, default=24, help="B6: hours of 6 lines (24 h: 1.08 M readings)")
        p.add_argument("--b1-readings", type=int, default=200_000, help="B1 data size (readings)")
        p.add_argument("--readings", type=int, default=1_000_000, help="B2/B5 topic size (readings)")
        p.add_argument("--b4-readings", type=int, default=5_000_000, help="B4 run length")
        p.add_argument("--service-readings", type=int, default=0,
                       help="B2/B5: each service run stops after this many readings of the topic (0 = all)")
        p.add_argument("--b4-minutes", type=float, default=0,
                       help="B4: stop after this many minutes (0 = when every reading is stored)")
        p.add_argument("--clients", default="kafka-python,confluent",
                       help="B2/B3/B5: the service's Kafka clients to measure, comma-separated")
        p.add_argument("--relay-messages", type=int, default=200_000,
                       help="B2: messages of the consume+produce relay per client (the Kafka ceiling; 0 = skip)")
        p.add_argument("--compare-old", action="store_true",
                       help="B2/B3: also run each client with " + " ".join(OLD_SERVICE_FLAGS) + " (the old service)")
        p.add_argument("--b4-args", default="", help="B4: extra `cellwatch run` flags, e.g. '--align-partitions-s 0'")
        p.add_argument("--b4-client", choices=("kafka-python", "confluent"),
                       help="B4: the service's Kafka client (default: confluent when installed)")
        if name == "profile":
            p.add_argument("target", choices=("core", "service"))
            p.add_argument("--html", help="write pyinstrument HTML / py-spy speedscope here")
            p.add_argument("--duration", type=int, default=30)
    tr = sub.add_parser("_train")
    tr.add_argument("data")
    tr.add_argument("models")
    tr.add_argument("out")
    args = ap.parse_args()
    C.CACHE.mkdir(parents=True, exist_ok=True)
    if args.cmd == "_train":
        _train_worker(args.data, args.models, args.out)
        return
    if args.cmd == "profile":
        profile(args)
        return
    rep = C.Report()
    rep.details["load_average_start"] = C.load_average()
    rep.details["started"] = pd.Timestamp.now(tz="UTC").isoformat()
    todo = {"all": ("b1", "b2", "b5", "b3", "b4", "b6"), "b25": ("b2", "b5")}.get(args.cmd, (args.cmd,))
    prepared = None
    for name in todo:
        print(f"--- {name.upper()} (load average {C.load_average():.1f})", flush=True)
        if name == "b2":
            prepared = bench_b2(args, rep, keep_topic="b5" in todo)
        elif name == "b5":
            bench_b5(args, rep, prepared)
        else:
            globals()[f"bench_{name}"](args, rep)
        rep.write(args.json)
    rep.details["load_average_end"] = C.load_average()
    print(rep.table())
    rep.write(args.json)


if __name__ == "__main__":
    main()
