"""Dashboard 2, station drill-down: sensor trends with their expected bands, the anomaly score with its
threshold, incidents as annotations (SQL on the incidents table) and the top contributing sensors."""

from __future__ import annotations

import re

from cellwatch.dashboards.builders import (
    Dict,
    dashboard,
    override,
    panel,
    query_variable,
    sql_annotation,
    sql_target,
    station_order,
    thresholds,
)
from cellwatch.stations import units

UID = "cellwatch-station"

LINE_SQL = "SELECT DISTINCT line FROM scores WHERE $__timeFilter(ts) ORDER BY 1"
STATION_SQL = f"""
SELECT station FROM (SELECT DISTINCT station FROM scores WHERE line = '$line' AND $__timeFilter(ts)) s
ORDER BY {station_order()}
"""


def _unit_values() -> str:
    """``(VALUES ('sensor', 'unit'), ...)`` from the station catalogue, so variables can show units."""
    rows = ", ".join("('{}', '{}')".format(n, u.replace("'", "''")) for n, u in units().items())
    return f"(VALUES {rows}) AS u(sensor, unit)"


#: The station's sensors (from its latest readings), shown with their unit.
SENSOR_SQL = f"""
SELECT k.sensor AS __value, k.sensor || coalesce(' [' || u.unit || ']', '') AS __text
FROM (SELECT DISTINCT jsonb_object_keys(sensor_values) AS sensor
      FROM (SELECT sensor_values FROM readings WHERE line = '$line' AND station = '$station'
            ORDER BY ts DESC LIMIT 200) r) k
LEFT JOIN {_unit_values()} USING (sensor)
ORDER BY 1
"""

#: One sensor's mean per interval and the expected band of the model that scored the readings.
SENSOR_TREND_SQL = """
SELECT $__timeGroupAlias(r.ts, $__interval),
       avg((r.sensor_values ->> '$sensor')::float8) AS "$sensor",
       avg(b.lower) AS "$sensor lower", avg(b.expected) AS "$sensor expected", avg(b.upper) AS "$sensor upper"
FROM readings r
LEFT JOIN scores s ON s.line = r.line AND s.station = r.station AND s.seq = r.seq
LEFT JOIN LATERAL (
  SELECT lower, expected, upper FROM sensor_bands
  WHERE model_version = s.model_version AND station = r.station AND sensor = '$sensor'
    AND line IN (r.line, '*') AND recipe IN (coalesce(r.recipe, '*'), '*')
  ORDER BY (line = '*'), (recipe = '*') LIMIT 1
) b ON true
WHERE r.line = '$line' AND r.station = '$station' AND $__timeFilter(r.ts)
GROUP BY 1 ORDER BY 1
"""

#: Max score per interval and the alert threshold of the station model that scored it (sensor_bands.threshold).
SCORE_SQL = """
WITH t AS (
  SELECT model_version, line, max(threshold) AS threshold FROM sensor_bands WHERE station = '$station' GROUP BY 1, 2
)
SELECT $__timeGroupAlias(s.ts, $__interval), max(s.anomaly_score) AS anomaly_score, max(t.threshold) AS threshold
FROM scores s LEFT JOIN t ON t.model_version = s.model_version AND t.line IN (s.line, '*')
WHERE s.line = '$line' AND s.station = '$station' AND $__timeFilter(s.ts)
GROUP BY 1 ORDER BY 1
"""

CURRENT_SCORE_SQL = """
SELECT $__timeGroupAlias(ts, $__interval), max(anomaly_score) AS anomaly_score
FROM scores WHERE line = '$line' AND station = '$station' AND $__timeFilter(ts)
GROUP BY 1 ORDER BY 1
"""

TOP_SENSORS_SQL = """
SELECT t ->> 'sensor' AS sensor, count(*) AS anomalous_readings,
       avg((t ->> 'contribution')::float8) AS mean_contribution,
       avg((t ->> 'actual')::float8) AS mean_actual, avg((t ->> 'expected')::float8) AS expected
FROM scores s,
     jsonb_array_elements(CASE WHEN jsonb_typeof(s.top_sensors) = 'array' THEN s.top_sensors ELSE '[]' END) t
WHERE s.line = '$line' AND s.station = '$station' AND s.is_anomaly AND $__timeFilter(s.ts)
GROUP BY 1 ORDER BY sum((t ->> 'contribution')::float8) DESC NULLS LAST LIMIT 10
"""

INCIDENTS_SQL = """
SELECT start_ts AS time, end_ts, severity, status, kind, peak_score, n_anomalous, sensors::text AS sensors,
       incident_id
FROM incidents
WHERE line = '$line' AND station = '$station'
  AND start_ts <= $__timeTo()::timestamptz AND coalesce(end_ts, now()) >= $__timeFrom()::timestamptz
ORDER BY start_ts DESC LIMIT 100
"""

#: Incidents overlapping the time range, as region annotations (open ones run to now).
INCIDENT_ANNOTATION_SQL = """
SELECT start_ts AS time, coalesce(end_ts, now()) AS timeend,
       initcap(severity) || ' ' || kind || ' incident (' || status || '), peak score '
         || round(peak_score::numeric, 2) || ', sensors: ' || sensors::text AS text,
       line || ',' || station || ',' || severity AS tags
FROM incidents
WHERE line = '$line' AND station = '$station'
  AND start_ts <= $__timeTo()::timestamptz AND coalesce(end_ts, now()) >= $__timeFrom()::timestamptz
ORDER BY 1
"""

SCORE_STEPS = thresholds((None, "green"), (0.6, "orange"), (0.9, "red"))


def _unit_overrides() -> list[Dict]:
    """Per-sensor units for the trend panel's value and band series (``<sensor>`` and ``<sensor> lower`` ...)."""
    return [override("byRegexp", f"^{re.escape(name)}( .*)?$", unit=f"suffix: {unit}")
            for name, unit in units().items()]


def _band_overrides() -> list[Dict]:
    dashed = {"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}, "color": {"mode": "fixed", "fixedColor": "green"}}
    return [
        override("byRegexp", ".* lower$", **dashed, **{"custom.fillOpacity": 0}),
        override("byRegexp", ".* upper$", **dashed, **{"custom.fillBelowTo": "$sensor lower", "custom.fillOpacity": 8}),
        override("byRegexp", ".* expected$", **{"custom.lineStyle": {"fill": "dot", "dash": [2, 6]},
                                                "color": {"mode": "fixed", "fixedColor": "green"}}),
    ]


def build() -> Dict:
    score_panel = panel(
        "timeseries", "Anomaly score and threshold", [sql_target(SCORE_SQL)], min_=0, max_=1, unit="none",
        overrides=[override("byName", "threshold", **{"custom.lineStyle": {"fill": "dash", "dash": [10, 10]},
                                                      "color": {"mode": "fixed", "fixedColor": "red"},
                                                      "custom.fillOpacity": 0})],
        description="Max anomaly score per interval, and the alert threshold of the model that scored it.")
    rows = [
        [(panel("stat", "Current anomaly score", [sql_target(CURRENT_SCORE_SQL)], min_=0, max_=1, decimals=2,
                steps=SCORE_STEPS), 4, 8),
         (score_panel, 20, 8)],
        [(panel("table", "Top contributing sensors", [sql_target(TOP_SENSORS_SQL, "table")],
                description="Sensors most often named in the explanation of anomalous readings."), 10, 9),
         (panel("table", "Incidents", [sql_target(INCIDENTS_SQL, "table")],
                overrides=[override("byName", "peak_score", decimals=2)]), 14, 9)],
        [(panel("timeseries", "${sensor:text}", [sql_target(SENSOR_TREND_SQL)], repeat="sensor",
                description="Sensor mean per interval with the expected band (sensor_bands) of the scoring model.",
                overrides=[*_band_overrides(), *_unit_overrides()]), 24, 8)],
    ]
    variables = [
        query_variable("line", "Line", LINE_SQL, sort=7),
        query_variable("station", "Station", STATION_SQL),
        query_variable("sensor", "Sensor", SENSOR_SQL, multi=True, include_all=True),
    ]
    return dashboard(UID, "cellwatch / Station drill-down",
                     "One station of one line: sensor trends against expected bands, anomaly score, incidents.",
                     rows, variables=variables, time_from="now-3h",
                     annotations=[sql_annotation("Incidents", INCIDENT_ANNOTATION_SQL, "red")])
