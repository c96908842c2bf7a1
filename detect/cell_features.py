"""Per-cell features for the defect model: the cell's own station data plus its genealogy.

A cell's feature row after station *k* (its **stage**) holds:

* ``{station}.{sensor}`` (robust z against the station model of the reading's recipe, so a feature means
  the same for every product), ``{station}.anomaly_score`` and ``{station}.is_anomaly`` for every cell station it
  has passed (winding, filling, formation, aging; later stations are NaN — LightGBM routes them natively;
  ``eol`` is never a feature, it is the label source);
* for each electrode station (mixing, coating, calendering, slitting), aggregates over the readings of the
  material lots the cell was made from: ``{station}.lot_readings``, ``.lot_max_score``, ``.lot_mean_score``,
  ``.lot_anomalous`` (count), ``.lot_anomaly_rate``, ``.lot_runs`` (anomalous runs, an incident proxy) and
  ``.lot_mean.{sensor}`` (robust z as well);
* for coating, calendering and slitting, the same over the cell's *own stretch* of electrode:
  ``{station}.local_readings|local_max_score|local_mean_score`` and ``.local_mean|local_min|local_max.{sensor}``,
  the lot readings within a minute of the time the cell's material passed the station (its winding time minus
  the material lag learnt from the training genealogy); found at winding and carried to later stages.

Lots are the genealogy tag values (``coil_id``, ``daughter_roll_id``, ``slurry_batch_id`` ...; numeric tag
values such as a web position are not lots). The cell's own readings name its lots (e.g. its anode and
cathode rolls); walking the electrode stations from slitting up to mixing, every matched reading adds the
other lots it carries (a slitting reading links a roll to its coil, a coating reading a coil to its slurry
batch), so one bad slurry batch or coil segment raises the risk of every cell made from it.

Only the last ``lot_memory`` readings per (line, station) with ``ts`` at or before the cell's reading count,
so the features depend on the stream, not on how it was cut into batches, and can be rebuilt after a
restart from the last ``lot_memory`` readings per station.
"""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd

from cellwatch.stations import CELL_STATIONS, TIME_STATIONS, station

#: Cell stations whose data are features (eol is the label source).
FEATURE_STATIONS: tuple[str, ...] = tuple(s for s in CELL_STATIONS if s != "eol")
#: Electrode (time-based) stations whose lot aggregates are genealogy features, upstream order.
LOT_STATIONS: tuple[str, ...] = TIME_STATIONS
STAGE = {name: i + 1 for i, name in enumerate(FEATURE_STATIONS)}
LOT_STATS = ("lot_readings", "lot_max_score", "lot_mean_score", "lot_anomalous", "lot_anomaly_rate", "lot_runs")


def own_feature_names(station_name: str) -> list[str]:
    return [f"{station_name}.{s}" for s in station(station_name).sensor_names] + [
        f"{station_name}.anomaly_score", f"{station_name}.is_anomaly"]


def lot_feature_names(station_name: str) -> list[str]:
    sensors = station(station_name).sensor_names
    return [f"{station_name}.{s}" for s in LOT_STATS] + [f"{station_name}.lot_mean.{s}" for s in sensors]


def local_feature_names(station_name: str) -> list[str]:
    sensors = station(station_name).sensor_names
    return ([f"{station_name}.{s}" for s in LOCAL_STATS]
            + [f"{station_name}.local_{agg}.{s}" for agg in ("mean", "min", "max") for s in sensors])


LOCAL_STATS = ("local_readings", "local_max_score", "local_mean_score")
#: Electrode stations whose readings can be matched to the cell's own stretch of electrode (by material lag).
LOCAL_STATIONS: tuple[str, ...] = tuple(s for s in LOT_STATIONS if s != "mixing")
OWN_FEATURES: list[str] = [f for s in FEATURE_STATIONS for f in own_feature_names(s)]
LOT_FEATURES: list[str] = [f for s in LOT_STATIONS for f in lot_feature_names(s)]
LOCAL_FEATURES: list[str] = [f for s in LOCAL_STATIONS for f in local_feature_names(s)]
#: Features a cell keeps from station to station (its own data and its electrode stretch, found at winding).
CARRIED_FEATURES: list[str] = [*OWN_FEATURES, *LOCAL_FEATURES]
#: Every feature of the defect model, in order.
FEATURE_NAMES: list[str] = ["stage", *OWN_FEATURES, *LOCAL_FEATURES, *LOT_FEATURES]


def lots_of(tags: pd.Series, parents: bool = False) -> list[tuple[str, ...]]:
    """The lot ids named by each row's tags (JSON object strings or None): non-numeric tag values.

    ``parents=True`` adds each id's hierarchical parents: a child lot extends its parent's id with a
    ``-suffix`` (``L1-C0009-S2`` is lane 2 of coil ``L1-C0009``), so a cell that names its roll also names
    the coil the roll was slit from.
    """
    out: list[tuple[str, ...]] = []
    cache: dict[str, tuple[str, ...]] = {}
    for t in tags.tolist():
        if not isinstance(t, str) or not t:
            out.append(())
            continue
        hit = cache.get(t)
        if hit is None:
            try:
                d = orjson.loads(t)
            except orjson.JSONDecodeError:
                d = {}
            ids = {str(v) for v in (d.values() if isinstance(d, dict) else ())
                   if isinstance(v, str) and v and not _is_number(v)}
            if parents:
                ids |= {p for i in ids for p in _parents(i)}
            hit = tuple(sorted(ids))
            cache[t] = hit
        out.append(hit)
    return out


def _parents(lot: str) -> list[str]:
    """``A-B-C`` -> ``[A-B]``: the id prefixes with at least two parts."""
    parts = lot.split("-")
    return ["-".join(parts[:k]) for k in range(2, len(parts))]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def own_features(events: pd.DataFrame) -> pd.DataFrame:
    """Own-station feature columns for cell-station events (one row per scored cell reading).

    ``events`` holds ``station``, the station's sensor columns, ``anomaly_score`` and ``is_anomaly``; every
    row only fills its own station's columns.
    """
    out = pd.DataFrame(np.nan, index=events.index, columns=OWN_FEATURES, dtype="float64")
    for name in FEATURE_STATIONS:
        sel = (events["station"] == name).to_numpy()
        if not sel.any():
            continue
        sub = events.loc[sel]
        for s in station(name).sensor_names:
            if s in sub:
                out.loc[sel, f"{name}.{s}"] = sub[s].to_numpy(dtype="float64")
        out.loc[sel, f"{name}.anomaly_score"] = sub["anomaly_score"].to_numpy(dtype="float64")
        out.loc[sel, f"{name}.is_anomaly"] = sub["is_anomaly"].to_numpy(dtype="float64")
    return out


def lot_features(events: pd.DataFrame, event_lots: pd.DataFrame, buffers: dict[str, pd.DataFrame],
                 lot_memory: int, anchors: np.ndarray | None = None, lags: dict[str, float] | None = None,
                 half_window_s: float = 60.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Genealogy features per event.

    ``events``: columns ``line`` and ``ts``, one row per event. ``event_lots``: columns ``event`` (the event's
    position in ``events``), ``lot``
    (the lots the cell's own readings named). ``buffers``: per electrode station, the recent scored readings
    of all lines (columns ``line, ts, pos, anomaly_score, is_anomaly, run_start, lots`` + sensors; ``pos`` is
    the reading's position in its (line, station) stream). Returns a frame indexed like ``events`` with the
    :data:`LOT_FEATURES` columns (NaN where no lot reading matched), and one with the :data:`LOCAL_FEATURES`:
    the same statistics over the matched readings within ``half_window_s`` of ``anchors - lags[station]``
    (``anchors``: ns per event, NaN = none; ``lags``: seconds from the station to the anchor, i.e. the
    material's travel time), the cell's own stretch of electrode.
    """
    out = np.full((len(events), len(LOT_FEATURES)), np.nan)
    local = np.full((len(events), len(LOCAL_FEATURES)), np.nan)
    col = {f: i for i, f in enumerate(LOT_FEATURES)}
    lcol = {f: i for i, f in enumerate(LOCAL_FEATURES)}
    lags = lags or {}
    anchors = np.full(len(events), np.nan) if anchors is None else np.asarray(anchors, dtype="float64")

    def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
        return (pd.DataFrame(out, index=events.index, columns=LOT_FEATURES),
                pd.DataFrame(local, index=events.index, columns=LOCAL_FEATURES))

    if events.empty or event_lots.empty:
        return frames()
    ev_line = events["line"].astype(str).to_numpy(dtype=object)
    ev_ts = ts_ns(events["ts"])
    lots = event_lots[["event", "lot"]].drop_duplicates()
    for name in reversed(LOT_STATIONS):  # slitting first: it links the cell's rolls to their coils
        buf = buffers.get(name)
        if buf is None or buf.empty:
            continue
        sensors = list(station(name).sensor_names)
        # the window of each event: the last lot_memory readings of its (line, station) with ts <= event ts
        hi = _window_end(buf, ev_line, ev_ts)
        counts = buf["lots"].map(len).to_numpy()
        exploded = pd.DataFrame({"lot": [lot for x in buf["lots"].tolist() for lot in x],
                                 "row": np.repeat(np.arange(len(buf)), counts)})
        m = lots.merge(exploded, on="lot", how="inner")
        if m.empty:
            continue
        ev_i, row_i = m["event"].to_numpy(), m["row"].to_numpy()
        pos = buf["pos"].to_numpy()[row_i]
        ok = ((buf["line"].to_numpy(dtype=object)[row_i] == ev_line[ev_i])
              & (pos > hi[ev_i] - lot_memory) & (pos <= hi[ev_i]))
        m = m.loc[ok, ["event", "row"]].drop_duplicates()
        if m.empty:
            continue
        rows = buf.iloc[m["row"].to_numpy()][["anomaly_score", "is_anomaly", "run_start", *sensors]]
        rows = rows.set_axis(m["event"].to_numpy(), axis=0)
        g = rows.groupby(level=0, sort=False)
        n = g.size().to_numpy(dtype="float64")
        at = g.size().index.to_numpy()
        anomalous = g["is_anomaly"].sum().to_numpy(dtype="float64")
        stats = [n, g["anomaly_score"].max().to_numpy(), g["anomaly_score"].mean().to_numpy(), anomalous,
                 anomalous / n, g["run_start"].sum().to_numpy(dtype="float64")]
        first = col[f"{name}.{LOT_STATS[0]}"]
        out[at, first:first + len(LOT_STATS)] = np.column_stack(stats)
        first = col[f"{name}.lot_mean.{sensors[0]}"]
        out[at, first:first + len(sensors)] = g[sensors].mean().to_numpy(dtype="float64")
        if name in lags and np.isfinite(anchors).any():
            target = anchors[m["event"].to_numpy()] - lags[name] * 1e9
            row_ts = ts_ns(buf["ts"].iloc[m["row"].to_numpy()]).astype("float64")
            near = np.abs(row_ts - target) <= half_window_s * 1e9
            if near.any():
                lr = rows.iloc[np.flatnonzero(near)]
                lg = lr.groupby(level=0, sort=False)
                at = lg.size().index.to_numpy()
                first = lcol[f"{name}.{LOCAL_STATS[0]}"]
                local[at, first:first + len(LOCAL_STATS)] = np.column_stack([
                    lg.size().to_numpy(dtype="float64"), lg["anomaly_score"].max().to_numpy(),
                    lg["anomaly_score"].mean().to_numpy()])
                for agg in ("mean", "min", "max"):
                    first = lcol[f"{name}.local_{agg}.{sensors[0]}"]
                    local[at, first:first + len(sensors)] = lg[sensors].agg(agg).to_numpy(dtype="float64")
        # the lots these readings carry (e.g. the coil of a roll) lead further upstream
        linked = exploded.loc[exploded["row"].isin(m["row"].unique())]
        more = m.merge(linked[["row", "lot"]], on="row")[["event", "lot"]]
        lots = pd.concat([lots, more], ignore_index=True).drop_duplicates()
    return frames()


def ts_ns(ts: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds since the epoch (UTC)."""
    return pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("ns").asi8


def _window_end(buf: pd.DataFrame, ev_line: np.ndarray, ev_ts: np.ndarray) -> np.ndarray:
    """Per event: stream position of the last reading of its line in ``buf`` with ts <= the event's ts (-1: none)."""
    hi = np.full(len(ev_line), -1, dtype=np.int64)
    for line, idx in buf.groupby("line", sort=False).indices.items():
        sel = ev_line == line
        if not sel.any():
            continue
        ts = ts_ns(buf["ts"].iloc[idx])
        pos = buf["pos"].to_numpy()[idx]
        k = np.searchsorted(ts, ev_ts[sel], side="right")  # readings with ts <= event ts
        hi[sel] = np.where(k > 0, pos[np.maximum(k - 1, 0)], -1)
    return hi
