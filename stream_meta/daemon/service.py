"""The daemon's one path for records, top to bottom in :meth:`Service.run`:

poll -> cut into learn batches -> decode/validate -> route to task -> predict every record
(test-then-train) -> learn the labelled ones together -> metrics -> checkpoint (state +
offsets together) -> commit offsets.

The service does no math (the learner does) and the learner does no I/O.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from connectors.base import Offsets, RawRecord, Source
from stream_meta.daemon.batching import Batcher
from stream_meta.daemon.checkpoint import CheckpointStore
from stream_meta.daemon.config import ServiceSettings
from stream_meta.daemon.deadletters import SinkFailures, dead_letter
from stream_meta.daemon.gauges import export_gauges, restore_counters
from stream_meta.daemon.latency import LatencyQuantiles
from stream_meta.daemon.merge import TimeMerge
from stream_meta.daemon.metrics import Metrics
from stream_meta.daemon.sinks import Sinks
from stream_meta.daemon.stats import RunStats
from stream_meta.daemon.sync import NoSync, Sync
from stream_meta.daemon.watch import ConnectionWatch, ProgressLine
from stream_meta.daemon.wire import BatchDecoder
from stream_meta.errors import CheckpointMismatchError, RecordError, StreamMetaError
from stream_meta.daemon.labels import LabelDecoder
from stream_meta.learn.base import Learner, LearnReport
from stream_meta.learn.pending import Joined, PendingStore
from stream_meta.learn.tasks import TaskRouter

log = logging.getLogger(__name__)

SourceFactory = Callable[[Offsets, Callable[[], Offsets]], Source]


class OffsetRewindError(StreamMetaError):
    """A partition's offsets went backwards under ``offset_reset_policy=fail``."""


@dataclass
class Service:
    """Runs one learner over one source until stopped; see the module docstring.

    Built from plain objects (:func:`stream_meta.daemon.app.build_service` wires them from
    the config): the loop's own ``settings``, the learner, the decoder, the run statistics,
    the source factory, the sinks, the metrics and the checkpoint store.
    """

    settings: ServiceSettings
    learner: Learner
    decoder: BatchDecoder
    stats: RunStats
    open_source: SourceFactory
    sinks: Sinks
    metrics: Metrics
    store: CheckpointStore
    router: TaskRouter = field(default_factory=lambda: TaskRouter("field"))
    pending: PendingStore = field(default_factory=PendingStore)
    labels: LabelDecoder | None = None
    sync: Sync | NoSync = field(default_factory=NoSync)  # scale-out averaging (daemon/sync.py)
    offsets: Offsets = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = self.labels or LabelDecoder(self.decoder.num_classes)
        self._stop = threading.Event()
        self._heartbeat = time.monotonic()
        self._ready = False
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._last_record = time.monotonic()
        self.source: Source | None = None
        self.batcher = (TimeMerge(self.settings.learn_batch, self.settings.max_batch_wait_s, self.settings.labels_topic)
                        if self.settings.labels_topic else Batcher(self.settings.learn_batch, self.settings.max_batch_wait_s))
        self.sink_failures = SinkFailures(self.metrics, self.settings.dlq_failure_policy)
        self.connection = ConnectionWatch(self.metrics.source_errors, self.settings.session_timeout_s)
        self.progress = ProgressLine(self.settings.accuracy_window)
        self.latency = LatencyQuantiles()  # poll-to-prediction p50/p99 for the summary (this process only)

    # -- control ---------------------------------------------------------------
    def request_stop(self, reason: str = "") -> None:
        if not self._stop.is_set():
            log.info("stopping%s", f" ({reason})" if reason else "")
        self._stop.set()

    def alive(self) -> bool:
        return time.monotonic() - self._heartbeat < 120

    def ready(self) -> bool:
        return self._ready and not self._stop.is_set()

    # -- the loop --------------------------------------------------------------
    def run(self) -> dict:
        self._restore()
        try:
            self._check_topics()
            self.source = self.open_source(dict(self.offsets), self._on_revoke)
            backoff = 0.5
            while not self._stop.is_set():
                self._heartbeat = poll_from = time.monotonic()
                try:
                    polled = self.source.poll(self._poll_timeout_s(), self.batcher.poll_size(self.offsets))
                except StreamMetaError as exc:
                    self._set_ready(False)
                    self.metrics.source_errors.inc()
                    self.connection.observe(False, str(exc))
                    log.warning("source unavailable, retrying in %.1fs: %s", backoff, exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
                connected = self.source.connected()
                self._set_ready(connected)
                self.connection.observe(connected or bool(polled))  # records arriving: it answers
                now = time.monotonic()
                self.batcher.add(polled, now)
                busy_from = time.perf_counter()  # elapsed_seconds counts processing, never waiting
                cpu_from = time.process_time()
                at_end = self.settings.stop_at_end and self.source.backlog_done()
                processed = False
                lags = self.source.partition_lags() if self.settings.labels_topic else None
                for records, arrived in self.batcher.ready(now, drain=at_end, lags=lags):
                    if self._stop.is_set() or self._limit_reached():
                        break
                    self.process(records[:self._room()], arrived)
                    processed = True
                self.sync.after_learn(self.learner.meta_updates)  # also idle: time-based rounds (--sync-every-s)
                if lags is not None:  # a labels topic: stop fetching what the merge cannot use yet
                    self.source.pause_only(self.batcher.full())
                if polled or at_end:
                    self.stats.elapsed_seconds += time.perf_counter() - busy_from
                    self.stats.cpu_seconds += time.process_time() - cpu_from
                if processed:
                    self.stats.stream_seconds += time.monotonic() - poll_from
                self._update_gauges()
                if self.settings.progress:
                    self.progress.show(self.stats)
                if self._checkpoint_due():
                    self.checkpoint()
                if self._limit_reached():
                    self.request_stop(f"max_records={self.settings.max_records} reached")
                elif at_end and not len(self.batcher):
                    self.request_stop("backlog consumed (--stop-at-end)")
                elif self._idle_too_long(polled):
                    self.request_stop(f"no records for {self.settings.idle_timeout_s}s")
            self.sync.finish(wait_for_all=self.settings.stop_at_end and self.source.backlog_done())
            self.checkpoint()
            if self.settings.progress:
                self.progress.show(self.stats, final=True)
        finally:
            self._set_ready(False)
            if self.source is not None:
                self.source.close()
            self.sinks.close()
            self.sync.close()
        return {**self.stats.summary(), "task_boundaries": list(self.router.boundaries),
                "prediction_latency_p50_s": self.latency.quantile(0.5),
                "prediction_latency_p99_s": self.latency.quantile(0.99),
                "tasks_detected": self.router.tasks_detected, "tasks_recurring": self.router.tasks_recurring}

    def process(self, records: list[RawRecord], arrived: list[float] | None = None) -> None:
        """One learn batch: every record is predicted before any is learned from. Bad input never escapes."""
        started = time.perf_counter()
        for raw in records:
            expected = self.offsets.get((raw.topic, raw.partition))
            if expected is not None and raw.offset < expected:
                self._rewound(raw, expected)
            self.offsets[(raw.topic, raw.partition)] = raw.offset + 1
        self.stats.records_consumed += len(records)
        self.metrics.records_consumed.inc(len(records))
        self._since_checkpoint += len(records)
        # earlier records whose labels this batch brought: from the labels topic (which holds nothing
        # else; the batcher merges it in by message time), or among the records' topic's messages
        last = records[-1]
        late: list[Joined] = []
        if self.settings.labels_topic:  # without a labels topic, records stay as polled (hot path)
            late = [j for j in (self._label(r) for r in records if r.topic == self.settings.labels_topic) if j]
            records = [r for r in records if r.topic != self.settings.labels_topic]
        batch = self.decoder.decode([r.value for r in records], [r.headers for r in records])
        for i, exc in batch.rejected:
            joined = self._label(records[i], exc)
            if joined is not None:
                late.append(joined)
        where = [(records[i].topic, records[i].partition, records[i].offset) for i in batch.index]
        tasks = self.router.route(batch.tasks, where)  # the record's task, or the detected one
        x = torch.from_numpy(batch.x)
        predictions: list[int] = []
        if len(batch):
            predict_started = time.perf_counter()
            predictions = self.learner.predict_batch(tasks, x).tolist()
            self.metrics.inner_loop_seconds.observe(time.perf_counter() - predict_started)
        done = time.monotonic()
        self.stats.predictions_emitted += len(batch)
        self.metrics.predictions.inc(len(batch))
        ys = batch.y.tolist()
        waited = [done - arrived[i] if arrived is not None else 0.0 for i in batch.index]
        self.latency.add(waited)
        for row, i in enumerate(batch.index):
            self.metrics.prediction_latency.observe(waited[row])
            if self.sinks.predictions is not None:
                self._emit_prediction(records[i], tasks[row], batch.ids[row], predictions[row])
            if ys[row] < 0 and batch.ids[row] is not None:  # its label may come later
                self.pending.add(batch.ids[row], x[row], tasks[row], predictions[row], self.stats.records_consumed,
                                 topic=records[i].topic, partition=records[i].partition, offset=records[i].offset,
                                 arrived_s=time.time())
        # what to learn: this batch's labelled records, then the late labels it brought
        rows = [row for row, y in enumerate(ys) if y >= 0]
        learn_tasks = [tasks[r] for r in rows] + [j.record.task for j in late]
        scored = [predictions[r] == ys[r] for r in rows] + [j.correct for j in late]
        if learn_tasks:
            lx = torch.cat([x[rows], *(j.record.x.unsqueeze(0) for j in late)])
            ly = torch.tensor([ys[r] for r in rows] + [j.y for j in late], dtype=torch.long)
            lwhere = [where[r] for r in rows] + [(j.record.topic, j.record.partition, j.record.offset) for j in late]
            for task, correct in zip(learn_tasks, scored):
                tasks_before = self.stats.tasks_seen
                self.stats.observe_prediction(task, correct)
                self.metrics.observe_prediction(task, correct, self.stats.tasks_seen > tasks_before)
            arrived = [self.stats.records_consumed] * len(rows) + [j.record.arrived for j in late]
            learn_tasks, found = self.router.assign(self.learner, learn_tasks, lx, ly, lwhere, arrived)
            for boundary in found:
                self.metrics.tasks_found.labels(boundary.kind).inc()
            learn_started = time.perf_counter()
            report = self.learner.learn_batch(learn_tasks, lx, ly)
            self.metrics.observe_meta_updates(time.perf_counter() - learn_started, report.meta_updates)
            self._count_learning(last, report, len(learn_tasks))
            self.sync.after_learn(self.learner.meta_updates)  # averages with the group when due
        if len(batch) or learn_tasks:
            self.metrics.step_seconds.observe(time.perf_counter() - started)

    def _label(self, raw: RawRecord, exc: RecordError | None = None) -> Joined | None:
        """A message that is a label for an earlier record: joined to it, or dead-lettered with a
        label reason. ``exc``: why the records' decoder rejected it (a non-label is dead-lettered
        with that reason); None on the labels topic, where a non-label is ``not_a_label``."""
        if exc is not None and not self.labels.is_label(raw.value, raw.headers):
            self._reject(raw, exc)
            return None
        try:
            label = self.labels.decode(raw.value, raw.headers, require=exc is None)
        except RecordError as bad:
            self._reject(raw, bad)
            return None
        joined = self.pending.join(label.id, label.y, self.stats.records_consumed)
        if isinstance(joined, str):
            self._reject(raw, RecordError(joined, f"label for id {label.id!r}"))
            return None
        self.metrics.label_delay.observe(joined.delay_records)
        return joined

    def _rewound(self, raw: RawRecord, expected: int) -> None:
        """The partition restarted below the checkpointed offset (e.g. the topic was
        recreated or the broker lost its log). Policy ``offset_reset_policy``:
        ``earliest`` treats what the broker now holds as new records, loudly;
        ``fail`` stops the daemon with an error so an operator decides."""
        self.metrics.offset_rewinds.inc()
        message = (
            f"{raw.where}: offset below the checkpointed next offset {expected}; "
            "the partition's log was truncated or recreated since the checkpoint"
        )
        if self.settings.offset_reset_policy == "fail":
            raise OffsetRewindError(message + " (offset_reset_policy=fail)")
        log.error("%s; learning from the broker's records as new ones (offset_reset_policy=earliest)", message)

    def _reject(self, raw: RawRecord, exc: RecordError) -> None:
        self.stats.rejected_by_reason[exc.reason] += 1
        self.metrics.records_rejected.labels(exc.reason).inc()
        log.warning("rejected %s: %s", raw.where, exc)
        key, value, headers, truncated = dead_letter(raw, exc, self.settings.dlq_max_message_bytes)
        if truncated is not None:
            self.metrics.dead_letters_truncated.inc()
            log.warning("dead letter of %s truncated from %d to %d bytes", raw.where, truncated, len(value))
        # Refusals come back from the next flush (tagged with the record), never as an exception here.
        self.sinks.dlq.send(self.settings.dlq_topic, value, key, headers, tag=raw.where)

    def _emit_prediction(self, raw: RawRecord, task: str, rid: str | None, prediction: int) -> None:
        body = {"id": rid, "task": task, "prediction": prediction, "source": raw.where}
        self.sinks.predictions.send(self.settings.predictions_topic, json.dumps(body).encode(), raw.key,
                                    tag=raw.where)

    def _count_learning(self, raw: RawRecord, report: LearnReport, learned: int) -> None:
        self.stats.records_learned += learned
        self.metrics.records_learned.inc(learned)
        if report.meta_updates:
            self.stats.meta_updates += report.meta_updates
            self.metrics.meta_updates.inc(report.meta_updates)
            if report.query_loss_before is not None:
                self.metrics.adaptation_gain.set(report.query_loss_before - report.query_loss_after)
        if report.nonfinite_skips:
            self.metrics.nonfinite_skips.inc(report.nonfinite_skips)
            log.error("non-finite meta-update skipped at %s; meta-parameters kept", raw.where)

    # -- checkpoints -----------------------------------------------------------
    def _checkpoint_due(self) -> bool:
        return self._since_checkpoint >= self.settings.checkpoint_every_records or (
            self._since_checkpoint > 0 and time.monotonic() - self._last_checkpoint >= self.settings.checkpoint_every_s
        )

    def checkpoint(self, commit: bool = True) -> None:
        """Flush sinks, save state + offsets atomically, then commit the offsets."""
        self.sink_failures.raise_if_fatal()
        started = time.perf_counter()
        # Dead letters and predictions are out (or counted as failed) before offsets move past
        # them; under dlq_failure_policy=fail a failed dead letter raises here, before the save.
        failures = self.sinks.flush()
        self.sink_failures.predictions([f for f in failures if f.topic != self.settings.dlq_topic])
        self.sink_failures.dead_letters([f for f in failures if f.topic == self.settings.dlq_topic])
        state = {"learner": self.learner.state_dict(), "stats": self.stats.state_dict(),
                 "router": self.router.state_dict(), "pending": self.pending.state_dict()}
        health = self.learner.health()
        info = {
            "records_consumed": self.stats.records_consumed,
            "records_learned": self.stats.records_learned,
            "tasks_seen": self.stats.tasks_seen,
            "meta_updates": self.stats.meta_updates,
            "replay_episodes": health.replay_episodes,
            "memory_records": health.memory_records,
            **self.sync.info(),
        }
        manifest = self.store.save(state, self.offsets, info)
        if commit and self.source is not None and self.offsets:
            try:
                self.source.commit(self.offsets)
            except StreamMetaError as exc:
                self.metrics.source_errors.inc()
                log.warning("offset commit failed (the checkpoint holds the offsets): %s", exc)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        seconds = time.perf_counter() - started
        self.metrics.observe_checkpoint(seconds)
        log.info(
            "checkpoint %s: %d records consumed, %d learned, offsets %s, %.3fs",
            manifest.stem.removeprefix("ckpt-").lstrip("0") or "0", self.stats.records_consumed,
            self.stats.records_learned, {f"{t}[{p}]": o for (t, p), o in sorted(self.offsets.items())}, seconds,
        )

    def _on_revoke(self) -> Offsets:
        log.info("partitions revoked: checkpointing before hand-over")
        self.checkpoint(commit=False)  # the source commits these offsets itself, asynchronously
        # Records held for an incomplete learn batch were not learned: whoever owns their
        # partition next reads them again from the committed offsets.
        self.batcher.clear()
        return dict(self.offsets)

    def _restore(self) -> None:
        ckpt = self.store.load_latest()
        if ckpt is None:
            log.info("no checkpoint in %s: starting fresh", self.settings.checkpoint_dir)
            return
        try:
            self.learner.load_state_dict(ckpt.state["learner"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            # Only a checkpoint without a config fingerprint (older stream-meta) gets this far
            # with state of another shape; the store refuses a fingerprinted one earlier.
            raise CheckpointMismatchError(
                f"checkpoint {ckpt.seq} in {self.settings.checkpoint_dir} does not fit this configuration "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'state mismatch'}); "
                "run with the settings it was written with, another --checkpoint-dir, or --fresh"
            ) from None
        self.stats.load_state_dict(ckpt.state["stats"])
        if "router" in ckpt.state:  # absent in checkpoints written before task-free routing
            self.router.load_state_dict(ckpt.state["router"])
            self.pending.load_state_dict(ckpt.state["pending"])
        self.offsets = dict(ckpt.offsets)
        self.sync.restore(ckpt.manifest)
        if "created" in ckpt.manifest:
            self.metrics.mark_checkpoint(float(ckpt.manifest["created"]))
        log.info(
            "restored checkpoint %d: %d records learned, offsets %s",
            ckpt.seq, self.stats.records_learned,
            {f"{t}[{p}]": o for (t, p), o in sorted(self.offsets.items())},
        )
        restore_counters(self.metrics, self.stats)  # counters continue across restarts, like the summary

    # -- sinks and source health ------------------------------------------------
    def _check_topics(self) -> None:
        dlq = self.sinks.dlq.check_topics([self.settings.dlq_topic])
        predictions = {}
        if self.sinks.predictions is not None and self.settings.predictions_topic:
            predictions = self.sinks.predictions.check_topics([self.settings.predictions_topic])
        self.sink_failures.check_topics(dlq, predictions)

    # -- helpers ---------------------------------------------------------------
    def _limit_reached(self) -> bool:
        return self.settings.max_records is not None and self.stats.records_consumed >= self.settings.max_records

    def _room(self) -> int | None:
        """Records the next batch may hold before ``max_records`` (None: no limit)."""
        limit = self.settings.max_records
        return None if limit is None else max(0, limit - self.stats.records_consumed)

    def _poll_timeout_s(self) -> float:
        """The poll timeout, shortened so a held, incomplete learn batch is not kept past its wait."""
        due = self.batcher.wait_s(time.monotonic())
        return self.settings.poll_timeout_s if due is None else min(self.settings.poll_timeout_s, due)

    def _idle_too_long(self, polled: list) -> bool:
        if polled or self.settings.idle_timeout_s is None:
            self._last_record = time.monotonic()
            return False
        return time.monotonic() - self._last_record > self.settings.idle_timeout_s

    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        self.metrics.ready.set(1 if ready else 0)

    def _update_gauges(self) -> None:
        export_gauges(self.metrics, self.stats, len(self.pending), self.learner.health(), self.source)
