"""IncidentTracker: k-of-n opening, hysteresis closing, deterministic ids, restore; vectorised twins agree."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest

from cellwatch.detect.incidents import IncidentTracker, count_incidents, open_mask, severe_openers
from cellwatch.ingest.schema import TABLE


def scored(flags: list[int] | np.ndarray, line: str = "L1", station: str = "coating", seq0: int = 100,
           scores: np.ndarray | None = None, kind: str = "process", sensor: str = "web_tension_n") -> pd.DataFrame:
    flags = np.asarray(flags, dtype=bool)
    n = flags.size
    sc = np.where(flags, 0.8, 0.1) if scores is None else scores
    top = [orjson.dumps([{"sensor": sensor, "actual": 1.0, "expected": 0.0, "contribution": 5.0}]).decode()
           if f else None for f in flags]
    return pd.DataFrame({"line": line, "station": station, "seq": np.arange(seq0, seq0 + n),
                         "ts": pd.date_range("2026-01-01", periods=n, freq="1s", tz="UTC") + pd.Timedelta(seconds=seq0),
                         "anomaly_score": sc, "is_anomaly": flags, "kind": np.where(flags, kind, "normal"),
                         "top_sensors": top})


def test_columns_are_the_incidents_table():
    out = IncidentTracker().update(scored([0, 1, 1, 1, 0]))
    assert list(out.columns) == TABLE["incidents"].column_names
    assert out["model_version"].isna().all()


def test_k_of_n_opens_only_with_enough_anomalies():
    tr = IncidentTracker(k=3, n=5, close_after=4)
    assert tr.update(scored([1, 0, 0, 0, 1, 0, 0, 0, 1, 0])).empty  # never 3 in 5
    out = IncidentTracker(k=3, n=5, close_after=4).update(scored([0, 1, 0, 1, 0, 1, 0, 0]))
    assert len(out) == 1
    row = out.iloc[0]
    assert row["incident_id"] == "L1/coating/101"  # starts at the first of the k anomalies
    assert row["n_anomalous"] == 3 and row["status"] == "open"
    assert row["start_ts"] == pd.Timestamp("2026-01-01 00:01:41", tz="UTC")


def test_hysteresis_closes_after_enough_normal_readings():
    flags = [1, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    out = IncidentTracker(k=3, n=5, close_after=4).update(scored(flags))
    assert len(out) == 1
    row = out.iloc[0]
    assert row["status"] == "closed"
    assert row["n_anomalous"] == 5  # short gaps (< close_after) keep it open
    assert row["end_ts"] == pd.Timestamp("2026-01-01 00:01:49", tz="UTC")  # the last anomalous reading
    two = IncidentTracker(k=2, n=2, close_after=2).update(scored([1, 1, 0, 0, 1, 1, 0, 0]))
    assert list(two["incident_id"]) == ["L1/coating/100", "L1/coating/104"]
    assert (two["status"] == "closed").all()


def test_severity_grows_with_peak_and_duration():
    flags = np.ones(8, dtype=bool)
    warn = IncidentTracker().update(scored(flags, scores=np.full(8, 0.4)))
    major = IncidentTracker().update(scored(flags, scores=np.full(8, 0.7)))
    crit = IncidentTracker().update(scored(flags, scores=np.full(8, 0.95)))
    long = IncidentTracker().update(scored(np.ones(250, dtype=bool), scores=np.full(250, 0.4)))
    assert [warn.iloc[0]["severity"], major.iloc[0]["severity"], crit.iloc[0]["severity"],
            long.iloc[0]["severity"]] == ["warning", "major", "critical", "critical"]


def test_streams_are_separate_and_kind_and_sensors_are_summarised():
    a = scored([1, 1, 1, 0], line="L1", kind="data_quality", sensor="coat_weight_mg_cm2")
    b = scored([1, 0, 1, 1], line="L2")
    out = IncidentTracker(k=3, n=4).update(pd.concat([a, b]).sort_values("ts", kind="stable"))
    by_id = out.set_index("incident_id")
    assert set(by_id.index) == {"L1/coating/100", "L2/coating/100"}
    assert by_id.loc["L1/coating/100", "kind"] == "data_quality"
    assert orjson.loads(by_id.loc["L1/coating/100", "sensors"]) == ["coat_weight_mg_cm2"]
    assert by_id.loc["L2/coating/100", "kind"] == "process"


def _final(frames: list[pd.DataFrame]) -> pd.DataFrame:
    cols = ["incident_id", "status", "start_ts", "end_ts", "peak_score", "n_anomalous", "kind", "severity"]
    return pd.concat(frames).drop_duplicates("incident_id", keep="last")[cols].sort_values("incident_id") \
        .reset_index(drop=True)


def _random_stream(seed: int, n: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    flags = rng.random(n) < 0.08
    flags[500:560] = True
    flags[1500:1503] = True
    return scored(flags, scores=np.where(flags, rng.uniform(0.4, 1.0, n), 0.1))


def test_same_incidents_whatever_the_batching_and_deterministic_ids():
    stream = _random_stream(1)
    whole = _final([IncidentTracker().update(stream)])
    tr = IncidentTracker()
    parts = _final([tr.update(stream.iloc[c]) for c in np.array_split(np.arange(len(stream)), 13)])
    pd.testing.assert_frame_equal(whole, parts)
    again = _final([IncidentTracker().update(stream)])
    assert list(again["incident_id"]) == list(whole["incident_id"])
    assert len(whole) > 3


def test_restore_after_restart_continues_the_same_incidents():
    stream = _random_stream(2)
    whole = _final([IncidentTracker().update(stream)])
    for cut in (530, 1501, 2222):
        tr = IncidentTracker()
        first = tr.update(stream.iloc[:cut])
        stored = first.drop_duplicates("incident_id", keep="last")
        restarted = IncidentTracker()
        restarted.restore(stored[stored["status"] == "open"], stream.iloc[max(0, cut - 50):cut])
        second = restarted.update(stream.iloc[cut:])
        pd.testing.assert_frame_equal(whole, _final([first, second]))


def test_restore_ignores_what_an_uncommitted_batch_already_stored():
    """After a crash the store holds the effects of a batch that is processed again: incidents it
    opened or closed. Restoring from that store must give the same incidents as no crash at all."""
    stream = _random_stream(2)
    whole = _final([IncidentTracker().update(stream)])
    for cut in range(300, 2400, 97):
        for batch in (40, 200):
            tr = IncidentTracker()
            committed = tr.update(stream.iloc[:cut])
            uncommitted = tr.update(stream.iloc[cut:cut + batch])  # written to the store, then the crash
            stored = pd.concat([committed, uncommitted]).drop_duplicates("incident_id", keep="last")
            restarted = IncidentTracker()
            restarted.restore(stored, stream.iloc[max(0, cut - 50):cut])
            again = restarted.update(stream.iloc[cut:])
            got = _final([committed, again])
            assert set(got["incident_id"]) == set(whole["incident_id"]), (cut, batch)
            pd.testing.assert_frame_equal(got[["incident_id", "status", "start_ts", "end_ts"]],
                                          whole[["incident_id", "status", "start_ts", "end_ts"]])


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_vectorised_count_and_open_mask_match_the_tracker(seed):
    stream = _random_stream(seed)
    flags = stream["is_anomaly"].to_numpy()
    for k, n, close in ((3, 5, 10), (1, 1, 3), (2, 6, 4)):
        out = IncidentTracker(k, n, close).update(stream)
        assert count_incidents([flags], k, n, close) == len(out)
        mask = open_mask(flags, k, n, close)
        starts = np.flatnonzero(np.diff(mask.astype(int), prepend=0) == 1)
        assert len(starts) == len(out)


def test_update_rejects_missing_columns_and_bad_parameters():
    with pytest.raises(ValueError, match="lack columns"):
        IncidentTracker().update(pd.DataFrame({"line": ["L1"]}))
    with pytest.raises(ValueError, match="k <= n"):
        IncidentTracker(k=4, n=3)
    assert IncidentTracker().update(scored([])).empty



def test_severity_path_opens_on_a_second_extreme_reading_within_its_horizon():
    flags = np.zeros(2000, dtype=int)
    flags[[50, 300, 1200, 1500, 1900]] = 1  # isolated flagged readings: k-of-n alone never opens
    scores = np.where(flags, 0.7, 0.1)
    scores[[50, 300, 1200, 1900]] = 1.0      # extreme: 50 & 300 (250 apart) and 1200 (900 after 300) and 1900
    frame = scored(flags, scores=scores)
    assert IncidentTracker(k=3, n=5, close_after=10, severe_score=None).update(frame).empty
    out = IncidentTracker(k=3, n=5, close_after=10, severe_score=1.0, severe_m=2, severe_n=600).update(frame)
    assert out["incident_id"].tolist() == ["L1/coating/400"]  # opened by the second extreme reading (seq 100 + 300)
    assert out["n_anomalous"].tolist() == [1] and out["status"].tolist() == ["closed"]
    once = IncidentTracker(k=3, n=5, close_after=10, severe_score=1.0, severe_m=1, severe_n=1).update(frame)
    assert once["incident_id"].tolist() == ["L1/coating/150", "L1/coating/400", "L1/coating/1300",
                                            "L1/coating/2000"]
    # the same in batches, and after a restart from the last rows (the earlier extreme reading is remembered)
    tracker = IncidentTracker(k=3, n=5, close_after=10, severe_score=1.0, severe_m=2, severe_n=600)
    assert _final([tracker.update(frame.iloc[a:a + 77]) for a in range(0, len(frame), 77)])["incident_id"].tolist() \
        == ["L1/coating/400"]
    first = IncidentTracker(k=3, n=5, close_after=10, severe_score=1.0, severe_m=2, severe_n=600)
    stored = first.update(frame.iloc[:250])
    again = IncidentTracker(k=3, n=5, close_after=10, severe_score=1.0, severe_m=2, severe_n=600)
    again.restore(stored, frame.iloc[:250])
    assert again.update(frame.iloc[250:])["incident_id"].tolist() == ["L1/coating/400"]
    with pytest.raises(ValueError, match="severe_m"):
        IncidentTracker(severe_m=0)


@pytest.mark.parametrize("seed", [3, 4])
def test_vectorised_twins_match_the_tracker_with_the_severity_path(seed):
    frame = _random_stream(seed)
    rng = np.random.default_rng(seed)
    flags = frame["is_anomaly"].to_numpy()
    scores = frame["anomaly_score"].to_numpy().copy()
    flagged = np.flatnonzero(flags)
    scores[rng.choice(flagged, size=max(2, flagged.size // 10), replace=False)] = 1.0
    frame = frame.assign(anomaly_score=scores)
    severe = severe_openers(flags, scores, 1.0, 2, 40)
    tracker = IncidentTracker(k=4, n=6, close_after=15, severe_score=1.0, severe_m=2, severe_n=40)
    inc = _final([tracker.update(frame.iloc[a:a + 300]) for a in range(0, len(frame), 300)])
    assert count_incidents([flags], 4, 6, 15, [severe]) == len(inc) > count_incidents([flags], 4, 6, 15)
    opened = open_mask(flags, 4, 6, 15, severe)
    assert int((opened & ~np.r_[False, opened[:-1]]).sum()) == len(inc)
