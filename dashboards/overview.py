"""Dashboard 1, line overview: per line and station the current anomaly score, open incidents, readings/s,
predicted defect rate and the stations with the most incidents, each linking into the station drill-down."""

from __future__ import annotations

from cellwatch.dashboards.builders import (
    Dict,
    dashboard,
    link,
    override,
    panel,
    query_variable,
    sql_target,
    station_order,
    station_url,
    tag_annotation,
    thresholds,
)

UID = "cellwatch-overview"
SCORE_STEPS = thresholds((None, "green"), (0.6, "orange"), (0.9, "red"))

LINE_VARIABLE_SQL = "SELECT DISTINCT line FROM scores WHERE $__timeFilter(ts) ORDER BY 1"

STATION_TABLE_SQL = f"""
WITH latest AS (
  SELECT DISTINCT ON (line, station) line, station, anomaly_score, ts
  FROM scores WHERE $__timeFilter(ts) AND line IN ($line)
  ORDER BY line, station, ts DESC
), rate AS (
  SELECT line, station, count(*) / 300.0 AS readings_per_s
  FROM readings WHERE ts > $__timeTo()::timestamptz - interval '5 minutes' AND $__timeFilter(ts) AND line IN ($line)
  GROUP BY 1, 2
), open_inc AS (
  SELECT line, station, count(*) AS open_incidents FROM incidents
  WHERE status = 'open' AND line IN ($line) GROUP BY 1, 2
), defect AS (
  SELECT line, station, avg(CASE WHEN predicted_defect THEN 1.0 ELSE 0.0 END) AS predicted_defect_rate
  FROM cell_predictions WHERE $__timeFilter(ts) AND line IN ($line) GROUP BY 1, 2
)
SELECT l.line, l.station, l.anomaly_score, coalesce(o.open_incidents, 0) AS open_incidents,
       coalesce(r.readings_per_s, 0) AS readings_per_s, d.predicted_defect_rate, l.ts AS last_reading
FROM latest l
LEFT JOIN rate r USING (line, station)
LEFT JOIN open_inc o USING (line, station)
LEFT JOIN defect d USING (line, station)
ORDER BY l.line, {station_order('l.station')}
"""

OPEN_INCIDENTS_SQL = """
SELECT count(*) AS open_incidents FROM incidents WHERE status = 'open' AND line IN ($line)
"""

SCORE_SQL = """
SELECT $__timeGroupAlias(ts, $__interval), line || '/' || station AS metric, max(anomaly_score) AS value
FROM scores WHERE $__timeFilter(ts) AND line IN ($line)
GROUP BY 1, 2 ORDER BY 1
"""

READINGS_RATE_SQL = """
SELECT $__timeGroupAlias(ts, $__interval), line AS metric, count(*) * 1000.0 / $__interval_ms AS value
FROM readings WHERE $__timeFilter(ts) AND line IN ($line)
GROUP BY 1, 2 ORDER BY 1
"""

DEFECT_RATE_SQL = """
SELECT $__timeGroupAlias(last_ts, $__interval), line AS metric,
       avg(CASE WHEN predicted_defect THEN 1.0 ELSE 0.0 END) AS value
FROM cells WHERE $__timeFilter(last_ts) AND predicted_defect IS NOT NULL AND line IN ($line)
GROUP BY 1, 2 ORDER BY 1
"""

TOP_STATIONS_SQL = """
SELECT line, station, count(*) AS incidents,
       count(*) FILTER (WHERE severity = 'critical') AS critical,
       count(*) FILTER (WHERE status = 'open') AS open, max(peak_score) AS peak_score
FROM incidents WHERE $__timeFilter(start_ts) AND line IN ($line)
GROUP BY 1, 2 ORDER BY incidents DESC, peak_score DESC LIMIT 10
"""

_TO_STATION = link("Station drill-down", station_url("${__data.fields.line}", "${__data.fields.station}"),
                   "Open the station drill-down for this line and station")


def build() -> Dict:
    station_table = panel(
        "table", "Stations now", [sql_target(STATION_TABLE_SQL, "table")],
        description="Latest anomaly score, open incidents, readings/s (last 5 min) and predicted defect rate "
                    "per station. Click a row to drill down.",
        links=[_TO_STATION],
        overrides=[override("byName", "anomaly_score", unit="none", decimals=2, thresholds=SCORE_STEPS,
                            **{"custom.cellOptions": {"type": "color-background"}}),
                   override("byName", "predicted_defect_rate", unit="percentunit", decimals=1),
                   override("byName", "readings_per_s", unit="reqps", decimals=1)])
    rows = [
        [(panel("stat", "Open incidents", [sql_target(OPEN_INCIDENTS_SQL, "table")],
                steps=thresholds((None, "green"), (1, "orange"), (5, "red")), options={"graphMode": "none"}), 4, 8),
         (station_table, 20, 8)],
        [(panel("timeseries", "Anomaly score by station (max)", [sql_target(SCORE_SQL)], unit="none", min_=0, max_=1,
                steps=SCORE_STEPS, custom={"thresholdsStyle": {"mode": "dashed"}}), 12, 8),
         (panel("table", "Top stations by incidents", [sql_target(TOP_STATIONS_SQL, "table")], links=[_TO_STATION]),
          12, 8)],
        [(panel("timeseries", "Readings per second", [sql_target(READINGS_RATE_SQL)], unit="reqps"), 12, 8),
         (panel("timeseries", "Predicted defect rate", [sql_target(DEFECT_RATE_SQL)], unit="percentunit",
                min_=0, description="Share of cells predicted defective, by the station each cell last passed."),
          12, 8)],
    ]
    variables = [query_variable("line", "Line", LINE_VARIABLE_SQL, multi=True, include_all=True, sort=7)]
    return dashboard(UID, "cellwatch / Line overview",
                     "Per line and station: anomaly score, incidents, throughput and predicted defect rate.",
                     rows, variables=variables,
                     annotations=[tag_annotation("Incidents (posted)", ["cellwatch", "incident"], "red")])
