"""The daemon's one path for a record, top to bottom in :meth:`Service.run`:

poll -> decode/validate -> route to task -> predict (test-then-train) -> learn
-> metrics -> checkpoint (state + offsets together) -> commit offsets.

The service does no math (the learner does) and the learner does no I/O.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from connectors.base import Offsets, RawRecord, SendFailure, Sink, Source
from stream_meta.daemon.checkpoint import CheckpointStore
from stream_meta.daemon.config import RunConfig
from stream_meta.daemon.deadletters import SinkFailures, dead_letter
from stream_meta.errors import CheckpointMismatchError, RecordError, StreamMetaError


class OffsetRewindError(StreamMetaError):
    """A partition's offsets went backwards under ``offset_reset_policy=fail``."""
from stream_meta.learn.learner import Learner, LearnReport
from stream_meta.daemon.metrics import Metrics
from stream_meta.daemon.records import Decoder, Record
from stream_meta.daemon.stats import RunStats

log = logging.getLogger(__name__)

SourceFactory = Callable[[Offsets, Callable[[], Offsets]], Source]
PROGRESS_TTY_S = 0.5  # seconds between progress updates on a terminal
PROGRESS_PLAIN_S = 10.0  # ... and between plain progress lines in a file or pipe


@dataclass
class Sinks:
    """Where dead letters and (optionally) predictions go."""

    dlq: Sink
    predictions: Sink | None = None

    def flush(self) -> list[SendFailure]:
        """Everything sent so far is out or failed; returns the failures."""
        failures = self.dlq.flush()
        if self.predictions is not None and self.predictions is not self.dlq:
            failures += self.predictions.flush()
        return failures

    def close(self) -> None:
        for sink in {id(s): s for s in (self.dlq, self.predictions) if s is not None}.values():
            sink.close()


@dataclass
class Service:
    """Runs one learner over one source until stopped; see the module docstring."""

    cfg: RunConfig
    learner: Learner
    open_source: SourceFactory
    sinks: Sinks
    metrics: Metrics
    store: CheckpointStore
    stats: RunStats = field(init=False)
    offsets: Offsets = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.stats = RunStats(self.cfg.accuracy_window, self.cfg.max_tasks)
        self.decoder = Decoder(self.cfg.input_dim, self.cfg.num_classes, self.cfg.max_message_bytes)
        self._stop = threading.Event()
        self._heartbeat = time.monotonic()
        self._ready = False
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._last_record = time.monotonic()
        self._last_progress = 0.0
        # A plain line per interval when stderr is a file or pipe: a log must not fill with \r.
        self._tty = sys.stderr.isatty()
        self.source: Source | None = None
        self.sink_failures = SinkFailures(self.metrics, self.cfg.dlq_failure_policy)
        self._was_up = False  # an outage is only declared after the source was up once
        self._down_since: float | None = None
        self._outage = False

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
                self._heartbeat = time.monotonic()
                try:
                    batch = self.source.poll(self.cfg.poll_timeout_ms / 1000)
                except StreamMetaError as exc:
                    self._set_ready(False)
                    self.metrics.source_errors.inc()
                    self._watch_connection(False, str(exc))
                    log.warning("source unavailable, retrying in %.1fs: %s", backoff, exc)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
                connected = self.source.connected()
                self._set_ready(connected)
                self._watch_connection(connected or bool(batch))  # records arriving: it answers
                busy_from = time.perf_counter()  # elapsed_seconds counts processing, never waiting
                for raw in batch:
                    if self._stop.is_set() or self._limit_reached():
                        break
                    self.process(raw)
                if batch:
                    self.stats.elapsed_seconds += time.perf_counter() - busy_from
                self._update_gauges()
                if self.cfg.progress:
                    self._show_progress()
                if self._checkpoint_due():
                    self.checkpoint()
                if self._limit_reached():
                    self.request_stop(f"max_records={self.cfg.max_records} reached")
                elif self.cfg.stop_at_end and self.source.backlog_done():
                    self.request_stop("backlog consumed (--stop-at-end)")
                elif self._idle_too_long(batch):
                    self.request_stop(f"no records for {self.cfg.idle_timeout_s}s")
            self.checkpoint()
            if self.cfg.progress:
                self._show_progress(final=True)
        finally:
            self._set_ready(False)
            if self.source is not None:
                self.source.close()
            self.sinks.close()
        return self.stats.summary()

    def process(self, raw: RawRecord) -> None:
        """One record: decode, predict, learn, count. Bad input never escapes."""
        started = time.perf_counter()
        expected = self.offsets.get((raw.topic, raw.partition))
        if expected is not None and raw.offset < expected:
            self._rewound(raw, expected)
        self.stats.records_consumed += 1
        self.metrics.records_consumed.inc()
        self.offsets[(raw.topic, raw.partition)] = raw.offset + 1
        self._since_checkpoint += 1
        try:
            record = self.decoder.decode(raw.value)
        except RecordError as exc:
            self._reject(raw, exc)
            return
        x = torch.tensor(record.x, dtype=torch.float32)
        predict_started = time.perf_counter()
        prediction = self.learner.predict(record.task, x)
        self.metrics.inner_loop_seconds.observe(time.perf_counter() - predict_started)
        self.stats.predictions_emitted += 1
        self.metrics.predictions.inc()
        if self.sinks.predictions is not None:
            self._emit_prediction(raw, record, prediction)
        if record.labelled:
            tasks_before = self.stats.tasks_seen
            self.stats.observe_prediction(record.task, prediction == record.y)
            self.metrics.observe_prediction(record.task, prediction == record.y, self.stats.tasks_seen > tasks_before)
            learn_started = time.perf_counter()
            report = self.learner.learn(record.task, x, record.y)
            self.metrics.observe_meta_updates(time.perf_counter() - learn_started, report.meta_updates)
            self._count_learning(raw, report)
        self.metrics.step_seconds.observe(time.perf_counter() - started)

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
        if self.cfg.offset_reset_policy == "fail":
            raise OffsetRewindError(message + " (offset_reset_policy=fail)")
        log.error("%s; learning from the broker's records as new ones (offset_reset_policy=earliest)", message)

    def _reject(self, raw: RawRecord, exc: RecordError) -> None:
        self.stats.rejected_by_reason[exc.reason] += 1
        self.metrics.records_rejected.labels(exc.reason).inc()
        log.warning("rejected %s: %s", raw.where, exc)
        key, value, headers, truncated = dead_letter(raw, exc, self.cfg.dlq_max_message_bytes)
        if truncated is not None:
            self.metrics.dead_letters_truncated.inc()
            log.warning("dead letter of %s truncated from %d to %d bytes", raw.where, truncated, len(value))
        # Refusals come back from the next flush (tagged with the record), never as an exception here.
        self.sinks.dlq.send(self.cfg.dlq_topic, value, key, headers, tag=raw.where)

    def _emit_prediction(self, raw: RawRecord, record: Record, prediction: int) -> None:
        body = {"id": record.id, "task": record.task, "prediction": prediction, "source": raw.where}
        self.sinks.predictions.send(self.cfg.predictions_topic, json.dumps(body).encode(), raw.key,
                                    tag=raw.where)

    def _count_learning(self, raw: RawRecord, report: LearnReport) -> None:
        self.stats.records_learned += 1
        self.metrics.records_learned.inc()
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
        return self._since_checkpoint >= self.cfg.checkpoint_every_records or (
            self._since_checkpoint > 0 and time.monotonic() - self._last_checkpoint >= self.cfg.checkpoint_every_s
        )

    def checkpoint(self, commit: bool = True) -> None:
        """Flush sinks, save state + offsets atomically, then commit the offsets."""
        self.sink_failures.raise_if_fatal()
        started = time.perf_counter()
        # Dead letters and predictions are out (or counted as failed) before offsets move past
        # them; under dlq_failure_policy=fail a failed dead letter raises here, before the save.
        failures = self.sinks.flush()
        self.sink_failures.predictions([f for f in failures if f.topic != self.cfg.dlq_topic])
        self.sink_failures.dead_letters([f for f in failures if f.topic == self.cfg.dlq_topic])
        state = {"learner": self.learner.state_dict(), "stats": self.stats.state_dict()}
        health = self.learner.health()
        info = {
            "records_consumed": self.stats.records_consumed,
            "records_learned": self.stats.records_learned,
            "tasks_seen": self.stats.tasks_seen,
            "meta_updates": self.stats.meta_updates,
            "replay_episodes": health.replay_episodes,
            "memory_records": health.memory_records,
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
        return dict(self.offsets)

    def _restore(self) -> None:
        ckpt = self.store.load_latest()
        if ckpt is None:
            log.info("no checkpoint in %s: starting fresh", self.cfg.checkpoint_dir)
            return
        try:
            self.learner.load_state_dict(ckpt.state["learner"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            # Only a checkpoint without a config fingerprint (older stream-meta) gets this far
            # with state of another shape; the store refuses a fingerprinted one earlier.
            raise CheckpointMismatchError(
                f"checkpoint {ckpt.seq} in {self.cfg.checkpoint_dir} does not fit this configuration "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'state mismatch'}); "
                "run with the settings it was written with, another --checkpoint-dir, or --fresh"
            ) from None
        self.stats.load_state_dict(ckpt.state["stats"])
        self.offsets = dict(ckpt.offsets)
        if "created" in ckpt.manifest:
            self.metrics.mark_checkpoint(float(ckpt.manifest["created"]))
        log.info(
            "restored checkpoint %d: %d records learned, offsets %s",
            ckpt.seq, self.stats.records_learned,
            {f"{t}[{p}]": o for (t, p), o in sorted(self.offsets.items())},
        )
        # Counters continue across restarts, like the summary.
        self.metrics.records_consumed.inc(self.stats.records_consumed)
        self.metrics.records_learned.inc(self.stats.records_learned)
        self.metrics.predictions.inc(self.stats.predictions_emitted)
        self.metrics.meta_updates.inc(self.stats.meta_updates)
        for reason, n in self.stats.rejected_by_reason.items():
            self.metrics.records_rejected.labels(reason).inc(n)

    # -- sinks and source health ------------------------------------------------
    def _check_topics(self) -> None:
        dlq = self.sinks.dlq.check_topics([self.cfg.dlq_topic])
        predictions = {}
        if self.sinks.predictions is not None and self.cfg.predictions_topic:
            predictions = self.sinks.predictions.check_topics([self.cfg.predictions_topic])
        self.sink_failures.check_topics(dlq, predictions)

    def _watch_connection(self, up: bool, cause: str = "") -> None:
        """One log line (and one source error) when the source stops answering, one when it
        is back. Not being connected counts as an outage once it lasts a session timeout
        (a rebalance also leaves the consumer briefly without partitions)."""
        now = time.monotonic()
        if up:
            if self._outage:
                log.warning("source answering again after %.0fs", now - (self._down_since or now))
            self._was_up, self._down_since, self._outage = True, None, False
            return
        if not self._was_up:
            return  # not yet connected at start: the connect timeout covers that
        if self._down_since is None:
            self._down_since = now
        if not self._outage and (cause or now - self._down_since >= self.cfg.session_timeout_ms / 1000):
            self._outage = True
            if not cause:  # a failed poll was counted where it failed
                self.metrics.source_errors.inc()
            log.error("source stopped answering%s; waiting for it (readiness is down meanwhile)",
                      f" ({cause})" if cause else f" for {now - self._down_since:.0f}s")

    # -- helpers ---------------------------------------------------------------
    def _limit_reached(self) -> bool:
        return self.cfg.max_records is not None and self.stats.records_consumed >= self.cfg.max_records

    def _idle_too_long(self, batch: list) -> bool:
        if batch or self.cfg.idle_timeout_s is None:
            self._last_record = time.monotonic()
            return False
        return time.monotonic() - self._last_record > self.cfg.idle_timeout_s

    def _show_progress(self, final: bool = False) -> None:
        """Rewrites one line on a terminal (every 0.5 s); else one plain line every 10 s and at the end."""
        now = time.monotonic()
        if not final and now - self._last_progress < (PROGRESS_TTY_S if self._tty else PROGRESS_PLAIN_S):
            return
        self._last_progress = now
        s = self.stats
        acc = s.window_accuracy
        rate = f"{s.records_consumed / s.elapsed_seconds:7.0f}" if s.elapsed_seconds > 0 else "      -"
        line = (
            f"  consumed {s.records_consumed:>7}  learned {s.records_learned:>7}  rejected {s.records_rejected:>4}"
            f"  tasks {s.tasks_seen:>4}  accuracy(last {self.cfg.accuracy_window}) "
            f"{'-' if acc is None else f'{100 * acc:5.1f}%'}  {rate} rec/s"
        )
        if self._tty:
            sys.stderr.write(f"\r{line} " + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def _set_ready(self, ready: bool) -> None:
        self._ready = ready
        self.metrics.ready.set(1 if ready else 0)

    def _update_gauges(self) -> None:
        acc = self.stats.window_accuracy
        if acc is not None:
            self.metrics.prequential_accuracy.set(acc)
        for bucket, (c, n) in self.stats.by_bucket.items():
            if n:
                self.metrics.accuracy_by_position.labels(bucket).set(c / n)
        self.metrics.tasks_seen.set(self.stats.tasks_seen)
        health = self.learner.health()
        for name, items, size in (("episodes", health.replay_episodes, health.replay_bytes),
                                  ("records", health.memory_records, health.memory_bytes)):
            self.metrics.replay_items.labels(name).set(items)
            self.metrics.replay_bytes.labels(name).set(size)
        # None (no probes, or nothing to forget yet) is exported as NaN, never as a false 0.
        for gauge, value in ((self.metrics.retained_accuracy, health.retained_accuracy),
                             (self.metrics.forgetting, health.forgetting)):
            gauge.set(math.nan if value is None else value)
        lag = self.source.lag() if self.source is not None else None
        if lag is not None:
            self.metrics.consumer_lag.set(lag)
        self.metrics.set_partition_lag(self.source.lag_by_partition() if self.source is not None else {})
        self.metrics.update_throughput(self.stats.records_consumed)
