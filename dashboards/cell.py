"""Dashboard 3, cell traceability: one cell id -> its genealogy tags, readings, anomaly scores along its path,
defect probability after each station with the reasons, and its end-of-line result.

The per-cell tables are not limited to the time range (a cell id is selective and indexed, and a cell's path
can span days); the charts follow the time range like every other panel.
"""

from __future__ import annotations

from cellwatch.dashboards.builders import (
    Dict,
    dashboard,
    link,
    override,
    panel,
    sql_target,
    textbox_variable,
    thresholds,
)

UID = "cellwatch-cell"

GENEALOGY_SQL = """
SELECT r.ts AS time, r.station, r.line, r.recipe, t.key AS tag, t.value AS value
FROM readings r,
     jsonb_each_text(CASE WHEN jsonb_typeof(r.tags) = 'object' THEN r.tags ELSE '{}' END) t
WHERE r.cell_id = '$cell_id'
ORDER BY r.ts, t.key
"""

READINGS_SQL = """
SELECT r.ts AS time, r.station, kv.key AS sensor, kv.value::float8 AS value
FROM readings r, jsonb_each_text(r.sensor_values) kv
WHERE r.cell_id = '$cell_id'
ORDER BY r.ts, kv.key
"""

SCORES_SQL = """
SELECT ts AS time, station, anomaly_score, is_anomaly, kind, top_sensors::text AS top_sensors, model_version
FROM scores WHERE cell_id = '$cell_id' ORDER BY ts
"""

SCORE_CHART_SQL = """
SELECT ts AS time, station AS metric, anomaly_score AS value
FROM scores WHERE cell_id = '$cell_id' AND $__timeFilter(ts) ORDER BY ts
"""

PREDICTIONS_SQL = """
SELECT ts AS time, station, defect_probability, predicted_defect, predicted_type,
       (SELECT string_agg((f ->> 'feature') || ' ' || to_char((f ->> 'contribution')::float8, 'FM0.000'), ', ')
        FROM jsonb_array_elements(CASE WHEN jsonb_typeof(top_features) = 'array' THEN top_features ELSE '[]' END) f
       ) AS reasons,
       model_version
FROM cell_predictions WHERE cell_id = '$cell_id' ORDER BY ts
"""

PROBABILITY_CHART_SQL = """
SELECT ts AS time, defect_probability AS "defect probability"
FROM cell_predictions WHERE cell_id = '$cell_id' AND $__timeFilter(ts) ORDER BY ts
"""

EOL_SQL = """
SELECT eol_ts AS time, grade, defect, defect_type, capacity_ah, dcir_mohm, k_value_mv_day,
       defect_probability AS predicted_probability, predicted_defect, predicted_type, last_station, closed
FROM cells WHERE cell_id = '$cell_id'
"""

RISKY_CELLS_SQL = """
SELECT cell_id, line, last_station, last_ts AS time, defect_probability, predicted_type, grade, defect
FROM cells WHERE $__timeFilter(last_ts) AND defect_probability IS NOT NULL
ORDER BY defect_probability DESC, last_ts DESC LIMIT 20
"""

PROB_STEPS = thresholds((None, "green"), (0.3, "orange"), (0.6, "red"))


def build() -> Dict:
    pick = link("Trace this cell", "/d/cellwatch-cell/cell-traceability?var-cell_id=${__data.fields.cell_id}"
                "&${__url_time_range}")
    rows = [
        [(panel("table", "End-of-line result", [sql_target(EOL_SQL, "table")],
                overrides=[override("byName", "predicted_probability", unit="percentunit", decimals=1)]), 24, 5)],
        [(panel("timeseries", "Defect probability along the line", [sql_target(PROBABILITY_CHART_SQL)],
                unit="percentunit", min_=0, max_=1, steps=PROB_STEPS,
                custom={"showPoints": "always", "thresholdsStyle": {"mode": "dashed"}}), 12, 8),
         (panel("timeseries", "Anomaly score per station", [sql_target(SCORE_CHART_SQL)], min_=0, max_=1,
                custom={"drawStyle": "points", "pointSize": 8}), 12, 8)],
        [(panel("table", "Defect probability and reasons per station", [sql_target(PREDICTIONS_SQL, "table")],
                overrides=[override("byName", "defect_probability", unit="percentunit", decimals=1,
                                    thresholds=PROB_STEPS, **{"custom.cellOptions": {"type": "color-text"}})]),
          24, 7)],
        [(panel("table", "Anomaly scores along its path", [sql_target(SCORES_SQL, "table")],
                overrides=[override("byName", "anomaly_score", decimals=3)]), 12, 8),
         (panel("table", "Genealogy (tags)", [sql_target(GENEALOGY_SQL, "table")]), 12, 8)],
        [(panel("table", "Station readings", [sql_target(READINGS_SQL, "table")]), 12, 10),
         (panel("table", "Cells with the highest defect probability", [sql_target(RISKY_CELLS_SQL, "table")],
                links=[pick], description="Click a row to trace that cell."), 12, 10)],
    ]
    return dashboard(UID, "cellwatch / Cell traceability",
                     "Follow one cell down the line: genealogy, readings, scores, defect probability, EOL result.",
                     rows, variables=[textbox_variable("cell_id", "Cell id")], time_from="now-24h", refresh="1m")
