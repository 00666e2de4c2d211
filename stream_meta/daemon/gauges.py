"""From the run's state to the Prometheus families: gauges set once per poll (never per
record), and the counters a restored checkpoint continues from."""

from __future__ import annotations

import math

from connectors.base import Source
from stream_meta.daemon.metrics import Metrics
from stream_meta.daemon.stats import RunStats
from stream_meta.learn.base import LearnerHealth


def export_gauges(metrics: Metrics, stats: RunStats, pending_records: int, health: LearnerHealth,
                  source: Source | None) -> None:
    """Sets every gauge the loop owns from the run's statistics, the learner's health and the source's lag."""
    acc = stats.window_accuracy
    if acc is not None:
        metrics.prequential_accuracy.set(acc)
    for bucket, (c, n) in stats.by_bucket.items():
        if n:
            metrics.accuracy_by_position.labels(bucket).set(c / n)
    metrics.tasks_seen.set(stats.tasks_seen)
    metrics.pending_records.set(pending_records)
    for name, items, size in (("episodes", health.replay_episodes, health.replay_bytes),
                              ("records", health.memory_records, health.memory_bytes)):
        metrics.replay_items.labels(name).set(items)
        metrics.replay_bytes.labels(name).set(size)
    # None (no probes, or nothing to forget yet) is exported as NaN, never as a false 0.
    for gauge, value in ((metrics.retained_accuracy, health.retained_accuracy),
                         (metrics.forgetting, health.forgetting)):
        gauge.set(math.nan if value is None else value)
    for name, value in health.learner_metrics.items():
        metrics.learner_health.labels(name).set(value)
    lag = source.lag() if source is not None else None
    if lag is not None:
        metrics.consumer_lag.set(lag)
    metrics.set_partition_lag(source.lag_by_partition() if source is not None else {})
    metrics.update_throughput(stats.records_consumed)


def restore_counters(metrics: Metrics, stats: RunStats) -> None:
    """Counters continue across restarts, like the summary: a restored run starts them at its checkpoint's totals."""
    metrics.records_consumed.inc(stats.records_consumed)
    metrics.records_learned.inc(stats.records_learned)
    metrics.predictions.inc(stats.predictions_emitted)
    metrics.meta_updates.inc(stats.meta_updates)
    for reason, n in stats.rejected_by_reason.items():
        metrics.records_rejected.labels(reason).inc(n)
