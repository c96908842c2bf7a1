"""The line model: determinism, contract shape, genealogy, normal variation and defect rates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellwatch.contract import CELL_RESULT_COLUMNS, READING_KEYS, encode_readings, validate_readings
from cellwatch.simulators.files import read_dataset, write_parquet
from cellwatch.simulators.recipes import MAX_DCIR_FRACTION, MAX_K_MV_DAY, MIN_CAPACITY_FRACTION, recipe
from cellwatch.simulators.simulate import simulate
from cellwatch.stations import CELL_STATIONS, SENSOR_NAMES, TIME_STATIONS, physical_bounds, station

FUTURE = pd.Timestamp("2100-01-01", tz="UTC")


@pytest.fixture(scope="module")
def clean():
    return simulate(hours=8, lines=2, seed=11, faults="none")


@pytest.fixture(scope="module")
def faulty():
    return simulate(hours=8, lines=2, seed=11, faults="all")


def test_same_seed_same_frames_and_other_seed_differs():
    a = simulate(hours=1.5, lines=1, seed=3)
    b = simulate(hours=1.5, lines=1, seed=3)
    c = simulate(hours=1.5, lines=1, seed=4)
    pd.testing.assert_frame_equal(a.readings, b.readings)
    pd.testing.assert_frame_equal(a.cells, b.cells)
    pd.testing.assert_frame_equal(a.faults, b.faults)
    assert not a.readings["coat_weight_mg_cm2"].equals(c.readings["coat_weight_mg_cm2"])


def test_readings_frame_is_the_contract_wide_frame_and_round_trips(clean):
    r = clean.readings
    assert tuple(r.columns[:len(READING_KEYS)]) == READING_KEYS
    assert sorted(r.columns[len(READING_KEYS):]) == sorted(SENSOR_NAMES)
    assert str(r["ts"].dtype).startswith("datetime64") and r["ts"].is_monotonic_increasing
    sample = r.iloc[::7].reset_index(drop=True)
    frame, rejects = validate_readings(encode_readings(sample), now=FUTURE)
    assert rejects == []
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), sample)


def test_seq_counts_per_stream_from_zero_in_time_order(clean):
    r = clean.readings
    assert not r.duplicated(["line", "station", "seq"]).any()
    for _, g in r.groupby(["line", "station"]):
        assert g["seq"].to_numpy().tolist() == list(range(len(g)))
        assert g["ts"].is_monotonic_increasing


def test_cadence_and_size_of_an_8h_2_line_run(clean):
    r = clean.readings
    assert 100_000 <= len(r) <= 300_000
    assert set(r["line"]) == {"L1", "L2"}
    per = r.groupby(["line", "station"]).size()
    for line in ("L1", "L2"):
        for st in TIME_STATIONS + CELL_STATIONS:
            assert per[(line, st)] > 500, (line, st)
    cb = r[r["station"] == "coating"]
    gaps = cb[cb["line"] == "L1"]["ts"].diff().dt.total_seconds().dropna()
    assert 4.5 < gaps.median() < 5.5
    assert r.loc[r["station"].isin(TIME_STATIONS), "cell_id"].isna().all()
    assert r.loc[r["station"].isin(CELL_STATIONS), "cell_id"].notna().all()
    assert r["recipe"].notna().all()


def test_each_station_reports_exactly_its_own_sensors(clean):
    r = clean.readings
    for st in TIME_STATIONS + CELL_STATIONS:
        rows = r[r["station"] == st]
        own = list(station(st).sensor_names)
        others = [c for c in SENSOR_NAMES if c not in own]
        assert rows[own].notna().all().all(), st
        assert rows[others].isna().all().all(), st


def test_values_stay_inside_physical_ranges_without_faults(clean):
    r = clean.readings
    for name, (lo, hi) in physical_bounds().items():
        v = r[name].dropna()
        assert ((v >= lo) & (v <= hi)).all(), name


def test_recipes_set_their_own_targets(clean):
    cal = clean.readings[clean.readings["station"] == "calendering"]
    dens = cal.groupby("recipe")["electrode_density_g_cm3"].median()
    assert 3.4 <= dens["NMC811"] <= 3.7
    assert 2.2 <= dens["LFP"] <= 2.5
    cap = clean.cells.groupby("recipe")["capacity_ah"].median()
    assert cap["NMC811"] == pytest.approx(recipe("NMC811").capacity_ah, rel=0.02)
    assert cap["LFP"] == pytest.approx(recipe("LFP").capacity_ah, rel=0.02)


def test_normal_variation_is_present_but_not_labelled(clean):
    assert len(clean.faults) == 0
    ev = clean.events
    assert {"changeover", "shift_change", "knife_change"} <= set(ev["event"])
    assert (clean.cells["fault_ids"].map(len) == 0).all()
    # a changeover moves a line from one recipe to the other inside the run
    coat = clean.readings[clean.readings["station"] == "coating"]
    assert (coat.groupby("line")["recipe"].nunique() == 2).any()
    # dryer zones run different set-points by design
    z = coat[["dryer_zone1_temp_c", "dryer_zone2_temp_c", "dryer_zone3_temp_c"]].median()
    assert z.is_unique and z.max() - z.min() > 10
    # after a stop the dryer is colder and settles (warm-up transient)
    stop = ev[ev["event"].isin(["stop", "changeover"])].iloc[0]
    line = coat[coat["line"] == stop["line"]].set_index("ts")["dryer_zone1_temp_c"]
    after = line[stop["end"]:stop["end"] + pd.Timedelta(minutes=2)]
    later = line[stop["end"] + pd.Timedelta(minutes=40):stop["end"] + pd.Timedelta(minutes=60)]
    assert after.mean() < later.mean() - 10
    # no readings while a line stands
    margin = pd.Timedelta(seconds=5)
    during = coat[(coat["line"] == stop["line"]) & (coat["ts"] > stop["start"] + margin)
                  & (coat["ts"] < stop["end"] - margin)]
    assert during.empty


def test_genealogy_is_consistent(clean):
    cells, gen = clean.cells, clean.genealogy.set_index("lot_id")
    roll_parent = gen.loc[cells["cathode_roll_id"], "parent_id"].to_numpy()
    assert (roll_parent == cells["coil_id"].to_numpy()).all()
    coil_parent = gen.loc[cells["coil_id"], "parent_id"].to_numpy()
    assert (coil_parent == cells["slurry_batch_id"].to_numpy()).all()
    assert (gen.loc[cells["slurry_batch_id"], "kind"] == "slurry_batch").all()
    assert cells["electrolyte_lot"].isin(gen.index).all()
    anode_coil = gen.loc[cells["anode_roll_id"], "parent_id"]
    assert (gen.loc[anode_coil, "kind"] == "anode_coil").all()
    assert (gen.loc[gen.loc[anode_coil, "parent_id"], "kind"] == "anode_slurry_batch").all()
    visits = [f"{v}_ts" for v in ("coating", "calendering", "slitting", "winding", "filling", "formation", "aging",
                                  "eol")]
    t = cells[visits].apply(lambda s: s.astype("int64")).to_numpy()
    assert (np.diff(t, axis=1) > 0).all()
    assert (cells["ts"] == cells["eol_ts"]).all()
    # every finished cell has exactly one reading at each cell station, at its visit time
    r = clean.readings
    for st in CELL_STATIONS:
        rows = r[r["station"] == st].set_index("cell_id")
        assert cells["cell_id"].isin(rows.index).all()
        assert (rows.loc[cells["cell_id"], "ts"].to_numpy() == cells[f"{st}_ts"].to_numpy()).all()
    # coils and batches named in the cells are the ones in the coating tags while that material was coated
    coat = r[r["station"] == "coating"]
    in_run = cells[cells["coating_ts"] >= coat["ts"].min()]
    assert len(in_run) > 1000
    tags = coat.set_index(coat["line"] + coat["tags"])
    seen = set(coat["tags"].str.extract(r'"coil_id":"([^"]+)"')[0])
    assert in_run["coil_id"].isin(seen).all()
    assert len(tags) == len(coat)
    # winding readings carry the cathode roll, its coil and batch, so online genealogy can walk back
    w = r[r["station"] == "winding"].set_index("cell_id").loc[cells["cell_id"], "tags"]
    assert all(f'"cathode_roll_id":"{roll}"' in t and f'"coil_id":"{coil}"' in t
               for t, roll, coil in zip(w, cells["cathode_roll_id"], cells["coil_id"], strict=True))


def test_cell_results_use_contract_columns_and_labels_match_measurements(clean):
    cells = clean.cells
    assert set(CELL_RESULT_COLUMNS) <= set(cells.columns)
    res = clean.cell_results()
    assert list(res.columns) == list(CELL_RESULT_COLUMNS) and res["ts"].is_monotonic_increasing
    nominal_cap = cells["recipe"].map(lambda n: recipe(n).capacity_ah)
    nominal_dcir = cells["recipe"].map(lambda n: recipe(n).dcir_mohm)
    t = cells["defect_type"]
    assert (cells.loc[t == "high_self_discharge", "k_value_mv_day"] > MAX_K_MV_DAY).all()
    low = t == "low_capacity"
    assert (cells.loc[low, "capacity_ah"] < MIN_CAPACITY_FRACTION * nominal_cap[low]).all()
    assert (cells.loc[t == "high_dcir", "dcir_mohm"] > MAX_DCIR_FRACTION * nominal_dcir[t == "high_dcir"]).all()
    ok = ~cells["defect"]
    assert (cells.loc[ok, "k_value_mv_day"] <= MAX_K_MV_DAY).all()
    assert (cells.loc[ok, "capacity_ah"] >= MIN_CAPACITY_FRACTION * nominal_cap[ok]).all()
    assert cells["defect"].eq(cells["defect_type"].notna()).all()
    assert set(cells.loc[ok, "grade"]) <= {"A", "B"} and set(cells.loc[~ok, "grade"]) <= {"C", "scrap"}
    # the eol reading holds the same numbers as the cell result
    eol = clean.readings[clean.readings["station"] == "eol"].set_index("cell_id").loc[cells["cell_id"]]
    assert np.allclose(eol["eol_capacity_ah"].to_numpy(), cells["capacity_ah"].to_numpy())
    assert np.allclose(eol["dcir_mohm"].to_numpy(), cells["dcir_mohm"].to_numpy())
    ag = clean.readings[clean.readings["station"] == "aging"].set_index("cell_id").loc[cells["cell_id"]]
    assert np.allclose(ag["k_value_mv_day"].to_numpy(), cells["k_value_mv_day"].to_numpy())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_baseline_defect_rate_is_a_few_percent(seed):
    cells = simulate(hours=6, lines=2, seed=seed, faults="none").cells
    assert len(cells) > 8000
    assert 0.015 <= cells["defect"].mean() <= 0.05
    assert cells["defect_type"].nunique() >= 4


def test_faults_raise_the_defect_rate_of_the_cells_they_touch(clean, faulty):
    assert len(faulty.cells) == len(clean.cells)
    assert (faulty.cells["cell_id"].to_numpy() == clean.cells["cell_id"].to_numpy()).all()
    assert faulty.cells["defect"].mean() > clean.cells["defect"].mean() + 0.02
    quality = set(faulty.faults.loc[faulty.faults["affects_quality"], "fault_id"])
    hit = faulty.cells["fault_ids"].map(lambda ids: bool(quality & set(ids))).to_numpy()
    assert hit.sum() > 500
    # same cells without faults (paired by seed): a few percent; with faults clearly more
    before = clean.cells["defect"].to_numpy()[hit].mean()
    after = faulty.cells["defect"].to_numpy()[hit].mean()
    assert before < 0.06 and after > before + 0.05
    # cells touched by nothing keep their normal rate
    untouched = faulty.cells["fault_ids"].map(len).to_numpy() == 0
    assert faulty.cells["defect"].to_numpy()[untouched].mean() == pytest.approx(
        clean.cells["defect"].to_numpy()[untouched].mean(), abs=0.005)


def test_parquet_files_round_trip(tmp_path, faulty):
    paths = write_parquet(faulty, tmp_path / "run", {"seed": 11})
    assert {"readings", "cells", "faults", "genealogy", "events", "manifest"} <= set(paths)
    back = read_dataset(tmp_path / "run")
    pd.testing.assert_frame_equal(back.readings, faulty.readings, check_dtype=False)
    assert back.faults["cells"].map(len).tolist() == faulty.faults["n_cells"].tolist()
    assert back.cells["fault_ids"].tolist() == faulty.cells["fault_ids"].tolist()
    assert back.faults["sensors"].tolist() == faulty.faults["sensors"].tolist()
