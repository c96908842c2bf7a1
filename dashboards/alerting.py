"""Grafana-managed alert rules on the PostgreSQL store, the webhook contact point, the notification policy
and the planned-maintenance mute timing, as Grafana's provisioning API models.

Every rule follows one pattern (Grafana's PostgreSQL alerting needs time-series format): refId A is SQL
with a ``time`` column, string label columns and one numeric value; B reduces each series to one number;
C is the threshold and the rule's condition. String columns become alert labels, so one rule fires one
alert instance per line/station. No label column is called ``metric``: with exactly (time, metric, value)
Grafana would fold it into the series name and the instances would lose their distinguishing label.

Notification policy: alerts are grouped by line and station; ``repeat_interval`` is 24 h, so an incident
that stays open notifies once (when it opens) and is re-sent at most once a day while it stays open,
instead of every few hours. A new incident at the same station is a new alert instance (``incident_id``
label) and is sent with the group's next update (``group_interval``). The ``planned-maintenance`` mute
timing silences notifications (alerts still evaluate and show in Grafana) during the window it defines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cellwatch.dashboards.builders import DATASOURCE, DATASOURCE_UID, FOLDER_UID

Dict = dict[str, Any]

RULE_GROUP = "cellwatch"
RULE_GROUP_INTERVAL_S = 60
CONTACT_POINT = "cellwatch-webhook"
CONTACT_POINT_UID = "cellwatch-webhook"
MUTE_TIMING = "planned-maintenance"
#: The environment variable Grafana's file provisioning reads the webhook URL from.
WEBHOOK_URL_ENV = "CELLWATCH_ALERT_WEBHOOK_URL"
STATION_DASHBOARD = "cellwatch-station"
HEALTH_DASHBOARD = "cellwatch-health"
OVERVIEW_DASHBOARD = "cellwatch-overview"


@dataclass(frozen=True)
class AlertSettings:
    """The limits behind the rules and the maintenance window (weekday names, ``HH:MM`` times, UTC)."""

    defect_rate_limit: float = 0.05
    silent_after_s: int = 300
    lag_limit: int = 10_000
    dlq_rate_limit: float = 1.0
    maintenance_weekdays: tuple[str, ...] = ("sunday",)
    maintenance_start: str = "02:00"
    maintenance_end: str = "06:00"
    maintenance_location: str = "UTC"
    extra_labels: dict[str, str] = field(default_factory=lambda: {"team": "line-ops"})


_HEALTH_LINK = "{{ externalURL }}/d/" + HEALTH_DASHBOARD + "/model-and-pipeline-health?from=now-1h&to=now"


def _station_link(from_expr: str = "now-1h") -> str:
    return ("{{ externalURL }}/d/" + STATION_DASHBOARD + "/station-drill-down?var-line={{ $labels.line }}"
            "&var-station={{ $labels.station }}&from=" + from_expr + "&to=now")


def _sql_query(sql: str, seconds: int) -> Dict:
    return {"refId": "A", "relativeTimeRange": {"from": seconds, "to": 0}, "datasourceUid": DATASOURCE_UID,
            "model": {"refId": "A", "datasource": DATASOURCE, "format": "time_series", "rawQuery": True,
                      "editorMode": "code", "rawSql": sql.strip(), "intervalMs": 1000, "maxDataPoints": 43200}}


def _expr(ref: str, model: Dict) -> Dict:
    return {"refId": ref, "datasourceUid": "__expr__",
            "model": {"refId": ref, "datasource": {"type": "__expr__", "uid": "__expr__"}, **model}}


def _rule(uid: str, title: str, sql: str, seconds: int, reducer: str, op: str, limit: float, *,
          for_: str, no_data: str, labels: dict[str, str], annotations: dict[str, str],
          dashboard_uid: str, panel_id: int) -> Dict:
    return {
        "uid": uid, "title": title, "orgID": 1, "folderUID": FOLDER_UID, "ruleGroup": RULE_GROUP,
        "condition": "C",
        "data": [
            _sql_query(sql, seconds),
            _expr("B", {"type": "reduce", "expression": "A", "reducer": reducer, "settings": {"mode": "dropNN"}}),
            _expr("C", {"type": "threshold", "expression": "B",
                        "conditions": [{"evaluator": {"type": op, "params": [limit]}}]}),
        ],
        "noDataState": no_data, "execErrState": "Error", "for": for_, "isPaused": False,
        "labels": labels,
        "annotations": {**annotations, "__dashboardUid__": dashboard_uid, "__panelId__": str(panel_id)},
    }


#: One alert instance per open incident, labelled with line, station, severity and its top sensors.
INCIDENT_OPEN_SQL = """
SELECT updated_at AS time, line, station, severity, incident_id,
       coalesce((SELECT string_agg(e #>> '{}', ', ') FROM (
          SELECT e FROM jsonb_array_elements(CASE WHEN jsonb_typeof(sensors) = 'array' THEN sensors ELSE '[]' END) e
          LIMIT 3) top), '') AS top_sensors,
       ((extract(epoch from start_ts) - 900) * 1000)::bigint::text AS since_ms,
       peak_score
FROM incidents WHERE status = 'open'
ORDER BY updated_at
"""

DEFECT_RATE_SQL = """
SELECT $__timeGroupAlias(last_ts, '5m'), line,
       avg(CASE WHEN predicted_defect THEN 1.0 ELSE 0.0 END) AS predicted_defect_rate
FROM cells WHERE $__timeFilter(last_ts) AND predicted_defect IS NOT NULL
GROUP BY 1, 2 ORDER BY 1
"""

#: Seconds since each (line, station) seen in the last 24 h last reported.
STATION_SILENT_SQL = """
SELECT max(ts) AS time, line, station, extract(epoch from ($__timeTo()::timestamptz - max(ts))) AS silent_seconds
FROM readings WHERE $__timeFilter(ts)
GROUP BY line, station ORDER BY 1
"""

LAG_SQL = """
SELECT $__timeGroupAlias(batch_end, '1m'), worker, max(max_lag)::float8 AS lag
FROM pipeline_stats WHERE $__timeFilter(batch_end)
GROUP BY 1, 2 ORDER BY 1
"""

DLQ_RATE_SQL = """
SELECT $__timeGroupAlias(received_at, '1m'), reason, count(*) / 60.0 AS dead_letters_per_s
FROM dead_letters WHERE $__timeFilter(received_at)
GROUP BY 1, 2 ORDER BY 1
"""


def alert_rules(settings: AlertSettings = AlertSettings()) -> list[Dict]:
    """The five rules of the ``cellwatch`` rule group, as ``ProvisionedAlertRule`` bodies."""
    extra = settings.extra_labels
    return [
        _rule("cw-incident-open", "Incident open", INCIDENT_OPEN_SQL, 600, "last", "gt", 0.0,
              for_="0s", no_data="OK", labels={**extra, "source": "cellwatch"},
              annotations={
                  "summary": "{{ $labels.severity }} incident at {{ $labels.line }}/{{ $labels.station }} "
                             "(peak score {{ humanize $values.B.Value }})",
                  "top_sensors": "{{ $labels.top_sensors }}",
                  "runbook": "Open the station drill-down, compare the top sensors with their expected band, "
                             "check the recipe and upstream genealogy (batch, coil), then inspect or hold the "
                             "affected cells. The alert resolves when the incident closes.",
                  "dashboard": _station_link("{{ $labels.since_ms }}")},
              dashboard_uid=STATION_DASHBOARD, panel_id=2),
        _rule("cw-defect-rate", "Predicted defect rate above limit", DEFECT_RATE_SQL, 1800, "mean", "gt",
              settings.defect_rate_limit, for_="5m", no_data="OK", labels={**extra, "severity": "major"},
              annotations={
                  "summary": "Line {{ $labels.line }}: predicted defect rate {{ humanizePercentage $values.B.Value }} "
                             f"over 30 min (limit {settings.defect_rate_limit:.0%})",
                  "top_sensors": "see the overview's top stations by incidents",
                  "runbook": "Find the stations with open incidents on the line overview, trace a few predicted-"
                             "defective cells (cell traceability) to the shared cause, quarantine the batch.",
                  "dashboard": "{{ externalURL }}/d/" + OVERVIEW_DASHBOARD
                               + "/line-overview?var-line={{ $labels.line }}&from=now-1h&to=now"},
              dashboard_uid=OVERVIEW_DASHBOARD, panel_id=6),
        _rule("cw-station-silent", "Station silent", STATION_SILENT_SQL, 86400, "last", "gt",
              float(settings.silent_after_s), for_="2m", no_data="Alerting", labels={**extra, "severity": "major"},
              annotations={
                  "summary": "{{ $labels.line }}/{{ $labels.station }} sent no reading for "
                             "{{ humanizeDuration $values.B.Value }}",
                  "top_sensors": "",
                  "runbook": "Check the station's data collector and network, then the simulator/producer and the "
                             "Kafka topic; no data for every station means cellwatch itself is down.",
                  "dashboard": _station_link("now-3h")},
              dashboard_uid=STATION_DASHBOARD, panel_id=2),
        _rule("cw-pipeline-lag", "Pipeline lag too high", LAG_SQL, 600, "last", "gt", float(settings.lag_limit),
              for_="5m", no_data="NoData", labels={**extra, "severity": "warning"},
              annotations={
                  "summary": "Worker {{ $labels.worker }} is {{ humanize $values.B.Value }} messages behind",
                  "top_sensors": "",
                  "runbook": "Add cellwatch run workers (same group id, up to the partition count), check "
                             "PostgreSQL write latency and the batch_ms panel.",
                  "dashboard": _HEALTH_LINK},
              dashboard_uid=HEALTH_DASHBOARD, panel_id=8),
        _rule("cw-dlq-rate", "Dead-letter rate high", DLQ_RATE_SQL, 600, "mean", "gt", settings.dlq_rate_limit,
              for_="5m", no_data="OK", labels={**extra, "severity": "warning"},
              annotations={
                  "summary": "{{ humanize $values.B.Value }} dead letters/s with reason {{ $labels.reason }}",
                  "top_sensors": "",
                  "runbook": "Read a few records of the dead_letters table (detail column) for that reason and fix "
                             "the producer (schema, clock skew, units).",
                  "dashboard": _HEALTH_LINK},
              dashboard_uid=HEALTH_DASHBOARD, panel_id=10),
    ]


def contact_point(url: str) -> Dict:
    """The webhook contact point (``url`` from configuration; ``$__env{...}`` in provisioning files)."""
    return {"uid": CONTACT_POINT_UID, "name": CONTACT_POINT, "type": "webhook",
            "settings": {"url": url, "httpMethod": "POST"}, "disableResolveMessage": False}


def notification_policy() -> Dict:
    """The org's policy tree: everything to the webhook, grouped by line and station, muted in maintenance."""
    group_by = ["grafana_folder", "alertname", "line", "station"]
    return {
        "receiver": CONTACT_POINT, "group_by": group_by,
        "group_wait": "30s", "group_interval": "5m", "repeat_interval": "24h",
        "routes": [
            {"receiver": CONTACT_POINT, "object_matchers": [["severity", "=", "critical"]], "group_by": group_by,
             "group_wait": "10s", "mute_time_intervals": [MUTE_TIMING]},
            {"receiver": CONTACT_POINT, "object_matchers": [["severity", "=~", "major|warning"]],
             "group_by": group_by, "mute_time_intervals": [MUTE_TIMING]},
        ],
    }


def mute_timing(settings: AlertSettings = AlertSettings()) -> Dict:
    """Planned maintenance: the weekly window in which notifications are muted."""
    return {"name": MUTE_TIMING, "time_intervals": [{
        "weekdays": list(settings.maintenance_weekdays),
        "times": [{"start_time": settings.maintenance_start, "end_time": settings.maintenance_end}],
        "location": settings.maintenance_location}]}
