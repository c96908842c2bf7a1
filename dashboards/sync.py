"""``cellwatch grafana sync``: create or update the datasource, folder, dashboards, alert rules, contact point,
mute timing and notification policy in an existing Grafana through its HTTP API (grafana-client).

Idempotent: every resource is read first and written only when what Grafana holds differs from what cellwatch
generates (compared on the keys cellwatch sets, so fields Grafana adds itself do not count as changes); a
second sync therefore writes nothing. Unreachable Grafana and 5xx answers are retried with exponential
backoff, then reported as one line. The token is sent as a bearer header and never logged or printed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import niquests
from grafana_client import GrafanaApi, TokenAuth
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaServerError, GrafanaTimeoutError

from cellwatch.dashboards import alerting, generate
from cellwatch.dashboards.builders import DATASOURCE_UID, FOLDER_TITLE, FOLDER_UID
from cellwatch.errors import CellwatchError, ServiceUnavailable

log = logging.getLogger(__name__)

Dict = dict[str, Any]
Action = Literal["create", "update", "unchanged"]
TOKEN_ENV = "CELLWATCH_GRAFANA_TOKEN"
#: Secret values Grafana sends back in place of the real ones; they never count as a difference.
REDACTED = "[REDACTED]"


class GrafanaUnavailable(ServiceUnavailable):
    """Grafana could not be reached or kept failing with 5xx/timeouts after all retries."""


def read_token(token_file: str | Path | None = None, env: dict[str, str] | None = None) -> str:
    """The service-account token from ``token_file`` or ``$CELLWATCH_GRAFANA_TOKEN`` (file wins)."""
    env = os.environ if env is None else env
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CellwatchError(f"cannot read the Grafana token file {token_file}: {exc.strerror}") from None
    else:
        token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise CellwatchError(f"no Grafana token: set {TOKEN_ENV} or pass --token-file (a service-account token)")
    return token


def contains(remote: Any, desired: Any) -> bool:
    """True when ``remote`` holds everything ``desired`` sets (dicts: a subset of keys; lists: same length)."""
    if isinstance(desired, dict):
        return isinstance(remote, dict) and all(
            k in remote and (remote[k] == REDACTED or contains(remote[k], v)) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(remote, list) and len(remote) == len(desired) and all(
            contains(r, d) for r, d in zip(remote, desired, strict=True))
    if isinstance(desired, bool) or isinstance(remote, bool):
        return remote is desired
    if isinstance(desired, int | float) and isinstance(remote, int | float):
        return float(remote) == float(desired)
    return remote == desired


def differing_keys(remote: Any, desired: Dict) -> list[str]:
    if not isinstance(remote, dict):
        return sorted(desired)
    return sorted(k for k, v in desired.items() if k not in remote or not contains(remote[k], v))


@dataclass
class Resource:
    """One thing cellwatch manages in Grafana: how to read it, what it should be, how to write it."""

    kind: str
    name: str
    desired: Dict
    read: Callable[[], Any]
    create: Callable[[], Any]
    update: Callable[[Any], Any]
    same: Callable[[Any, Dict], bool] = contains


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: Action
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.action:9s} {self.kind} {self.name}" + (f" ({self.detail})" if self.detail else "")


class GrafanaSync:
    """Plans and applies cellwatch's Grafana resources against the Grafana behind ``api``."""

    def __init__(self, api: GrafanaApi, *, datasource: Dict, webhook_url: str | None,
                 settings: alerting.AlertSettings | None = None, retries: int = 4, backoff_s: float = 0.5,
                 url: str = "Grafana") -> None:
        self.api, self.datasource, self.webhook_url = api, datasource, webhook_url
        self.settings = settings or alerting.AlertSettings()
        self.retries, self.backoff_s, self.url = retries, backoff_s, url

    # --- transport
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one API call; retry connection errors, timeouts and 5xx with exponential backoff."""
        for attempt in range(1, self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except (GrafanaServerError, GrafanaTimeoutError, niquests.exceptions.RequestException) as exc:
                reason = _reason(exc)
                if attempt == self.retries:
                    raise GrafanaUnavailable(
                        f"Grafana at {self.url} failed after {self.retries} attempts: {reason}") from None
                wait = self.backoff_s * 2 ** (attempt - 1)
                log.warning("Grafana call failed (%s); retry %d/%d in %.1fs", reason, attempt, self.retries - 1, wait)
                time.sleep(wait)
            except GrafanaException as exc:
                if exc.status_code == 0:  # niquests.HTTPError wrapped by grafana-client
                    raise GrafanaUnavailable(f"Grafana at {self.url}: {_reason(exc)}") from None
                raise
        raise AssertionError("unreachable")

    def _get_or_none(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self.call(fn, *args)
        except GrafanaClientError as exc:
            if exc.status_code == 404:
                return None
            raise

    # --- resources, in dependency order
    def resources(self) -> list[Resource]:
        g = self.api
        ap = g.alertingprovisioning
        out = [
            Resource("folder", FOLDER_UID, {"uid": FOLDER_UID, "title": FOLDER_TITLE},
                     lambda: self._get_or_none(g.folder.get_folder, FOLDER_UID),
                     lambda: self.call(g.folder.create_folder, FOLDER_TITLE, uid=FOLDER_UID),
                     lambda _: self.call(g.folder.update_folder, FOLDER_UID, title=FOLDER_TITLE, overwrite=True)),
            self._datasource(),
        ]
        for uid, dash in generate.dashboards().items():
            out.append(self._dashboard(uid, dash))
        rules = alerting.alert_rules(self.settings)
        group = {"title": alerting.RULE_GROUP, "folderUid": FOLDER_UID,
                 "interval": alerting.RULE_GROUP_INTERVAL_S, "rules": rules}
        put_group = lambda *_: self.call(ap.update_rule_group, FOLDER_UID, alerting.RULE_GROUP, group)  # noqa: E731
        out.append(Resource("rule-group", f"{FOLDER_UID}/{alerting.RULE_GROUP}", group,
                            lambda: self._get_or_none(ap.get_rule_group, FOLDER_UID, alerting.RULE_GROUP),
                            put_group, put_group, same=_same_group))
        mute = alerting.mute_timing(self.settings)
        out.append(Resource("mute-timing", mute["name"], mute,
                            lambda: self._get_or_none(ap.get_mute_timing, mute["name"]),
                            lambda: self.call(ap.create_mute_timing, mute),
                            lambda _: self.call(ap.update_mute_timing, mute["name"], mute)))
        if self.webhook_url:
            cp = alerting.contact_point(self.webhook_url)
            out.append(Resource("contact-point", cp["name"], cp, lambda: self._contact_point(cp["uid"]),
                                lambda: self.call(ap.create_contactpoint, cp),
                                lambda _: self.call(ap.update_contactpoint, cp["uid"], cp)))
            policy = alerting.notification_policy()
            out.append(Resource("notification-policy", "root", policy,
                                lambda: self.call(ap.get_notification_policy_tree),
                                lambda: self.call(ap.set_notification_policy_tree, policy),
                                lambda _: self.call(ap.set_notification_policy_tree, policy)))
        return out

    def _datasource(self) -> Resource:
        g, ds = self.api, self.datasource
        public = {k: v for k, v in ds.items() if k != "secureJsonData"}  # Grafana never returns secrets
        return Resource("datasource", DATASOURCE_UID, public,
                        lambda: self._get_or_none(g.datasource.get_datasource_by_uid, DATASOURCE_UID),
                        lambda: self.call(g.datasource.create_datasource, ds),
                        lambda _: self.call(g.datasource.update_datasource_by_uid, DATASOURCE_UID, ds))

    def _dashboard(self, uid: str, dash: Dict) -> Resource:
        g = self.api
        body = {k: v for k, v in dash.items() if k not in ("id", "version")}
        save = {"dashboard": body, "folderUid": FOLDER_UID, "overwrite": True, "message": "cellwatch grafana sync"}

        def same(remote: Any, desired: Dict) -> bool:
            meta = remote.get("meta", {}) if isinstance(remote, dict) else {}
            return meta.get("folderUid") == FOLDER_UID and contains(remote.get("dashboard"), desired)

        return Resource("dashboard", uid, body, lambda: self._get_or_none(g.dashboard.get_dashboard, uid),
                        lambda: self.call(g.dashboard.update_dashboard, save),
                        lambda _: self.call(g.dashboard.update_dashboard, save), same=same)

    def _contact_point(self, uid: str) -> Dict | None:
        points = self.call(self.api.alertingprovisioning.get_contactpoints, alerting.CONTACT_POINT) or []
        return next((p for p in points if p.get("uid") == uid), None)

    # --- plan and apply
    def plan(self) -> list[tuple[Resource, Change, Any]]:
        steps = []
        for res in self.resources():
            remote = res.read()
            if remote is None:
                change = Change(res.kind, res.name, "create")
            elif res.same(remote, res.desired):
                change = Change(res.kind, res.name, "unchanged")
            else:
                inner = remote.get("dashboard", remote) if res.kind == "dashboard" else remote
                change = Change(res.kind, res.name, "update", "differs: " + ", ".join(
                    differing_keys(inner, res.desired) or ["folder"]))
            steps.append((res, change, remote))
        return steps

    def apply(self, dry_run: bool = False) -> list[Change]:
        """Bring Grafana in line; with ``dry_run`` only read and return the plan."""
        changes = []
        for res, change, remote in self.plan():
            if not dry_run and change.action == "create":
                res.create()
            elif not dry_run and change.action == "update":
                res.update(remote)
            changes.append(change)
            log.info("%s", change)
        return changes


def _same_group(remote: Any, desired: Dict) -> bool:
    if not isinstance(remote, dict) or int(remote.get("interval") or 0) != desired["interval"]:
        return False
    by_uid = {r.get("uid"): r for r in remote.get("rules") or []}
    return set(by_uid) == {r["uid"] for r in desired["rules"]} and all(
        contains(by_uid[r["uid"]], r) for r in desired["rules"])


def _reason(exc: BaseException) -> str:
    if isinstance(exc, GrafanaException) and exc.status_code:
        return f"HTTP {exc.status_code}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]


def connect(url: str, token: str, timeout: float = 10.0) -> GrafanaApi:
    """A grafana-client API object for ``url`` authenticating with a service-account token."""
    try:
        return GrafanaApi.from_url(url, credential=TokenAuth(token), timeout=timeout)
    except Exception as exc:  # bad URL syntax
        raise CellwatchError(f"invalid Grafana URL {url!r}: {exc}") from None
