"""The pipeline core: a micro-batch of readings in, scores, incidents and defect predictions out. No I/O.

The same :class:`LineScorer` runs offline (``cellwatch evaluate``, the demo) and online (the Kafka
service), so what is measured offline is what runs online. Per batch it

1. routes the readings per (station, recipe) to the station's anomaly detector (per-line window state);
2. folds the scored readings into incidents (:class:`~cellwatch.detect.incidents.IncidentTracker`);
3. keeps the recent scored readings of the electrode stations (the genealogy lots' anomaly aggregates)
   and one feature row per open cell;
4. emits one defect prediction per cell reading at a cell station (winding .. aging), all cells of the
   batch in one LightGBM call. An ``eol`` reading closes the cell (the EOL test is the label source).

State lives in :class:`ScoringState`; :meth:`LineScorer.warm_up` rebuilds it after a restart from the
readings read back from the store, after which :meth:`LineScorer.process` gives the same output as an
uninterrupted run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import orjson
import pandas as pd

from cellwatch.contract import READING_KEYS
from cellwatch.detect.cell_features import (
    BUFFERED_STATIONS,
    CARRIED_FEATURES,
    FEATURE_NAMES,
    FEATURE_STATIONS,
    STAGE,
    lot_features,
    lots_of,
    own_features,
    ts_ns,
)
from cellwatch.detect.defect import DefectModel
from cellwatch.detect.incidents import IncidentTracker
from cellwatch.detect.registry import ModelLoadError, ModelRegistry, RegistryError
from cellwatch.ingest.schema import TABLE
from cellwatch.stations import station, units

SCORE_COLUMNS = [c for c in TABLE["scores"].column_names if c != "scored_at"]
INCIDENT_COLUMNS = TABLE["incidents"].column_names
PREDICTION_COLUMNS = TABLE["cell_predictions"].column_names
BAND_COLUMNS = TABLE["sensor_bands"].column_names
ANY = "*"


@dataclass
class StationModels:
    """The ``stations`` artefact: one fitted StationModel per (station, recipe); recipe ``*`` = any recipe."""

    models: dict[tuple[str, str], object]
    #: seconds the electrode takes from each electrode station to the winder (median, from the training genealogy)
    material_lags: dict[str, float] = field(default_factory=dict)
    incident_k: int = 3
    incident_n: int = 5
    close_after: int = 10

    def model_for(self, station_name: str, recipe: str | None) -> tuple[tuple[str, str], object] | None:
        key = (station_name, recipe if recipe is not None else ANY)
        if key in self.models:
            return key, self.models[key]
        key = (station_name, ANY)
        return (key, self.models[key]) if key in self.models else None

    @property
    def stations(self) -> list[str]:
        return sorted({s for s, _ in self.models})

    @property
    def history(self) -> int:
        return max((int(m.history_) for m in self.models.values()), default=0)


@dataclass
class ScoringState:
    """Everything a LineScorer carries between micro-batches (one per consumer / partition set)."""

    model_states: dict[tuple[str, str], object] = field(default_factory=dict)
    tracker: IncidentTracker | None = None
    #: per electrode station: recent scored readings of every line (lot aggregates)
    buffers: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: readings seen per (line, station): the stream position of the next reading
    positions: dict[tuple[str, str], int] = field(default_factory=dict)
    #: is_anomaly of the last buffered reading per (line, station): whether the next anomalous one starts a run
    last_flags: dict[tuple[str, str], bool] = field(default_factory=dict)
    #: the open cells (between their first cell-station reading and EOL): carried features, arrival, lots
    cells: OpenCells = field(default_factory=lambda: OpenCells())
    arrivals: int = 0


@dataclass
class OpenCells:
    """Per open cell, keyed by cell id: its last accumulated :data:`CARRIED_FEATURES` row, the arrival number of
    its last event (the oldest are dropped first beyond ``max_open_cells``) and the lots its readings named
    (first-seen order, no duplicates)."""

    rows: dict[str, np.ndarray] = field(default_factory=dict)
    arrival: dict[str, int] = field(default_factory=dict)
    lots: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def close(self, cells) -> None:
        for c in cells:
            self.rows.pop(c, None)
            self.arrival.pop(c, None)
            self.lots.pop(c, None)

    def keep_newest(self, n: int) -> None:
        if len(self.rows) > n:
            self.close(sorted(self.arrival, key=self.arrival.__getitem__)[:len(self.rows) - n])


@dataclass
class BatchResult:
    scores: pd.DataFrame       #: TABLE["scores"] columns except scored_at; one row per input reading
    incidents: pd.DataFrame    #: TABLE["incidents"] columns; incidents opened/updated/closed by the batch
    predictions: pd.DataFrame  #: TABLE["cell_predictions"] columns; one row per (cell, station) event
    #: the defect-model feature rows behind the predictions (cell_id, station, line, ts + FEATURE_NAMES)
    features: pd.DataFrame = field(default_factory=pd.DataFrame)


class LineScorer:
    """Pure scoring core: station detectors + incidents + per-cell defect predictions with genealogy."""

    def __init__(self, stations: StationModels, defect: DefectModel | None, model_version: str,
                 lot_memory: int = 3000, max_open_cells: int = 200_000, explain_top: int = 5,
                 explain_from: float = 0.5):
        self.stations = stations
        self.defect = defect
        self.model_version = model_version
        self.lot_memory = int(lot_memory)
        self.max_open_cells = int(max_open_cells)
        self.explain_top = explain_top
        #: cells are explained (SHAP, the costly part) from this fraction of the decision threshold up; 0 = all
        self.explain_from = explain_from
        #: readings per (line, station) the service must read back for warm_up
        self.history = max(stations.history, self.lot_memory + 1)
        self._buffer_keep = 2 * self.lot_memory + 1

    # ------------------------------------------------------------------------------------------ state
    def new_state(self) -> ScoringState:
        return ScoringState(model_states={k: m.new_state() for k, m in self.stations.models.items()},
                            tracker=self._new_tracker())

    def _new_tracker(self) -> IncidentTracker:
        s = self.stations
        return IncidentTracker(k=s.incident_k, n=s.incident_n, close_after=s.close_after)

    def accepts(self, readings: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the readings a station model exists for (others make :meth:`process` raise)."""
        known = set(self.stations.stations)
        return readings["station"].astype(str).isin(known).to_numpy()

    # ------------------------------------------------------------------------------------------ process
    def process(self, readings: pd.DataFrame, state: ScoringState) -> BatchResult:
        """Score one micro-batch (the contract's wide frame, arrival order); updates ``state``."""
        return self._process(readings, state, emit=True)

    def warm_up(self, history: pd.DataFrame, open_incidents: pd.DataFrame, state: ScoringState) -> None:
        """Rebuild ``state`` from readings read back from the store and the open incidents; no output.

        ``history``: the last :attr:`history` readings per (line, station) before the first re-consumed
        one, plus the readings of the cells not yet closed (duplicates are dropped; order by ``ts``).
        """
        fresh = self.new_state()
        state.__dict__.update(fresh.__dict__)
        if history is not None and len(history):
            h = history.drop_duplicates(subset=["line", "station", "seq"], keep="last")
            h = h.assign(_t=pd.to_datetime(h["ts"], utc=True)).sort_values(["_t", "line", "station", "seq"],
                                                                             kind="stable").drop(columns="_t")
            result = self._process(h, state, emit=False)
            recent = result.scores
        else:
            recent = pd.DataFrame(columns=SCORE_COLUMNS)
        state.tracker = self._new_tracker()
        state.tracker.restore(open_incidents if open_incidents is not None else pd.DataFrame(columns=INCIDENT_COLUMNS),
                              recent)

    def _process(self, readings: pd.DataFrame, state: ScoringState, emit: bool) -> BatchResult:
        missing = [c for c in ("ts", "line", "station", "cell_id", "seq") if c not in readings.columns]
        if missing:
            raise ValueError(f"readings lack columns {missing}")
        r = readings.reset_index(drop=True)
        if "recipe" not in r:
            r = r.assign(recipe=None)
        if "tags" not in r:
            r = r.assign(tags=None)
        r = r.assign(ts=pd.to_datetime(r["ts"], utc=True), line=r["line"].astype(str),
                     station=r["station"].astype(str))
        if r.empty:
            return BatchResult(pd.DataFrame(columns=SCORE_COLUMNS), pd.DataFrame(columns=INCIDENT_COLUMNS),
                               pd.DataFrame(columns=PREDICTION_COLUMNS), pd.DataFrame(columns=FEATURE_NAMES))
        scored, z = self._score(r, state)
        zr = pd.concat([r[["ts", "line", "station", "cell_id", "tags"]], z], axis=1)
        incidents = state.tracker.update(scored)
        if not incidents.empty:
            incidents = incidents.assign(model_version=self.model_version)
        arrival = state.arrivals + np.arange(len(r), dtype="int64")
        state.arrivals += len(r)
        self._update_buffers(zr, scored, state)
        features = self._cell_events(zr, scored, arrival, state)
        predictions = self._predict(features) if emit else pd.DataFrame(columns=PREDICTION_COLUMNS)
        self._trim(state)
        return BatchResult(scored[SCORE_COLUMNS], incidents[INCIDENT_COLUMNS] if len(incidents) else
                           pd.DataFrame(columns=INCIDENT_COLUMNS), predictions, features)

    # ------------------------------------------------------------------------------------------ steps
    def _score(self, r: pd.DataFrame, state: ScoringState) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Scores per reading and the readings' sensors as robust z values against their station model.

        The z values (``(x - median) / scale`` of the model of the reading's station and recipe) are what the
        cell features use, so a feature means the same for every recipe. The batch's sensor columns, times and
        lines are read once; each (station, recipe) group is scored on arrays of its own sensors
        (:meth:`StationModel.score_arrays`, no frame per group).
        """
        n = len(r)
        sensor_pos = np.flatnonzero(~r.columns.isin(READING_KEYS))
        columns = r.columns[sensor_pos].tolist()
        col_of = {c: i for i, c in enumerate(columns)}
        # the batch's sensor values, plus one all-NaN column for the sensors a batch lacks
        values = np.full((n, len(columns) + 1), np.nan)
        if columns:
            values[:, :-1] = r.iloc[:, sensor_pos].to_numpy(dtype="float64")
        zv = np.full((n, len(columns)), np.nan)
        score = np.zeros(n)
        flag = np.zeros(n, dtype=bool)
        kind = np.empty(n, dtype=object)
        top = np.full(n, None, dtype=object)
        t = pd.DatetimeIndex(r["ts"]).as_unit("ns")
        times = t.asi8.astype("float64") / 1e9
        times[t.isna()] = np.nan
        line_code, line_names = pd.factorize(r["line"].astype(str).fillna("_"), sort=False)
        line_names = np.asarray(line_names, dtype=object)
        # (station, recipe) groups in order of first appearance; a missing recipe is recipe ANY
        st_code, st_names = pd.factorize(r["station"], sort=False)
        rec_code, rec_names = pd.factorize(r["recipe"].astype(object).where(r["recipe"].notna(), ANY), sort=False)
        st_names, rec_names = st_names.tolist(), rec_names.tolist()
        codes, groups = pd.factorize(st_code * len(rec_names) + rec_code, sort=False)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(groups) + 1))
        unknown = []
        # groups that resolve to the same model (e.g. a recipe without its own model and readings without a
        # recipe, both on the station's ANY model) share one window state: score them together, in batch order
        by_model: dict[tuple[str, str], tuple[object, list[np.ndarray]]] = {}
        for g, grp in enumerate(groups):
            st, rec = st_names[grp // len(rec_names)], rec_names[grp % len(rec_names)]
            found = self.stations.model_for(st, None if rec == ANY else rec)
            if found is None:
                unknown.append(st)
                continue
            by_model.setdefault(found[0], (found[1], []))[1].append(order[bounds[g]:bounds[g + 1]])
        for key, (model, parts) in by_model.items():
            idx = parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))
            if key not in state.model_states:
                state.model_states[key] = model.new_state()
            cols = [col_of.get(c, len(columns)) for c in model.sensors_]
            raw = values[idx][:, cols]
            out = model.score_arrays(raw, times[idx], _split_lines(line_code[idx], line_names),
                                     state.model_states[key])
            score[idx] = out.anomaly_score
            flag[idx] = out.is_anomaly
            kind[idx] = out.kind
            top[idx] = out.top_sensors
            present = [j for j, c in enumerate(cols) if c < len(columns)]
            if present:
                pc = [cols[j] for j in present]
                zv[np.ix_(idx, pc)] = (raw[:, present] - model.scaler_.median_[present]) / model.scaler_.scale_[present]
        if unknown:
            raise ValueError(f"no station model for station(s) {sorted(set(unknown))}; known: "
                             f"{', '.join(self.stations.stations)} (filter with LineScorer.accepts)")
        scored = pd.DataFrame({  # the columns' arrays (same dtypes, no index alignment)
            "line": r["line"].array, "station": r["station"].array, "seq": r["seq"].to_numpy(dtype="int64"),
            "ts": r["ts"].array, "cell_id": r["cell_id"].array, "recipe": r["recipe"].array, "anomaly_score": score,
            "is_anomaly": flag, "kind": kind, "top_sensors": top, "model_version": self.model_version}, index=r.index)
        return scored, pd.DataFrame(zv, index=r.index, columns=columns)

    def _update_buffers(self, r: pd.DataFrame, scored: pd.DataFrame, state: ScoringState) -> None:
        """Append the buffered stations' scored readings (z values, lots, stream positions, run starts)."""
        stations = r["station"].to_numpy(dtype=object)
        lines = r["line"].to_numpy(dtype=object)
        ts = r["ts"].array
        ns = pd.DatetimeIndex(r["ts"]).as_unit("ns").asi8  # kept as ts_ns: lot_features need not convert ts
        scores = scored["anomaly_score"].to_numpy(dtype="float64")
        flags_all = scored["is_anomaly"].to_numpy(dtype=bool)
        for name in BUFFERED_STATIONS:
            sel = np.flatnonzero(stations == name)
            if sel.size == 0:
                continue
            flags = flags_all[sel]
            new = {"line": lines[sel], "ts": ts[sel], "ts_ns": ns[sel], "anomaly_score": scores[sel],
                   "is_anomaly": flags}
            for s in station(name).sensor_names:
                new[s] = r[s].to_numpy(dtype="float64")[sel] if s in r else np.full(sel.size, np.nan)
            new["lots"] = lots_of(r["tags"].iloc[sel])
            pos = np.empty(sel.size, dtype="int64")
            run_start = np.zeros(sel.size, dtype=bool)
            codes, names = pd.factorize(new["line"], sort=False)
            for code, line in enumerate(names):
                idx = np.flatnonzero(codes == code)
                start = state.positions.get((line, name), 0)
                pos[idx] = start + np.arange(idx.size)
                state.positions[(line, name)] = start + idx.size
                f = flags[idx]
                run_start[idx] = f & ~np.r_[state.last_flags.get((line, name), False), f[:-1]]
                state.last_flags[(line, name)] = bool(f[-1])
            new["pos"] = pos
            new["run_start"] = run_start
            new = pd.DataFrame(new)
            old = state.buffers.get(name)
            state.buffers[name] = new if old is None or old.empty else pd.concat([old, new], ignore_index=True)

    def _cell_events(self, r: pd.DataFrame, scored: pd.DataFrame, arrival: np.ndarray,
                     state: ScoringState) -> pd.DataFrame:
        """Feature rows of this batch's cell events; updates the open cells."""
        cell = r["cell_id"]
        stations = r["station"].to_numpy(dtype=object)
        known = cell.notna().to_numpy()
        is_event = np.isin(stations, FEATURE_STATIONS) & known
        is_eol = (stations == "eol") & known
        feats = pd.DataFrame(columns=["cell_id", "station", "line", "ts", *FEATURE_NAMES])
        if is_event.any():
            ev_idx = np.flatnonzero(is_event)
            ev = r.iloc[ev_idx].assign(anomaly_score=scored["anomaly_score"].to_numpy()[ev_idx],
                                       is_anomaly=scored["is_anomaly"].to_numpy()[ev_idx])
            ev = ev.reset_index(drop=True)
            cells = ev["cell_id"].astype(str).to_numpy(dtype=object)
            ev["cell_id"] = cells
            anchors = np.where(ev["station"].to_numpy() == "winding", ts_ns(ev["ts"]).astype("float64"), np.nan)
            lotf, localf = lot_features(ev[["line", "ts"]], self._event_lots(cells, ev["tags"], state),
                                        state.buffers, self.lot_memory, anchors, self.stations.material_lags)
            own = np.hstack([own_features(ev).to_numpy(dtype="float64"), localf.to_numpy(dtype="float64")])
            rows, last = _carry_forward(cells, own, state.cells.rows)
            feats = pd.concat([
                ev[["cell_id", "station", "line", "ts"]],
                pd.DataFrame({"stage": ev["station"].map(STAGE).to_numpy(dtype="float64")}),
                pd.DataFrame(rows, columns=CARRIED_FEATURES), lotf.reset_index(drop=True)], axis=1)
            # the open cells' new state: their last accumulated row and the arrival number of their last event
            ev_arrival = arrival[ev_idx]
            for c, i in last.items():
                state.cells.rows[c] = rows[i].copy()
                state.cells.arrival[c] = int(ev_arrival[i])
        if is_eol.any():
            state.cells.close(cell.to_numpy()[is_eol].astype(str))
        return feats

    @staticmethod
    def _event_lots(cells: np.ndarray, tags: pd.Series, state: ScoringState) -> pd.DataFrame:
        """(event, lot) rows: the lots a cell's earlier readings named plus those of its events so far.

        Updates the open cells' lots in ``state``.
        """
        new = lots_of(tags, parents=True)
        so_far: dict[str, list[str]] = {}
        events: list[int] = []
        lots: list[str] = []
        for i, (c, named) in enumerate(zip(cells, new, strict=True)):
            seen = so_far.get(c)
            if seen is None:
                seen = so_far[c] = list(state.cells.lots.get(c, ()))
            seen.extend(named)
            events.extend([i] * len(seen))
            lots.extend(seen)
        for c, seen in so_far.items():
            if seen:
                state.cells.lots[c] = list(dict.fromkeys(seen))
        return pd.DataFrame({"event": np.asarray(events, dtype="int64"), "lot": np.asarray(lots, dtype=object)})

    def _predict(self, feats: pd.DataFrame) -> pd.DataFrame:
        if feats.empty or self.defect is None:
            return pd.DataFrame(columns=PREDICTION_COLUMNS)
        X = feats[FEATURE_NAMES]
        proba = self.defect.predict_proba(X)
        flagged = proba >= self.defect.threshold_
        types = np.full(len(X), None, dtype=object)
        if flagged.any():
            types[flagged] = self.defect.predict_type(X.loc[flagged])
        top = np.full(len(X), None, dtype=object)
        explain = proba >= self.explain_from * self.defect.threshold_
        if explain.any():
            top[explain] = [orjson.dumps(t).decode() for t in self.defect.explain(X.loc[explain], self.explain_top)]
        return pd.DataFrame({
            "cell_id": feats["cell_id"].to_numpy(), "station": feats["station"].to_numpy(),
            "line": feats["line"].to_numpy(), "ts": feats["ts"].to_numpy(), "defect_probability": proba,
            "predicted_defect": flagged,
            # object columns whatever the batch holds (pandas would infer str from all-string batches only)
            "predicted_type": pd.Series(types, dtype=object), "top_features": pd.Series(top, dtype=object),
            "model_version": self.model_version})[PREDICTION_COLUMNS]

    def _trim(self, state: ScoringState) -> None:
        for name, buf in state.buffers.items():
            if len(buf) > self._buffer_keep:
                # a line's newest buffered position is the one before its next stream position
                codes, lines = pd.factorize(buf["line"], sort=False)
                newest = np.array([state.positions[(line, name)] - 1 for line in lines], dtype="int64")[codes]
                keep = buf["pos"].to_numpy() > newest - self._buffer_keep
                if not keep.all():
                    state.buffers[name] = buf.loc[keep].reset_index(drop=True)
        state.cells.keep_newest(self.max_open_cells)

    # ------------------------------------------------------------------------------------------ bands
    def bands(self) -> pd.DataFrame:
        """TABLE["sensor_bands"] rows (expected value and band per sensor) for the dashboards."""
        unit = units()
        frames = []
        for (st, rec), model in sorted(self.stations.models.items()):
            b = model.bands_.copy()
            b["model_version"] = self.model_version
            b["line"] = ANY
            b["station"] = st
            b["recipe"] = rec
            b["unit"] = b["sensor"].map(unit)
            frames.append(b)
        if not frames:
            return pd.DataFrame(columns=BAND_COLUMNS)
        return pd.concat(frames, ignore_index=True)[BAND_COLUMNS]


def _split_lines(codes: np.ndarray, names) -> list[tuple[str, np.ndarray]]:
    """(line, row positions) per line code present in ``codes``, rows in order."""
    first = codes[0]
    if (codes == first).all():
        return [(names[first], np.arange(len(codes)))]
    return [(names[c], np.flatnonzero(codes == c)) for c in np.unique(codes)]


def _carry_forward(cells: np.ndarray, own: np.ndarray, stored: dict[str, np.ndarray]
                   ) -> tuple[np.ndarray, dict[str, int]]:
    """Per event, the cell's features so far: per column the latest non-NaN value of the cell's stored row, its
    earlier events in the batch and the event's own row. Returns the rows (events x columns) and, per cell, the
    position of its last event."""
    codes, uniq = pd.factorize(cells, sort=False)
    have = [k for k, c in enumerate(uniq) if c in stored]
    n_ev, n_col = own.shape
    m = np.vstack([np.asarray([stored[uniq[k]] for k in have]).reshape(len(have), n_col), own])
    key = np.r_[np.asarray(have, dtype=np.int64), codes]
    order = np.r_[np.full(len(have), -1, dtype=np.int64), np.arange(n_ev)]
    perm = np.lexsort((order, key))
    m, key, order = m[perm], key[perm], order[perm]
    pos = np.arange(len(m))
    group_start = np.maximum.accumulate(np.where(np.r_[True, key[1:] != key[:-1]], pos, 0))
    latest = np.maximum.accumulate(np.where(np.isnan(m), -1, pos[:, None]), axis=0)
    filled = np.where(latest >= group_start[:, None], m[np.maximum(latest, 0), np.arange(n_col)], np.nan)
    rows = np.empty((n_ev, n_col))
    is_event = order >= 0
    rows[order[is_event]] = filled[is_event]
    return rows, {c: i for i, c in enumerate(cells)}


# ---------------------------------------------------------------------------------------------- loading
STATIONS_MODEL = "stations"
DEFECT_MODEL = "defect"


def load_scorer(models_dir: str | os.PathLike, **kwargs) -> LineScorer:
    """The LineScorer of the production versions in the registry (the defect model is optional)."""
    reg = ModelRegistry(models_dir)
    stations, smeta = reg.load(STATIONS_MODEL)
    version = f"{STATIONS_MODEL}@{smeta['version']}"
    defect = None
    if DEFECT_MODEL in reg.names() and reg.production(DEFECT_MODEL) is not None:
        defect, dmeta = reg.load(DEFECT_MODEL)
        version += f"+{DEFECT_MODEL}@{dmeta['version']}"
    if not isinstance(stations, StationModels):
        raise RegistryError(f"{STATIONS_MODEL} artefact is a {type(stations).__name__}, not StationModels")
    lot_memory = kwargs.pop("lot_memory", smeta.get("lot_memory", 3000))
    scorer = LineScorer(stations, defect, version, lot_memory=lot_memory, **kwargs)
    try:
        scorer.process(_probe_readings(stations), scorer.new_state())
    except Exception as exc:  # an artefact pickled by older code can fail anywhere inside scoring
        raise ModelLoadError(f"{version} cannot score with this cellwatch code (retrain it): "
                             f"{type(exc).__name__}: {exc}"[:400]) from exc
    return scorer


def _probe_readings(stations: StationModels) -> pd.DataFrame:
    """One reading per station model at its expected sensor values: a load-time check that the artefacts score."""
    rows = []
    t0 = pd.Timestamp("2000-01-01", tz="UTC")
    for i, ((st, rec), model) in enumerate(sorted(stations.models.items())):
        values = dict(zip(model.bands_["sensor"], model.bands_["expected"].astype(float), strict=True))
        rows.append({"ts": t0 + pd.Timedelta(seconds=i), "line": "_probe", "station": st,
                     "cell_id": "_probe" if station(st).kind == "cell" else None, "seq": i,
                     "recipe": None if rec == ANY else rec, "tags": None, **values})
    return pd.DataFrame(rows)


def production_fingerprint(models_dir: str | os.PathLike) -> str:
    """Cheap; changes whenever a production pointer changes (promote / rollback) — for hot reload."""
    return ModelRegistry(models_dir).fingerprint()
