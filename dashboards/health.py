"""Dashboard 4, model and pipeline health: models in production, score distribution and drift, the
false-alert budget used, throughput, consumer lag, latency and the dead-letter rate by reason."""

from __future__ import annotations

from cellwatch.dashboards.builders import Dict, dashboard, override, panel, sql_target, thresholds

UID = "cellwatch-health"

MODELS_SQL = """
SELECT name, version, promoted_at, loaded_at AS time, threshold, metrics::text AS metrics
FROM model_versions WHERE in_production ORDER BY name
"""

SCORE_QUANTILES_SQL = """
SELECT $__timeGroupAlias(ts, $__interval),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY anomaly_score) AS p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY anomaly_score) AS p90,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY anomaly_score) AS p99
FROM scores WHERE $__timeFilter(ts)
GROUP BY 1 ORDER BY 1
"""

#: Drift: each station's mean score per interval minus its mean over the whole range.
SCORE_DRIFT_SQL = """
SELECT $__timeGroupAlias(ts, $__interval), station AS metric,
       avg(anomaly_score) - avg(avg(anomaly_score)) OVER (PARTITION BY station) AS value
FROM scores WHERE $__timeFilter(ts)
GROUP BY 1, 2 ORDER BY 1
"""

FLAGGED_SQL = """
SELECT time, kind AS metric, n * 1.0 / sum(n) OVER (PARTITION BY time) AS value
FROM (SELECT $__timeGroupAlias(ts, $__interval), kind, count(*) AS n
      FROM scores WHERE $__timeFilter(ts) GROUP BY 1, 2) k
ORDER BY 1
"""

#: Incidents opened in the last shift (8 h) per station against the budget the threshold was calibrated for
#: (``alert_budget`` in the model's metrics: incidents per station per shift on clean data).
BUDGET_SQL = """
SELECT i.line, i.station, count(*) AS incidents_this_shift,
       max((m.metrics ->> 'alert_budget')::float8) AS alert_budget,
       count(*) / nullif(max((m.metrics ->> 'alert_budget')::float8), 0) AS budget_used
FROM incidents i LEFT JOIN model_versions m ON m.version = i.model_version
WHERE i.start_ts > $__timeTo()::timestamptz - interval '8 hours' AND i.start_ts <= $__timeTo()::timestamptz
GROUP BY 1, 2 ORDER BY budget_used DESC NULLS LAST, incidents_this_shift DESC
"""

THROUGHPUT_SQL = """
SELECT $__timeGroupAlias(batch_end, $__interval),
       sum(readings) * 1000.0 / $__interval_ms AS "readings/s",
       sum(scored) * 1000.0 / $__interval_ms AS "scored/s",
       sum(rejected) * 1000.0 / $__interval_ms AS "rejected/s"
FROM pipeline_stats WHERE $__timeFilter(batch_end)
GROUP BY 1 ORDER BY 1
"""

LAG_SQL = """
SELECT $__timeGroupAlias(batch_end, $__interval), worker AS metric, max(max_lag) AS value
FROM pipeline_stats WHERE $__timeFilter(batch_end)
GROUP BY 1, 2 ORDER BY 1
"""

LATENCY_SQL = """
SELECT $__timeGroupAlias(batch_end, $__interval), max(e2e_p50_ms) AS "e2e p50", max(e2e_p99_ms) AS "e2e p99",
       max(batch_ms) AS "batch"
FROM pipeline_stats WHERE $__timeFilter(batch_end)
GROUP BY 1 ORDER BY 1
"""

DLQ_RATE_SQL = """
SELECT $__timeGroupAlias(received_at, $__interval), reason AS metric, count(*) * 1000.0 / $__interval_ms AS value
FROM dead_letters WHERE $__timeFilter(received_at)
GROUP BY 1, 2 ORDER BY 1
"""

DLQ_SHARE_SQL = """
SELECT sum(rejected)::float8 / nullif(sum(readings) + sum(rejected), 0) AS rejected_share
FROM pipeline_stats WHERE $__timeFilter(batch_end)
"""


def build() -> Dict:
    rows = [
        [(panel("table", "Models in production", [sql_target(MODELS_SQL, "table")]), 16, 6),
         (panel("stat", "Rejected share", [sql_target(DLQ_SHARE_SQL, "table")], unit="percentunit", decimals=2,
                steps=thresholds((None, "green"), (0.001, "orange"), (0.01, "red")),
                options={"graphMode": "none"}), 8, 6)],
        [(panel("timeseries", "Anomaly score distribution", [sql_target(SCORE_QUANTILES_SQL)], min_=0, max_=1), 12, 8),
         (panel("timeseries", "Score drift by station", [sql_target(SCORE_DRIFT_SQL)],
                description="Mean score per interval minus the station's mean over the time range."), 12, 8)],
        [(panel("table", "False-alert budget used (this shift)", [sql_target(BUDGET_SQL, "table")],
                description="Incidents opened in the last 8 h per station against the calibrated alert budget "
                            "(incidents per station per shift on clean data). Above 100%: more alerts than a "
                            "clean line makes, so real trouble or drift.",
                overrides=[override("byName", "budget_used", unit="percentunit", decimals=0,
                                    thresholds=thresholds((None, "green"), (0.8, "orange"), (1.0, "red")),
                                    **{"custom.cellOptions": {"type": "gauge", "mode": "basic"}})]), 12, 8),
         (panel("timeseries", "Score kinds (share of readings)", [sql_target(FLAGGED_SQL)], unit="percentunit"),
          12, 8)],
        [(panel("timeseries", "Throughput", [sql_target(THROUGHPUT_SQL)], unit="reqps"), 8, 8),
         (panel("timeseries", "Consumer lag (messages)", [sql_target(LAG_SQL)], unit="short",
                steps=thresholds((None, "green"), (10000, "red")), custom={"thresholdsStyle": {"mode": "dashed"}}),
          8, 8),
         (panel("timeseries", "Latency", [sql_target(LATENCY_SQL)], unit="ms"), 8, 8)],
        [(panel("timeseries", "Dead letters per second by reason", [sql_target(DLQ_RATE_SQL)], unit="reqps",
                custom={"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal", "group": "A"}}), 24, 8)],
    ]
    return dashboard(UID, "cellwatch / Model and pipeline health",
                     "Models in production, score distribution and drift, alert budget, throughput, lag, DLQ.",
                     rows, time_from="now-6h")
