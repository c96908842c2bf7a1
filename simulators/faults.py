"""The fault library: what can go wrong, where, and the ground truth of every injected fault.

Two families:

* **sensor faults** (``drift``, ``spike``, ``stuck``, ``noise``) corrupt what one sensor *reports*; the
  process and the cells are untouched (``affects_quality=False``);
* **process faults** (``mean_shift``, ``tool_wear``, ``contaminated_batch``) change the real process: the
  line model adds their offset to a hidden process quantity (``effect``), the station's sensors show it,
  and downstream cells carry the consequences to end of line (``affects_quality=True``).

Faults are scheduled per line with their own random stream, so the same seed gives the same normal data
with and without faults (a paired comparison). Times are wall-clock seconds from the run start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cellwatch.errors import CellwatchError
from cellwatch.stations import STATIONS, station

from .timeline import Timeline

SENSOR_FAULTS = ("drift", "spike", "stuck", "noise")
PROCESS_FAULTS = ("mean_shift", "tool_wear", "contaminated_batch")
FAULT_TYPES = SENSOR_FAULTS + PROCESS_FAULTS

#: Sensors that never get a sensor fault: derived values, nominal plant times, counts, and the EOL
#: measurements that ARE the cell result (a lying tester would change the ground truth itself).
NO_SENSOR_FAULT = frozenset({
    "porosity_pct", "coulombic_efficiency_pct", "k_value_mv_day", "ocv_start_v", "ocv_end_v",
    "aging_duration_h", "soak_time_h", "edge_defects_per_100m", "eol_capacity_ah", "dcir_mohm",
    "mixer_vacuum_mbar", "mixer_speed_rpm",
})


@dataclass(frozen=True, slots=True)
class ProcessEffect:
    """A process deviation a fault can cause: hidden quantity, magnitudes to draw from, visible sensors."""

    station: str
    effect: str
    magnitudes: tuple[float, ...]
    sensors: tuple[str, ...]


MEAN_SHIFTS: tuple[ProcessEffect, ...] = (
    ProcessEffect("coating", "coat_weight_rel", (-0.045, -0.035, 0.04), ("coat_weight_mg_cm2", "wet_thickness_um")),
    ProcessEffect("coating", "dryer_zone2_c", (15.0, 20.0), ("dryer_zone2_temp_c", "residual_nmp_ppm")),
    ProcessEffect("calendering", "density_rel", (0.045, 0.06, -0.05),
                  ("electrode_density_g_cm3", "porosity_pct", "calendered_thickness_um", "line_load_n_mm")),
    ProcessEffect("winding", "winding_offset_mm", (0.5, 0.6), ("misalignment_mm", "overhang_mm")),
    ProcessEffect("winding", "tension_cv_pct", (4.0, 6.0), ("winding_tension_cv_pct",)),
    ProcessEffect("filling", "fill_rel", (-0.05, -0.04), ("fill_weight_g",)),
    ProcessEffect("filling", "dew_point_c", (20.0, 26.0), ("dew_point_c",)),
    ProcessEffect("formation", "formation_temp_c", (10.0, -9.0),
                  ("formation_temp_c", "coulombic_efficiency_pct", "formation_charge_ah")),
)
TOOL_WEAR: tuple[ProcessEffect, ...] = (
    ProcessEffect("slitting", "burr_um", (9.0, 12.0), ("burr_height_um", "edge_defects_per_100m")),
    ProcessEffect("coating", "coat_weight_rel", (-0.05, -0.06), ("coat_weight_mg_cm2", "wet_thickness_um")),
)


@dataclass(slots=True)
class Fault:
    """One injected fault and its ground truth (``cells`` is filled in after the cells are made)."""

    fault_id: str
    type: str
    line: str
    station: str
    sensors: tuple[str, ...]
    start: float
    end: float
    affects_quality: bool
    effect: str | None = None
    magnitude: float = 0.0
    params: dict = field(default_factory=dict)
    cells: list[str] = field(default_factory=list)


def parse_fault_types(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"all"``, ``"none"`` or a comma list of types -> tuple of types (CellwatchError if unknown)."""
    if spec is None:
        return FAULT_TYPES
    if isinstance(spec, str):
        spec = spec.strip().lower()
        if spec in ("", "none"):
            return ()
        if spec == "all":
            return FAULT_TYPES
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in spec if s not in FAULT_TYPES]
    if bad:
        raise CellwatchError(f"unknown fault type(s) {', '.join(bad)}; known: all, none, {', '.join(FAULT_TYPES)}")
    return tuple(dict.fromkeys(spec))


def _station_first_activity(cell_offsets: dict[str, float]) -> dict[str, float]:
    out = {st.name: 0.0 for st in STATIONS}
    out.update(cell_offsets)
    return out


def schedule_faults(rng: np.random.Generator, line: str, timeline: Timeline, types: Sequence[str],
                    per_shift: float, batch_s: float, cell_offsets: dict[str, float],
                    min_minutes: float = 10.0, max_minutes: float = 60.0) -> list[Fault]:
    """Draw this line's faults: ``per_shift`` on average per 8 h, spread over stations, never two at once
    on one station (10 min apart at least), each 10-60 minutes (a contaminated batch: its mixing time)."""
    hours = timeline.wall_s / 3600
    if not types or hours <= 0:
        return []
    n = int(rng.poisson(per_shift * hours / 8))
    order = list(rng.permutation(types))
    kinds = [order[k % len(order)] for k in range(n)]
    first = _station_first_activity(cell_offsets)
    busy: dict[str, list[tuple[float, float]]] = {}
    faults: list[Fault] = []
    gap = 600.0
    horizon = timeline.wall_s

    # the line stands during a stop (and restarts with warm-up transients): a fault window would be
    # partly invisible there, so windows keep clear of stops as seen at each station
    stopped = {st: [(w + first[st], w + d + first[st]) for w, d in zip(timeline.stop_wall, timeline.stop_d,
                                                                         strict=True)] for st in first}

    def free(f: Fault) -> bool:
        spans = busy.get(f.station, []) + ([] if f.type == "contaminated_batch" else stopped[f.station])
        return all(f.end + gap <= s or f.start >= e + gap for s, e in spans)

    for kind in kinds:
        for _attempt in range(60):
            f = _draw(rng, kind, timeline, batch_s, min_minutes, max_minutes, first, horizon)
            if f is not None and free(f):
                busy.setdefault(f.station, []).append((f.start, f.end))
                faults.append(f)
                break
    faults.sort(key=lambda f: f.start)
    for k, f in enumerate(faults):
        f.fault_id = f"{line}-F{k + 1:03d}"
        f.line = line
    return faults


def _window(rng: np.random.Generator, lo: float, horizon: float, min_minutes: float,
            max_minutes: float) -> tuple[float, float] | None:
    dur = float(rng.uniform(min_minutes, max_minutes)) * 60
    hi = horizon - dur - 300
    if hi <= lo:
        return None
    start = float(np.round(rng.uniform(lo, hi)))
    return start, start + round(dur)


def _draw(rng: np.random.Generator, kind: str, tl: Timeline, batch_s: float, min_minutes: float,
          max_minutes: float, first: dict[str, float], horizon: float) -> Fault | None:
    if kind == "contaminated_batch":
        # a batch mixed entirely inside the run whose cells reach end of line before the run ends if possible
        n_batches = int(tl.run_s // batch_s)
        if n_batches < 1:
            return None
        last_useful = max(1, min(n_batches, int((tl.run_s - 3600 - 5400) // batch_s)))
        b = int(rng.integers(1, last_useful + 1))
        a, e = (float(x) for x in tl.wall(np.array([(b - 1) * batch_s, b * batch_s])))
        return Fault("", kind, "", "mixing", (), a, e, True, effect="contaminated", magnitude=1.0,
                     params={"batch_index": b})
    if kind in PROCESS_FAULTS:
        table = MEAN_SHIFTS if kind == "mean_shift" else TOOL_WEAR
        eff = table[int(rng.integers(len(table)))]
        win = _window(rng, first[eff.station] + 600, horizon, min_minutes, max_minutes)
        if win is None:
            return None
        mag = float(eff.magnitudes[int(rng.integers(len(eff.magnitudes)))])
        return Fault("", kind, "", eff.station, eff.sensors, win[0], win[1], True, effect=eff.effect, magnitude=mag)
    st = STATIONS[int(rng.integers(len(STATIONS)))]
    candidates = [s for s in station(st.name).sensor_names if s not in NO_SENSOR_FAULT]
    sensor = candidates[int(rng.integers(len(candidates)))]
    win = _window(rng, first[st.name] + 600, horizon, min_minutes, max_minutes)
    if win is None:
        return None
    return Fault("", kind, "", st.name, (sensor,), win[0], win[1], False)


def process_offset(faults: Sequence[Fault], effect: str, wall: np.ndarray) -> np.ndarray:
    """Sum of the process offsets of ``effect`` at wall-clock times ``wall`` (step for a mean shift, a ramp
    from 0 to the magnitude for tool wear, which resets at the end of the window)."""
    wall = np.asarray(wall, dtype=float)
    out = np.zeros(wall.shape)
    for f in faults:
        if f.effect != effect:
            continue
        inside = (wall >= f.start) & (wall < f.end)
        if f.type == "tool_wear":
            out[inside] += f.magnitude * (wall[inside] - f.start) / (f.end - f.start)
        else:
            out[inside] += f.magnitude
    return out


def _local_sd(values: np.ndarray, wall: np.ndarray, start: float) -> float:
    """Robust spread (1.4826 x MAD) of the sensor in the 2 hours before ``start`` (or the whole series)."""
    before = values[(wall < start) & (wall >= start - 7200) & np.isfinite(values)]
    if before.size < 20:
        before = values[np.isfinite(values)]
    sd = float(1.4826 * np.median(np.abs(before - np.median(before)))) if before.size else 1.0
    return sd if sd > 0 else max(abs(float(np.nanmean(values))) * 0.01, 1e-3)


def apply_sensor_faults(faults: Sequence[Fault], station_name: str, wall: np.ndarray,
                        values: dict[str, np.ndarray], rng: np.random.Generator, start_ts) -> None:
    """Corrupt the reported ``values`` (rows in time order at ``wall``) in place, recording the parameters.

    drift: linear ramp to 6 local SDs; spike: 3+ single readings 8-14 SDs (local or whole-stream, the larger)
    off (times in ``spike_ts``);
    stuck: the last value before the window, held; noise: extra white noise of 4 local SDs.
    """
    import pandas as pd

    for f in faults:
        if f.station != station_name or f.type not in SENSOR_FAULTS:
            continue
        name = f.sensors[0]
        v = values[name]
        inside = np.flatnonzero((wall >= f.start) & (wall < f.end))
        if inside.size == 0:
            continue
        sd = _local_sd(v, wall, f.start)
        if f.type == "drift":
            sign = float(rng.choice([-1.0, 1.0]))
            f.magnitude = sign * 6.0 * sd
            v[inside] += f.magnitude * (wall[inside] - f.start) / (f.end - f.start)
        elif f.type == "noise":
            f.magnitude = 4.0 * sd
            v[inside] += rng.normal(0.0, f.magnitude, inside.size)
        elif f.type == "stuck":
            prior = np.flatnonzero(wall < f.start)
            held = v[prior[-1]] if prior.size else v[inside[0]]
            f.magnitude = float(held)
            v[inside] = held
        elif f.type == "spike":
            # against the larger of the local and the whole-stream spread: a spike stands out of the stream
            finite = v[np.isfinite(v)]
            sd = max(sd, float(1.4826 * np.median(np.abs(finite - np.median(finite)))))
            k = int(min(inside.size, max(3, (f.end - f.start) // 600)))
            rows = np.sort(rng.choice(inside, size=k, replace=False))
            mags = rng.uniform(8.0, 14.0, k) * rng.choice([-1.0, 1.0], k) * sd
            # keep spikes physically possible in sign for positive-only sensors: flip below-zero ones up
            neg = v[rows] + mags < 0
            mags[neg] = np.abs(mags[neg])
            v[rows] += mags
            f.magnitude = float(np.max(np.abs(mags)))
            times = pd.to_datetime(start_ts) + pd.to_timedelta(np.round(wall[rows] * 1000), unit="ms")
            f.params["spike_ts"] = [t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" for t in times]
        f.params["scale_sd"] = sd
