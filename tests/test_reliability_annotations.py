"""Incident annotations survive a Grafana that stores a POST but answers after the client's timeout.

Before the fix the sender retried the POST and Grafana held two annotations for one incident (seen in
tests/test_reliability_faults.py's Grafana scenario under load). Now a retried item is first looked up
(``GET /api/annotations`` by start time and tags, matched on ``data.incident_id``).
"""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
from fake_grafana import FakeGrafana

from cellwatch.dashboards import sync
from cellwatch.dashboards.annotations import AnnotationSender


def _incident(status: str = "open") -> pd.DataFrame:
    start = pd.Timestamp("2026-03-02T01:00:00Z")
    return pd.DataFrame([{"incident_id": "L1/coating/80", "line": "L1", "station": "coating", "kind": "process",
                          "severity": "major", "status": status, "start_ts": start,
                          "end_ts": start + pd.Timedelta(minutes=3) if status == "closed" else None,
                          "peak_score": 0.8, "sensors": '["web_tension_n"]'}])


@pytest.fixture
def slow_first_post(httpserver):
    """A fake Grafana whose first POST is stored, then answered only after the client has timed out."""
    grafana = FakeGrafana()
    state = {"slowed": False}
    lock = threading.Lock()

    def handler(request):
        response = grafana.handle(request)
        with lock:
            first = request.method == "POST" and not state["slowed"]
            state["slowed"] |= first
        if first:
            time.sleep(2.0)  # stored already; the answer comes after the 1 s client timeout
        return response

    import re
    httpserver.expect_request(re.compile(r"^/.*")).respond_with_handler(handler)
    return grafana


@pytest.mark.parametrize("status", ["open", "closed"])
def test_a_post_answered_after_the_timeout_is_not_posted_twice(httpserver, slow_first_post, status):
    grafana = slow_first_post
    sender = AnnotationSender(sync.connect(httpserver.url_for("/"), "glsa_test", timeout=1), backoff_s=2.5,
                              max_backoff_s=3)
    try:
        sender.submit(_incident(status))
        assert sender.flush(timeout=30)
        if status == "open":  # and the incident closes later: the found annotation becomes a region
            sender.submit(_incident("closed"))
            assert sender.flush(timeout=30)
    finally:
        sender.close(timeout=5)
    assert sender.retries >= 1, "the first POST did not time out: the test proves nothing"
    assert grafana.violations == []
    assert len(grafana.annotations) == 1, grafana.annotations
    ann = next(iter(grafana.annotations.values()))
    assert ann["data"]["incident_id"] == "L1/coating/80" and "timeEnd" in ann
    assert sum(c.method == "POST" for c in grafana.calls) == 1
