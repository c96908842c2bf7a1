"""``simulate()``: several lines, their faults and ground truth, assembled into the contract's frames."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from cellwatch.contract import READING_KEYS
from cellwatch.errors import CellwatchError
from cellwatch.stations import SENSOR_NAMES, STATION_NAMES

from .faults import Fault, parse_fault_types, schedule_faults
from .genealogy import Genealogy
from .line import SHIFT_ORIGIN_S, SHIFT_S, LineModel, LineOutput, LineParams
from .recipes import RECIPES

#: Default start: a fixed Monday 02:00 UTC, so runs are reproducible and an 8 h run spans a shift handover.
DEFAULT_START = "2026-03-02T02:00:00Z"
#: Default number of faults per line per 8-hour shift (an 8 h, 2-line run gets ~14).
DEFAULT_FAULTS_PER_SHIFT = 7.0

FAULT_COLUMNS = ("fault_id", "type", "line", "station", "sensors", "start", "end", "affects_quality", "effect",
                 "magnitude", "params", "cells", "n_cells")
CELL_VISITS = ("coating", "calendering", "slitting", "winding", "filling", "formation", "aging", "eol")


@dataclass(slots=True)
class SimulationResult:
    """The frames of one simulation run (see docs/simulator.md for every column)."""

    readings: pd.DataFrame
    cells: pd.DataFrame
    faults: pd.DataFrame
    genealogy: pd.DataFrame = field(default_factory=pd.DataFrame)
    events: pd.DataFrame = field(default_factory=pd.DataFrame)
    elapsed_s: float = 0.0

    def cell_results(self) -> pd.DataFrame:
        """The cells as contract cell results (columns ``CELL_RESULT_COLUMNS``), in EOL time order."""
        from cellwatch.contract import CELL_RESULT_COLUMNS
        return self.cells.sort_values("ts", kind="stable")[list(CELL_RESULT_COLUMNS)].reset_index(drop=True)


def parse_start(start: str | pd.Timestamp | None) -> pd.Timestamp:
    """ISO timestamp (UTC if naive), ``"now"`` (rounded down to the second), or None for the default."""
    if start is None:
        start = DEFAULT_START
    if isinstance(start, str) and start.strip().lower() == "now":
        return pd.Timestamp.now(tz="UTC").floor("s")
    try:
        ts = pd.Timestamp(start)
    except (ValueError, TypeError) as exc:
        raise CellwatchError(f"--start {start!r} is not an ISO timestamp or 'now'") from exc
    if ts is pd.NaT:
        raise CellwatchError(f"--start {start!r} is not an ISO timestamp or 'now'")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def simulate(hours: float = 8.0, lines: int = 2, seed: int = 0, faults: str | Sequence[str] | None = "all",
             start: str | pd.Timestamp | None = None, faults_per_shift: float = DEFAULT_FAULTS_PER_SHIFT,
             params: LineParams | None = None, progress: bool = False) -> SimulationResult:
    """Simulate ``lines`` lines for ``hours`` hours; deterministic for a given ``seed``.

    ``faults`` is ``"all"``, ``"none"`` or a comma list / sequence of fault types. Normal variation is the
    same with and without faults for one seed, so defect rates can be compared pairwise.
    """
    if not hours > 0:
        raise CellwatchError(f"--hours must be positive, got {hours}")
    if not 1 <= lines <= 99:
        raise CellwatchError(f"--lines must be between 1 and 99, got {lines}")
    if faults_per_shift < 0:
        raise CellwatchError(f"faults per shift must be >= 0, got {faults_per_shift}")
    types = parse_fault_types(faults)
    t0 = time.perf_counter()
    start_ts = parse_start(start)
    params = params or LineParams()
    genealogy = Genealogy()
    outputs: list[LineOutput] = []
    all_faults: list[Fault] = []
    models: list[LineModel] = []
    names = [f"L{i + 1}" for i in range(lines)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=lines, desc="simulating lines", unit="line")
    for i, name in enumerate(names):
        model = LineModel(name, i, hours, seed, start_ts, params)
        fault_rng = np.random.default_rng([seed, i, 2])
        line_faults = schedule_faults(fault_rng, name, model.timeline, types, faults_per_shift, params.batch_s,
                                      params.cell_offsets())
        out = model.run(line_faults, fault_rng, genealogy)
        _touch_cells(out.cells, line_faults, model)
        outputs.append(out)
        all_faults += line_faults
        models.append(model)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    readings = _assemble_readings(outputs, start_ts)
    cells = _assemble_cells(outputs, all_faults, start_ts)
    events = _assemble_events(outputs, models, start_ts, hours)
    return SimulationResult(readings, cells, faults_frame(all_faults, start_ts), genealogy.frame(), events,
                            time.perf_counter() - t0)


def _touch_cells(cells: pd.DataFrame, faults: list[Fault], model: LineModel) -> None:
    """Fill ``fault.cells``: finished cells whose material or visit falls in the fault."""
    tl, p = model.timeline, model.p
    for f in faults:
        if f.type == "contaminated_batch":
            hit = cells["_batch_index"].to_numpy() == f.params["batch_index"]
        elif f.station == "mixing":
            b = cells["_batch_index"].to_numpy()
            mix_a, mix_b = tl.wall((b - 1) * p.batch_s), tl.wall(b * p.batch_s)
            hit = (mix_a < f.end) & (mix_b > f.start)
        else:
            w = cells[f"{f.station}_wall"].to_numpy()
            hit = (w >= f.start) & (w < f.end)
        f.cells = cells["cell_id"].to_numpy()[hit].tolist()


def _ts(start: pd.Timestamp, wall: np.ndarray) -> np.ndarray:
    """Wall-clock seconds -> int64 nanoseconds since the epoch, rounded to the millisecond."""
    return start.value + np.round(np.asarray(wall, dtype=float) * 1000).astype(np.int64) * 1_000_000


def _to_datetime(ns: np.ndarray) -> pd.Series:
    """Epoch nanoseconds -> a ``datetime64[us, UTC]`` column (the unit the contract's decoder gives)."""
    return pd.Series((np.asarray(ns, dtype=np.int64) // 1000).astype("datetime64[us]")).dt.tz_localize("UTC")


#: pandas' default string dtype (what the contract's decoder produces).
_STR = pd.Series(["x"]).dtype


def _strings(codes: np.ndarray, dictionary: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """A string column from codes into ``dictionary`` (``-1`` = missing), built in Arrow, not per row."""
    idx = pa.array(codes.astype(np.int32), mask=codes < 0)
    arr = pa.DictionaryArray.from_arrays(idx, pa.array(dictionary, type=pa.large_string())).cast(pa.large_string())
    return pd.array(arr, dtype=_STR)


def _assemble_readings(outputs: list[LineOutput], start: pd.Timestamp) -> pd.DataFrame:
    streams = [s for out in outputs for s in out.rows]
    sizes = np.array([s.wall.size for s in streams], dtype=np.int64)
    n = int(sizes.sum())
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    ts = np.empty(n, dtype=np.int64)
    seq = np.empty(n, dtype=np.int64)
    st_code = np.empty(n, dtype=np.int64)
    line_code = np.empty(n, dtype=np.int64)
    line_names = sorted({s.line for s in streams}, key=lambda x: int(x[1:]))
    for k, s in enumerate(streams):
        a, b = bounds[k], bounds[k + 1]
        ts[a:b] = _ts(start, s.wall)
        seq[a:b] = np.arange(b - a)
        st_code[a:b] = STATION_NAMES.index(s.station)
        line_code[a:b] = line_names.index(s.line)
    order = np.lexsort((line_code, st_code, ts))
    where = np.empty(n, dtype=np.int64)
    where[order] = np.arange(n)
    sensors = sorted(SENSOR_NAMES)
    column = {name: j for j, name in enumerate(sensors)}
    block = np.full((len(sensors), n), np.nan)              # one allocation; row j = sensor j (pandas' layout)
    recipe = np.empty(n, dtype=np.int64)
    tag_codes = np.full(n, -1, dtype=np.int64)
    cell_codes = np.full(n, -1, dtype=np.int64)
    tag_dicts: list[np.ndarray] = []
    cell_dicts: dict[int, tuple[int, np.ndarray]] = {}     # one dictionary per line's cell ids (shared object)
    n_tags = n_cells = 0
    for k, s in enumerate(streams):
        pos = where[bounds[k]:bounds[k + 1]]
        for name, v in s.values.items():
            block[column[name], pos] = v
        recipe[pos] = s.recipe
        tag_codes[pos] = np.where(s.tags.codes >= 0, s.tags.codes + n_tags, -1)
        tag_dicts.append(s.tags.values)
        n_tags += len(s.tags.values)
        if s.cell_id is not None:
            key = id(s.cell_id.values)
            if key not in cell_dicts:
                cell_dicts[key] = (n_cells, s.cell_id.values)
                n_cells += len(s.cell_id.values)
            cell_codes[pos] = s.cell_id.codes + cell_dicts[key][0]
    cell_dict = np.concatenate([v for _, v in cell_dicts.values()]) if cell_dicts else np.empty(0, dtype=object)
    tag_dict = np.concatenate(tag_dicts) if tag_dicts else np.empty(0, dtype=object)
    frame = pd.DataFrame(block.T, columns=sensors, copy=False)    # the float block is used as it is
    keys = {
        "ts": _to_datetime(ts[order]),
        "line": _strings(line_code[order], np.array(line_names, dtype=object)),
        "station": _strings(st_code[order], np.array(STATION_NAMES, dtype=object)),
        "cell_id": _strings(cell_codes, cell_dict),
        "seq": seq[order],
        "recipe": _strings(recipe, np.array([r.name for r in RECIPES], dtype=object)),
        "tags": _strings(tag_codes, tag_dict),
    }
    for i, (name, col) in enumerate(keys.items()):
        frame.insert(i, name, col)
    assert tuple(frame.columns[:len(READING_KEYS)]) == READING_KEYS
    return frame


def _assemble_cells(outputs: list[LineOutput], faults: list[Fault], start: pd.Timestamp) -> pd.DataFrame:
    cells = pd.concat([o.cells for o in outputs], ignore_index=True)
    out = cells.drop(columns=[f"{v}_wall" for v in CELL_VISITS] + ["_batch_index"])
    for v in CELL_VISITS:
        out[f"{v}_ts"] = _to_datetime(_ts(start, cells[f"{v}_wall"].to_numpy()))
    out["ts"] = out["eol_ts"]
    touched: dict[str, list[str]] = {}
    for f in faults:
        for c in f.cells:
            touched.setdefault(c, []).append(f.fault_id)
    out["fault_ids"] = [touched.get(c, []) for c in out["cell_id"].tolist()]
    out = out.sort_values(["ts", "line"], kind="stable").reset_index(drop=True)
    first = ["cell_id", "line", "recipe", "ts", "capacity_ah", "dcir_mohm", "k_value_mv_day", "grade", "defect",
             "defect_type"]
    return out[first + [c for c in out.columns if c not in first]]


def faults_frame(faults: list[Fault], start: pd.Timestamp) -> pd.DataFrame:
    """Ground truth, one row per fault (sensors and cells as lists, params as a JSON string)."""
    to_ts = lambda w: _to_datetime(_ts(start, np.array(w, dtype=float)))  # noqa: E731
    return pd.DataFrame({
        "fault_id": pd.Series([f.fault_id for f in faults], dtype=object),
        "type": pd.Series([f.type for f in faults], dtype=object),
        "line": pd.Series([f.line for f in faults], dtype=object),
        "station": pd.Series([f.station for f in faults], dtype=object),
        "sensors": pd.Series([list(f.sensors) for f in faults], dtype=object),
        "start": to_ts([f.start for f in faults]),
        "end": to_ts([f.end for f in faults]),
        "affects_quality": np.array([f.affects_quality for f in faults], dtype=bool),
        "effect": pd.Series([f.effect for f in faults], dtype=object),
        "magnitude": np.array([f.magnitude for f in faults], dtype=float),
        "params": pd.Series([orjson.dumps(f.params, option=orjson.OPT_SERIALIZE_NUMPY).decode() for f in faults],
                            dtype=object),
        "cells": pd.Series([list(f.cells) for f in faults], dtype=object),
        "n_cells": np.array([len(f.cells) for f in faults], dtype=np.int64),
    }, columns=list(FAULT_COLUMNS))


def _assemble_events(outputs: list[LineOutput], models: list[LineModel], start: pd.Timestamp,
                     hours: float) -> pd.DataFrame:
    """Normal events (not faults): stops, recipe changeovers, knife changes, shift handovers."""
    rows = [e for o in outputs for e in o.events]
    first = -((models[0].day_offset_s - SHIFT_ORIGIN_S) % SHIFT_S) if models else 0.0
    for m in models:
        for t in np.arange(first, hours * 3600, SHIFT_S):
            if t > 0:
                rows.append({"line": m.line, "event": "shift_change", "start": float(t), "end": float(t)})
    df = pd.DataFrame(rows, columns=["line", "event", "start", "end"])
    df["start"] = _to_datetime(_ts(start, df["start"].to_numpy(dtype=float)))
    df["end"] = _to_datetime(_ts(start, df["end"].to_numpy(dtype=float)))
    return df.sort_values(["start", "line"], kind="stable").reset_index(drop=True)
