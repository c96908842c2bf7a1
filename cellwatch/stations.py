"""The station and sensor catalogue of a battery-cell line: names, units and physical ranges.

Stations come in cell order. The first four (mixing .. slitting) make electrode and report one reading per
time step (``cell_id`` is null); the last five (winding .. eol) report one reading per cell.

``Sensor.lo``/``Sensor.hi`` is the PHYSICAL range of the instrument or quantity: a value outside it is a
data-quality fault (broken sensor, wrong unit), not a process deviation. Process targets and tolerances
depend on the recipe and live in the simulator (:mod:`cellwatch.simulators.recipes`).

Sensor names are globally unique, snake_case and end in their unit, so a wide readings frame can hold
every station's sensors side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TIME_BASED = "time"
CELL_BASED = "cell"


@dataclass(frozen=True, slots=True)
class Sensor:
    """One measured quantity: ``lo``/``hi`` bound its physical range (beyond = data-quality fault)."""

    name: str
    unit: str
    lo: float
    hi: float
    description: str


@dataclass(frozen=True, slots=True)
class Station:
    """One process step; ``kind`` is ``"time"`` (reading per time step) or ``"cell"`` (reading per cell)."""

    name: str
    order: int
    kind: Literal["time", "cell"]
    sensors: tuple[Sensor, ...]

    @property
    def sensor_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sensors)


def _s(name: str, unit: str, lo: float, hi: float, description: str) -> Sensor:
    return Sensor(name, unit, float(lo), float(hi), description)


STATIONS: tuple[Station, ...] = (
    Station("mixing", 1, TIME_BASED, (
        _s("slurry_viscosity_pas", "Pa·s", 0, 200, "slurry viscosity (in-line rheometer)"),
        _s("solid_content_pct", "%", 0, 100, "slurry solid content (IR moisture analyser)"),
        _s("slurry_temp_c", "°C", -10, 90, "slurry temperature in the mixer"),
        _s("mixer_speed_rpm", "rpm", 0, 3000, "planetary mixer / disperser speed"),
        _s("mixer_vacuum_mbar", "mbar", 0, 1100, "mixer vessel absolute pressure (de-aeration)"),
        _s("mixer_power_kw", "kW", 0, 300, "mixer drive power"),
    )),
    Station("coating", 2, TIME_BASED, (
        _s("wet_thickness_um", "µm", 0, 800, "wet film thickness after the slot die"),
        _s("coat_weight_mg_cm2", "mg/cm²", 0, 80, "dry coat weight, inline beta/X-ray scanner (per side)"),
        _s("coating_speed_m_min", "m/min", 0, 200, "web speed"),
        _s("dryer_zone1_temp_c", "°C", 0, 250, "dryer zone 1 air temperature"),
        _s("dryer_zone2_temp_c", "°C", 0, 250, "dryer zone 2 air temperature"),
        _s("dryer_zone3_temp_c", "°C", 0, 250, "dryer zone 3 air temperature"),
        _s("residual_nmp_ppm", "ppm", 0, 20000, "residual NMP solvent after the dryer"),
        _s("web_tension_n", "N", 0, 1000, "web tension at the coater rewind"),
    )),
    Station("calendering", 3, TIME_BASED, (
        _s("calendered_thickness_um", "µm", 0, 600, "electrode thickness after the calender (foil + both sides)"),
        _s("electrode_density_g_cm3", "g/cm³", 0, 6, "coating density (areal weight / thickness)"),
        _s("porosity_pct", "%", 0, 100, "coating porosity derived from density"),
        _s("roll_gap_um", "µm", 0, 600, "calender roll gap"),
        _s("line_load_n_mm", "N/mm", 0, 5000, "calender line load"),
        _s("calender_roll_temp_c", "°C", 0, 200, "calender roll surface temperature"),
    )),
    Station("slitting", 4, TIME_BASED, (
        _s("burr_height_um", "µm", 0, 100, "maximum burr height at the slit edge (CCD)"),
        _s("slit_width_mm", "mm", 0, 1600, "daughter-roll electrode width"),
        _s("slitting_tension_n", "N", 0, 1000, "web tension in the slitter"),
        _s("slitting_speed_m_min", "m/min", 0, 300, "slitter web speed"),
        _s("edge_defects_per_100m", "1/100 m", 0, 1000, "CCD edge defects (burrs, dust, chips) per 100 m"),
    )),
    Station("winding", 5, CELL_BASED, (
        _s("winding_tension_n", "N", 0, 100, "electrode/separator winding tension (mean over the cell)"),
        _s("winding_tension_cv_pct", "%", 0, 100, "winding tension fluctuation (coefficient of variation)"),
        _s("misalignment_mm", "mm", 0, 10, "cathode-anode edge misalignment (inline X-ray)"),
        _s("overhang_mm", "mm", -5, 10, "anode overhang beyond the cathode (inline X-ray)"),
        _s("tab_weld_energy_j", "J", 0, 500, "ultrasonic tab-weld energy"),
        _s("insulation_resistance_mohm", "MΩ", 0, 100000, "hipot insulation resistance of the jelly roll"),
    )),
    Station("filling", 6, CELL_BASED, (
        _s("fill_weight_g", "g", 0, 100, "electrolyte mass dosed (weighed before/after)"),
        _s("fill_vacuum_mbar", "mbar", 0, 1100, "cell vacuum before dosing"),
        _s("dew_point_c", "°C", -90, 30, "dry-room dew point at the filling station"),
        _s("electrolyte_temp_c", "°C", -10, 80, "electrolyte temperature at dosing"),
        _s("soak_time_h", "h", 0, 200, "wetting / soak rest time before formation"),
    )),
    Station("formation", 7, CELL_BASED, (
        _s("formation_charge_ah", "Ah", 0, 300, "first charge capacity"),
        _s("formation_capacity_ah", "Ah", 0, 300, "first discharge capacity"),
        _s("coulombic_efficiency_pct", "%", 0, 110, "first-cycle coulombic efficiency (discharge / charge)"),
        _s("formation_temp_c", "°C", -20, 100, "cell temperature during formation"),
        _s("formation_current_a", "A", 0, 500, "first-charge current"),
        _s("contact_resistance_mohm", "mΩ", 0, 1000, "formation pin contact resistance"),
    )),
    Station("aging", 8, CELL_BASED, (
        _s("ocv_start_v", "V", 0, 5, "open-circuit voltage at the start of aging"),
        _s("ocv_end_v", "V", 0, 5, "open-circuit voltage at the end of aging"),
        _s("aging_temp_c", "°C", -20, 80, "aging room temperature at the final OCV reading"),
        _s("aging_duration_h", "h", 0, 2000, "time between the two OCV readings (nominal plant time)"),
        _s("k_value_mv_day", "mV/day", -100, 1000, "self-discharge rate K = ΔOCV / Δt"),
    )),
    Station("eol", 9, CELL_BASED, (
        _s("eol_capacity_ah", "Ah", 0, 300, "discharge capacity at C/3"),
        _s("dcir_mohm", "mΩ", 0, 1000, "DC internal resistance (10 s pulse)"),
        _s("acir_mohm", "mΩ", 0, 1000, "AC internal resistance at 1 kHz"),
        _s("eol_ocv_v", "V", 0, 5, "shipping open-circuit voltage"),
        _s("eol_temp_c", "°C", -20, 80, "cell temperature at the end-of-line test"),
    )),
)

_BY_NAME = {st.name: st for st in STATIONS}
_SENSORS = {s.name: s for st in STATIONS for s in st.sensors}
_SENSOR_STATION = {s.name: st.name for st in STATIONS for s in st.sensors}

STATION_NAMES: tuple[str, ...] = tuple(st.name for st in STATIONS)
TIME_STATIONS: tuple[str, ...] = tuple(st.name for st in STATIONS if st.kind == TIME_BASED)
CELL_STATIONS: tuple[str, ...] = tuple(st.name for st in STATIONS if st.kind == CELL_BASED)
#: Every sensor name in catalogue order (station order, then the station's own order).
SENSOR_NAMES: tuple[str, ...] = tuple(_SENSORS)


def station(name: str) -> Station:
    """The station called ``name`` (KeyError with the known names otherwise)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown station {name!r}; known: {', '.join(STATION_NAMES)}") from None


def sensor(name: str) -> Sensor:
    """The sensor called ``name`` (KeyError otherwise)."""
    try:
        return _SENSORS[name]
    except KeyError:
        raise KeyError(f"unknown sensor {name!r}") from None


def station_of(sensor_name: str) -> str:
    """The name of the station that owns ``sensor_name``."""
    return _SENSOR_STATION[sensor(sensor_name).name]


def physical_bounds() -> dict[str, tuple[float, float]]:
    """Sensor name -> (lo, hi) physical range."""
    return {n: (s.lo, s.hi) for n, s in _SENSORS.items()}


def units() -> dict[str, str]:
    """Sensor name -> unit."""
    return {n: s.unit for n, s in _SENSORS.items()}
