"""Small builders for Grafana's classic (v1) dashboard JSON: panels, SQL targets, variables, links.

Plain dicts in, plain dicts out, shaped to Grafana's published schemas (dashboard kind + panel plugin
Options/FieldConfig, as shipped by grafana-foundation-sdk); the tests validate every dashboard against them.
"""

from __future__ import annotations

from typing import Any

from cellwatch.stations import STATION_NAMES

#: The one PostgreSQL datasource every panel, variable, annotation and alert rule uses.
DATASOURCE_UID = "cellwatch-pg"
DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE = {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
#: Grafana's own annotation store (annotations posted through the HTTP API).
GRAFANA_DATASOURCE = {"type": "grafana", "uid": "-- Grafana --"}
#: Dashboard JSON schema version written (Grafana 11.4+/12 read it without migration).
SCHEMA_VERSION = 39
#: Grid width of a dashboard.
GRID_WIDTH = 24
FOLDER_UID = "cellwatch"
FOLDER_TITLE = "cellwatch"
TAG = "cellwatch"

Dict = dict[str, Any]


def sql_target(sql: str, fmt: str = "time_series", ref_id: str = "A") -> Dict:
    """A raw-SQL PostgreSQL query; ``fmt`` is ``time_series`` (time column + values) or ``table``."""
    return {"refId": ref_id, "datasource": DATASOURCE, "editorMode": "code", "format": fmt,
            "rawQuery": True, "rawSql": sql.strip()}


def thresholds(*steps: tuple[float | None, str]) -> Dict:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


def link(title: str, url: str, tooltip: str = "") -> Dict:
    """A data/panel link (the schema's DashboardLink shape with type ``link``)."""
    return {"title": title, "type": "link", "icon": "dashboard", "tooltip": tooltip or title, "url": url,
            "tags": [], "asDropdown": False, "targetBlank": False, "includeVars": False, "keepTime": False}


def dashboards_link() -> Dict:
    """A dashboard-level dropdown of every cellwatch dashboard, keeping time range and variables."""
    return {"title": "cellwatch", "type": "dashboards", "icon": "external link", "tooltip": "cellwatch dashboards",
            "tags": [TAG], "asDropdown": True, "targetBlank": False, "includeVars": True, "keepTime": True}


_LEGEND = {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}
_TOOLTIP = {"mode": "multi", "sort": "desc"}
_REDUCE_LAST = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def _options(kind: str, **overrides: Any) -> Dict:
    base = {
        "timeseries": {"legend": _LEGEND, "tooltip": _TOOLTIP},
        "stat": {"graphMode": "area", "colorMode": "value", "justifyMode": "auto", "textMode": "auto",
                 "wideLayout": True, "showPercentChange": False, "reduceOptions": _REDUCE_LAST,
                 "percentChangeColorMode": "standard", "orientation": "auto"},
        "gauge": {"showThresholdLabels": False, "showThresholdMarkers": True, "sizing": "auto", "minVizWidth": 75,
                  "minVizHeight": 75, "reduceOptions": _REDUCE_LAST, "orientation": "auto"},
        "table": {"frameIndex": 0, "showHeader": True, "cellHeight": "sm",
                  "footer": {"show": False, "reducer": ["sum"], "countRows": False, "fields": []}},
        "state-timeline": {"showValue": "auto", "rowHeight": 0.9, "mergeValues": True, "alignValue": "left",
                           "legend": _LEGEND, "tooltip": _TOOLTIP},
    }[kind]
    return {**base, **overrides}


def _custom(kind: str) -> Dict:
    return {
        "timeseries": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                       "spanNulls": False, "lineInterpolation": "linear"},
        "table": {"align": "auto", "inspect": False},
        "state-timeline": {"lineWidth": 0, "fillOpacity": 70},
    }.get(kind, {})


def panel(kind: str, title: str, targets: list[Dict], *, description: str = "", unit: str | None = None,
          decimals: int | None = None, min_: float | None = None, max_: float | None = None,
          steps: Dict | None = None, links: list[Dict] | None = None, overrides: list[Dict] | None = None,
          options: Dict | None = None, custom: Dict | None = None, repeat: str | None = None,
          transformations: list[Dict] | None = None) -> Dict:
    """One panel (its ``id`` and ``gridPos`` are set by :func:`dashboard`)."""
    defaults: Dict = {"custom": {**_custom(kind), **(custom or {})}}
    if kind in ("stat", "gauge", "table", "state-timeline", "timeseries"):
        defaults["color"] = {"mode": "thresholds" if kind in ("stat", "gauge", "state-timeline") else "palette-classic"}
    for key, value in (("unit", unit), ("decimals", decimals), ("min", min_), ("max", max_),
                       ("thresholds", steps), ("links", links)):
        if value is not None:
            defaults[key] = value
    p: Dict = {"type": kind, "title": title, "datasource": DATASOURCE, "targets": targets,
               "options": _options(kind, **(options or {})),
               "fieldConfig": {"defaults": defaults, "overrides": overrides or []}}
    if description:
        p["description"] = description
    if repeat:
        p.update(repeat=repeat, repeatDirection="v")
    if transformations:
        p["transformations"] = transformations
    return p


def override(matcher_id: str, matcher_value: str, **properties: Any) -> Dict:
    return {"matcher": {"id": matcher_id, "options": matcher_value},
            "properties": [{"id": k, "value": v} for k, v in properties.items()]}


def query_variable(name: str, label: str, sql: str, *, multi: bool = False, include_all: bool = False,
                   refresh: int = 2, sort: int = 0) -> Dict:
    """A query variable on the store; refresh 2 re-runs it when the time range changes."""
    v: Dict = {"type": "query", "name": name, "label": label, "datasource": DATASOURCE,
               "query": sql.strip(), "definition": sql.strip(), "refresh": refresh, "sort": sort,
               "multi": multi, "includeAll": include_all, "options": [], "current": {"text": "", "value": ""}}
    return v


def textbox_variable(name: str, label: str, default: str = "") -> Dict:
    return {"type": "textbox", "name": name, "label": label, "query": default,
            "current": {"text": default, "value": default}, "options": []}


def sql_annotation(name: str, sql: str, color: str) -> Dict:
    """An annotation query on PostgreSQL: columns ``time``, ``timeend``, ``text``, ``tags``."""
    return {"name": name, "datasource": DATASOURCE, "enable": True, "iconColor": color,
            "target": sql_target(sql, fmt="table", ref_id="Anno")}


def tag_annotation(name: str, tags: list[str], color: str) -> Dict:
    """An annotation query on Grafana's own store (what the AnnotationSender posts), filtered by tags."""
    return {"name": name, "datasource": GRAFANA_DATASOURCE, "enable": True, "iconColor": color,
            "target": {"type": "tags", "tags": tags, "limit": 200, "matchAny": False}}


def _builtin_annotation() -> Dict:
    return {"name": "Annotations & Alerts", "builtIn": 1, "datasource": GRAFANA_DATASOURCE, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "type": "dashboard",
            "target": {"type": "dashboard", "tags": [], "limit": 100, "matchAny": False}}


def dashboard(uid: str, title: str, description: str, rows: list[list[tuple[Dict, int, int]]], *,
              variables: list[Dict] | None = None, annotations: list[Dict] | None = None,
              time_from: str = "now-6h", refresh: str = "30s") -> Dict:
    """Lay out ``rows`` of ``(panel, width, height)`` left to right, top to bottom, and number the panels."""
    panels, y, next_id = [], 0, 1
    for row in rows:
        x, height = 0, 0
        for p, w, h in row:
            if x + w > GRID_WIDTH:
                raise ValueError(f"row of {title!r} is wider than {GRID_WIDTH}")
            panels.append({**p, "id": next_id, "gridPos": {"h": h, "w": w, "x": x, "y": y}})
            next_id, x, height = next_id + 1, x + w, max(height, h)
        y += height
    return {
        "uid": uid, "title": title, "description": description, "tags": [TAG], "timezone": "browser",
        "editable": False, "graphTooltip": 1, "time": {"from": time_from, "to": "now"}, "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "links": [dashboards_link()], "panels": panels,
        "templating": {"list": variables or []},
        "annotations": {"list": [_builtin_annotation(), *(annotations or [])]},
    }


def station_url(line: str, station: str, time: str = "${__url_time_range}") -> str:
    """Relative URL of the station drill-down for a line and station (Grafana data-link syntax)."""
    return f"/d/cellwatch-station/station-drill-down?var-line={line}&var-station={station}&{time}"


def station_order(column: str = "station") -> str:
    """An ORDER BY expression that sorts stations in process order."""
    return f"array_position(ARRAY[{sql_list(list(STATION_NAMES))}], {column})"


def sql_list(values: list[str]) -> str:
    """``'a', 'b'`` for an SQL IN list or ARRAY (values are our own constants, not user input)."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)
