"""``stream-meta status`` on exposition text (the live daemon case is in tests/deploy)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from stream_meta.daemon.metrics import Metrics
from stream_meta.cli.status import _quantile, format_status, metrics_url, parse, summarize


def test_metrics_url_accepts_host_port_base_and_full_urls():
    assert metrics_url("127.0.0.1:9108") == "http://127.0.0.1:9108/metrics"
    assert metrics_url("http://h:1/") == "http://h:1/metrics"
    assert metrics_url("https://h/metrics") == "https://h/metrics"


def test_a_fresh_daemon_summarises_without_data():
    registry = CollectorRegistry()
    Metrics(registry).set_build("fomaml", 1234)
    text = format_status(summarize(parse(generate_latest(registry).decode())))
    lines = text.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) < 200
    assert "fomaml, 1,234 parameters" in text and "NOT READY" in text
    assert "accuracy     - (sliding window)" in text


def test_a_busy_daemon_summary_has_the_numbers():
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.ready.set(1)
    m.records_consumed.inc(1200)
    m.records_learned.inc(1100)
    m.records_rejected.labels("not_json").inc(3)
    m.prequential_accuracy.set(0.875)
    m.set_partition_lag({0: 4, 1: 0})
    m.consumer_lag.set(4)
    for i in range(30):
        m.observe_prediction(f"task-{i % 3}", i % 4 != 0, new_task=i < 3)
    for v in (0.001, 0.002, 0.004, 0.2):
        m.step_seconds.observe(v)
    m.replay_items.labels("episodes").set(12)
    m.replay_items.labels("records").set(200)
    m.replay_bytes.labels("records").set(2048)
    s = summarize(parse(generate_latest(registry).decode()))
    assert s["records"]["rejected_by_reason"] == {"not_json": 3.0}
    assert s["lag"]["by_partition"] == {"0": 4.0, "1": 0.0}
    assert set(s["accuracy"]["by_task"]) == {"task-0", "task-1", "task-2", "other"}
    text = format_status(s)
    assert "READY" in text and "consumed 1,200" in text and "rejected 3 (not_json 3)" in text
    assert "87.5%" in text and "(p0 4  p1 0)" in text and "task-2" in text
    assert "replay 12 episodes" in text and "200 records (2.0 KiB)" in text


def test_quantile_matches_histogram_quantile_interpolation():
    samples = {"h_bucket": [({"le": "1.0"}, 10.0), ({"le": "2.0"}, 20.0), ({"le": "+Inf"}, 20.0)]}
    assert _quantile(samples, "h", 0.5) == 1.0
    assert _quantile(samples, "h", 0.75) == 1.5
    assert _quantile({}, "h", 0.5) is None


def test_nan_gauges_show_as_a_dash_not_as_zero():
    registry = CollectorRegistry()
    Metrics(registry).set_build("fomaml", 10)
    text = format_status(summarize(parse(generate_latest(registry).decode())))
    assert "adaptation gain -" in text and "lag - records" in text and "accuracy     - (sliding window)" in text
    assert "nan" not in text.lower()
