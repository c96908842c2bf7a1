"""The incident AnnotationSender against the spec-validating fake Grafana: points, regions, outages, slowness."""

from __future__ import annotations

import re
import threading

import pandas as pd
import pytest
from fake_grafana import FakeGrafana

from cellwatch.dashboards import sync
from cellwatch.dashboards.annotations import AnnotationSender, annotation_payload
from cellwatch.ingest.schema import TABLE

T0 = pd.Timestamp("2026-11-25T08:00:00Z")


def incidents(*rows: dict) -> pd.DataFrame:
    base = {"kind": "process", "severity": "major", "status": "open", "end_ts": None, "peak_score": 0.93,
            "peak_ts": T0, "sensors": '["coat_weight_mg_cm2", "web_speed_m_min"]', "n_anomalous": 12,
            "model_version": "v1", "updated_at": T0, "line": "L1", "station": "coating", "start_ts": T0}
    frame = pd.DataFrame([{**base, **r} for r in rows])
    return frame[TABLE["incidents"].column_names]


@pytest.fixture
def grafana(httpserver) -> FakeGrafana:
    return FakeGrafana().install(httpserver)


@pytest.fixture
def sender(httpserver):
    s = AnnotationSender(sync.connect(httpserver.url_for("/"), "glsa_token", timeout=5), backoff_s=0.01,
                         max_backoff_s=0.05)
    yield s
    s.close(timeout=1)


def test_open_incident_is_a_point_and_closing_makes_it_a_region(grafana, sender):
    sender.submit(incidents({"incident_id": "L1/coating/10"}))
    assert sender.flush(5)
    (ann,) = grafana.annotations.values()
    assert ann["time"] == T0.value // 1_000_000 and "timeEnd" not in ann
    assert set(ann["tags"]) == {"cellwatch", "incident", "line:L1", "station:coating", "severity:major"}
    assert "coat_weight_mg_cm2" in ann["text"] and ann["data"] == {"incident_id": "L1/coating/10"}

    sender.submit(incidents({"incident_id": "L1/coating/10"}))  # still open: nothing new to say
    end = T0 + pd.Timedelta(minutes=7)
    sender.submit(incidents({"incident_id": "L1/coating/10", "status": "closed", "end_ts": end,
                             "severity": "critical"}))
    assert sender.flush(5)
    assert len(grafana.annotations) == 1
    assert ann["timeEnd"] == end.value // 1_000_000 and "severity:critical" in ann["tags"]
    assert [c.method for c in grafana.writes] == ["POST", "PATCH"]
    assert sender.sent == 2 and sender.failed == sender.dropped == 0
    assert grafana.violations == [] and grafana.response_violations == []
    # every request left out the keys it did not set (no null panelId/dashboardUID, README erratum 7)
    assert all(None not in c.body.values() for c in grafana.writes)


def test_incident_first_seen_closed_is_posted_as_region(grafana, sender):
    end = T0 + pd.Timedelta(minutes=3)
    sender.submit(incidents({"incident_id": "L2/winding/5", "line": "L2", "station": "winding",
                             "status": "closed", "end_ts": end}))
    assert sender.flush(5)
    (ann,) = grafana.annotations.values()
    assert ann["timeEnd"] == end.value // 1_000_000 and grafana.violations == []


def test_slow_grafana_never_blocks_submit(httpserver, grafana, sender):
    gate = threading.Event()
    real = grafana.handle
    httpserver.clear()
    httpserver.expect_request(re.compile(r"^/.*")).respond_with_handler(lambda r: (gate.wait(10), real(r))[1])
    for i in range(20):  # the "scoring loop": every submit returns while Grafana hangs on the first request
        sender.submit(incidents({"incident_id": f"L1/coating/{i}", "start_ts": T0 + pd.Timedelta(seconds=i)}))
    assert sender.sent == 0 and sender.pending == 20
    gate.set()
    assert sender.flush(10)
    assert sender.sent == 20 and len(grafana.annotations) == 20 and grafana.violations == []


def test_outage_is_retried_and_delivered_afterwards(grafana, sender):
    grafana.fail_status = 503
    sender.submit(incidents({"incident_id": "L1/coating/1"}, {"incident_id": "L1/mixing/2", "station": "mixing"}))
    assert not sender.flush(0.3)
    assert sender.retries >= 2 and sender.sent == 0 and sender.pending == 2
    grafana.fail_status = None
    assert sender.flush(5)
    assert sender.sent == 2 and {a["data"]["incident_id"] for a in grafana.annotations.values()} == {
        "L1/coating/1", "L1/mixing/2"}


def test_unreachable_grafana_then_queue_full_drops_oldest(httpserver):
    httpserver.stop()  # nothing listens: connection refused (niquests ConnectionError)
    s = AnnotationSender(sync.connect(httpserver.url_for("/"), "glsa_token", timeout=1), max_queue=5,
                         backoff_s=0.01, max_backoff_s=0.02)
    try:
        s.submit(incidents({"incident_id": "L1/coating/0"}))
        assert not s.flush(0.3)
        assert s.retries >= 1 and s.sent == 0  # the first one is in flight, being retried
        s.submit(incidents(*[{"incident_id": f"L1/coating/{i}"} for i in range(1, 12)]))
        # one in flight (retried), five waiting, the six oldest waiting ones dropped
        assert s.pending == 6 and s.dropped == 6
        grafana = FakeGrafana()
        httpserver.start()
        grafana.install(httpserver)
        assert s.flush(5)
        delivered = sorted(int(a["data"]["incident_id"].rsplit("/", 1)[1]) for a in grafana.annotations.values())
        assert delivered == [0, 7, 8, 9, 10, 11]
    finally:
        s.close(timeout=1)


def test_rejected_annotation_is_counted_not_retried(grafana, sender):
    grafana.fail_status = 400
    sender.submit(incidents({"incident_id": "L1/coating/1"}))
    assert sender.flush(5)
    assert sender.failed == 1 and sender.retries == 0


def test_payload_leaves_out_missing_values():
    body = annotation_payload({"incident_id": "x", "line": "L1", "station": "eol", "severity": "warning",
                               "status": "open", "start_ts": T0, "end_ts": None, "peak_score": None,
                               "sensors": None, "kind": "data_quality"})
    assert "timeEnd" not in body and None not in body.values() and body["text"].startswith("Warning data_quality")
