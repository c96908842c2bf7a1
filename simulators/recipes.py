"""Products the simulated lines make: process targets and end-of-line specs per recipe.

Both products are 21700 cylindrical cells with a graphite anode; the recipe names the cathode. The
electrode stations of a line (mixing .. slitting) make the cathode, whose targets differ strongly between
NMC811 and LFP (density 3.4-3.7 vs 2.2-2.5 g/cm³, loading, OCV, capacity). Values follow
/work/shared/domain/battery-line.md where a source exists; the rest are plausible defaults.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Recipe:
    """Targets (set-points / nominal values) and end-of-line specs of one product."""

    name: str
    # mixing
    viscosity_pas: float
    solid_pct: float
    slurry_density_g_cm3: float
    mixer_speed_rpm: float
    # coating + drying (dryer zones run different set-points by design)
    coat_weight_mg_cm2: float
    coating_speed_m_min: float
    dryer_setpoints_c: tuple[float, float, float]
    residual_nmp_ppm: float
    web_tension_n: float
    # calendering
    density_g_cm3: float
    true_density_g_cm3: float
    foil_um: float
    line_load_n_mm: float
    calender_roll_temp_c: float
    # slitting
    slit_width_mm: float
    slitting_speed_m_min: float
    # assembly
    winding_tension_n: float
    overhang_mm: float
    tab_weld_energy_j: float
    fill_weight_g: float
    # formation / aging / eol
    capacity_ah: float
    first_ce_pct: float
    formation_current_a: float
    ocv_aging_v: float
    ocv_temp_coef_mv_k: float
    k_mv_day: float
    ocv_ship_v: float
    dcir_mohm: float
    acir_mohm: float

    @property
    def wet_thickness_um(self) -> float:
        """Wet film that gives the target dry coat weight: mass / (solid fraction x slurry density)."""
        return self.coat_weight_mg_cm2 / (self.solid_pct / 100 * self.slurry_density_g_cm3) * 10

    @property
    def calendered_thickness_um(self) -> float:
        """Foil plus two coated sides at target density."""
        return self.foil_um + 2 * self.coat_weight_mg_cm2 / self.density_g_cm3 * 10


NMC811 = Recipe(
    name="NMC811", viscosity_pas=6.0, solid_pct=66.0, slurry_density_g_cm3=2.05, mixer_speed_rpm=1200,
    coat_weight_mg_cm2=20.0, coating_speed_m_min=40.0, dryer_setpoints_c=(95.0, 125.0, 110.0),
    residual_nmp_ppm=250.0, web_tension_n=120.0,
    density_g_cm3=3.55, true_density_g_cm3=4.70, foil_um=12.0, line_load_n_mm=1800.0, calender_roll_temp_c=80.0,
    slit_width_mm=65.0, slitting_speed_m_min=80.0,
    winding_tension_n=18.0, overhang_mm=1.0, tab_weld_energy_j=60.0, fill_weight_g=5.5,
    capacity_ah=5.0, first_ce_pct=88.5, formation_current_a=1.0, ocv_aging_v=4.050, ocv_temp_coef_mv_k=0.35,
    k_mv_day=0.80, ocv_ship_v=3.650, dcir_mohm=16.0, acir_mohm=9.0,
)

LFP = Recipe(
    name="LFP", viscosity_pas=8.0, solid_pct=55.0, slurry_density_g_cm3=1.80, mixer_speed_rpm=1000,
    coat_weight_mg_cm2=24.0, coating_speed_m_min=35.0, dryer_setpoints_c=(90.0, 120.0, 105.0),
    residual_nmp_ppm=300.0, web_tension_n=110.0,
    density_g_cm3=2.35, true_density_g_cm3=3.45, foil_um=14.0, line_load_n_mm=1400.0, calender_roll_temp_c=70.0,
    slit_width_mm=65.0, slitting_speed_m_min=70.0,
    winding_tension_n=16.0, overhang_mm=1.0, tab_weld_energy_j=60.0, fill_weight_g=4.3,
    capacity_ah=3.2, first_ce_pct=91.5, formation_current_a=0.64, ocv_aging_v=3.335, ocv_temp_coef_mv_k=0.20,
    k_mv_day=0.60, ocv_ship_v=3.290, dcir_mohm=18.0, acir_mohm=10.0,
)

RECIPES: tuple[Recipe, ...] = (NMC811, LFP)

#: End-of-line specs, relative to the recipe's nominal values (and K in absolute mV/day).
MIN_CAPACITY_FRACTION = 0.97
MAX_DCIR_FRACTION = 1.10
MAX_K_MV_DAY = 2.0
#: Grade A needs capacity >= this fraction, DCIR <= this fraction and K <= this value.
GRADE_A_CAPACITY = 0.985
GRADE_A_DCIR = 1.05
GRADE_A_K = 1.5
#: Defective cells beyond these are scrap rather than grade C.
SCRAP_CAPACITY = 0.94
SCRAP_DCIR = 1.25


def recipe(name: str) -> Recipe:
    for r in RECIPES:
        if r.name == name:
            return r
    raise KeyError(f"unknown recipe {name!r}; known: {', '.join(r.name for r in RECIPES)}")
