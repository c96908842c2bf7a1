"""The message contract: valid messages decode to the wide frame; every rejection reason is reachable."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellwatch.contract import (
    CELL_RESULT_COLUMNS,
    MAX_PAYLOAD_BYTES,
    READING_KEYS,
    Reason,
    encode_cell_results,
    encode_reading,
    encode_readings,
    kafka_key,
    sensor_columns,
    validate_cell_results,
    validate_readings,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TS = "2026-11-25T11:59:00.250Z"


def reading(**over) -> dict:
    msg = {"schema": 1, "ts": TS, "line": "L1", "station": "coating", "cell_id": None, "seq": 7,
           "values": {"coat_weight_mg_cm2": 20.1, "web_tension_n": 180}}
    msg.update(over)
    return msg


def one_reject(msg) -> tuple[Reason, str]:
    payload = msg if isinstance(msg, bytes | type(None)) else orjson.dumps(msg)
    frame, rejects = validate_readings([payload], now=NOW)
    assert frame.empty and len(rejects) == 1 and rejects[0].index == 0
    return rejects[0].reason, rejects[0].detail


def test_valid_reading_becomes_a_wide_row():
    frame, rejects = validate_readings([orjson.dumps(reading())], now=NOW)
    assert rejects == []
    assert list(frame.columns[: len(READING_KEYS)]) == list(READING_KEYS)
    row = frame.iloc[0]
    assert row["ts"] == pd.Timestamp("2026-11-25T11:59:00.250Z")
    assert (row["line"], row["station"], row["seq"]) == ("L1", "coating", 7)
    assert pd.isna(row["cell_id"]) and pd.isna(row["recipe"]) and pd.isna(row["tags"])
    assert row["coat_weight_mg_cm2"] == pytest.approx(20.1) and row["web_tension_n"] == 180.0
    assert frame["web_tension_n"].dtype == np.float64


def test_mixed_stations_and_unknown_sensors_are_kept_with_positions():
    msgs = [reading(), b"{broken", reading(station="winding", cell_id="L1-000001", seq=1,
                                           values={"overhang_mm": 1.1, "brand_new_sensor": 3})]
    frame, rejects = validate_readings([m if isinstance(m, bytes) else orjson.dumps(m) for m in msgs], now=NOW)
    assert list(frame.index) == [0, 2]
    assert [r.index for r in rejects] == [1]
    assert set(sensor_columns(frame)) == {"coat_weight_mg_cm2", "web_tension_n", "overhang_mm", "brand_new_sensor"}
    assert frame.loc[2, "brand_new_sensor"] == 3.0 and np.isnan(frame.loc[0, "overhang_mm"])
    assert frame.loc[2, "cell_id"] == "L1-000001"


def test_recipe_and_tags_round_trip_through_the_encoder():
    msgs = [encode_reading(TS, "L2", "coating", None, 1, {"a": 1.5}, recipe="LFP",
                           tags={"coil_id": "L2-C0001", "slurry_batch_id": "L2-SB01"}),
            encode_reading(datetime(2026, 11, 25, 11, 0, tzinfo=UTC), "L2", "winding", "c-1", 2, {"b": 2.0})]
    frame, rejects = validate_readings(msgs, now=NOW)
    assert rejects == []
    assert json.loads(frame.loc[0, "tags"]) == {"coil_id": "L2-C0001", "slurry_batch_id": "L2-SB01"}
    again, rejects = validate_readings(encode_readings(frame), now=NOW)
    assert rejects == []
    pd.testing.assert_frame_equal(frame, again)


@pytest.mark.parametrize(("msg", "reason", "detail"), [
    (b"\xff\xfe not utf8", Reason.UNDECODABLE, "UTF-8"),
    (b"[1, 2, 3]", Reason.UNDECODABLE, "list"),
    (None, Reason.UNDECODABLE, "null"),
    (b"x" * (MAX_PAYLOAD_BYTES + 1), Reason.OVERSIZED, "bytes"),
    (reading(schema=2), Reason.UNKNOWN_SCHEMA, "schema=2"),
    (reading(schema=True), Reason.UNKNOWN_SCHEMA, "True"),
    ({k: v for k, v in reading().items() if k != "schema"}, Reason.MISSING_FIELD, "schema"),
    ({k: v for k, v in reading().items() if k != "station"}, Reason.MISSING_FIELD, "station"),
    ({k: v for k, v in reading().items() if k != "ts"}, Reason.MISSING_FIELD, "ts"),
    (reading(ts=None), Reason.MISSING_FIELD, "ts"),
    ({k: v for k, v in reading().items() if k != "values"}, Reason.MISSING_FIELD, "values"),
    (reading(line=None), Reason.MISSING_FIELD, "line"),
    (reading(ts=1764000000), Reason.WRONG_TYPE, "ts"),
    (reading(ts="yesterday"), Reason.WRONG_TYPE, "ts"),
    (reading(line=3), Reason.WRONG_TYPE, "line"),
    (reading(station=""), Reason.WRONG_TYPE, "station"),
    (reading(cell_id=12), Reason.WRONG_TYPE, "cell_id"),
    (reading(seq="7"), Reason.WRONG_TYPE, "seq"),
    (reading(seq=1.5), Reason.WRONG_TYPE, "seq"),
    (reading(seq=-1), Reason.WRONG_TYPE, "seq"),
    (reading(values=[1, 2]), Reason.WRONG_TYPE, "values"),
    (reading(values={"a": "high"}), Reason.WRONG_TYPE, "values.a"),
    (reading(values={"a": True}), Reason.WRONG_TYPE, "values.a"),
    (reading(values={"a": {"b": 1}}), Reason.WRONG_TYPE, "values.a"),
    (reading(tags={"coil": 5}), Reason.WRONG_TYPE, "tags"),
    (reading(recipe=5), Reason.WRONG_TYPE, "recipe"),
    (b'{"schema":1,"ts":"' + TS.encode() + b'","line":"L1","station":"s","seq":1,"values":{"a":NaN}}',
     Reason.NON_FINITE, "NaN"),
    (b'{"schema":1,"ts":"' + TS.encode() + b'","line":"L1","station":"s","seq":1,"values":{"a":-Infinity}}',
     Reason.NON_FINITE, "infinity"),
    (b'{"schema":1,"ts":"' + TS.encode() + b'","line":"L1","station":"s","seq":1,"values":{"a":1e999}}',
     Reason.NON_FINITE, "infinity"),
    (b'{"schema":1,"ts":"' + TS.encode() + b'","line":"L1","station":"s","seq":1,"values":{"a":' + b"9" * 400 + b"}}",
     Reason.NON_FINITE, "infinity"),
    (reading(ts=(NOW + timedelta(hours=1)).isoformat()), Reason.FUTURE_TIMESTAMP, "after now"),
])
def test_every_rejection_reason(msg, reason, detail):
    got_reason, got_detail = one_reject(msg)
    assert got_reason == reason
    assert detail in got_detail


def test_slightly_future_timestamps_are_tolerated():
    frame, rejects = validate_readings([orjson.dumps(reading(ts=(NOW + timedelta(minutes=2)).isoformat()))], now=NOW)
    assert rejects == [] and len(frame) == 1


def test_kafka_key_keeps_one_station_in_one_partition():
    assert kafka_key("L1", "coating") == b"L1/coating"


def test_empty_batch():
    frame, rejects = validate_readings([], now=NOW)
    assert frame.empty and rejects == []
    assert list(frame.columns) == list(READING_KEYS)


def cell_result(**over) -> dict:
    msg = {"schema": 1, "ts": TS, "line": "L1", "cell_id": "L1-000001", "capacity_ah": 50.2, "dcir_mohm": 1.31,
           "k_value_mv_day": 0.8, "grade": "A", "defect": False, "defect_type": None}
    msg.update(over)
    return msg


def test_cell_results_round_trip():
    frame, rejects = validate_cell_results([orjson.dumps(cell_result()),
                                            orjson.dumps(cell_result(cell_id="L1-000002", defect=True,
                                                                     defect_type="high_dcir", grade="scrap"))],
                                           now=NOW)
    assert rejects == []
    assert list(frame.columns) == list(CELL_RESULT_COLUMNS)
    assert frame["defect"].tolist() == [False, True]
    again, rejects = validate_cell_results(encode_cell_results(frame), now=NOW)
    assert rejects == []
    pd.testing.assert_frame_equal(frame, again)


@pytest.mark.parametrize(("msg", "reason"), [
    (cell_result(defect="no"), Reason.WRONG_TYPE),
    (cell_result(capacity_ah="50"), Reason.WRONG_TYPE),
    ({k: v for k, v in cell_result().items() if k != "dcir_mohm"}, Reason.MISSING_FIELD),
    (cell_result(schema=9), Reason.UNKNOWN_SCHEMA),
    (cell_result(ts="2099-01-01T00:00:00Z"), Reason.FUTURE_TIMESTAMP),
])
def test_cell_result_rejections(msg, reason):
    frame, rejects = validate_cell_results([orjson.dumps(msg)], now=NOW)
    assert frame.empty and [r.reason for r in rejects] == [reason]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()),
                          st.builds(lambda d: json.dumps({**reading(), **d}).encode(),
                                    st.dictionaries(st.sampled_from(list(reading())), json_values, max_size=3))),
                max_size=20))
def test_any_bytes_are_either_valid_or_rejected_with_a_reason(payloads):
    frame, rejects = validate_readings(payloads, now=NOW)
    assert len(frame) + len(rejects) == len(payloads)
    assert set(frame.index).isdisjoint(r.index for r in rejects)
    assert all(isinstance(r.reason, Reason) and r.detail for r in rejects)
    values = frame[sensor_columns(frame)].to_numpy(dtype=float)
    assert not np.isinf(values).any()


def test_null_sensor_values_count_as_not_sent():
    frame, rejects = validate_readings([orjson.dumps(reading(values={"a": None, "b": 2.0}))], now=NOW)
    assert rejects == [] and "a" not in frame.columns and frame["b"].tolist() == [2.0]


def _random_valid_batch(rng: np.random.Generator, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        station = ["coating", "winding", "eol"][i % 3]
        values = {f"{station}_{j}": float(rng.normal()) for j in range(int(rng.integers(0, 5)))}
        if rng.random() < 0.2:
            values["count_sensor"] = int(rng.integers(0, 100))
        if rng.random() < 0.1:
            values["maybe"] = None
        tags = {"coil_id": f"C{i}", "z": None} if rng.random() < 0.5 else ({} if rng.random() < 0.5 else None)
        out.append(encode_reading(NOW - timedelta(seconds=n - i), "L1" if i % 2 else "L2", station,
                                  None if station == "coating" else f"cell-{i}", i, values,
                                  recipe=None if rng.random() < 0.3 else "NMC811", tags=tags))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_fast_and_per_message_paths_agree(seed):
    from cellwatch.contract import _fast_readings, _slow_readings, _utc

    payloads = _random_valid_batch(np.random.default_rng(seed), 200)
    fast = _fast_readings(payloads, _utc(NOW))
    assert fast is not None, "a clean batch must take the Arrow path"
    slow = _slow_readings(payloads, _utc(NOW))
    assert fast[1] == slow[1] == []
    pd.testing.assert_frame_equal(fast[0], slow[0])


def test_one_bad_message_does_not_cost_the_others():
    payloads = _random_valid_batch(np.random.default_rng(9), 50)
    payloads[17] = b'{"schema": 1, "ts": "nonsense"}'
    frame, rejects = validate_readings(payloads, now=NOW)
    assert len(frame) == 49 and [r.index for r in rejects] == [17]
