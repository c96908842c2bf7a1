"""`cellwatch grafana sync` against a fake Grafana that validates every request with Grafana's OpenAPI spec."""

from __future__ import annotations

import re
import socket

import pytest
from fake_grafana import FakeGrafana

from cellwatch.cli import main as cli_main
from cellwatch.dashboards import alerting, generate, sync
from cellwatch.dashboards.cli import register
from cellwatch.errors import CellwatchError

TOKEN = "glsa_test_token_0123456789"


@pytest.fixture
def grafana(httpserver) -> FakeGrafana:
    return FakeGrafana().install(httpserver)


def _syncer(httpserver, **kw) -> sync.GrafanaSync:
    api = sync.connect(httpserver.url_for("/"), TOKEN, timeout=5)
    ds = generate.datasource("postgres:5432", "cellwatch", "grafana_reader", "s3cret")
    return sync.GrafanaSync(api, datasource=ds, webhook_url="http://hooks.example:8080/cellwatch",
                            backoff_s=0.01, **kw)


def test_first_sync_creates_everything_and_second_changes_nothing(httpserver, grafana):
    first = _syncer(httpserver).apply()
    assert grafana.violations == []
    actions = {(c.kind, c.name): c.action for c in first}
    assert actions.pop(("notification-policy", "root")) == "update", "Grafana always has a (default) policy tree"
    assert set(actions.values()) == {"create"}, "a fresh Grafana gets every other resource created"
    assert set(grafana.dashboards) == set(generate.DASHBOARDS)
    assert all(d["meta"]["folderUid"] == "cellwatch" for d in grafana.dashboards.values())
    assert grafana.datasources["cellwatch-pg"]["secureJsonFields"] == {"password": True}
    group = grafana.rule_groups[("cellwatch", alerting.RULE_GROUP)]
    assert {r["uid"] for r in group["rules"]} == {r["uid"] for r in alerting.alert_rules()}
    assert grafana.contact_points["cellwatch-webhook"]["settings"]["url"] == "http://hooks.example:8080/cellwatch"
    assert grafana.policy["group_by"] == ["grafana_folder", "alertname", "line", "station"]
    assert "planned-maintenance" in grafana.mute_timings
    # dependency order: folder before dashboards and rules, mute timing + contact point before the policy
    paths = [c.path for c in grafana.writes]
    assert paths.index("/api/folders") < paths.index("/api/dashboards/db")
    assert paths.index("/api/v1/provisioning/mute-timings") < paths.index("/api/v1/provisioning/policies")
    assert all(c.status < 300 for c in grafana.calls if c.method != "GET")

    n_writes = len(grafana.writes)
    second = _syncer(httpserver).apply()
    assert [c.action for c in second] == ["unchanged"] * len(second)
    assert len(grafana.writes) == n_writes, "a second sync must not write anything"
    assert grafana.violations == [] and grafana.response_violations == []


def test_sync_updates_only_what_drifted(httpserver, grafana):
    _syncer(httpserver).apply()
    grafana.dashboards["cellwatch-health"]["dashboard"]["title"] = "edited by hand"
    grafana.rule_groups[("cellwatch", "cellwatch")]["interval"] = 300
    before = len(grafana.writes)
    changes = {(c.kind, c.name): c for c in _syncer(httpserver).apply()}
    assert changes[("dashboard", "cellwatch-health")].action == "update"
    assert "title" in changes[("dashboard", "cellwatch-health")].detail
    assert changes[("rule-group", "cellwatch/cellwatch")].action == "update"
    assert sum(c.action != "unchanged" for c in changes.values()) == 2
    assert len(grafana.writes) == before + 2
    assert grafana.dashboards["cellwatch-health"]["dashboard"]["title"] == "cellwatch / Model and pipeline health"


def test_dry_run_plans_without_writing(httpserver, grafana):
    changes = _syncer(httpserver).apply(dry_run=True)
    assert {c.action for c in changes} == {"create", "update"}
    assert grafana.writes == []


def test_token_is_sent_as_bearer_and_never_printed(httpserver, grafana, tmp_path, capsys, monkeypatch, caplog):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("CELLWATCH_GRAFANA_DB_PASSWORD", "pw")
    seen = []
    httpserver.clear()
    httpserver.expect_request("/api/folders/cellwatch").respond_with_handler(
        lambda r: (seen.append(r.headers.get("Authorization")), grafana.handle(r))[1])
    grafana.install(httpserver)
    caplog.set_level("DEBUG")
    rc = cli_main(["grafana", "sync", "--url", httpserver.url_for("/"), "--token-file", str(token_file),
                   "--dry-run", "--webhook-url", "http://hooks.example/x"])
    out = capsys.readouterr()
    assert rc == 0
    assert seen == [f"Bearer {TOKEN}"]
    assert re.search(r"^would create +dashboard cellwatch-overview$", out.out, re.M)
    assert TOKEN not in out.out + out.err + caplog.text
    assert grafana.writes == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_grafana_is_retried_then_one_clear_error():
    api = sync.connect(f"http://127.0.0.1:{_closed_port()}", TOKEN, timeout=2)
    syncer = sync.GrafanaSync(api, datasource=generate.datasource("h:5432", "db", "u"), webhook_url=None,
                              retries=3, backoff_s=0.01, url="http://grafana.test")
    with pytest.raises(sync.GrafanaUnavailable) as err:
        syncer.apply()
    message = str(err.value)
    assert "after 3 attempts" in message and "ConnectionError" in message and "\n" not in message
    assert TOKEN not in message


def test_5xx_is_retried_and_recovers(httpserver, grafana):
    grafana.fail_status = 503
    syncer = _syncer(httpserver, retries=4)
    with pytest.raises(sync.GrafanaUnavailable, match="HTTP 503"):
        syncer.apply()
    assert len(grafana.calls) == 4, "one call, retried until the attempts ran out"

    calls = {"n": 0}
    real_handle = grafana.handle

    def flaky(request):  # the first two answers are 502, then Grafana is back
        calls["n"] += 1
        grafana.fail_status = 502 if calls["n"] <= 2 else None
        return real_handle(request)

    httpserver.clear()
    httpserver.expect_request(re.compile(r"^/.*")).respond_with_handler(flaky)
    changes = syncer.apply()
    assert {c.action for c in changes} == {"create", "update"} and grafana.violations == []
    assert set(grafana.dashboards) == set(generate.DASHBOARDS)


def test_cli_reports_unreachable_grafana_in_one_line(capsys, monkeypatch):
    monkeypatch.setenv("CELLWATCH_GRAFANA_TOKEN", TOKEN)
    rc = cli_main(["grafana", "sync", "--url", f"http://127.0.0.1:{_closed_port()}", "--retries", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3
    assert len(err) == 1 and err[0].startswith("cellwatch grafana: error: Grafana at http://127.0.0.1:")
    assert TOKEN not in err[0]


def test_missing_token_is_a_user_error(monkeypatch):
    monkeypatch.delenv("CELLWATCH_GRAFANA_TOKEN", raising=False)
    with pytest.raises(CellwatchError, match="CELLWATCH_GRAFANA_TOKEN"):
        sync.read_token(None)


def test_register_adds_generate_and_sync():
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["grafana", "sync", "--dry-run", "--url", "http://g:3000"])
    assert args.dry_run and args.url == "http://g:3000"
