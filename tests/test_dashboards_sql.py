"""Every SQL query of every panel, variable, annotation and alert rule, expanded with Grafana's PostgreSQL
macros (template variables first) and run against real PostgreSQL filled by a real pipeline run."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from grafana_fixtures import (
    expand_macros,
    filled_store,  # noqa: F401 - fixture
    parse_interval,
    rfc3339nano,
    run_query,
    substitute_variables,
)

from cellwatch.dashboards import alerting, generate

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

DASHBOARDS = generate.dashboards()
INTERVAL = "1m"


# ------------------------------------------------------------------------------ the expander itself (no DB)

def test_macro_expansion_matches_grafana():
    t0, t1 = pd.Timestamp("2018-04-12T18:00:00Z"), pd.Timestamp("1960-02-01T07:00:00.5Z")
    assert rfc3339nano(t0) == "2018-04-12T18:00:00Z" and rfc3339nano(t1) == "1960-02-01T07:00:00.5Z"
    sql = expand_macros("SELECT $__timeGroupAlias(ts, '5m'), $__timeGroup(ts, $__interval) WHERE $__timeFilter(ts) "
                        "AND x > $__timeFrom() AND $__unixEpochFilter(e) LIMIT $__interval_ms", t0,
                        t0 + pd.Timedelta(hours=1), "10m")
    assert sql == ("SELECT floor(extract(epoch from ts)/300)*300 AS \"time\", floor(extract(epoch from ts)/600)*600 "
                   "WHERE ts BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T19:00:00Z' AND x > '2018-04-12T18:00:00Z' "
                   "AND e >= 1523556000 AND e <= 1523559600 LIMIT 600000")
    assert parse_interval("'20ms'") == 0.02
    with pytest.raises(ValueError, match='unknown macro "nope"'):
        expand_macros("$__nope(x)", t0, t0)
    assert substitute_variables("line IN ($line) AND s = '$station' AND t = '${sensor:text}'",
                                {"line": ["L1", "L2"], "station": "coating", "sensor": "a"}) == \
        "line IN ('L1', 'L2') AND s = 'coating' AND t = 'a'"


# ------------------------------------------------------------------------------ fixtures from the real data

@pytest.fixture(scope="module")
def conn(filled_store):  # noqa: F811
    with filled_store.connect() as c:
        yield c


@pytest.fixture(scope="module")
def window(filled_store):  # noqa: F811
    return filled_store.start - pd.Timedelta(minutes=5), pd.Timestamp.now(tz="UTC")


@pytest.fixture(scope="module")
def variables(conn) -> dict:
    """Realistic variable values, picked from what the pipeline wrote."""
    station_row = run_query(conn, "SELECT line, station, count(*) AS n FROM incidents GROUP BY 1, 2 ORDER BY 3 DESC "
                                  "LIMIT 1")
    assert len(station_row), "the pipeline run must have produced incidents"
    line, station = station_row.loc[0, "line"], station_row.loc[0, "station"]
    sensor = run_query(conn, f"SELECT t ->> 'sensor' AS s FROM scores, jsonb_array_elements(top_sensors) t "
                             f"WHERE line = '{line}' AND station = '{station}' AND is_anomaly "
                             f"AND jsonb_typeof(top_sensors) = 'array' LIMIT 1").loc[0, "s"]
    cell = run_query(conn, "SELECT c.cell_id FROM cells c WHERE c.closed AND c.defect_probability IS NOT NULL "
                           "AND EXISTS (SELECT 1 FROM readings r WHERE r.cell_id = c.cell_id AND r.tags IS NOT NULL) "
                           "ORDER BY c.defect_probability DESC LIMIT 1").loc[0, "cell_id"]
    return {"line": line, "station": station, "sensor": sensor, "cell_id": cell}


def _values(dash: dict, v: dict, panel: dict | None = None) -> dict:
    """Variable values as Grafana substitutes them: multi-value ones as lists, except the variable a
    repeated panel repeats over (one value per repeated panel)."""
    multi = {x["name"] for x in dash["templating"]["list"] if x.get("multi")} - {(panel or {}).get("repeat")}
    return {k: ([val] if k in multi else val) for k, val in v.items()}


def _run(conn, sql: str, values: dict, start, end) -> pd.DataFrame:
    return run_query(conn, expand_macros(substitute_variables(sql, values), start, end, INTERVAL))


def _is_number(s: pd.Series) -> bool:
    return s.dropna().map(lambda x: isinstance(x, int | float | np.number) or type(x).__name__ == "Decimal").all()


def _check_time_series(df: pd.DataFrame, what: str) -> None:
    assert "time" in df.columns, f"{what}: no time column"
    t = pd.to_datetime(df["time"], utc=True) if not _is_number(df["time"]) else pd.to_numeric(df["time"])
    assert t.is_monotonic_increasing, f"{what}: rows not ordered by time"
    values = [c for c in df.columns if c != "time"]
    numeric = [c for c in values if _is_number(df[c]) and df[c].notna().any()]
    assert numeric, f"{what}: no numeric value column with data"
    for c in values:
        assert _is_number(df[c]) or df[c].dropna().map(lambda x: isinstance(x, str)).all(), \
            f"{what}: column {c} is neither numeric nor a string label"


def _fields_used(panel: dict) -> set[str]:
    fc = panel["fieldConfig"]
    names = {o["matcher"]["options"] for o in fc["overrides"] if o["matcher"]["id"] == "byName"}
    for lk in fc["defaults"].get("links", []):
        names |= set(re.findall(r"__data\.fields\.(\w+)", lk["url"]))
    return names


# ------------------------------------------------------------------------------ dashboards

@pytest.mark.parametrize("uid", list(DASHBOARDS))
def test_variable_queries_return_values(conn, window, variables, uid):
    dash = DASHBOARDS[uid]
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        df = _run(conn, var["query"], _values(dash, variables), *window)
        assert len(df), f"{uid} ${var['name']}: no values"
        assert list(df.columns) in (["__value", "__text"], [df.columns[0]]), f"{uid} ${var['name']}: {df.columns}"
        assert variables[var["name"]] in set(df.iloc[:, 0]), f"{uid} ${var['name']} lacks {variables[var['name']]}"


@pytest.mark.parametrize("uid", list(DASHBOARDS))
def test_panel_queries_return_what_the_panel_expects(conn, window, variables, uid):
    dash = DASHBOARDS[uid]
    for panel in dash["panels"]:
        for target in panel["targets"]:
            what = f"{uid} / {panel['title']}"
            df = _run(conn, target["rawSql"], _values(dash, variables, panel), *window)
            assert len(df), f"{what}: no rows"
            if target["format"] == "time_series":
                _check_time_series(df, what)
            missing = _fields_used(panel) - set(df.columns)
            assert not missing, f"{what}: overrides/links name missing fields {missing}"


def test_sensor_trend_has_values_and_bands(conn, window, variables):
    (panel,) = [p for p in DASHBOARDS["cellwatch-station"]["panels"] if p.get("repeat") == "sensor"]
    df = _run(conn, panel["targets"][0]["rawSql"], variables, *window)
    s = variables["sensor"]
    assert list(df.columns) == ["time", s, f"{s} lower", f"{s} expected", f"{s} upper"]
    assert df[s].notna().all()
    assert df[f"{s} lower"].notna().any(), "expected bands (sensor_bands) joined for the scoring model"
    assert (df[f"{s} lower"] <= df[f"{s} upper"]).dropna().all()


def test_score_threshold_comes_from_the_model(conn, window, variables):
    (panel,) = [p for p in DASHBOARDS["cellwatch-station"]["panels"] if p["title"] == "Anomaly score and threshold"]
    df = _run(conn, panel["targets"][0]["rawSql"], variables, *window)
    assert df["threshold"].notna().all() and df["threshold"].between(0, 1).all()
    assert df["anomaly_score"].between(0, 1).all()


@pytest.mark.parametrize("uid", list(DASHBOARDS))
def test_sql_annotations_return_regions(conn, window, variables, uid):
    dash = DASHBOARDS[uid]
    for ann in dash["annotations"]["list"]:
        if ann["datasource"]["uid"] != "cellwatch-pg":
            continue
        df = _run(conn, ann["target"]["rawSql"], _values(dash, variables), *window)
        assert list(df.columns) == ["time", "timeend", "text", "tags"]
        assert len(df) and (pd.to_datetime(df["timeend"]) >= pd.to_datetime(df["time"])).all()
        assert df["tags"].str.contains(variables["station"]).all()


# ------------------------------------------------------------------------------ alert rules

def _evaluate(df: pd.DataFrame, rule: dict) -> dict[tuple, float]:
    """Grafana's reduce + threshold over the long-format result: label set -> reduced value, if firing."""
    labels = [c for c in df.columns if c != "time" and not _is_number(df[c])]
    (value,) = [c for c in df.columns if c != "time" and c not in labels]
    reducer = rule["data"][1]["model"]["reducer"]
    evaluator = rule["data"][2]["model"]["conditions"][0]["evaluator"]
    reduced = df.dropna(subset=[value]).groupby(labels, dropna=False)[value].agg(
        {"last": "last", "mean": "mean", "max": "max", "min": "min", "sum": "sum", "count": "count"}[reducer])
    op = {"gt": np.greater, "lt": np.less, "gte": np.greater_equal, "lte": np.less_equal}[evaluator["type"]]
    return {k if isinstance(k, tuple) else (k,): float(v) for k, v in reduced.items()
            if op(float(v), evaluator["params"][0])}


@pytest.mark.parametrize("rule", alerting.alert_rules(), ids=lambda r: r["uid"])
def test_alert_rule_query_is_multidimensional_time_series(conn, filled_store, rule):  # noqa: F811
    sql = rule["data"][0]
    now = pd.Timestamp.now(tz="UTC")
    start = now - pd.Timedelta(seconds=sql["relativeTimeRange"]["from"])
    text = sql["model"]["rawSql"]
    assert not re.search(r"\$(?!__)\w", text), "alert rules cannot use dashboard template variables"
    df = run_query(conn, expand_macros(text, start, now, "1m"))
    assert "metric" not in df.columns, "a label column named metric would be folded into the series name"
    assert len(df), f"{rule['uid']}: no rows on the pipeline's data"
    _check_time_series(df, rule["uid"])
    labels = [c for c in df.columns if c != "time" and not _is_number(df[c])]
    numbers = [c for c in df.columns if c != "time" and c not in labels]
    assert len(numbers) == 1, f"{rule['uid']}: one value column per series, got {numbers}"
    wanted = {"cw-incident-open": {"line", "station", "severity"}, "cw-defect-rate": {"line"},
              "cw-station-silent": {"line", "station"}, "cw-pipeline-lag": {"worker"}, "cw-dlq-rate": {"reason"}}
    assert wanted[rule["uid"]] <= set(labels)
    _evaluate(df, rule)  # reduce + threshold run on it


def test_alert_rules_fire_on_the_right_conditions(conn, filled_store):  # noqa: F811
    rules = {r["uid"]: r for r in alerting.alert_rules()}
    now = pd.Timestamp.now(tz="UTC")

    def fire(uid: str, at: pd.Timestamp = now) -> dict:
        r = rules[uid]
        start = at - pd.Timedelta(seconds=r["data"][0]["relativeTimeRange"]["from"])
        return _evaluate(run_query(conn, expand_macros(r["data"][0]["model"]["rawSql"], start, at, "1m")), r)

    open_incidents = run_query(conn, "SELECT count(*) AS n FROM incidents WHERE status = 'open'").loc[0, "n"]
    assert len(fire("cw-incident-open")) == open_incidents  # one alert instance per open incident
    assert fire("cw-station-silent") == {}, "every station reported within the last minutes"
    later = fire("cw-station-silent", now + pd.Timedelta(minutes=30))  # half an hour without data
    stations = run_query(conn, "SELECT count(DISTINCT (line, station)) AS n FROM readings").loc[0, "n"]
    assert len(later) == stations and all(v > 1500 for v in later.values())
    assert fire("cw-dlq-rate") == {}, "three dead letters in ten minutes is far below the rate limit"
    assert fire("cw-pipeline-lag") == {}
