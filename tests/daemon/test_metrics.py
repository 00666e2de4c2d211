"""The metrics catalogue: bounded labels, folding, rates, scrape-time gauges (no daemon needed)."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest

from stream_meta.daemon import metrics as metrics_module
from stream_meta.daemon.metrics import Metrics, RateMeter, TaskAccuracy


def _value(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels or None)


def test_fresh_registry_exports_the_catalogue_with_nan_accuracies_and_preinitialised_labels(monkeypatch):
    clock = [1_000.0]
    monkeypatch.setattr(metrics_module.time, "time", lambda: clock[0])
    registry = CollectorRegistry()
    Metrics(registry)
    clock[0] += 7.0
    text = generate_latest(registry).decode()
    assert math.isnan(_value(registry, "stream_meta_prequential_accuracy"))
    assert math.isnan(_value(registry, "stream_meta_accuracy_by_task_position", position="1-5"))
    assert math.isnan(_value(registry, "stream_meta_task_prequential_accuracy", task="other"))
    assert _value(registry, "stream_meta_task_boundaries_total", kind="new") == 0
    assert _value(registry, "stream_meta_task_boundaries_total", kind="return") == 0
    assert _value(registry, "stream_meta_last_checkpoint_age_seconds") == 7.0  # since start, before the first
    for name in ("stream_meta_inner_loop_seconds_count", "stream_meta_meta_update_seconds_count",
                 "stream_meta_records_per_second", "process_cpu_seconds_total"):
        assert name in text
    assert "stream_meta_consumer_partition_lag_records{" not in text  # no partitions assigned yet


def test_two_instances_on_two_registries_do_not_collide():
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a).records_consumed.inc(3)
    Metrics(b)
    assert _value(a, "stream_meta_records_consumed_total") == 3
    assert _value(b, "stream_meta_records_consumed_total") == 0


def test_task_accuracy_keeps_the_most_recent_tasks_and_folds_the_rest_into_other():
    acc = TaskAccuracy(tracked=3, window=4)
    for i in range(50):
        task = f"t{i}"
        for j in range(6):
            acc.observe(task, correct=(j % 2 == 0))
    snap = acc.snapshot()
    assert list(snap) == ["t47", "t48", "t49", "other"]  # bounded: tracked + 1 series
    assert snap["t49"] == (0.5, 4)  # the task's last 4 records
    assert snap["other"][1] == 4 and snap["other"][0] == 0.5
    acc.observe("t10", True)  # an old task comes back: it is tracked again, the oldest goes
    assert list(acc.snapshot()) == ["t48", "t49", "t10", "other"]
    acc.observe("other", False)  # a real task named like the fold joins it
    assert len(acc.snapshot()) == 4


def test_boundaries_count_new_tasks_and_returns():
    registry = CollectorRegistry()
    m = Metrics(registry)
    for task, new in [("a", True), ("a", False), ("b", True), ("a", False), ("a", False), ("b", False)]:
        m.observe_prediction(task, True, new_task=new)
    assert _value(registry, "stream_meta_task_boundaries_total", kind="new") == 2
    assert _value(registry, "stream_meta_task_boundaries_total", kind="return") == 2


def test_partition_lag_series_follow_the_assignment():
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.set_partition_lag({0: 5, 1: 7})
    assert _value(registry, "stream_meta_consumer_partition_lag_records", partition="1") == 7
    m.set_partition_lag({1: 2})  # partition 0 revoked
    assert _value(registry, "stream_meta_consumer_partition_lag_records", partition="0") is None
    assert _value(registry, "stream_meta_consumer_partition_lag_records", partition="1") == 2


def test_checkpoint_age_is_computed_at_scrape_time():
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.observe_checkpoint(0.01, at=1000.0)
    assert _value(registry, "stream_meta_last_checkpoint_timestamp_seconds") == 1000.0
    assert _value(registry, "stream_meta_last_checkpoint_age_seconds") > 1e9  # now - 1000 s after the epoch
    m.observe_checkpoint(0.02)
    assert 0 <= _value(registry, "stream_meta_last_checkpoint_age_seconds") < 5
    assert _value(registry, "stream_meta_checkpoints_total") == 2
    assert _value(registry, "stream_meta_checkpoint_seconds_count") == 2


def test_rate_meter_measures_over_its_horizon():
    meter = RateMeter(horizon_s=10)
    assert meter.update(0, now=0.0) == 0.0
    assert meter.update(100, now=1.0) == 100.0
    for t in range(2, 31):
        rate = meter.update(100 + 50 * (t - 1), now=float(t))
    assert abs(rate - 50.0) < 1e-9  # the early burst has left the window


def test_meta_update_latency_is_split_over_the_updates_of_one_learn_call():
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.observe_meta_updates(0.3, 0)
    m.observe_meta_updates(0.3, 3)
    assert _value(registry, "stream_meta_meta_update_seconds_count") == 3
    assert abs(_value(registry, "stream_meta_meta_update_seconds_sum") - 0.3) < 1e-9
