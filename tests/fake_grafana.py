"""A fake Grafana on 127.0.0.1 for the sync and annotation tests: real HTTP (pytest-httpserver), every request
validated with openapi-core against Grafana's published HTTP API spec, answers shaped like Grafana's, and
enough state (folders, datasources, dashboards, rule groups, contact points, mute timings, policy tree,
annotations) that a second sync sees what the first one created.

The spec is read at test time from ``../shared/grafana/http-api/grafana-openapi3.converted.json`` (never
copied into the repo). On load we apply the errata listed in ../shared/grafana/README.md:
1. ``ProvisionedAlertRule.for`` (and the export types' ``for``/``interval``) is a string such as "5m", not
   int64 nanoseconds; 2. ``noDataState``/``execErrState`` also accept ``KeepLast``; 3. the contact-point ``type``
   enum loses its stray leading spaces. Erratum 4 (``postDashboardResponse.title``): our fake sends a title;
   5 (missing /api/health etc.) we avoid by not calling those paths; 6 (the Authorization header is required)
   our clients satisfy; 7 (null integers) the annotation sender satisfies by leaving unset keys out.
   The fake's own answers are checked against the spec's response schemas too
   (``response_violations``), with one more fix described in :func:`patched_spec`.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from werkzeug import Request, Response

SHARED = Path(__file__).resolve().parents[2] / "shared" / "grafana"
SPEC_PATH = SHARED / "http-api" / "grafana-openapi3.converted.json"

_OPENAPI: OpenAPI | None = None


def patched_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    """The OAS3 spec with the README's errata 1-3 applied."""
    spec = json.loads(path.read_text(encoding="utf-8"))
    schemas = spec["components"]["schemas"]
    rule = schemas["ProvisionedAlertRule"]["properties"]
    rule["for"] = {"type": "string"}                                       # erratum 1
    for name, key in (("AlertRuleExport", "for"), ("AlertRuleGroupExport", "interval")):
        if key in schemas.get(name, {}).get("properties", {}):
            schemas[name]["properties"][key] = {"type": "string"}
    for key in ("noDataState", "execErrState"):                            # erratum 2
        if "KeepLast" not in rule[key]["enum"]:
            rule[key]["enum"].append("KeepLast")
    cp_type = schemas["EmbeddedContactPoint"]["properties"]["type"]        # erratum 3
    cp_type["enum"] = [v.strip() for v in cp_type["enum"]]
    # found here, not in the README's list: GET /dashboards/uid/{uid} answers DashboardFullWithMeta whose
    # `dashboard` is the legacy `Dashboard` model typing `panels` and `links` as objects; Grafana returns the
    # dashboard JSON as saved (arrays). Only our response checks are affected.
    schemas["DashboardFullWithMeta"]["properties"]["dashboard"] = {"$ref": "#/components/schemas/Json"}
    return spec


def openapi() -> OpenAPI:
    global _OPENAPI
    if _OPENAPI is None:
        _OPENAPI = OpenAPI.from_dict(patched_spec())
    return _OPENAPI


@dataclass
class Call:
    method: str
    path: str
    body: Any
    status: int


@dataclass
class FakeGrafana:
    """State plus a werkzeug handler; install it with :meth:`install` on a pytest-httpserver."""

    folders: dict[str, dict] = field(default_factory=dict)
    datasources: dict[str, dict] = field(default_factory=dict)
    dashboards: dict[str, dict] = field(default_factory=dict)
    rule_groups: dict[tuple[str, str], dict] = field(default_factory=dict)
    contact_points: dict[str, dict] = field(default_factory=dict)
    mute_timings: dict[str, dict] = field(default_factory=dict)
    policy: dict = field(default_factory=lambda: {"receiver": "grafana-default-email",
                                                  "group_by": ["grafana_folder", "alertname"]})
    annotations: dict[int, dict] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    #: The fake's own answers checked against the spec's response schemas (so the fake cannot drift from it).
    response_violations: list[str] = field(default_factory=list)
    #: When set, every request is answered with this status (e.g. 503) before any processing.
    fail_status: int | None = None
    #: Seconds to wait before answering (a slow Grafana).
    delay_s: float = 0.0
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: Any = field(default_factory=threading.Lock)

    def install(self, httpserver) -> FakeGrafana:
        httpserver.expect_request(re.compile(r"^/.*")).respond_with_handler(self.handle)
        return self

    @property
    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.method in ("POST", "PUT", "PATCH", "DELETE")]

    # --- HTTP
    def handle(self, request: Request) -> Response:
        if self.delay_s:
            time.sleep(self.delay_s)
        body = request.get_json(silent=True) if request.data else None
        if self.fail_status:
            return self._reply(request, body, self.fail_status, {"message": "fake outage"})
        try:
            openapi().validate_request(WerkzeugOpenAPIRequest(request))
        except Exception as exc:  # any spec violation: Grafana would answer 400 as well
            detail = f"{request.method} {request.path}: {exc}; " + "; ".join(
                str(e) for e in getattr(exc, "schema_errors", None) or getattr(exc, "errors", None) or [])
            self.violations.append(detail)
            return self._reply(request, body, 400, {"message": detail[:500]})
        with self._lock:
            status, payload = self._route(request.method, request.path.removeprefix("/api"), body,
                                          request.args.to_dict())
        return self._reply(request, body, status, payload)

    def _reply(self, request: Request, body: Any, status: int, payload: Any) -> Response:
        self.calls.append(Call(request.method, request.path, body, status))
        response = Response(json.dumps(payload), status=status, content_type="application/json")
        if status < 400 and not self.fail_status:
            try:
                openapi().validate_response(WerkzeugOpenAPIRequest(request), WerkzeugOpenAPIResponse(response))
            except Exception as exc:
                errors = getattr(exc, "schema_errors", None) or getattr(exc, "errors", None) or []
                self.response_violations.append(f"{request.method} {request.path} -> {status}: {exc}; "
                                                + "; ".join(str(e)[:300] for e in errors))
        return response

    def _route(self, method: str, path: str, body: Any, args: dict) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts[0] == "folders":
            return self._folders(method, parts[1:], body)
        if parts[0] == "datasources":
            return self._datasources(method, parts[1:], body)
        if parts[0] == "dashboards":
            return self._dashboards(method, parts[1:], body)
        if parts[0] == "annotations":
            return self._annotations(method, parts[1:], body, args)
        if parts[:2] == ["v1", "provisioning"]:
            return self._provisioning(method, parts[2:], body, args)
        return 404, {"message": "Not found"}

    # --- resources
    def _folders(self, method, rest, body):
        if method == "POST" and not rest:
            uid = body.get("uid") or f"f{next(self._ids)}"
            if uid in self.folders or any(f["title"] == body["title"] for f in self.folders.values()):
                return 409, {"message": "a folder with the same name already exists"}
            self.folders[uid] = {"id": next(self._ids), "uid": uid, "title": body["title"], "version": 1,
                                 "url": f"/dashboards/f/{uid}/"}
            return 200, self.folders[uid]
        folder = self.folders.get(rest[0]) if rest else None
        if folder is None:
            return 404, {"message": "folder not found", "status": "not-found"}
        if method == "GET":
            return 200, folder
        if method == "PUT":
            folder.update(title=body.get("title", folder["title"]), version=folder["version"] + 1)
            return 200, folder
        return 405, {"message": "method not allowed"}

    def _datasources(self, method, rest, body):
        if method == "POST" and not rest:
            if any(d["name"] == body["name"] for d in self.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            ds = self._store_ds(body, next(self._ids), 1)
            return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource added", "name": ds["name"]}
        if rest[:1] == ["uid"] and len(rest) == 2:
            ds = self.datasources.get(rest[1])
            if ds is None:
                return 404, {"message": "Data source not found"}
            if method == "GET":
                return 200, ds
            if method == "PUT":
                ds = self._store_ds(body, ds["id"], ds["version"] + 1)
                return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource updated", "name": ds["name"]}
        return 404, {"message": "Not found"}

    def _store_ds(self, body, ds_id, version):
        public = {k: v for k, v in body.items() if k != "secureJsonData"}
        ds = {"id": ds_id, "orgId": 1, "basicAuth": False, "withCredentials": False, "readOnly": False,
              "version": version, **public,
              "secureJsonFields": {k: True for k in (body.get("secureJsonData") or {})}}
        self.datasources[ds["uid"]] = ds
        return ds

    def _dashboards(self, method, rest, body):
        if method == "POST" and rest == ["db"]:
            dash = copy.deepcopy(body["dashboard"])
            folder_uid = body.get("folderUid", "")
            if folder_uid and folder_uid not in self.folders:
                return 400, {"message": "folder not found"}
            old = self.dashboards.get(dash["uid"])
            if old and not body.get("overwrite"):
                return 412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
            version = old["dashboard"]["version"] + 1 if old else 1
            dash_id = old["dashboard"]["id"] if old else next(self._ids)
            dash.update(id=dash_id, version=version)
            slug = re.sub(r"[^a-z0-9]+", "-", dash.get("title", "").lower()).strip("-")
            self.dashboards[dash["uid"]] = {"dashboard": dash, "meta": {
                "folderUid": folder_uid, "slug": slug, "url": f"/d/{dash['uid']}/{slug}", "provisioned": False,
                "version": version}}
            return 200, {"id": dash_id, "uid": dash["uid"], "url": f"/d/{dash['uid']}/{slug}", "status": "success",
                         "version": version, "slug": slug, "title": dash.get("title", "")}
        if rest[:1] == ["uid"] and len(rest) == 2 and method == "GET":
            found = self.dashboards.get(rest[1])
            return (200, found) if found else (404, {"message": "Dashboard not found"})
        return 404, {"message": "Not found"}

    def _annotations(self, method, rest, body, args=None):
        if method == "GET" and not rest:  # find: by time window (tags/type filters not modelled)
            lo, hi = int((args or {}).get("from", 0)), int((args or {}).get("to", 2**62))
            return 200, [a for a in self.annotations.values() if lo <= a["time"] <= hi]
        if method == "POST" and not rest:
            ann_id = next(self._ids)
            self.annotations[ann_id] = {"id": ann_id, **body}
            return 200, {"id": ann_id, "message": "Annotation added"}
        if len(rest) == 1 and method == "PATCH":
            ann = self.annotations.get(int(rest[0]))
            if ann is None:
                return 404, {"message": "Could not find annotation to update"}
            ann.update(body)
            return 200, {"message": "Annotation patched"}
        return 404, {"message": "Not found"}

    def _provisioning(self, method, rest, body, args):
        if rest[:1] == ["folder"] and len(rest) == 4 and rest[2] == "rule-groups":
            key = (rest[1], rest[3])
            if method == "GET":
                group = self.rule_groups.get(key)
                return (200, group) if group else (404, {"message": "rule group does not exist"})
            if method == "PUT":
                if rest[1] not in self.folders:
                    return 404, {"message": "folder does not exist"}
                rules = [{"id": next(self._ids), "updated": "2026-01-01T00:00:00Z", "provenance": "api",
                          "relativeTimeRange": {"from": 0, "to": 0}, **copy.deepcopy(r)}
                         for r in body.get("rules", [])]
                self.rule_groups[key] = {"title": rest[3], "folderUid": rest[1], "interval": body["interval"],
                                         "rules": rules}
                return 200, self.rule_groups[key]
        if rest[:1] == ["contact-points"]:
            if method == "GET" and len(rest) == 1:
                name = args.get("name")
                return 200, [cp for cp in self.contact_points.values() if not name or cp["name"] == name]
            if method == "POST" and len(rest) == 1:
                cp = {"provenance": "api", **copy.deepcopy(body)}
                cp["uid"] = cp.get("uid") or f"cp{next(self._ids)}"
                self.contact_points[cp["uid"]] = cp
                return 202, cp
            if method == "PUT" and len(rest) == 2:
                if rest[1] not in self.contact_points:
                    return 404, {"message": "contact point not found"}
                self.contact_points[rest[1]] = {"provenance": "api", **copy.deepcopy(body), "uid": rest[1]}
                return 202, {"message": "contactpoint updated"}
        if rest[:1] == ["mute-timings"]:
            if method == "POST" and len(rest) == 1:
                if body["name"] in self.mute_timings:
                    return 409, {"message": "a mute timing with this name already exists"}
                self.mute_timings[body["name"]] = {"provenance": "api", **copy.deepcopy(body)}
                return 201, self.mute_timings[body["name"]]
            if len(rest) == 2:
                found = self.mute_timings.get(rest[1])
                if found is None:
                    return 404, {"message": "mute timing not found"}
                if method == "GET":
                    return 200, found
                if method == "PUT":
                    self.mute_timings[rest[1]] = {"provenance": "api", **copy.deepcopy(body)}
                    return 200, self.mute_timings[rest[1]]
        if rest == ["policies"]:
            if method == "GET":
                return 200, self.policy
            if method == "PUT":
                self.policy = {"provenance": "api", **copy.deepcopy(body)}
                return 202, {"message": "policies updated"}
        return 404, {"message": "Not found"}
