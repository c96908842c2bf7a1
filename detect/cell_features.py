"""Per-cell features for the defect model: the cell's own station data plus its genealogy.

A cell's feature row after station *k* (its **stage**) holds:

* ``{station}.{sensor}`` (robust z against the station model of the reading's recipe, so a feature means
  the same for every product), ``{station}.anomaly_score`` and ``{station}.is_anomaly`` for every cell station it
  has passed (winding, filling, formation, aging; later stations are NaN — LightGBM routes them natively;
  ``eol`` is never a feature, it is the label source);
* for each electrode station (mixing, coating, calendering, slitting), aggregates over the readings of the
  material lots the cell was made from: ``{station}.lot_readings``, ``.lot_max_score``, ``.lot_mean_score``,
  ``.lot_anomalous`` (count), ``.lot_anomaly_rate``, ``.lot_runs`` (anomalous runs, an incident proxy) and
  ``.lot_mean|lot_min|lot_max.{sensor}`` (robust z as well).

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
    return ([f"{station_name}.{s}" for s in LOT_STATS]
            + [f"{station_name}.lot_{agg}.{s}" for agg in ("mean", "min", "max") for s in sensors])


OWN_FEATURES: list[str] = [f for s in FEATURE_STATIONS for f in own_feature_names(s)]
LOT_FEATURES: list[str] = [f for s in LOT_STATIONS for f in lot_feature_names(s)]
#: Every feature of the defect model, in order.
FEATURE_NAMES: list[str] = ["stage", *OWN_FEATURES, *LOT_FEATURES]


def lots_of(tags: pd.Series) -> list[tuple[str, ...]]:
    """The lot ids named by each row's tags (JSON object strings or None): non-numeric tag values."""
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
            hit = tuple(sorted(str(v) for v in (d.values() if isinstance(d, dict) else ())
                               if isinstance(v, str) and v and not _is_number(v)))
            cache[t] = hit
        out.append(hit)
    return out


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
                 lot_memory: int) -> pd.DataFrame:
    """Genealogy features per event.

    ``events``: index = event id, columns ``line`` and ``ts``. ``event_lots``: columns ``event``, ``lot``
    (the lots the cell's own readings named). ``buffers``: per electrode station, the recent scored readings
    of all lines (columns ``line, ts, pos, anomaly_score, is_anomaly, run_start, lots`` + sensors; ``pos`` is
    the reading's position in its (line, station) stream). Returns a frame indexed like ``events`` with the
    :data:`LOT_FEATURES` columns (NaN where no lot reading matched).
    """
    out = pd.DataFrame(np.nan, index=events.index, columns=LOT_FEATURES, dtype="float64")
    if events.empty or event_lots.empty:
        return out
    ev_line = events["line"].astype(str)
    ev_ts = pd.Series(ts_ns(events["ts"]), index=events.index)
    lots = event_lots[["event", "lot"]].drop_duplicates()
    for name in reversed(LOT_STATIONS):  # slitting first: it links the cell's rolls to their coils
        buf = buffers.get(name)
        if buf is None or buf.empty:
            continue
        sensors = list(station(name).sensor_names)
        # the window of each event: the last lot_memory readings of its (line, station) with ts <= event ts
        cutoff = _window_bounds(buf, ev_line, ev_ts, lot_memory)
        exploded = buf[["lots"]].explode("lots").dropna()
        exploded = exploded.rename(columns={"lots": "lot"})
        exploded["row"] = exploded.index.to_numpy()
        m = lots.merge(exploded, on="lot", how="inner")
        if m.empty:
            continue
        rows = buf.loc[m["row"].to_numpy()]
        ok = ((rows["line"].to_numpy() == ev_line.loc[m["event"]].to_numpy())
              & (rows["pos"].to_numpy() > cutoff["lo"].loc[m["event"]].to_numpy())
              & (rows["pos"].to_numpy() <= cutoff["hi"].loc[m["event"]].to_numpy()))
        m = m.loc[ok, ["event", "row"]].drop_duplicates()
        if m.empty:
            continue
        rows = buf.loc[m["row"].to_numpy(), ["anomaly_score", "is_anomaly", "run_start", *sensors]]
        rows = rows.set_axis(m["event"].to_numpy(), axis=0)
        g = rows.groupby(level=0, sort=False)
        n = g.size()
        idx = n.index
        out.loc[idx, f"{name}.lot_readings"] = n.to_numpy(dtype="float64")
        out.loc[idx, f"{name}.lot_max_score"] = g["anomaly_score"].max().to_numpy()
        out.loc[idx, f"{name}.lot_mean_score"] = g["anomaly_score"].mean().to_numpy()
        anomalous = g["is_anomaly"].sum().to_numpy(dtype="float64")
        out.loc[idx, f"{name}.lot_anomalous"] = anomalous
        out.loc[idx, f"{name}.lot_anomaly_rate"] = anomalous / n.to_numpy()
        out.loc[idx, f"{name}.lot_runs"] = g["run_start"].sum().to_numpy(dtype="float64")
        for agg in ("mean", "min", "max"):
            vals = g[sensors].agg(agg)
            out.loc[idx, [f"{name}.lot_{agg}.{s}" for s in sensors]] = vals.to_numpy(dtype="float64")
        # the lots these readings carry (e.g. the coil of a roll) lead further upstream
        linked = exploded.loc[exploded["row"].isin(m["row"].unique())]
        more = m.merge(linked[["row", "lot"]], on="row")[["event", "lot"]]
        lots = pd.concat([lots, more], ignore_index=True).drop_duplicates()
    return out


def ts_ns(ts: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds since the epoch (UTC)."""
    return pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("ns").asi8


def _window_bounds(buf: pd.DataFrame, ev_line: pd.Series, ev_ts: pd.Series, lot_memory: int) -> pd.DataFrame:
    """Per event: stream positions (lo, hi] of the last ``lot_memory`` readings with ts <= the event's ts."""
    hi = pd.Series(-1, index=ev_line.index, dtype="int64")
    for line, sub in buf.groupby("line", sort=False):
        sel = (ev_line == line).to_numpy()
        if not sel.any():
            continue
        ts = ts_ns(sub["ts"])
        pos = sub["pos"].to_numpy()
        k = np.searchsorted(ts, ev_ts[sel].to_numpy(), side="right")  # readings with ts <= event ts
        hi[sel] = np.where(k > 0, pos[np.maximum(k - 1, 0)], -1)
    return pd.DataFrame({"lo": hi - lot_memory, "hi": hi})
