"""The line model: one production line from slurry batch to end-of-line grade, vectorised with NumPy.

Material flow (running time ``p``, see :mod:`.timeline`):

* mixing prepares the NEXT slurry batch while the coater uses the current one (one batch = 90 min of
  coating = 3 coils of 30 min);
* material coated at ``p`` is calendered at ``p + 10 min``, slit at ``p + 20 min`` into 4 daughter rolls
  (lanes) and - after vacuum drying - wound into cells at ``p + 60 min``;
* each cell then visits filling (+3 min), formation (+30 min), aging (+40 min) and eol (+5 min). Formation
  takes about a day and aging one to three weeks in a plant; the simulator compresses those waits but
  reports the nominal plant durations (``soak_time_h``, ``aging_duration_h``) as sensor values.

The line starts in steady state: the first cells use rolls coated before the run (inventory), which have
genealogy ids but no readings. Every station's sensors share a station latent (wet film drives coat
weight; density and thickness move against each other; formation charge, capacity and CE are linked) and
cells inherit the deviations of their material, so an upstream deviation shows up downstream following
the cause -> effect table of the domain brief. Normal variation - recipe changeovers, shifts with small
crew offsets, stops with warm-up transients, dryer zones at different set-points, aging-room temperature
moving the OCV - is never labelled as a fault.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from .faults import Fault, apply_sensor_faults, process_offset
from .genealogy import Genealogy
from .recipes import (
    GRADE_A_CAPACITY,
    GRADE_A_DCIR,
    GRADE_A_K,
    MAX_DCIR_FRACTION,
    MAX_K_MV_DAY,
    MIN_CAPACITY_FRACTION,
    RECIPES,
    SCRAP_CAPACITY,
    SCRAP_DCIR,
)
from .timeline import Timeline, ar1, step_offsets

SHIFT_S = 8 * 3600
#: Shifts change at 06:00, 14:00 and 22:00 UTC.
SHIFT_ORIGIN_S = 6 * 3600


@dataclass(frozen=True, slots=True)
class LineParams:
    """Cadences, lags and sizes of the line model (seconds unless stated)."""

    dt_s: float = 5.0                 # electrode stations: one reading per station every 5 s of running time
    mixing_dt_s: float = 30.0         # mixer: one reading every 30 s
    batch_s: float = 5400.0           # one slurry batch feeds 90 min of coating
    coil_s: float = 1800.0            # one mother coil = 30 min of coating
    lanes: int = 4                    # daughter rolls per coil
    calendering_lag_s: float = 600.0
    slitting_lag_s: float = 1200.0
    winding_lag_s: float = 3600.0     # includes vacuum drying of the daughter rolls
    cell_interval_s: float = 3.0      # mean time between two cells at the winder
    anode_roll_s: float = 1500.0      # anode rolls (from the anode shop) change every 25 min
    filling_after_s: float = 180.0
    formation_after_s: float = 1800.0
    aging_after_s: float = 2400.0
    eol_after_s: float = 300.0
    channels: int = 96                # formation channels per line
    knife_life_s: float = 4 * 3600.0  # scheduled knife change
    stops_per_shift: float = 1.5
    changeover_every_s: float = 10 * 3600.0

    def cell_offsets(self) -> dict[str, float]:
        """Wall-clock delay of each cell station after winding (first activity of the station)."""
        f = self.filling_after_s
        fo = f + self.formation_after_s
        a = fo + self.aging_after_s
        return {"filling": f, "formation": fo, "aging": a, "eol": a + self.eol_after_s}


@dataclass(slots=True)
class Coded:
    """A string column as codes into distinct values (``-1`` = missing): cheap to build, to concatenate and
    to turn into an Arrow dictionary column."""

    codes: np.ndarray          # int64
    values: np.ndarray         # object array of distinct strings

    def take(self, idx: np.ndarray) -> Coded:
        return Coded(self.codes[idx], self.values)

    @classmethod
    def missing(cls, n: int) -> Coded:
        return cls(np.full(n, -1, dtype=np.int64), np.empty(0, dtype=object))


@dataclass(slots=True)
class StationRows:
    """Readings of one (line, station) stream, in time order."""

    line: str
    station: str
    wall: np.ndarray          # seconds from the run start (ms resolution)
    values: dict[str, np.ndarray]
    recipe: np.ndarray        # recipe index (into RECIPES) per row
    tags: Coded               # JSON object strings
    cell_id: Coded | None = None


@dataclass(slots=True)
class LineOutput:
    rows: list[StationRows]
    cells: pd.DataFrame
    events: list[dict]


def _tags(keys: tuple[str, ...], *columns: np.ndarray) -> Coded:
    """JSON tag strings per row (sorted keys, compact: the contract's form), each combination built once."""
    n = len(columns[0])
    if n == 0:
        return Coded.missing(0)
    combined = np.zeros(n, dtype=np.int64)
    uniques = []
    for col in columns:
        codes, u = pd.factorize(np.asarray(col))
        combined = combined * len(u) + codes
        uniques.append(np.asarray(u, dtype=object))
    distinct, inverse = np.unique(combined, return_inverse=True)
    parts = []
    for u in reversed(uniques):
        parts.append(u[distinct % len(u)])
        distinct = distinct // len(u)
    parts.reverse()
    strings = np.array([orjson.dumps(dict(zip(keys, map(str, combo), strict=True)), option=orjson.OPT_SORT_KEYS)
                        .decode() for combo in zip(*parts, strict=True)], dtype=object)
    return Coded(inverse.astype(np.int64).ravel(), strings)


#: EOL defect types in the order the decision checks them (the first that holds names the defect).
DEFECT_TYPES = ("high_self_discharge", "lithium_plating", "low_capacity", "high_dcir", "other")
#: Monte-Carlo draws per cell of :func:`defect_probability`.
ORACLE_DRAWS = 256
#: EOL criteria a cell's own readings already measure at a station: formation measures the capacity (the
#: formation capacity tracks the EOL capacity within 0.3 %), aging the self-discharge (K-value).
ORACLE_KNOWS = {"formation": ("low_capacity",), "aging": ("low_capacity", "high_self_discharge")}


def event_draws(rng: np.random.Generator, shape: int | tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-cell random draws of the hidden events and of the cell's intrinsic spread, in stream order."""
    d = {k: rng.random(shape) for k in ("u_plating", "u_short", "u_other", "u_size")}
    for k, sd in (("cap", 0.009), ("ce", 0.35), ("dcir", 0.035), ("k", 0.25), ("days", 1.5)):
        d[k] = rng.normal(0, sd, shape)
    return d


def measurement_draws(rng: np.random.Generator, shape: int | tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per-cell random draws of the aging OCVs, the EOL measurements and the formation capacity, in stream order."""
    return {k: rng.normal(0, sd, shape) for k, sd in (("ocv_start", 0.0015), ("ocv_end", 0.0002), ("eol_cap", 0.002),
                                                      ("dcir_meas", 0.01), ("form_cap", 0.002))}


def cell_outcomes(lat: dict[str, np.ndarray], d: dict[str, np.ndarray]) -> dict:
    """Hidden events, formation..EOL values and the EOL defect conditions of cells.

    ``lat``: the cell's latent state (material, winding, filling, formation and aging-room values; see
    ``LineModel.run``); ``d``: the draws of :func:`event_draws` and :func:`measurement_draws` (any shape that
    broadcasts against ``lat``). ``conditions`` holds one boolean array per :data:`DEFECT_TYPES`.
    """
    plating_logit = (-5.3 + 2.0 * np.clip((0.7 - lat["overhang"]) / 0.1, 0, None)
                     + 150 * np.clip(lat["np_excess"] - 0.01, 0, None) + 0.35 * np.clip(22 - lat["form_t"], 0, None)
                     + 10 * lat["underfill"])
    short_logit = -5.2 + 0.45 * np.clip(lat["burr"] - 5, 0, None) + 4.3 * lat["contaminated"] \
        + 1.0 * np.clip((lat["misalign"] - 0.4) / 0.1, 0, None)
    other_logit = -5.8 + 0.3 * np.clip(-lat["weld_dev"] * 100 - 5, 0, None)
    plating = d["u_plating"] < 1 / (1 + np.exp(-plating_logit))
    short = d["u_short"] < 1 / (1 + np.exp(-short_logit))
    other = d["u_other"] < 1 / (1 + np.exp(-other_logit))
    underfill, moisture, form_t = lat["underfill"], lat["moisture"], lat["form_t"]
    # capacity: cathode loading, underfill, moisture, plating, excess overhang, formation temperature
    cap_rel = (0.95 * lat["cw_rel"] - 0.6 * underfill - 0.012 * moisture - plating * (0.02 + 0.04 * d["u_size"])
               - 0.01 * np.clip(lat["overhang"] - 1.5, 0, None) - 0.002 * np.clip(form_t - 25, 0, None)
               + d["cap"])
    capacity = lat["cap_nom"] * (1 + cap_rel)
    ce = lat["first_ce"] - 2.5 * moisture - 0.12 * np.clip(form_t - 25, 0, None) - 20 * underfill + d["ce"]
    dcir_rel = (1.8 * lat["dens"] + 0.6 * lat["binder"] + 0.02 * np.clip(lat["tension_cv"] - 3, 0, None)
                + 0.8 * underfill + 0.6 * np.clip(-lat["weld_dev"], 0, None) + 0.03 * moisture + 0.05 * plating
                + d["dcir"])
    dcir = lat["dcir_nom"] * (1 + dcir_rel)
    k_true = (lat["k_nom"] * np.exp(d["k"]) + 0.06 * np.clip(lat["burr"] - 4, 0, None)
              + 0.6 * moisture + short * (4 + 21 * d["u_size"]) + plating * 0.4)
    days = (168 + d["days"]) / 24
    ocv_start = lat["ocv_aging"] + 0.01 * cap_rel + d["ocv_start"]
    ocv_end = ocv_start - k_true * days / 1000 + lat["ocv_temp_coef"] * (lat["room"] - 23) / 1000 + d["ocv_end"]
    k_meas = (ocv_start - ocv_end) * 1000 / days
    eol_cap = capacity * (1 + d["eol_cap"])
    dcir_meas = dcir * (1 + d["dcir_meas"])
    form_cap = capacity * 1.012 * (1 + d["form_cap"])
    cap_frac = eol_cap / lat["cap_nom"]
    dcir_frac = dcir_meas / lat["dcir_nom"]
    conditions = [k_meas > MAX_K_MV_DAY, plating, cap_frac < MIN_CAPACITY_FRACTION, dcir_frac > MAX_DCIR_FRACTION,
                  other]
    return {"plating": plating, "short": short, "other": other, "cap_rel": cap_rel, "ce": ce, "dcir": dcir,
            "days": days, "ocv_start": ocv_start, "ocv_end": ocv_end, "k_meas": k_meas, "eol_cap": eol_cap,
            "dcir_meas": dcir_meas, "form_cap": form_cap, "cap_frac": cap_frac, "dcir_frac": dcir_frac,
            "conditions": conditions}


def defect_probability(lat: dict[str, np.ndarray], rng: np.random.Generator,
                       realized: list[np.ndarray] | None = None, draws: int = ORACLE_DRAWS,
                       chunk: int = 2048) -> dict[str, np.ndarray]:
    """The simulator's own probability of an EOL defect per cell (an oracle), per knowledge level.

    Monte Carlo over the per-cell random draws (:func:`event_draws`, :func:`measurement_draws`) through
    :func:`cell_outcomes`, the same code that decides the cells' labels; ``rng`` is an own stream so the data
    do not change. Keys: ``latent`` = P(defect | latent state); for each stage of :data:`ORACLE_KNOWS` (needs
    ``realized``, the cells' actual ``conditions``) the probability when the EOL criteria measurable by then are
    known as well: 1 where one of them failed, else P(defect | latent state, those criteria passed).
    A benchmark ceiling for the defect model, never a feature.
    """
    n = len(lat["overhang"])
    stages = ORACLE_KNOWS if realized is not None else {}
    out = {k: np.empty(n) for k in ("latent", *stages)}
    for a in range(0, n, chunk):
        sub = {k: np.asarray(v)[a:a + chunk] for k, v in lat.items()}
        shape = (draws, len(sub["overhang"]))
        cond = cell_outcomes(sub, event_draws(rng, shape) | measurement_draws(rng, shape))["conditions"]
        defect = np.logical_or.reduce(cond)
        out["latent"][a:a + chunk] = defect.mean(axis=0)
        for stage, types in stages.items():
            idx = [DEFECT_TYPES.index(t) for t in types]
            passed = ~np.logical_or.reduce([cond[i] for i in idx])
            failed = np.logical_or.reduce([realized[i][a:a + chunk] for i in idx])
            with np.errstate(invalid="ignore", divide="ignore"):
                p = (defect & passed).sum(axis=0) / passed.sum(axis=0)
            out[stage][a:a + chunk] = np.where(failed, 1.0, np.nan_to_num(p, nan=1.0))
    return out


#: Latent values a cell station does not know yet (set at later stations); :func:`stage_defect_probability` draws
#: them from the line's other cells.
ORACLE_UNKNOWN = {"winding": ("underfill", "moisture", "form_t", "room"), "filling": ("form_t", "room")}


def stage_defect_probability(lat: dict[str, np.ndarray], rng: np.random.Generator,
                             unknown: dict[str, tuple[str, ...]] = ORACLE_UNKNOWN, draws: int = ORACLE_DRAWS,
                             chunk: int = 2048) -> dict[str, np.ndarray]:
    """The oracle with the knowledge of an early station: P(defect | the latent values known by then) per cell.

    Monte Carlo like :func:`defect_probability`, and per draw the ``unknown[stage]`` latents (jointly, one other
    cell per draw) come from a random cell of the same line: the empirical marginal of what is not decided yet.
    A benchmark ceiling per stage, never a feature.
    """
    n = len(lat["overhang"])
    out = {stage: np.empty(n) for stage in unknown}
    for a in range(0, n, chunk):
        m = min(n, a + chunk) - a
        shape = (draws, m)
        for stage, keys in unknown.items():
            donor = rng.integers(0, n, shape)
            sub = {k: (np.asarray(v)[donor] if k in keys else np.asarray(v)[a:a + m]) for k, v in lat.items()}
            cond = cell_outcomes(sub, event_draws(rng, shape) | measurement_draws(rng, shape))["conditions"]
            out[stage][a:a + m] = np.logical_or.reduce(cond).mean(axis=0)
    return out


class LineModel:
    """Generates one line's readings, cells and normal events for ``hours`` of wall-clock time."""

    def __init__(self, line: str, index: int, hours: float, seed: int, start: pd.Timestamp,
                 params: LineParams | None = None):
        self.line = line
        self.index = index
        self.hours = hours
        self.seed = seed
        self.start = start
        self.p = params or LineParams()
        self.rng = np.random.default_rng([seed, index, 1])
        # absolute seconds of the day of the run start, for shift and day/night effects
        self.day_offset_s = float((start - start.normalize()).total_seconds())
        self.timeline, self.changeover_batches, self.events = self._plan()

    # ------------------------------------------------------------------------------------------ planning
    def _plan(self) -> tuple[Timeline, np.ndarray, list[dict]]:
        p, rng = self.p, self.rng
        wall_s = self.hours * 3600
        # recipe changeovers at batch boundaries: first 3-7.5 h into the run, then every ~10 h
        first = int(rng.integers(2, 6))
        every = max(1, round(p.changeover_every_s / p.batch_s))
        n_batches = int(wall_s // p.batch_s) + 2
        changeovers = np.arange(first, n_batches + every, every)
        stops: list[tuple[float, float, str]] = []
        events: list[dict] = []
        # a 20 min cleaning stop at every changeover
        for b in changeovers:
            stops.append((float(b * p.batch_s), 1200.0, "changeover"))
        n_stops = int(rng.poisson(p.stops_per_shift * self.hours / 8))
        durations = rng.uniform(480, 1500, n_stops)
        positions = rng.uniform(0.05, 0.95, n_stops) * max(wall_s - durations.sum() - 1200 * len(changeovers), 0)
        stops += [(float(np.round(a)), float(np.round(d)), "stop") for a, d in zip(positions, durations, strict=True)]
        # keep only stops that start inside the run (running time is shorter than wall time)
        stops.sort()
        kept: list[tuple[float, float, str]] = []
        total = 0.0
        for a, d, kind in stops:
            if a + total + d < wall_s - 600 and (not kept or a > kept[-1][0]):
                kept.append((a, d, kind))
                total += d
        tl = Timeline(wall_s, [(a, d) for a, d, _ in kept])
        for (_, d, kind), w in zip(kept, tl.stop_wall, strict=True):
            events.append({"line": self.line, "event": kind, "start": float(w), "end": float(w + d)})
        return tl, changeovers, events

    def recipe_of_batch(self, b: np.ndarray) -> np.ndarray:
        """Recipe index per batch index (negative = before the run): alternates at every changeover."""
        n_changes = np.searchsorted(self.changeover_batches, b, side="right")
        return (self.index + n_changes) % len(RECIPES)

    def shift_index(self, wall: np.ndarray) -> np.ndarray:
        return np.floor((self.day_offset_s + np.asarray(wall) - SHIFT_ORIGIN_S) / SHIFT_S).astype(np.int64)

    # ------------------------------------------------------------------------------------------ generate
    def run(self, faults: list[Fault], fault_rng: np.random.Generator, genealogy: Genealogy) -> LineOutput:
        p, rng, tl = self.p, self.rng, self.timeline
        dt = p.dt_s
        n_ticks = int(tl.run_s // dt)
        pre = int(np.ceil((p.winding_lag_s + 2 * dt) / dt))
        m = (np.arange(pre + n_ticks) - pre) * dt          # material coordinate = running time it was coated
        n_mat = m.size
        batch = np.floor(m / p.batch_s).astype(np.int64)
        b_lo = int(batch.min())
        b_hi = int(np.floor(tl.run_s / p.batch_s)) + 2
        b_all = np.arange(b_lo, b_hi + 1)
        rid_b = self.recipe_of_batch(b_all)
        rec = {a: np.array([getattr(r, a) for r in RECIPES]) for a in RECIPES[0].__slots__ if a != "name"}
        rec["dryer"] = np.array([r.dryer_setpoints_c for r in RECIPES])

        def R(attr: str, rid: np.ndarray) -> np.ndarray:
            return rec[attr][rid]

        # batch properties (hidden final values of each slurry batch)
        solid_dev_b = rng.normal(0.0, 0.35, b_all.size)                  # %-points
        visc_rel_b = 0.12 * solid_dev_b + rng.normal(0.0, 0.04, b_all.size)
        contaminated_b = np.zeros(b_all.size, dtype=bool)
        for f in faults:
            if f.type == "contaminated_batch":
                contaminated_b[f.params["batch_index"] - b_lo] = True
        bi = batch - b_lo
        rid = rid_b[bi]
        genealogy.add_batches(self.line, b_all, rid_b, tl, p)

        rows: list[StationRows] = []
        ev = self.events

        # ---------------------------------------------------------------- mixing (next batch, every 30 s)
        pm = np.arange(int(tl.run_s // p.mixing_dt_s)) * p.mixing_dt_s
        wall_mix = np.round(tl.wall(pm) + rng.uniform(0, 0.5, pm.size), 3)
        mb = np.floor(pm / p.batch_s).astype(np.int64) + 1 - b_lo
        prog = (pm % p.batch_s) / p.batch_s
        r_m = rid_b[mb]
        solid_m = R("solid_pct", r_m) + solid_dev_b[mb]
        visc_final = R("viscosity_pas", r_m) * (1 + visc_rel_b[mb])
        degas = prog >= 0.75
        speed_m = np.where(degas, 300.0, R("mixer_speed_rpm", r_m)) + rng.normal(0, 3, pm.size)
        visc_m = visc_final * (1 + 1.2 * np.exp(-prog / 0.2)) * (1 + rng.normal(0, 0.02, pm.size))
        v_mix = {
            "slurry_viscosity_pas": visc_m,
            "solid_content_pct": solid_m + rng.normal(0, 0.12, pm.size),
            "slurry_temp_c": 22 + 6 * (1 - np.exp(-prog / 0.3)) - 3 * degas + ar1(rng, pm.size, 0.3, 40)
            + rng.normal(0, 0.1, pm.size),
            "mixer_speed_rpm": speed_m,
            "mixer_vacuum_mbar": np.where(degas, 60.0 * np.exp(rng.normal(0, 0.05, pm.size)),
                                          1005.0 + rng.normal(0, 4, pm.size)),
            "mixer_power_kw": 0.004 * visc_m * speed_m * (1 + rng.normal(0, 0.03, pm.size)),
        }
        apply_sensor_faults(faults, "mixing", wall_mix, v_mix, fault_rng, self.start)
        batch_ids = genealogy.batch_ids(self.line, b_all)
        rows.append(StationRows(self.line, "mixing", wall_mix, v_mix, r_m,
                                _tags(("slurry_batch_id",), batch_ids[mb])))

        # ---------------------------------------------------------------- coating (material coordinate m)
        # reading times (ms) of the material at each station: process faults act on exactly these times
        wall_c = np.round(tl.wall(m) + rng.uniform(0, 0.3, n_mat), 3)
        since_c = tl.since_restart(m)
        shift_c = self.shift_index(wall_c)
        solid_frac = (R("solid_pct", rid) + solid_dev_b[bi]) / 100
        cw_rel = (ar1(rng, n_mat, 0.006, 120) + solid_dev_b[bi] / R("solid_pct", rid)
                  + 0.015 * np.exp(-since_c / 300) + step_offsets(rng, shift_c, 0.002)
                  + process_offset(faults, "coat_weight_rel", wall_c))
        cw_true = R("coat_weight_mg_cm2", rid) * (1 + cw_rel)
        wet = cw_true / (solid_frac * R("slurry_density_g_cm3", rid)) * 10
        speed_rel = step_offsets(rng, shift_c, 0.01) + ar1(rng, n_mat, 0.002, 60) - 0.7 * np.exp(-since_c / 90)
        speed = R("coating_speed_m_min", rid) * (1 + speed_rel)
        ambient = ar1(rng, n_mat, 0.8, 360)
        warm = -30 * np.exp(-since_c / 600)
        zones = []
        for k in range(3):
            z = (rec["dryer"][rid, k] + (0.5 + 0.15 * k) * ambient + ar1(rng, n_mat, 0.35, 60) + warm * (1 - 0.2 * k)
                 + step_offsets(rng, shift_c, 0.4) + process_offset(faults, f"dryer_zone{k + 1}_c", wall_c))
            zones.append(z)
        zone_dev = np.mean([z - rec["dryer"][rid, k] for k, z in enumerate(zones)], axis=0)
        binder = np.clip((zone_dev - 3) / 10, 0, None)   # clearly too hot: binder migration -> resistance
        v_coat = {
            "wet_thickness_um": wet * (1 + rng.normal(0, 0.004, n_mat)),
            "coat_weight_mg_cm2": cw_true * (1 + rng.normal(0, 0.003, n_mat)),
            "coating_speed_m_min": speed + rng.normal(0, 0.05, n_mat),
            "dryer_zone1_temp_c": zones[0] + rng.normal(0, 0.15, n_mat),
            "dryer_zone2_temp_c": zones[1] + rng.normal(0, 0.15, n_mat),
            "dryer_zone3_temp_c": zones[2] + rng.normal(0, 0.15, n_mat),
            "residual_nmp_ppm": R("residual_nmp_ppm", rid) * np.exp(-0.05 * zone_dev)
            * np.clip(speed / R("coating_speed_m_min", rid), 0.2, None) ** 1.5 * np.exp(rng.normal(0, 0.05, n_mat)),
            "web_tension_n": R("web_tension_n", rid) + ar1(rng, n_mat, 1.5, 30) + step_offsets(rng, shift_c, 1.0)
            + rng.normal(0, 0.8, n_mat),
        }
        coil = np.floor(m / p.coil_s).astype(np.int64)
        coil_ids = genealogy.coil_ids(self.line, coil)
        sl = slice(pre, pre + n_ticks)
        wall_c_rows = wall_c[sl]
        v = {k: a[sl].copy() for k, a in v_coat.items()}
        apply_sensor_faults(faults, "coating", wall_c_rows, v, fault_rng, self.start)
        rows.append(StationRows(self.line, "coating", wall_c_rows, v, rid[sl],
                                _tags(("slurry_batch_id", "coil_id"), batch_ids[bi[sl]], coil_ids[sl])))

        # ---------------------------------------------------------------- calendering (at m + 10 min)
        lag = round(p.calendering_lag_s / dt)
        p_cal = m + p.calendering_lag_s
        wall_k = np.round(tl.wall(p_cal) + 1.0 + rng.uniform(0, 0.3, n_mat), 3)
        since_k = tl.since_restart(p_cal)
        dens_rel = (ar1(rng, n_mat, 0.005, 120) + step_offsets(rng, self.shift_index(wall_k), 0.002)
                    - 0.02 * np.exp(-since_k / 600) + process_offset(faults, "density_rel", wall_k))
        dens = R("density_g_cm3", rid) * (1 + dens_rel)
        thick = R("foil_um", rid) + 2 * cw_true / dens * 10
        dens_meas = dens * (1 + rng.normal(0, 0.002, n_mat))
        v_cal = {
            "calendered_thickness_um": thick + rng.normal(0, 0.6, n_mat),
            "electrode_density_g_cm3": dens_meas,
            "porosity_pct": 100 * (1 - dens_meas / R("true_density_g_cm3", rid)),
            "roll_gap_um": thick * 0.9 - 40 * dens_rel + rng.normal(0, 0.5, n_mat),
            "line_load_n_mm": R("line_load_n_mm", rid) * (1 + 2.5 * dens_rel + rng.normal(0, 0.01, n_mat)),
            "calender_roll_temp_c": R("calender_roll_temp_c", rid) + ar1(rng, n_mat, 0.5, 120)
            - 15 * np.exp(-since_k / 900) + rng.normal(0, 0.2, n_mat),
        }
        sl_k = slice(pre - lag, pre - lag + n_ticks)
        wall_k_rows = wall_k[sl_k]
        v = {k: a[sl_k].copy() for k, a in v_cal.items()}
        apply_sensor_faults(faults, "calendering", wall_k_rows, v, fault_rng, self.start)
        rows.append(StationRows(self.line, "calendering", wall_k_rows, v, rid[sl_k],
                                _tags(("coil_id",), coil_ids[sl_k])))

        # ---------------------------------------------------------------- slitting (at m + 20 min)
        lag = round(p.slitting_lag_s / dt)
        p_sl = m + p.slitting_lag_s
        wall_s = np.round(tl.wall(p_sl) + 2.0 + rng.uniform(0, 0.3, n_mat), 3)
        since_s = tl.since_restart(p_sl)
        phase = float(rng.uniform(0, p.knife_life_s))
        regular = np.arange(phase - 2 * p.knife_life_s, tl.run_s + p.slitting_lag_s + p.knife_life_s, p.knife_life_s)
        # a worn knife (tool_wear fault) is changed at the end of the fault window
        wear_ends = [f.end for f in faults if f.effect == "burr_um"]
        changes = np.sort(np.concatenate([tl.wall(regular), wear_ends]))     # wall-clock times of knife changes
        k_idx = np.searchsorted(changes, wall_s, side="right") - 1
        age = p_sl - tl.running(changes[k_idx])
        burr = (3.0 + 1.2 * age / p.knife_life_s + ar1(rng, n_mat, 0.25, 60)
                + process_offset(faults, "burr_um", wall_s))
        knife_ids = np.array([f"{self.line}-K{k:03d}" for k in range(changes.size)], dtype=object)
        v_sl = {
            "burr_height_um": np.clip(burr + rng.normal(0, 0.3, n_mat), 0, None),
            "slit_width_mm": R("slit_width_mm", rid) + ar1(rng, n_mat, 0.02, 60) + rng.normal(0, 0.03, n_mat),
            "slitting_tension_n": 80 + ar1(rng, n_mat, 1.5, 30) + rng.normal(0, 0.8, n_mat),
            "slitting_speed_m_min": R("slitting_speed_m_min", rid) * (1 - 0.7 * np.exp(-since_s / 90))
            + rng.normal(0, 0.1, n_mat),
            # Poisson draws consume a variable amount of randomness: own stream, so faults keep the rest paired
            "edge_defects_per_100m": np.random.default_rng([self.seed, self.index, 3]).poisson(
                0.6 + 0.4 * np.clip(burr - 3, 0, None)).astype(float),
        }
        sl_s = slice(pre - lag, pre - lag + n_ticks)
        wall_s_rows = wall_s[sl_s]
        v = {k: a[sl_s].copy() for k, a in v_sl.items()}
        apply_sensor_faults(faults, "slitting", wall_s_rows, v, fault_rng, self.start)
        rows.append(StationRows(self.line, "slitting", wall_s_rows, v, rid[sl_s],
                                _tags(("coil_id", "knife_id"), coil_ids[sl_s], knife_ids[k_idx[sl_s]])))
        for c in changes[(changes > 0) & (changes < self.hours * 3600)]:
            ev.append({"line": self.line, "event": "knife_change", "start": float(c), "end": float(c)})

        # ---------------------------------------------------------------- cells
        n_est = int(tl.run_s / p.cell_interval_s * 1.2) + 10
        p_w = np.cumsum(rng.gamma(20.0, p.cell_interval_s / 20.0, n_est))
        n_cells = int(np.searchsorted(p_w, tl.run_s))
        p_w = p_w[:n_cells]
        k_cell = np.arange(n_cells)
        i_c = np.clip(np.round((p_w - p.winding_lag_s) / dt).astype(np.int64) + pre, 0, n_mat - 1)
        r_c = rid[i_c]
        rc = RECIPES
        cap_nom = R("capacity_ah", r_c)
        wall_w = np.round(tl.wall(p_w), 3)
        offs = p.cell_offsets()
        wall_f = np.round(wall_w + offs["filling"] + rng.normal(0, 8, n_cells), 3)
        wall_fo = np.round(wall_f + p.formation_after_s + rng.normal(0, 20, n_cells), 3)
        wall_a = np.round(wall_fo + p.aging_after_s + rng.normal(0, 30, n_cells), 3)
        wall_e = np.round(wall_a + p.eol_after_s + rng.normal(0, 10, n_cells), 3)
        shift_w = self.shift_index(wall_w)

        anode_roll = np.floor((p_w - p.winding_lag_s) / p.anode_roll_s).astype(np.int64)
        anode_dev = step_offsets(rng, anode_roll, 0.006) + rng.normal(0, 0.002, n_cells)
        # winding
        tension = R("winding_tension_n", r_c) * (1 + ar1(rng, n_cells, 0.015, 200) + step_offsets(rng, shift_w, 0.01))
        tension_cv = 2.5 * np.exp(rng.normal(0, 0.15, n_cells)) + process_offset(faults, "tension_cv_pct", wall_w)
        offset = rng.normal(0, 0.10, n_cells) + ar1(rng, n_cells, 0.04, 300) \
            + process_offset(faults, "winding_offset_mm", wall_w)
        misalign = np.abs(offset)
        overhang = R("overhang_mm", r_c) - misalign + rng.normal(0, 0.05, n_cells)
        weld = R("tab_weld_energy_j", r_c) * (1 + rng.normal(0, 0.03, n_cells))
        weld_dev = weld / R("tab_weld_energy_j", r_c) - 1
        burr_c = burr[i_c]
        contaminated = contaminated_b[bi[i_c]]
        # filling: dry-room dew point wanders around -50 degC, small door-opening blips are normal
        dew_grid_t = np.arange(-600.0, self.hours * 3600 + 7200, 60.0)
        dew = -50 + ar1(rng, dew_grid_t.size, 2.0, 60)
        n_doors = int(rng.poisson(3 * self.hours / 8))
        for t0 in rng.uniform(0, self.hours * 3600, n_doors):
            after = dew_grid_t - t0
            dew += np.where(after >= 0, 4.0 * np.exp(-np.clip(after, 0, None) / 300), 0)
        dew_c = np.interp(wall_f, dew_grid_t, dew) + process_offset(faults, "dew_point_c", wall_f)
        moisture = np.clip(dew_c + 40, 0, None) / 10
        fill_rel = ar1(rng, n_cells, 0.004, 100) + rng.normal(0, 0.004, n_cells) \
            + process_offset(faults, "fill_rel", wall_f)
        underfill = np.clip(-fill_rel - 0.01, 0, None)
        # formation: channel-specific pin contact resistance and temperature (normal, shared by channel)
        chan = k_cell % p.channels
        contact_ch = 1.5 * np.exp(rng.normal(0, 0.25, p.channels))
        temp_ch = rng.normal(0, 0.4, p.channels)
        form_t = 25 + temp_ch[chan] + ar1(rng, n_cells, 0.3, 500) + 0.2 * (contact_ch[chan] - 1.5) \
            + process_offset(faults, "formation_temp_c", wall_fo)
        # hidden events drawn from logistic risks (uniforms drawn first so faults do not change the stream)
        draws = event_draws(rng, n_cells)
        abs_h = (self.day_offset_s + wall_a) / 3600
        # aging: room temperature moves the final OCV (normal variation in K)
        room = 23 + 1.2 * np.sin(2 * np.pi * (abs_h - 9) / 24) + ar1(rng, n_cells, 0.3, 400)
        draws |= measurement_draws(rng, n_cells)
        latent = {
            "overhang": overhang, "np_excess": cw_rel[i_c] - anode_dev, "form_t": form_t, "underfill": underfill,
            "burr": burr_c, "contaminated": contaminated, "misalign": misalign, "weld_dev": weld_dev,
            "cw_rel": cw_rel[i_c], "moisture": moisture, "dens": dens_rel[i_c], "binder": binder[i_c],
            "tension_cv": tension_cv, "room": room, "cap_nom": cap_nom, "dcir_nom": R("dcir_mohm", r_c),
            "k_nom": R("k_mv_day", r_c), "first_ce": R("first_ce_pct", r_c), "ocv_aging": R("ocv_aging_v", r_c),
            "ocv_temp_coef": R("ocv_temp_coef_mv_k", r_c)}
        out = cell_outcomes(latent, draws)
        short, u_size = out["short"], draws["u_size"]
        ce, dcir, days = out["ce"], out["dcir"], out["days"]
        ocv_start, ocv_end, k_meas = out["ocv_start"], out["ocv_end"], out["k_meas"]
        eol_cap, dcir_meas, form_cap = out["eol_cap"], out["dcir_meas"], out["form_cap"]
        oracle = defect_probability(latent, np.random.default_rng([self.seed, self.index, 5]), out["conditions"])
        oracle |= stage_defect_probability(latent, np.random.default_rng([self.seed, self.index, 6]))

        ins = 8000 * np.exp(rng.normal(0, 0.3, n_cells)) / (1 + 0.5 * np.clip(burr_c - 4, 0, None)) \
            / (1 + 3 * short * u_size)
        vals = {
            "winding": {
                "winding_tension_n": tension + rng.normal(0, 0.2, n_cells),
                "winding_tension_cv_pct": tension_cv,
                "misalignment_mm": np.clip(misalign + rng.normal(0, 0.02, n_cells), 0, None),
                "overhang_mm": overhang + rng.normal(0, 0.03, n_cells),
                "tab_weld_energy_j": weld,
                "insulation_resistance_mohm": ins,
            },
            "filling": {
                "fill_weight_g": R("fill_weight_g", r_c) * (1 + fill_rel) + rng.normal(0, 0.005, n_cells),
                "fill_vacuum_mbar": 2.0 * np.exp(rng.normal(0, 0.3, n_cells)),
                "dew_point_c": dew_c + rng.normal(0, 0.2, n_cells),
                "electrolyte_temp_c": 22 + ar1(rng, n_cells, 0.3, 300) + rng.normal(0, 0.1, n_cells),
                "soak_time_h": 12 + rng.normal(0, 0.3, n_cells),
            },
            "formation": {
                "formation_charge_ah": form_cap / (ce / 100),
                "formation_capacity_ah": form_cap,
                "coulombic_efficiency_pct": ce,
                "formation_temp_c": form_t + rng.normal(0, 0.1, n_cells),
                "formation_current_a": R("formation_current_a", r_c) * (1 + rng.normal(0, 0.005, n_cells)),
                "contact_resistance_mohm": contact_ch[chan] * (1 + rng.normal(0, 0.05, n_cells)),
            },
            "aging": {
                "ocv_start_v": ocv_start,
                "ocv_end_v": ocv_end,
                "aging_temp_c": room + rng.normal(0, 0.05, n_cells),
                "aging_duration_h": days * 24,
                "k_value_mv_day": k_meas,
            },
            "eol": {
                "eol_capacity_ah": eol_cap,
                "dcir_mohm": dcir_meas,
                "acir_mohm": R("acir_mohm", r_c) * (dcir / R("dcir_mohm", r_c)) ** 0.7
                * (1 + rng.normal(0, 0.01, n_cells)),
                "eol_ocv_v": R("ocv_ship_v", r_c) + rng.normal(0, 0.003, n_cells) - 0.004 * short,
                "eol_temp_c": 25 + rng.normal(0, 0.4, n_cells),
            },
        }
        # defect decided like in a plant: thresholds on the measured EOL values plus hidden causes
        cap_frac, dcir_frac = out["cap_frac"], out["dcir_frac"]
        defect_type = np.select(out["conditions"], DEFECT_TYPES, default="")
        defect = defect_type != ""
        grade = np.where(defect, "C", np.where((cap_frac >= GRADE_A_CAPACITY) & (dcir_frac <= GRADE_A_DCIR)
                                               & (k_meas <= GRADE_A_K), "A", "B"))
        scrap = np.isin(defect_type, ["high_self_discharge", "lithium_plating", "other"]) \
            | (defect & ((cap_frac < SCRAP_CAPACITY) | (dcir_frac > SCRAP_DCIR)))
        grade = np.where(scrap, "scrap", grade).astype(object)

        # genealogy ids
        ids = genealogy.cells(self.line, k_cell, coil[i_c], k_cell % p.lanes, anode_roll,
                              (self.start.value / 1e9 + wall_f) // (6 * 3600), chan, k_cell)
        cell_ids = ids["cell_id"]
        tags = {
            # the cathode coil and slurry batch too, so online genealogy can walk back to the electrode readings
            "winding": _tags(("anode_roll_id", "cathode_roll_id", "coil_id", "slurry_batch_id"), ids["anode_roll_id"],
                             ids["cathode_roll_id"], ids["coil_id"], batch_ids[bi[i_c]]),
            "filling": _tags(("electrolyte_lot",), ids["electrolyte_lot"]),
            "formation": _tags(("formation_channel",), ids["formation_channel"]),
            "aging": _tags(("aging_slot",), ids["aging_slot"]),
            "eol": Coded.missing(n_cells),
        }
        walls = {"winding": wall_w, "filling": wall_f, "formation": wall_fo, "aging": wall_a, "eol": wall_e}
        horizon = self.hours * 3600
        for name, w in walls.items():
            v = vals[name]
            order = np.argsort(w, kind="stable")
            keep = order[w[order] < horizon]
            vv = {k: a[keep].copy() for k, a in v.items()}
            apply_sensor_faults(faults, name, w[keep], vv, fault_rng, self.start)
            rows.append(StationRows(self.line, name, w[keep], vv, r_c[keep], tags[name].take(keep),
                                    Coded(keep.astype(np.int64), cell_ids)))

        done = wall_e < horizon
        web_pos = (m[i_c] - coil[i_c] * p.coil_s) / 60 * R("coating_speed_m_min", r_c)
        cells = pd.DataFrame({
            "cell_id": cell_ids,
            "line": self.line,
            "recipe": np.array([r.name for r in rc], dtype=object)[r_c],
            "slurry_batch_id": batch_ids[bi[i_c]],
            "coil_id": ids["coil_id"],
            "web_pos_m": np.round(web_pos, 1),
            "cathode_roll_id": ids["cathode_roll_id"],
            "anode_roll_id": ids["anode_roll_id"],
            "electrolyte_lot": ids["electrolyte_lot"],
            "formation_channel": ids["formation_channel"],
            "aging_slot": ids["aging_slot"],
            "knife_id": knife_ids[k_idx[i_c]],
            "coating_wall": wall_c[i_c],
            "calendering_wall": wall_k[i_c],
            "slitting_wall": wall_s[i_c],
            "winding_wall": wall_w, "filling_wall": wall_f, "formation_wall": wall_fo,
            "aging_wall": wall_a, "eol_wall": wall_e,
            "capacity_ah": eol_cap, "dcir_mohm": dcir_meas, "k_value_mv_day": k_meas,
            "grade": grade, "defect": defect, "defect_type": np.where(defect, defect_type, None).astype(object),
            "oracle_defect_probability": oracle["latent"],
            "oracle_defect_probability_winding": oracle["winding"],
            "oracle_defect_probability_filling": oracle["filling"],
            "oracle_defect_probability_formation": oracle["formation"],
            "oracle_defect_probability_aging": oracle["aging"],
            "_batch_index": batch[i_c],
        })[done]
        return LineOutput(rows, cells.reset_index(drop=True), ev)
