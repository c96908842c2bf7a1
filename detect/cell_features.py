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
* for winding, the same lot statistics over the readings of *sibling* cells (cells sharing a lot with the cell,
  e.g. its slurry batch): ``winding.lot_readings`` .. ``winding.lot_mean.{sensor}``, so a batch whose cells
  show low insulation resistance (a contaminated batch no electrode sensor sees) raises the risk of every cell
  made from it;
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

from itertools import chain

import numpy as np
import orjson
import pandas as pd

from cellwatch.stations import CELL_STATIONS, TIME_STATIONS, station

#: Cell stations whose data are features (eol is the label source).
FEATURE_STATIONS: tuple[str, ...] = tuple(s for s in CELL_STATIONS if s != "eol")
#: Electrode (time-based) stations whose lot aggregates are genealogy features, upstream order.
LOT_STATIONS: tuple[str, ...] = TIME_STATIONS
#: Cell stations whose readings of *sibling* cells (cells sharing a lot with the cell) are genealogy features:
#: a defect source no sensor sees (a contaminated slurry batch) shows in the batch's cells, e.g. as low insulation
#: resistance at winding. Their readings only match the cell's own lots (they lead no further upstream).
SIBLING_STATIONS: tuple[str, ...] = ("winding",)
#: Stations whose recent scored readings the scorer keeps for the genealogy features.
BUFFERED_STATIONS: tuple[str, ...] = (*LOT_STATIONS, *SIBLING_STATIONS)
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
LOT_FEATURES: list[str] = [f for s in BUFFERED_STATIONS for f in lot_feature_names(s)]
LOCAL_FEATURES: list[str] = [f for s in LOCAL_STATIONS for f in local_feature_names(s)]
#: Features a cell keeps from station to station (its own data and its electrode stretch, found at winding).
CARRIED_FEATURES: list[str] = [*OWN_FEATURES, *LOCAL_FEATURES]
#: Every feature of the defect model, in order.
FEATURE_NAMES: list[str] = ["stage", *OWN_FEATURES, *LOCAL_FEATURES, *LOT_FEATURES]
#: Features whose effect on the defect risk has one sign by the cell's physics (+1: a higher value never lowers
#: the risk, -1: never raises it), for LightGBM's monotone constraints. Sensor features are robust z-scores, so
#: the sign is the raw sensor's. Left out: two-sided effects (overhang: too little plates, too much costs capacity;
#: formation temperature: cold plates, hot costs capacity) and values with no direct physical link to a defect.
MONOTONE: dict[str, int] = {
    "winding.winding_tension_cv_pct": 1, "winding.misalignment_mm": 1, "winding.tab_weld_energy_j": -1,
    "winding.insulation_resistance_mohm": -1,        # burrs and shorts lower it
    "filling.fill_weight_g": -1, "filling.dew_point_c": 1,  # underfill, moisture
    "formation.formation_capacity_ah": -1, "formation.coulombic_efficiency_pct": -1,
    "aging.k_value_mv_day": 1, "aging.ocv_end_v": -1,   # self-discharge
    **{f"slitting.local_{agg}.burr_height_um": 1 for agg in ("mean", "min", "max")},
    **{f"calendering.local_{agg}.electrode_density_g_cm3": 1 for agg in ("mean", "min", "max")},  # DCIR
}


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
    out = np.full((len(events), len(OWN_FEATURES)), np.nan)
    stations = events["station"].to_numpy(dtype=object)
    for name in FEATURE_STATIONS:
        sel = np.flatnonzero(stations == name)
        if sel.size == 0:
            continue
        for s in (*station(name).sensor_names, "anomaly_score", "is_anomaly"):
            if s in events:
                out[sel, _OWN_COLUMN[f"{name}.{s}"]] = events[s].to_numpy(dtype="float64")[sel]
    return pd.DataFrame(out, index=events.index, columns=OWN_FEATURES)


_OWN_COLUMN = {f: i for i, f in enumerate(OWN_FEATURES)}


def lot_features(events: pd.DataFrame, event_lots: pd.DataFrame, buffers: dict[str, pd.DataFrame],
                 lot_memory: int, anchors: np.ndarray | None = None, lags: dict[str, float] | None = None,
                 half_window_s: float = 60.0, match: str = "position") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Genealogy features per event.

    ``events``: columns ``line`` and ``ts``, one row per event. ``event_lots``: columns ``event`` (the event's
    position in ``events``), ``lot`` (the lots the cell's own readings named). ``buffers``: per electrode station,
    the recent scored readings of all lines (columns ``line, ts, pos, anomaly_score, is_anomaly, run_start, lots``
    + sensors; ``pos`` is the reading's position in its (line, station) stream, rows of a line in stream order).
    Returns a frame indexed like ``events`` with the :data:`LOT_FEATURES` columns (NaN where no lot reading
    matched), and one with the :data:`LOCAL_FEATURES`: the same statistics over the matched readings within
    ``half_window_s`` of ``anchors - lags[station]`` (``anchors``: ns per event, NaN = none; ``lags``: seconds
    from the station to the anchor, i.e. the material's travel time), the cell's own stretch of electrode.
    ``match="position"`` (default) finds that stretch in *running* time: ``lag / step`` readings before the last
    reading of the stream at the event (``step``: the stream's cadence, :func:`stream_step`), ±``half_window_s /
    step`` readings, so a stop or changeover between the station and the winder (the whole line stops, the
    electrode stream has a gap) does not shift it (no local features while the stream has no two consecutive
    readings); ``match="time"``: ±``half_window_s`` around
    ``anchor - lag`` in wall-clock time (misses the stretch by the length of any stop in between).

    Per station, events with the same line and lot set form a group; the group's readings (rows of its line
    carrying one of its lots, in stream order) are found once, each event's window (the last ``lot_memory``
    readings of the stream up to its ``ts``) is a contiguous range of them, aggregated in O(1) from exact
    integer prefix sums (:func:`_prefix_aggregates`; means within 1e-6 of a direct sum). Only the local
    (±``half_window_s``) matches are expanded per event.
    """
    n = len(events)
    out = np.full((n, len(LOT_FEATURES)), np.nan)
    local = np.full((n, len(LOCAL_FEATURES)), np.nan)
    col = {f: i for i, f in enumerate(LOT_FEATURES)}
    lcol = {f: i for i, f in enumerate(LOCAL_FEATURES)}
    lags = lags or {}
    anchors = np.full(n, np.nan) if anchors is None else np.asarray(anchors, dtype="float64")

    def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
        return (pd.DataFrame(out, index=events.index, columns=LOT_FEATURES),
                pd.DataFrame(local, index=events.index, columns=LOCAL_FEATURES))

    if events.empty or event_lots.empty:
        return frames()
    ev_line_str = events["line"].astype(str).to_numpy(dtype=object)
    ev_ts = ts_ns(events["ts"])
    # siblings first (the cell's own lots only), then slitting first: it links the cell's rolls to their coils
    stations = [s for s in (*SIBLING_STATIONS, *reversed(LOT_STATIONS))
                if buffers.get(s) is not None and not buffers[s].empty]
    flat = {}
    for name in stations:
        lots_per_row = buffers[name]["lots"].tolist()
        counts = np.fromiter(map(len, lots_per_row), dtype=np.int64, count=len(lots_per_row))
        flat[name] = (np.fromiter(chain.from_iterable(lots_per_row), dtype=object, count=int(counts.sum())), counts)
    lot_codes, _ = pd.factorize(np.concatenate([event_lots["lot"].to_numpy(dtype=object),
                                                *(f[0] for f in flat.values())]))
    line_codes, _ = pd.factorize(np.concatenate([ev_line_str, *(buffers[s]["line"].astype(str).to_numpy(dtype=object)
                                                                for s in stations)]))
    n_lots = int(lot_codes.max()) + 1 if len(lot_codes) else 1
    ev_line = line_codes[:n]
    pair_ev, pair_lot = _unique_pairs(event_lots["event"].to_numpy(dtype=np.int64), lot_codes[:len(event_lots)],
                                      n_lots)
    lot_off, line_off = len(event_lots), n
    half_ns = half_window_s * 1e9
    for name in stations:
        buf = buffers[name]
        sensors = list(station(name).sensor_names)
        row_lot_all = lot_codes[lot_off:lot_off + len(flat[name][0])]
        lot_off += len(flat[name][0])
        row_line = line_codes[line_off:line_off + len(buf)]
        line_off += len(buf)
        counts = flat[name][1]
        ptr = np.concatenate([[0], np.cumsum(counts)])
        # (lot -> rows) index of the buffer
        row_of_lot = np.repeat(np.arange(len(buf)), counts)
        order = np.argsort(row_lot_all, kind="stable")
        lot_sorted, row_sorted = row_lot_all[order], row_of_lot[order]
        # groups of events: same line, same set of the lots this station's readings carry
        here = np.isin(pair_lot, lot_sorted)
        group, g_line = _set_groups(ev_line, pair_ev[here], pair_lot[here], n)
        g_pair, g_lot = _unique_pairs(group[pair_ev[here]], pair_lot[here], n_lots)
        g_of, k = _expand(g_pair, np.searchsorted(lot_sorted, g_lot, "left"),
                          np.searchsorted(lot_sorted, g_lot, "right"))
        rows = row_sorted[k]
        same = row_line[rows] == g_line[g_of]
        gr_g, gr_row = _unique_pairs(g_of[same], rows[same], len(buf))  # the groups' readings, in stream order
        if gr_g.size == 0:
            continue
        pos = buf["pos"].to_numpy(dtype=np.int64)
        # each event's window: stream positions (hi - lot_memory, hi] -> a range [a, b) of its group's readings
        bts = buffer_ns(buf)
        hi = _window_end(buf, ev_line_str, ev_ts, bts)
        span = np.int64(int(pos.max()) + lot_memory + 3)
        key = gr_g * span + pos[gr_row] + lot_memory
        a = np.searchsorted(key, group * span + hi, "right")
        b = np.searchsorted(key, group * span + hi + lot_memory, "right")
        has = b > a
        if not has.any():
            continue
        values = buf[["anomaly_score", "is_anomaly", "run_start", *sensors]].to_numpy(dtype="float64")
        ev_has = np.flatnonzero(has)
        stats, means = _prefix_aggregates(a[has], b[has], gr_row, values)
        first = col[f"{name}.{LOT_STATS[0]}"]
        out[ev_has, first:first + len(LOT_STATS)] = stats
        first = col[f"{name}.lot_mean.{sensors[0]}"]
        out[ev_has, first:first + len(sensors)] = means
        if name in lags:
            anchored = ev_has[np.isfinite(anchors[ev_has])]
            if anchored.size:
                step = stream_step(buf, bts) if match == "position" else None
                if match != "position":
                    _local(local, lcol, name, sensors, anchored, anchors[anchored] - lags[name] * 1e9, a, b, gr_g,
                           gr_row, group, buf, values, half_ns)
                elif step is not None:  # the stretch ``lag / step`` readings before the event: stops do not count
                    back, half = round(lags[name] / step), round(half_window_s / step)
                    _local_by_position(local, lcol, name, sensors, anchored, hi[anchored] - back, half, a, b, gr_g,
                                       gr_row, group, key, span, lot_memory, values)
        if name in SIBLING_STATIONS:
            continue
        # the lots these readings carry (e.g. the coil of a roll) lead further upstream
        ev_more, lot_more = _lots_in_ranges(gr_g, gr_row, ptr, row_lot_all, n_lots, ev_has, group[ev_has], a[has],
                                            b[has])
        pair_ev, pair_lot = _unique_pairs(np.concatenate([pair_ev, ev_more]), np.concatenate([pair_lot, lot_more]),
                                          n_lots)
    return frames()



def _lots_in_ranges(gr_g: np.ndarray, gr_row: np.ndarray, ptr: np.ndarray, row_lots: np.ndarray, n_lots: int,
                    events: np.ndarray, ev_group: np.ndarray, a: np.ndarray, b: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(event, lot) pairs: the lots carried by at least one reading of the event's range ``gr_row[a:b]``.

    ``gr_g``/``gr_row``: the groups' readings (sorted by group); ``ptr``/``row_lots``: the lots of each buffer row.
    """
    i_of, k = _expand(np.arange(len(gr_row)), ptr[gr_row], ptr[gr_row + 1])
    if i_of.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    gl = gr_g[i_of] * np.int64(n_lots) + row_lots[k]          # (group, lot)
    span = np.int64(len(gr_row) + 1)
    key = np.sort(gl * span + i_of)                             # by group, lot, reading
    gl_u = np.unique(gl)
    g_u = gl_u // n_lots
    e_i, j = _expand(np.arange(len(events)), np.searchsorted(g_u, ev_group, "left"),
                     np.searchsorted(g_u, ev_group, "right"))
    cand = gl_u[j]
    at = np.searchsorted(key, cand * span + a[e_i], "left")
    ok = (at < len(key)) & (key[np.minimum(at, len(key) - 1)] < cand * span + b[e_i])
    return events[e_i[ok]], cand[ok] % n_lots

#: Resolution of the quantised prefix sums of :func:`_prefix_aggregates` (scores / sensor z values) and the
#: clip of sensor z values (keeps every sum inside int64).
PREFIX_SCORE_STEP, PREFIX_SENSOR_STEP, PREFIX_SENSOR_CLIP = 1e-9, 1e-6, 1e6


def _prefix_aggregates(a: np.ndarray, b: np.ndarray, gr_row: np.ndarray, values: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """:data:`LOT_STATS` and sensor means of the reading ranges ``gr_row[a:b]`` (non-empty), one per range.

    Sums are integer prefix sums of the values quantised to ``PREFIX_*_STEP`` (sensor z clipped to
    ±``PREFIX_SENSOR_CLIP``): exact, so a range's figures do not depend on where the buffer starts; the maximum
    score comes from a sparse table. ``values`` columns: anomaly_score, is_anomaly, run_start, sensors...
    """
    v = values[gr_row]
    sens = v[:, 3:]
    present = ~np.isnan(sens)
    q = np.column_stack([np.rint(v[:, 0] / PREFIX_SCORE_STEP), v[:, 1], v[:, 2], present,
                         np.rint(np.clip(np.where(present, sens, 0.0), -PREFIX_SENSOR_CLIP, PREFIX_SENSOR_CLIP)
                                 / PREFIX_SENSOR_STEP)]).astype(np.int64)
    prefix = np.vstack([np.zeros((1, q.shape[1]), dtype=np.int64), np.cumsum(q, axis=0)])
    tot = prefix[b] - prefix[a]
    n = (b - a).astype("float64")
    n_sens = sens.shape[1]
    score_sum = tot[:, 0] * PREFIX_SCORE_STEP
    stats = np.column_stack([n, _range_max(v[:, 0], a, b), score_sum / n, tot[:, 1], tot[:, 1] / n, tot[:, 2]])
    cnt = tot[:, 3:3 + n_sens]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(cnt > 0, tot[:, 3 + n_sens:] * PREFIX_SENSOR_STEP / cnt, np.nan)
    return stats, means


def _range_max(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max(x[a:b]) per non-empty range, from a sparse table (NaN ignored)."""
    table = [np.where(np.isnan(x), -np.inf, x)]
    while 2 ** len(table) <= len(x):
        prev, half = table[-1], 2 ** (len(table) - 1)
        table.append(np.maximum(prev[:-half], prev[half:]))
    level = np.floor(np.log2(b - a)).astype(np.int64)
    out = np.empty(len(a))
    for k in np.unique(level):
        sel = level == k
        out[sel] = np.maximum(table[k][a[sel]], table[k][b[sel] - 2 ** k])
    return np.where(np.isinf(out), np.nan, out)


def _set_groups(ev_line: np.ndarray, pair_ev: np.ndarray, pair_lot: np.ndarray, n: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Group id per event (same line and same lot set <=> same group) and each group's line code.

    ``pair_ev``/``pair_lot``: distinct (event, lot) pairs sorted by event then lot.
    """
    k = np.bincount(pair_ev, minlength=n)
    width = int(k.max()) if k.size else 0
    mat = np.full((n, width + 1), -1, dtype=np.int64)
    mat[:, 0] = ev_line
    rank = np.arange(len(pair_ev)) - np.repeat(np.cumsum(k) - k, k)
    mat[pair_ev, rank + 1] = pair_lot
    uniq, group = np.unique(mat, axis=0, return_inverse=True)
    return group.ravel().astype(np.int64), uniq[:, 0]


#: Resolution of the stream cadence (seconds) of :func:`stream_step`: the rounding keeps it identical for any
#: buffer of the same stream (reading-time jitter is far below it).
STEP_RESOLUTION_S = 0.1


def stream_step(buf: pd.DataFrame, ts: np.ndarray | None = None) -> float | None:
    """The cadence of a time-based stream (seconds between consecutive readings of a line, median, rounded to
    :data:`STEP_RESOLUTION_S`); None with fewer than two consecutive readings."""
    line, _ = pd.factorize(buf["line"])
    order = np.lexsort((buf["pos"].to_numpy(dtype=np.int64), line))
    ts = buffer_ns(buf) if ts is None else ts
    pos, line, ts = buf["pos"].to_numpy(dtype=np.int64)[order], line[order], ts[order]
    nxt = (pos[1:] - pos[:-1] == 1) & (line[1:] == line[:-1])
    if not nxt.any():
        return None
    step = float(np.median(np.diff(ts)[nxt])) / 1e9
    step = round(step / STEP_RESOLUTION_S) * STEP_RESOLUTION_S
    return step if step > 0 else None


def _local_by_position(local: np.ndarray, lcol: dict, name: str, sensors: list[str], events: np.ndarray,
                       target: np.ndarray, half: int, a: np.ndarray, b: np.ndarray, gr_g: np.ndarray,
                       gr_row: np.ndarray, group: np.ndarray, key: np.ndarray, span: np.int64, lot_memory: int,
                       values: np.ndarray) -> None:
    """Fill the local features of ``events``: the readings of their window (``gr_row[a:b]``) whose stream position
    lies within ``half`` of ``target`` (``key``: group * span + pos + lot_memory of the groups' readings)."""
    base = group[events] * span + lot_memory
    c = np.searchsorted(key, base + target - half, "left")
    d = np.searchsorted(key, base + target + half, "right")
    ev_i, k = _expand(events, np.maximum(a[events], c), np.minimum(b[events], d))
    if ev_i.size == 0:
        return
    at, stats, means, mins, maxs = _aggregate(ev_i, values[gr_row[k]])
    first = lcol[f"{name}.{LOCAL_STATS[0]}"]
    local[at, first:first + len(LOCAL_STATS)] = stats[:, :len(LOCAL_STATS)]
    for agg, block in (("mean", means), ("min", mins), ("max", maxs)):
        first = lcol[f"{name}.local_{agg}.{sensors[0]}"]
        local[at, first:first + len(sensors)] = block


def _local(local: np.ndarray, lcol: dict, name: str, sensors: list[str], events: np.ndarray, target: np.ndarray,
           a: np.ndarray, b: np.ndarray, gr_g: np.ndarray, gr_row: np.ndarray, group: np.ndarray,
           buf: pd.DataFrame, values: np.ndarray, half_ns: float) -> None:
    """Fill the local (own electrode stretch) features of ``events``: their window's readings within
    ``half_ns`` of ``target``. Candidates come from a ts search when the groups' readings are in ts order."""
    ts = ts_ns(buf["ts"])
    gts = ts[gr_row]
    lo, hi = a[events], b[events]
    t0 = int(ts.min())
    width = int(ts.max()) - t0 + 2 * int(half_ns) + 4_000_000
    in_order = (gts[1:] >= gts[:-1])[gr_g[1:] == gr_g[:-1]].all()
    if in_order and (int(gr_g.max()) + 2) * width < 2**62:
        width = np.int64(width)
        key = gr_g * width + (gts - t0)
        margin = half_ns + 2_000_000.0  # float rounding of ns timestamps stays far inside 2 ms
        base = group[events] * width - t0
        c = np.searchsorted(key, base + np.floor(target - margin).astype(np.int64), "left")
        d = np.searchsorted(key, base + np.ceil(target + margin).astype(np.int64), "right")
        lo, hi = np.maximum(lo, c), np.minimum(hi, d)
    ev_i, k = _expand(events, lo, hi)
    if ev_i.size == 0:
        return
    row_i = gr_row[k]
    near = np.abs(ts.astype("float64")[row_i] - np.repeat(target, np.maximum(hi - lo, 0))) <= half_ns
    if not near.any():
        return
    at, stats, means, mins, maxs = _aggregate(ev_i[near], values[row_i[near]])
    first = lcol[f"{name}.{LOCAL_STATS[0]}"]
    local[at, first:first + len(LOCAL_STATS)] = stats[:, :len(LOCAL_STATS)]
    for agg, block in (("mean", means), ("min", mins), ("max", maxs)):
        first = lcol[f"{name}.local_{agg}.{sensors[0]}"]
        local[at, first:first + len(sensors)] = block


def _unique_pairs(a: np.ndarray, b: np.ndarray, n_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) integer pairs, sorted by a then b."""
    key = np.sort(a.astype(np.int64) * np.int64(n_b) + b.astype(np.int64))
    if key.size:
        key = key[np.concatenate([[True], key[1:] != key[:-1]])]
    return key // n_b, key % n_b


def _expand(owner: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ragged ranges [lo, hi) per owner -> (owner repeated, index) pairs."""
    cnt = np.maximum(hi - lo, 0)
    total = int(cnt.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.repeat(lo, cnt)
    offsets = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    return np.repeat(owner, cnt), starts + offsets


def _aggregate(ev: np.ndarray, values: np.ndarray):
    """Per event (``ev`` sorted): (events, [n, max score, mean score, anomalous, rate, runs], sensor means, mins,
    maxs); ``values`` columns: anomaly_score, is_anomaly, run_start, sensors... (NaN sensors are skipped)."""
    at, start, n = np.unique(ev, return_index=True, return_counts=True)
    score, flag, runs, sens = values[:, 0], values[:, 1], values[:, 2], values[:, 3:]
    nf = n.astype("float64")
    anomalous = np.add.reduceat(flag, start)
    stats = np.column_stack([nf, np.maximum.reduceat(score, start), np.add.reduceat(score, start) / nf, anomalous,
                             anomalous / nf, np.add.reduceat(runs, start)])
    present = ~np.isnan(sens)
    cnt = np.add.reduceat(present.astype("float64"), start, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.add.reduceat(np.where(present, sens, 0.0), start, axis=0) / cnt
    mins = np.fmin.reduceat(sens, start, axis=0)
    maxs = np.fmax.reduceat(sens, start, axis=0)
    return at, stats, np.where(cnt > 0, means, np.nan), mins, maxs


def buffer_ns(buf: pd.DataFrame) -> np.ndarray:
    """A buffer's reading times as int64 ns: its ``ts_ns`` column when the caller keeps one, else from ``ts``."""
    if "ts_ns" in buf:
        return buf["ts_ns"].to_numpy(dtype=np.int64)
    return ts_ns(buf["ts"])


def ts_ns(ts: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds since the epoch (UTC)."""
    dtype = getattr(ts, "dtype", None)
    if isinstance(dtype, pd.DatetimeTZDtype) and dtype.unit == "ns" and isinstance(ts, pd.Series):
        return ts.array.asi8
    return pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("ns").asi8


def _window_end(buf: pd.DataFrame, ev_line: np.ndarray, ev_ts: np.ndarray, buf_ts: np.ndarray) -> np.ndarray:
    """Per event: stream position of the last reading of its line in ``buf`` with ts <= the event's ts (-1: none);
    ``buf_ts``: the buffer's times in ns (:func:`buffer_ns`)."""
    hi = np.full(len(ev_line), -1, dtype=np.int64)
    for line, idx in buf.groupby("line", sort=False).indices.items():
        sel = ev_line == line
        if not sel.any():
            continue
        ts = buf_ts[idx]
        pos = buf["pos"].to_numpy()[idx]
        k = np.searchsorted(ts, ev_ts[sel], side="right")  # readings with ts <= event ts
        hi[sel] = np.where(k > 0, pos[np.maximum(k - 1, 0)], -1)
    return hi
