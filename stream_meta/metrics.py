"""Prometheus metrics of the daemon, registered on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from stream_meta import __version__
from stream_meta.records import REASONS
from stream_meta.stats import POSITION_BUCKETS

NS = "stream_meta"


class Metrics:
    """All series the daemon exports; label sets are bounded and pre-initialised."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.records_consumed = Counter("records_consumed", "Records read from the source", namespace=NS, registry=r)
        self.records_learned = Counter("records_learned", "Labelled records learned from", namespace=NS, registry=r)
        self.records_rejected = Counter(
            "records_rejected", "Records rejected as invalid, by reason", ["reason"], namespace=NS, registry=r
        )
        for reason in REASONS:
            self.records_rejected.labels(reason)
        self.predictions = Counter("predictions", "Predictions made (one per valid record)", namespace=NS, registry=r)
        self.prequential_accuracy = Gauge(
            "prequential_accuracy", "Test-then-train accuracy over the last N labelled records", namespace=NS, registry=r
        )
        self.accuracy_by_position = Gauge(
            "accuracy_by_task_position",
            "Cumulative test-then-train accuracy by the record's position within its task",
            ["position"], namespace=NS, registry=r,
        )
        for bucket, _, _ in POSITION_BUCKETS:
            self.accuracy_by_position.labels(bucket)
        self.tasks_seen = Gauge("tasks_seen", "Distinct tasks seen", namespace=NS, registry=r)
        self.meta_updates = Counter("meta_updates", "Meta-parameter updates applied", namespace=NS, registry=r)
        self.nonfinite_skips = Counter(
            "nonfinite_updates_skipped", "Meta-updates skipped for non-finite loss or gradients", namespace=NS, registry=r
        )
        self.adaptation_gain = Gauge(
            "adaptation_gain", "Query loss before minus after the inner loop, last meta-update", namespace=NS, registry=r
        )
        self.consumer_lag = Gauge(
            "consumer_lag_records", "Records behind the end of the assigned partitions", namespace=NS, registry=r
        )
        self.step_seconds = Histogram(
            "step_seconds", "Seconds to predict and learn one record", namespace=NS, registry=r,
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        )
        self.replay_records = Gauge("replay_buffer_records", "Episodes held in replay memory", namespace=NS, registry=r)
        self.replay_bytes = Gauge("replay_buffer_bytes", "Bytes of tensors held in replay memory", namespace=NS, registry=r)
        self.checkpoints = Counter("checkpoints", "Checkpoints written", namespace=NS, registry=r)
        self.checkpoint_seconds = Histogram(
            "checkpoint_seconds", "Seconds to write one checkpoint", namespace=NS, registry=r,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self.last_checkpoint = Gauge(
            "last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint", namespace=NS, registry=r
        )
        self.source_errors = Counter(
            "source_errors", "Errors talking to the source or sinks (retried)", namespace=NS, registry=r
        )
        self.ready = Gauge("ready", "1 when connected and consuming, else 0", namespace=NS, registry=r)
        self.build = Info("build", "Version and learner of this daemon", namespace=NS, registry=r)

    def set_build(self, algorithm: str, parameters: int) -> None:
        self.build.info({"version": __version__, "algorithm": algorithm, "parameters": str(parameters)})
