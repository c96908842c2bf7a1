"""The simulator's defect oracle (``oracle_defect_probability*`` columns of cells.parquet)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cellwatch.simulators.line import DEFECT_TYPES, cell_outcomes, event_draws, measurement_draws
from cellwatch.simulators.simulate import simulate

ORACLES = ("oracle_defect_probability", "oracle_defect_probability_formation", "oracle_defect_probability_aging")
#: knowledge of an early station: the latents set later are drawn from other cells
EARLY = ("oracle_defect_probability_winding", "oracle_defect_probability_filling")


@pytest.fixture(scope="module")
def cells():
    return simulate(hours=4, lines=2, seed=23).cells


def test_oracle_columns_are_probabilities_that_rank_and_match_the_label_rate(cells):
    y = cells["defect"].to_numpy(dtype=bool)
    for name in (*EARLY, *ORACLES):
        p = cells[name].to_numpy()
        assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
        # calibrated: the expected number of defects matches the drawn labels within 4 binomial sigmas
        assert abs(p.sum() - y.sum()) < 4 * np.sqrt((p * (1 - p)).sum()), name
        assert roc_auc_score(y, p) > 0.7, name
    # knowing more EOL criteria can only sharpen the oracle; a failed known criterion gives probability 1
    auc = [roc_auc_score(y, cells[n]) for n in ORACLES]
    assert auc[0] < auc[1] < auc[2]
    # the early oracles do not know the later latents (drawn from other cells): they differ from the full one
    for name in EARLY:
        assert (cells[name] - cells[ORACLES[0]]).abs().mean() > 0.005, name
    low_cap = cells["defect_type"].eq("low_capacity").to_numpy()
    assert (cells.loc[low_cap, "oracle_defect_probability_formation"] == 1.0).all()


def test_cell_outcomes_broadcast_draws_and_report_every_defect_type():
    n = 5
    lat = {k: np.zeros(n) for k in ("overhang", "np_excess", "form_t", "underfill", "burr", "misalign", "weld_dev",
                                     "cw_rel", "moisture", "dens", "binder", "tension_cv", "room")}
    lat |= {"contaminated": np.zeros(n, dtype=bool), "overhang": np.full(n, 1.0), "form_t": np.full(n, 25.0),
            "room": np.full(n, 23.0), "cap_nom": np.full(n, 5.0), "dcir_nom": np.full(n, 20.0),
            "k_nom": np.full(n, 1.0), "first_ce": np.full(n, 90.0), "ocv_aging": np.full(n, 3.6),
            "ocv_temp_coef": np.full(n, 0.5)}
    rng = np.random.default_rng(0)
    d = event_draws(rng, (7, n)) | measurement_draws(rng, (7, n))
    out = cell_outcomes(lat, d)
    assert len(out["conditions"]) == len(DEFECT_TYPES)
    assert all(c.shape == (7, n) for c in out["conditions"])
