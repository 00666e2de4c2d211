"""Prometheus metrics of the daemon, registered on an injected registry.

The catalogue (name, type, labels, meaning) is the README's Metrics table; the
Grafana dashboard and the alert rules in ``deploy/`` use only these names, and
``tests/deploy`` checks that against a live scrape.

Label sets are bounded: ``reason`` and ``position`` are fixed lists, ``kind`` is
``new``/``return``, ``partition`` is the assigned partitions only, and ``task``
is the ``tracked_tasks`` most recently seen tasks plus ``other``.

>>> from prometheus_client import CollectorRegistry
>>> m = Metrics(CollectorRegistry(), tracked_tasks=1)
>>> m.observe_prediction("a", True, new_task=True)
>>> m.observe_prediction("b", False, new_task=True)
>>> m.task_accuracy.snapshot()
{'b': (0.0, 1), 'other': (1.0, 1)}
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from connectors.base import SEND_FAILURE_REASONS
from stream_meta import __version__
from stream_meta.daemon.labels import LABEL_REASONS
from stream_meta.daemon.records import REASONS
from stream_meta.daemon.stats import POSITION_BUCKETS

NS = "stream_meta"
OTHER_TASK = "other"  # label of the tasks folded out of the tracked set
BOUNDARY_KINDS = ("new", "return")
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


REPLAY_MEMORIES = ("episodes", "records")
# Why a record could not be written to the dead-letter topic; pre-initialised as labels.

class TaskAccuracy(Collector):
    """Per-task prequential accuracy over each task's last ``window`` labelled records.

    Only the ``tracked`` most recently seen tasks get their own series; when a task
    drops out, its window is folded into the ``other`` series, so the label set never
    exceeds ``tracked + 1``. ``other`` is NaN until something was folded into it.
    """

    NAME = f"{NS}_task_prequential_accuracy"
    RECORDS = f"{NS}_task_scored_records"

    def __init__(self, tracked: int = 10, window: int = 100) -> None:
        if tracked < 1 or window < 1:
            raise ValueError("tracked and window must be >= 1")
        self.tracked, self.window = tracked, window
        self._tasks: OrderedDict[str, deque[int]] = OrderedDict()
        self._other: deque[int] = deque(maxlen=window)
        self._lock = threading.Lock()  # observe() runs on the loop, collect() on the HTTP thread

    def observe(self, task: str, correct: bool) -> None:
        with self._lock:
            if task == OTHER_TASK:  # a real task named like the fold joins it
                self._other.append(int(correct))
                return
            hits = self._tasks.get(task)
            if hits is None:
                hits = self._tasks[task] = deque(maxlen=self.window)
            self._tasks.move_to_end(task)
            hits.append(int(correct))
            while len(self._tasks) > self.tracked:
                _, evicted = self._tasks.popitem(last=False)
                self._other.extend(evicted)

    def snapshot(self) -> dict[str, tuple[float, int]]:
        """``task -> (accuracy, records in its window)``, ``other`` last."""
        with self._lock:
            rows = [(t, list(h)) for t, h in self._tasks.items()] + [(OTHER_TASK, list(self._other))]
        return {t: (sum(h) / len(h) if h else math.nan, len(h)) for t, h in rows}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        acc = GaugeMetricFamily(
            self.NAME, f"Test-then-train accuracy over each task's last {self.window} labelled records "
            f"({self.tracked} most recent tasks, the rest folded into task=\"{OTHER_TASK}\")", labels=["task"],
        )
        size = GaugeMetricFamily(self.RECORDS, "Labelled records in each task's accuracy window", labels=["task"])
        for task, (value, n) in self.snapshot().items():
            acc.add_metric([task], value)
            size.add_metric([task], n)
        yield acc
        yield size

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, "", labels=["task"])
        yield GaugeMetricFamily(self.RECORDS, "", labels=["task"])


class RateMeter:
    """Events per second over the last ``horizon_s`` seconds, from a running total."""

    def __init__(self, horizon_s: float = 10.0) -> None:
        self.horizon_s = horizon_s
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, total: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.horizon_s:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        return (total - n0) / (now - t0) if now > t0 else 0.0


class Metrics:
    """All series the daemon exports; label sets are bounded and pre-initialised."""

    def __init__(self, registry: CollectorRegistry, tracked_tasks: int = 10, task_window: int = 100) -> None:
        r = registry
        self._started = time.time()
        self._checkpoint_at: float | None = None
        self._last_task: str | None = None
        self._partitions: set[str] = set()
        self._rate = RateMeter()

        # -- the stream -------------------------------------------------------
        self.records_consumed = Counter("records_consumed", "Records read from the source", namespace=NS, registry=r)
        self.records_learned = Counter("records_learned", "Labelled records learned from", namespace=NS, registry=r)
        self.records_rejected = Counter(
            "records_rejected", "Records rejected as invalid, by reason", ["reason"], namespace=NS, registry=r
        )
        for reason in (*REASONS, *LABEL_REASONS):
            self.records_rejected.labels(reason)
        # Task-free streams and late labels (stream_meta.learn.tasks / pending)
        self.tasks_found = Counter(
            "tasks_found", "Task boundaries found by detection: a new task, or one that came back", ["kind"],
            namespace=NS, registry=r,
        )
        for kind in ("detected", "recurring"):
            self.tasks_found.labels(kind)
        self.label_delay = Histogram(
            "label_delay_records", "Records between an unlabelled record and its late label", namespace=NS,
            registry=r, buckets=(1, 10, 100, 1000, 10_000, 100_000, 1_000_000),
        )
        self.pending_records = Gauge(
            "pending_records", "Unlabelled records with an id kept for their late label", namespace=NS, registry=r,
        )
        self.predictions = Counter("predictions", "Predictions made (one per valid record)", namespace=NS, registry=r)
        self.records_per_second = Gauge(
            "records_per_second", "Records consumed per second over the last 10 s", namespace=NS, registry=r
        )
        self.consumer_lag = Gauge(
            "consumer_lag_records", "Records behind the end of the assigned partitions", namespace=NS, registry=r
        )
        self.consumer_lag.set(math.nan)  # unknown until the source reports it: not "caught up"
        self.partition_lag = Gauge(
            "consumer_partition_lag_records", "Records behind the end of each assigned partition",
            ["partition"], namespace=NS, registry=r,
        )
        self.source_errors = Counter(
            "source_errors", "Errors talking to the source or sinks (retried)", namespace=NS, registry=r
        )
        # Messages a sink did not take, by SEND_FAILURE_REASONS; the stream goes on (--dlq-failure-policy).
        self.dead_letter_failures = Counter(
            "dead_letter_failures", "Dead letters the dead-letter topic did not take, by reason", ["reason"],
            namespace=NS, registry=r,
        )
        self.prediction_failures = Counter(
            "prediction_failures", "Predictions the predictions topic did not take, by reason", ["reason"],
            namespace=NS, registry=r,
        )
        for reason in SEND_FAILURE_REASONS:
            self.dead_letter_failures.labels(reason)
            self.prediction_failures.labels(reason)
        self.dead_letters_truncated = Counter(
            "dead_letters_truncated", "Dead letters sent truncated (header stream_meta.truncated)",
            namespace=NS, registry=r,
        )
        self.offset_rewinds = Counter(
            "offset_rewinds", "Records found below the checkpointed offset (log truncated or recreated)",
            namespace=NS, registry=r,
        )
        self.ready = Gauge("ready", "1 when connected and consuming, else 0", namespace=NS, registry=r)

        # -- is it learning, adapting? ----------------------------------------
        # Accuracies start as NaN, not 0: no data is not a collapse.
        self.prequential_accuracy = Gauge(
            "prequential_accuracy", "Test-then-train accuracy over the last N labelled records", namespace=NS, registry=r
        )
        self.prequential_accuracy.set(math.nan)
        self.task_accuracy = TaskAccuracy(tracked_tasks, task_window)
        r.register(self.task_accuracy)
        self.accuracy_by_position = Gauge(
            "accuracy_by_task_position",
            "Cumulative test-then-train accuracy by the record's position within its task",
            ["position"], namespace=NS, registry=r,
        )
        for bucket, _, _ in POSITION_BUCKETS:
            self.accuracy_by_position.labels(bucket).set(math.nan)
        self.tasks_seen = Gauge("tasks_seen", "Distinct tasks seen", namespace=NS, registry=r)
        self.retained_accuracy = Gauge(
            "retained_accuracy", "Mean accuracy on the held-out probe records of recent tasks (probe_per_task > 0)",
            namespace=NS, registry=r)
        self.forgetting = Gauge(
            "forgetting", "Mean drop from best accuracy on earlier tasks' probe records (probe_per_task > 0)",
            namespace=NS, registry=r)
        self.retained_accuracy.set(math.nan)  # NaN without probes (or before their first evaluation)
        self.forgetting.set(math.nan)  # ... and while only one task has probes: nothing to forget yet
        self.task_boundaries = Counter(
            "task_boundaries", "Labelled records that start a new task or return to a known one, by kind",
            ["kind"], namespace=NS, registry=r,
        )
        for kind in BOUNDARY_KINDS:
            self.task_boundaries.labels(kind)
        self.meta_updates = Counter("meta_updates", "Meta-parameter updates applied", namespace=NS, registry=r)
        self.nonfinite_skips = Counter(
            "nonfinite_updates_skipped", "Meta-updates rolled back (skipped) for non-finite loss or gradients",
            namespace=NS, registry=r,
        )
        self.adaptation_gain = Gauge(
            "adaptation_gain", "Query loss before minus after the inner loop, last meta-update", namespace=NS, registry=r
        )
        self.adaptation_gain.set(math.nan)  # no meta-update yet
        # The algorithm's own health metrics (neural-optimizer: update_norm_ratio; lmml:
        # learned_loss_ratio, ...): names fixed in the algorithms' code, so a bounded label set.
        self.learner_health = Gauge("learner_health", "The meta-algorithm's own health metrics, by name",
                                    ["name"], namespace=NS, registry=r)
        # Two memories: past episodes mixed into the meta-batch, and past records joined to
        # the query set (MER / La-MAML style, --memory-capacity).
        self.replay_items = Gauge(
            "replay_buffer_items", "Items held in replay memory: episodes, or records of the record memory",
            ["memory"], namespace=NS, registry=r,
        )
        self.replay_bytes = Gauge(
            "replay_buffer_bytes", "Bytes of tensors held in replay memory", ["memory"], namespace=NS, registry=r
        )
        for memory in REPLAY_MEMORIES:
            self.replay_items.labels(memory)
            self.replay_bytes.labels(memory)

        # -- latency ----------------------------------------------------------
        self.step_seconds = Histogram(
            "step_seconds", "Seconds to predict and learn one learn batch (--learn-batch records at most)",
            namespace=NS, registry=r, buckets=LATENCY_BUCKETS,
        )
        self.inner_loop_seconds = Histogram(
            "inner_loop_seconds", "Seconds to adapt fast weights to a learn batch's tasks and predict it (inner loop)",
            namespace=NS, registry=r, buckets=LATENCY_BUCKETS,
        )
        self.prediction_latency = Histogram(
            "prediction_latency_seconds", "Seconds from the poll that returned a record to its prediction",
            namespace=NS, registry=r, buckets=LATENCY_BUCKETS,
        )
        self.meta_update_seconds = Histogram(
            "meta_update_seconds", "Seconds per meta-update (outer loop: meta-gradient over the meta-batch + step)",
            namespace=NS, registry=r, buckets=LATENCY_BUCKETS,
        )

        # -- checkpoints ------------------------------------------------------
        self.checkpoints = Counter("checkpoints", "Checkpoints written", namespace=NS, registry=r)
        self.checkpoint_seconds = Histogram(
            "checkpoint_seconds", "Seconds to write one checkpoint", namespace=NS, registry=r,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self.last_checkpoint = Gauge(
            "last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint", namespace=NS, registry=r
        )
        self.last_checkpoint.set(math.nan)  # none yet: 0 would read as a checkpoint in 1970
        self.checkpoint_age = Gauge(
            "last_checkpoint_age_seconds", "Seconds since the last checkpoint (since start before the first)",
            namespace=NS, registry=r,
        )
        self.checkpoint_age.set_function(lambda: time.time() - (self._checkpoint_at or self._started))

        # -- the process ------------------------------------------------------
        self.build = Info("build", "Version, learner and model size of this daemon", namespace=NS, registry=r)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def set_build(self, algorithm: str, parameters: int) -> None:
        self.build.info({"version": __version__, "algorithm": algorithm, "parameters": str(parameters)})

    def observe_prediction(self, task: str, correct: bool, new_task: bool) -> None:
        """One scored (labelled) prediction: per-task accuracy and task boundaries."""
        self.task_accuracy.observe(task, correct)
        if new_task:
            self.task_boundaries.labels("new").inc()
        elif self._last_task is not None and task != self._last_task:
            self.task_boundaries.labels("return").inc()
        self._last_task = task

    def observe_meta_updates(self, seconds: float, updates: int) -> None:
        """A ``learn`` call of ``seconds`` that applied ``updates`` meta-updates."""
        for _ in range(updates):
            self.meta_update_seconds.observe(seconds / updates)

    def observe_checkpoint(self, seconds: float, at: float | None = None) -> None:
        """A checkpoint written in ``seconds``, finished at Unix time ``at`` (now by default)."""
        self.checkpoints.inc()
        self.checkpoint_seconds.observe(seconds)
        self.mark_checkpoint(time.time() if at is None else at)

    def mark_checkpoint(self, at: float) -> None:
        """The latest checkpoint is from Unix time ``at`` (also used on restore)."""
        self._checkpoint_at = at
        self.last_checkpoint.set(at)

    def update_throughput(self, consumed_total: int, now: float | None = None) -> None:
        self.records_per_second.set(self._rate.update(consumed_total, now))

    def set_partition_lag(self, lag: Mapping[int, int]) -> None:
        """Lag of the partitions assigned now; series of revoked partitions are removed."""
        current = {str(p): n for p, n in lag.items()}
        for gone in self._partitions - current.keys():
            self.partition_lag.remove(gone)
        for p, n in current.items():
            self.partition_lag.labels(p).set(n)
        self._partitions = set(current)
