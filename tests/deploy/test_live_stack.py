"""A real Prometheus scraping a real daemon while a stream flows through a real broker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, ROOT, http_get
from tests.deploy.promql import LEARNER_SPECIFIC, SCALEOUT, dashboard_exprs, metric_names

pytestmark = pytest.mark.integration


def test_prometheus_receives_learning_accuracy_and_lag(live_stack):
    s = live_stack
    assert s.value('up{job="stream-meta"}') == 1
    assert s.value("stream_meta_records_consumed_total") == s.consumed
    assert s.value("stream_meta_records_learned_total") == s.learned
    assert s.value("sum(stream_meta_records_rejected_total)") == s.rejected
    assert s.value("stream_meta_predictions_total") == s.learned
    assert s.value("stream_meta_meta_updates_total") > 0

    # scraped while the stream flowed: the learned counter rose through several values
    now = time.time()
    series = s.query("stream_meta_records_learned_total", start=now - 600, end=now, step=1)
    values = [float(v) for _, v in series[0]["values"]]
    assert values == sorted(values) and len(set(values)) >= 3, values

    accuracy = s.value("stream_meta_prequential_accuracy")
    assert 0.15 < accuracy <= 1.0  # well above chance (0.1) on rotated digits, and a fraction
    by_position = {r["metric"]["position"]: float(r["value"][1]) for r in s.query("stream_meta_accuracy_by_task_position")}
    assert set(by_position) == {"1-5", "6-10", "11-20", "21-50", "51+"}
    assert all(0 <= v <= 1 for v in by_position.values())
    tasks = {r["metric"]["task"] for r in s.query("stream_meta_task_prequential_accuracy")}
    assert tasks == {"rot-000", "rot-018", "rot-036", "rot-054", "other"}
    assert s.value('stream_meta_task_boundaries_total{kind="new"}') == 4

    # lag: total and per assigned partition, never negative, drained at the end
    assert s.value("stream_meta_consumer_lag_records") == 0
    assert s.value("min_over_time(stream_meta_consumer_lag_records[5m])") >= 0
    partitions = {r["metric"]["partition"]: float(r["value"][1])
                  for r in s.query("stream_meta_consumer_partition_lag_records")}
    assert partitions == {"0": 0.0, "1": 0.0}
    assert s.value("max_over_time(stream_meta_records_per_second[5m])") > 0
    assert s.value("stream_meta_checkpoints_total") >= 1
    assert 0 <= s.value("stream_meta_last_checkpoint_age_seconds") < 60


def test_alert_rules_load_evaluate_and_stay_quiet_on_a_healthy_daemon(live_stack):
    status, body = http_get(f"{live_stack.prometheus_url}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    expected = {r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
                for r in g["rules"]}
    assert status == 200 and {r["name"] for r in rules} == expected
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert rule["state"] == "inactive", (rule["name"], rule["alerts"])


def test_every_dashboard_query_returns_data_from_the_live_daemon(live_stack):
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "stream-meta.json").read_text())
    empty = []
    for title, expr in dashboard_exprs(dashboard):
        if metric_names(expr) <= LEARNER_SPECIFIC:
            assert "# TYPE " + next(iter(metric_names(expr))) in live_stack.scrape  # registered, just empty here
            continue
        if metric_names(expr) <= SCALEOUT:
            # Only members of a group export these (tests/deploy/test_scaleout_stack.py queries them there).
            assert not metric_names(expr) & set(re.findall(r"^(stream_meta_sync_\w+)", live_stack.scrape, re.M))
            continue
        # Grafana's variables: all instances, and a window that covers the whole test stream
        promql = expr.replace("$instance", ".*").replace("$__rate_interval", "5m")
        if not live_stack.query(promql):
            empty.append((title, expr))
    assert not empty, f"queries with no data: {empty}"


def test_probe_paths_and_the_image_healthcheck_work_against_the_daemon(live_stack):
    assert http_get(f"{live_stack.daemon_url}/healthz")[0] == 200
    assert http_get(f"{live_stack.daemon_url}/readyz")[0] == 200
    # The Dockerfile's HEALTHCHECK, run as is against this daemon (and against nothing).
    dockerfile = (ROOT / "Dockerfile").read_text()
    command = json.loads(re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", dockerfile).group(1))
    assert command[:2] == ["python", "-c"]
    ok = subprocess.run([sys.executable, "-c", command[2]], env={"STREAM_META_METRICS_PORT": str(live_stack.daemon_port)},
                        capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    dead = subprocess.run([sys.executable, "-c", command[2]], env={"STREAM_META_METRICS_PORT": "1"},
                          capture_output=True, timeout=30)
    assert dead.returncode != 0


def test_status_command_summarises_the_live_daemon(live_stack):
    url = f"127.0.0.1:{live_stack.daemon_port}"
    out = subprocess.run([sys.executable, "-m", "stream_meta.cli.main", "status", "--metrics-url", url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert len(text.splitlines()) <= 24  # one screen
    assert "READY" in text and "NOT READY" not in text
    assert f"consumed {live_stack.consumed:,}" in text and f"learned {live_stack.learned:,}" in text
    assert "rot-054" in text and "p0 0" in text

    out = subprocess.run([sys.executable, "-m", "stream_meta.cli.main", "status", "--metrics-url", url, "--json"],
                         capture_output=True, text=True, timeout=60)
    summary = json.loads(out.stdout)
    assert summary["records"]["consumed"] == live_stack.consumed
    assert summary["records"]["rejected"] == live_stack.rejected
    assert summary["lag"]["by_partition"] == {"0": 0.0, "1": 0.0}
    assert 0 < summary["accuracy"]["window"] <= 1
    assert summary["latency"]["meta_update"]["count"] > 0
