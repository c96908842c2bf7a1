"""Generated dashboards, alerting models and provisioning files against Grafana's published JSON Schemas.

Schemas are read at test time from ../shared/grafana/ (dashboard kind and panel Options/FieldConfig from
grafana-foundation-sdk; alerting and expression models likewise), never copied into the repo.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from cellwatch.dashboards import alerting, generate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "grafana"
DASHBOARDS = generate.dashboards()
PANEL_SCHEMA_FILE = {"timeseries": "timeseries", "stat": "stat", "table": "table", "gauge": "gauge",
                     "state-timeline": "statetimeline"}


def _schema(rel: str) -> dict:
    return json.loads((SHARED / rel).read_text(encoding="utf-8"))


def _validator(schema: dict, definition: str | None = None) -> jsonschema.Draft7Validator:
    if definition:
        schema = {**schema, "$ref": f"#/definitions/{definition}"}
    return jsonschema.Draft7Validator(schema)


def _errors(validator: jsonschema.Draft7Validator, instance) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def _panels(dash: dict) -> list[dict]:
    return dash["panels"]


def test_committed_files_are_what_the_code_generates():
    assert generate.stale() == [], "run `cellwatch grafana generate` and commit the result"
    for uid, (stem, _) in generate.DASHBOARDS.items():
        committed = json.loads((generate.PACKAGE_DIR / "generated" / f"{stem}.json").read_text())
        assert committed == DASHBOARDS[uid]


def _dashboard_schema() -> dict:
    """dashboard.jsonschema.json with one fix: the dashboard kind declares ``MatcherConfig.options`` and
    ``DynamicConfigValue.value`` as CUE ``_`` (any value), which the generator turned into ``type: object``;
    Grafana's own field overrides use strings and numbers there (``{"id": "byName", "options": "col"}``,
    ``{"id": "decimals", "value": 2}``). Everything else is checked as published."""
    schema = _schema("dashboard/dashboard.jsonschema.json")
    schema["definitions"]["MatcherConfig"]["properties"]["options"] = {}
    schema["definitions"]["DynamicConfigValue"]["properties"]["value"] = {}
    return schema


@pytest.mark.parametrize("uid", list(DASHBOARDS))
def test_dashboard_validates_against_grafana_schema(uid):
    dash = DASHBOARDS[uid]
    assert _errors(_validator(_dashboard_schema()), dash) == []
    for p in _panels(dash):
        panel_schema = _schema(f"dashboard/{PANEL_SCHEMA_FILE[p['type']]}.jsonschema.json")
        assert _errors(_validator(panel_schema, "Options"), p["options"]) == [], p["title"]
        custom = p["fieldConfig"]["defaults"]["custom"]
        if "FieldConfig" in panel_schema["definitions"]:
            assert _errors(_validator(panel_schema, "FieldConfig"), custom) == [], p["title"]
        else:
            assert custom == {}, f"{p['type']} has no custom field config"


def test_dashboard_schema_rejects_broken_panels():
    """The schema check can fail: a panel without a type and a bad gridPos are rejected."""
    dash = copy.deepcopy(DASHBOARDS["cellwatch-overview"])
    del dash["panels"][0]["type"]
    dash["panels"][1]["gridPos"] = {"x": 0}
    assert len(_errors(_validator(_dashboard_schema()), dash)) >= 2


@pytest.mark.parametrize("uid", list(DASHBOARDS))
def test_layout_ids_and_datasource(uid):
    dash = DASHBOARDS[uid]
    panels = _panels(dash)
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"{p['title']} overlaps another panel"
        cells |= area
        assert p["datasource"] == {"type": "grafana-postgresql-datasource", "uid": "cellwatch-pg"}
        assert all(t["datasource"]["uid"] == "cellwatch-pg" for t in p["targets"])
        assert all("$__timeFilter" in t["rawSql"] or "$cell_id" in t["rawSql"] or p["type"] in ("stat", "table")
                   for t in p["targets"] if t["format"] == "time_series"), p["title"]
    used = {m for p in panels for t in p["targets"] for m in re.findall(r"\$\{?(\w+)", t["rawSql"])}
    declared = {v["name"] for v in dash["templating"]["list"]}
    assert {u for u in used if not u.startswith("__")} <= declared


def test_station_dashboard_has_variables_annotations_and_bands():
    dash = DASHBOARDS["cellwatch-station"]
    assert [v["name"] for v in dash["templating"]["list"]] == ["line", "station", "sensor"]
    assert all(v["type"] == "query" for v in dash["templating"]["list"])
    (incidents,) = [a for a in dash["annotations"]["list"] if a["name"] == "Incidents"]
    assert "FROM incidents" in incidents["target"]["rawSql"]
    sql = " ".join(t["rawSql"] for p in dash["panels"] for t in p["targets"])
    assert "sensor_bands" in sql and "threshold" in sql and "top_sensors" in sql


def test_overview_links_into_the_station_view_with_variables_and_time():
    panels = DASHBOARDS["cellwatch-overview"]["panels"]
    links = [lk for p in panels for lk in p["fieldConfig"]["defaults"].get("links", [])]
    assert links and all("/d/cellwatch-station/" in lk["url"] and "var-line=${__data.fields.line}" in lk["url"]
                         and "var-station=${__data.fields.station}" in lk["url"]
                         and "${__url_time_range}" in lk["url"] for lk in links)


# --- alerting -------------------------------------------------------------------------------------------

ALERTING = _schema("alerting/alerting.jsonschema.json")
EXPR = _schema("alerting/expr.jsonschema.json")


def _alerting_schema() -> dict:
    """alerting.jsonschema.json with one fix: its TimeInterval is generated from the Go structs and misses their
    custom (un)marshalling, so it wants ``times: [{from, to}]`` (date-times) and integer weekday ranges. Grafana
    reads and writes ``start_time``/``end_time`` strings and weekday/month/year strings ("monday:friday"), as the
    HTTP spec's ``TimeIntervalItem`` and Grafana's own provisioning fixture ``mute_times.yml`` show."""
    schema = copy.deepcopy(ALERTING)
    s = {"type": "string"}
    schema["definitions"]["TimeInterval"]["properties"].update(
        times={"type": "array", "items": {"type": "object", "additionalProperties": False,
                                          "properties": {"start_time": s, "end_time": s}}},
        weekdays={"type": "array", "items": s}, days_of_month={"type": "array", "items": s},
        months={"type": "array", "items": s}, years={"type": "array", "items": s})
    return schema


def test_the_mute_timing_fix_matches_grafanas_own_fixture():
    fixture = yaml.safe_load((SHARED / "provisioning/alerting/mute_times.yml").read_text())
    for mt in fixture["muteTimes"]:
        body = {k: v for k, v in mt.items() if k != "orgId"}
        assert _errors(_validator(_alerting_schema(), "MuteTiming"), body) == []
        assert _errors(_validator(ALERTING, "MuteTiming"), body) != [], "the unpatched schema rejects it"


@pytest.mark.parametrize("rule", alerting.alert_rules(), ids=lambda r: r["uid"])
def test_alert_rule_validates(rule):
    assert _errors(_validator(ALERTING, "Rule"), rule) == []
    refs = [q["refId"] for q in rule["data"]]
    assert refs == ["A", "B", "C"] and rule["condition"] == "C"
    sql, reduce_, threshold = rule["data"]
    assert sql["datasourceUid"] == "cellwatch-pg" and sql["model"]["format"] == "time_series"
    assert sql["relativeTimeRange"]["from"] > 0
    assert _errors(_validator(EXPR, "TypeReduce"), reduce_["model"]) == []
    assert _errors(_validator(EXPR, "TypeThreshold"), threshold["model"]) == []
    assert _errors(_validator(EXPR), reduce_["model"]) == [] and _errors(_validator(EXPR), threshold["model"]) == []
    assert reduce_["model"]["expression"] == "A" and threshold["model"]["expression"] == "B"
    assert {"summary", "top_sensors", "runbook", "dashboard"} <= set(rule["annotations"])
    assert rule["annotations"]["dashboard"].startswith("{{ externalURL }}/d/")
    # the rule's dashboard panel exists
    dash = DASHBOARDS[rule["annotations"]["__dashboardUid__"]]
    assert int(rule["annotations"]["__panelId__"]) in {p["id"] for p in dash["panels"]}


def test_rule_schema_rejects_a_broken_rule():
    rule = copy.deepcopy(alerting.alert_rules()[0])
    del rule["title"]
    rule["noDataState"] = "Maybe"
    assert len(_errors(_validator(ALERTING, "Rule"), rule)) == 2


def test_contact_point_policy_and_mute_timing_validate():
    assert _errors(_validator(ALERTING, "ContactPoint"), alerting.contact_point("http://hook/x")) == []
    policy = alerting.notification_policy()
    assert _errors(_validator(ALERTING, "NotificationPolicy"), policy) == []
    assert {"line", "station"} <= set(policy["group_by"])
    assert all(r["mute_time_intervals"] == [alerting.MUTE_TIMING] for r in policy["routes"])
    assert _errors(_validator(_alerting_schema(), "MuteTiming"), alerting.mute_timing()) == []


# --- provisioning files ------------------------------------------------------------------------------------

def _load(rel: str) -> dict:
    return yaml.safe_load((generate.PACKAGE_DIR / "provisioning" / rel).read_text(encoding="utf-8"))


def _documented_keys(rel: str) -> set[str]:
    """Keys named (commented or not) in one of Grafana's reference provisioning files."""
    text = (SHARED / "provisioning" / rel).read_text(encoding="utf-8")
    return set(re.findall(r"^[#\s-]*([A-Za-z_]+):", text, flags=re.M))


def test_datasource_provisioning():
    doc = _load("datasources/cellwatch.yaml")
    (ds,) = doc["datasources"]
    assert doc["apiVersion"] == 1 and ds["uid"] == "cellwatch-pg" and ds["type"] == "grafana-postgresql-datasource"
    assert set(ds) <= _documented_keys("datasources/sample.yaml") | {"uid"}  # uid: docs "Provision the data source"
    assert ds["secureJsonData"]["password"].startswith("$__env{"), "secrets come from the environment"
    assert ds["jsonData"]["database"].startswith("$__env{")


def test_dashboards_provisioning():
    (provider,) = _load("dashboards/cellwatch.yaml")["providers"]
    documented = _documented_keys("dashboards/sample.yaml") | _documented_keys("dashboards/dev-dashboards.yaml")
    assert set(provider) <= documented | {"allowUiUpdates"}, set(provider) - documented
    assert set(provider["options"]) <= documented | {"foldersFromFilesStructure"}
    assert provider["options"]["path"] == generate.CONTAINER_DASHBOARD_DIR


def test_alerting_provisioning_loads_into_the_api_models():
    doc = _load("alerting/cellwatch.yaml")
    assert set(doc) <= {"apiVersion", "groups", "contactPoints", "policies", "muteTimes"}
    assert set(doc) - {"apiVersion"} <= _documented_keys("alerting/sample.yaml")
    (group,) = doc["groups"]
    assert group["folder"] == "cellwatch" and group["interval"] == "60s"
    for rule in group["rules"]:
        api_rule = {**rule, "orgID": group["orgId"], "folderUID": "cellwatch", "ruleGroup": group["name"]}
        assert _errors(_validator(ALERTING, "Rule"), api_rule) == [], rule["uid"]
    assert [r["uid"] for r in group["rules"]] == [r["uid"] for r in alerting.alert_rules()]
    (cp,) = doc["contactPoints"]
    for receiver in cp["receivers"]:
        assert _errors(_validator(ALERTING, "ContactPoint"), {"name": cp["name"], **receiver}) == []
        assert receiver["settings"]["url"] == "$__env{CELLWATCH_ALERT_WEBHOOK_URL}"
    (policy,) = doc["policies"]
    assert _errors(_validator(ALERTING, "NotificationPolicy"), {k: v for k, v in policy.items() if k != "orgId"}) == []
    (mute,) = doc["muteTimes"]
    assert _errors(_validator(_alerting_schema(), "MuteTiming"), {k: v for k, v in mute.items() if k != "orgId"}) == []
    assert mute["time_intervals"][0]["times"][0]["start_time"] == "02:00"  # a string, not YAML 1.1 sexagesimal
    # same structure as Grafana's own fixtures
    fixture = yaml.safe_load((SHARED / "provisioning/alerting/rules.yml").read_text())
    assert set(group) - {"orgId"} <= set(fixture["groups"][0])
