"""Gauges with nothing to measure are NaN: the alert rules must stay quiet on NaN (promtool)."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.conftest import DEPLOY, tool

LABELS = '{job="stream-meta", instance="a:9108"}'


def nan(n: int) -> str:
    return " ".join(["NaN"] * n)  # promtool's series notation has no NaNxN


def test_alerts_stay_quiet_on_nan_gauges(tmp_path):
    # A daemon restarted after an hour of good learning: its accuracy, lag and forgetting
    # gauges are NaN again until they have something to measure, while learning goes on.
    series = {
        "stream_meta_prequential_accuracy": f"0.9x60 {nan(60)}",
        "stream_meta_consumer_lag_records": f"5000+10x60 {nan(60)}",
        "stream_meta_forgetting": nan(121),
        "stream_meta_retained_accuracy": nan(121),
        "stream_meta_adaptation_gain": nan(121),
        "stream_meta_records_learned_total": "0+50x120",
        "stream_meta_records_consumed_total": "0+50x120",
    }
    alerts = ("StreamMetaAccuracyCollapse", "StreamMetaConsumerLagGrowing", "StreamMetaForgetting")
    spec = {
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": name + LABELS, "values": v} for name, v in series.items()],
            "alert_rule_test": [{"eval_time": f"{t}m", "alertname": a, "exp_alerts": []}
                                for t in (90, 119) for a in alerts],
        }],
    }
    path = tmp_path / "nan.test.yml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


NAN_GAUGES = ("stream_meta_prequential_accuracy", "stream_meta_accuracy_by_task_position", "stream_meta_retained_accuracy",
              "stream_meta_forgetting", "stream_meta_adaptation_gain", "stream_meta_consumer_lag_records",
              "stream_meta_last_checkpoint_timestamp_seconds")


def test_dashboard_single_value_panels_show_nan_as_a_dash():
    import json

    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "stream-meta.json").read_text())
    checked = 0
    for panel in dashboard["panels"]:
        exprs = " ".join(t.get("expr", "") for t in panel.get("targets", []))
        if panel["type"] in ("stat", "bargauge", "gauge") and any(g in exprs for g in NAN_GAUGES):
            mappings = panel.get("fieldConfig", {}).get("defaults", {}).get("mappings", [])
            assert any(m.get("type") == "special" and m["options"].get("match") == "nan" for m in mappings), \
                panel["title"]
            checked += 1
    assert checked >= 2
