"""Kafka source and sink (kafka-python). The only module that imports ``kafka``.

Offsets are never auto-committed: the daemon commits them after each
checkpoint, and on (re)assignment seeks each partition to the offset its
checkpoint holds, so state and offsets move together.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Sequence, TypeVar

from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from connectors.base import Offsets, RawRecord, SendFailure
from stream_meta.errors import StreamMetaError

log = logging.getLogger(__name__)


class ConnectorError(StreamMetaError):
    """The broker could not be reached or refused an operation (retryable)."""


T = TypeVar("T")


def connect(build: Callable[[int], T], bootstrap: str, timeout_s: float) -> T:
    """``build(bootstrap_timeout_ms)`` retried with backoff until it reaches the cluster or
    ``timeout_s`` is spent; then a :class:`ConnectorError` naming the cause."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        left = deadline - time.monotonic()
        try:
            # Short attempts (a third of what is left, 5 s at most), so retries show in the log.
            return build(int(max(0.5, min(left / 3, 5.0)) * 1000))
        except KafkaError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectorError(
                    f"cannot connect to Kafka at {bootstrap} within {timeout_s:g}s (--connect-timeout-s): {exc}"
                ) from exc
            log.warning("Kafka at %s not reachable (%s); retrying in %.1fs", bootstrap, exc, min(delay, left))
            time.sleep(min(delay, left))
            delay = min(delay * 2, 10.0)


class _Rebalance(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO loop, which is awaited: blocking consumer calls are refused
    there, so the commit before hand-over is awaited asynchronously."""

    def __init__(self, source: "KafkaSource") -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked):
        if not revoked or self.source.on_revoke is None:
            return
        offsets = self.source.on_revoke()  # the owner checkpoints and says what it has learned
        to_commit = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for (t, p), o in offsets.items()
            if TopicPartition(t, p) in revoked
        }
        if to_commit:
            try:
                await self.source._consumer.commit_async(to_commit)
            except KafkaError as exc:
                log.warning("commit before hand-over failed (the new owner may re-learn records): %s", exc)

    async def on_partitions_assigned(self, assigned):
        self.source._assigned(list(assigned))


class KafkaSource:
    """Consumes ``topic`` (and ``labels_topic``, if given) in consumer group ``group``.

    ``start_offsets`` (from the latest checkpoint) win over the group's committed
    offsets at start; ``on_revoke`` runs before partitions are taken away: the owner
    checkpoints and returns its offsets, which are committed before the hand-over so
    the next owner starts where this one stopped. It runs on kafka-python's IO thread:
    it must not call the consumer.

    Both topics are one subscription, so one group assigns, checkpoints and commits the
    partitions of both; with several members, labels must be co-partitioned with their
    records (same key, same partition count: the default range assignor then gives
    partition p of both topics to the same member).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        start_offsets: Offsets | None = None,
        on_revoke: Callable[[], Offsets] | None = None,
        max_poll_records: int = 500,
        client_options: dict[str, Any] | None = None,
        connect_timeout_s: float = 60.0,
        labels_topic: str | None = None,
    ) -> None:
        self.topic = topic
        self.on_revoke = on_revoke
        self._start = dict(start_offsets or {})
        self._targets: dict[TopicPartition, int] | None = None
        self._paused_logged = -math.inf
        self._session_timeout_s = (client_options or {}).get("session_timeout_ms", 10000) / 1000
        # Fetch sizes stay kafka-python's defaults: max_partition_fetch_bytes is a soft limit
        # (KIP-74, the broker returns a first batch larger than it), so records of any size the
        # topic accepts come through and the decoder rejects the oversized ones.
        self._consumer = connect(
            lambda bootstrap_ms: KafkaConsumer(
                bootstrap_servers=bootstrap.split(","),
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=max_poll_records,
                bootstrap_timeout_ms=bootstrap_ms,
                **(client_options or {}),
            ),
            bootstrap, connect_timeout_s,
        )
        self._consumer.subscribe([topic] + ([labels_topic] if labels_topic else []), listener=_Rebalance(self))

    def _assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            # The checkpoint's offset wins once, at start (it may be ahead of the group's
            # commit after a crash). A partition that comes back after a rebalance resumes
            # from the group's committed offset: another member may have learned past ours.
            offset = self._start.pop((tp.topic, tp.partition), None)
            if offset is not None:
                log.info("seeking %s[%d] to checkpointed offset %d", tp.topic, tp.partition, offset)
                self._consumer.seek(tp, offset)

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[RawRecord]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise ConnectorError(f"poll failed: {exc}") from exc
        self._rewind_past_end()
        out = []
        for tp in sorted(batches, key=lambda t: (t.topic, t.partition)):
            for m in batches[tp]:
                # A timestamp of -1 means the message carries none (pre-0.10 message format).
                ts = m.timestamp if m.timestamp is not None and m.timestamp >= 0 else None
                out.append(RawRecord(m.topic, m.partition, m.offset, m.value, m.key, tuple(m.headers or ()), ts))
        return out

    def _rewind_past_end(self) -> None:
        """A position beyond the high watermark means the log was truncated or recreated
        (some brokers answer such fetches with no records rather than an out-of-range
        error). Go back to the log start; the records then arrive with offsets below the
        checkpointed ones, which the service reports and handles by its policy."""
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None and self._consumer.position(tp) > high:
                log.error("%s[%d]: position %d is past the log end %d; seeking to the log start",
                          tp.topic, tp.partition, self._consumer.position(tp), high)
                self._consumer.seek_to_beginning(tp)

    def commit(self, offsets: Offsets) -> None:
        assigned = self._consumer.assignment()
        to_commit = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for (t, p), o in offsets.items()
            if TopicPartition(t, p) in assigned
        }
        if not to_commit:
            return
        try:
            self._consumer.commit(to_commit)
        except KafkaError as exc:
            raise ConnectorError(f"offset commit failed: {exc}") from exc

    def positions(self) -> Offsets:
        return {(tp.topic, tp.partition): self._consumer.position(tp) for tp in self._consumer.assignment()}

    def pause_only(self, partitions: set[tuple[str, int]]) -> None:
        want = {TopicPartition(t, p) for t, p in partitions} & self._consumer.assignment()
        paused = self._consumer.paused()
        if want - paused:
            if time.monotonic() - self._paused_logged >= 60:  # a catch-up pauses often: one line a minute
                self._paused_logged = time.monotonic()
                log.info("pausing %s: enough of it is held until the other topic's messages timed before "
                         "it are read", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(want - paused)))
            self._consumer.pause(*(want - paused))
        if paused - want:
            self._consumer.resume(*(paused - want))
        self._unpark()  # also later: the slot may be exhausted only polls after the resume

    def _unpark(self) -> None:
        """kafka-python 3.0 parks what it had fetched for a partition when it is paused, and on
        resume hands it back only if its in-line slot is None; an exhausted slot (falsy, not
        None) keeps the records parked and the partition unfetched for ever (the daemon stalls,
        seen with 3.0.12). An exhausted slot holds nothing, so emptying it loses nothing."""
        fetcher = getattr(self._consumer, "_fetcher", None)  # private: absent or different in other versions
        current = getattr(fetcher, "_next_partition_records", None)
        if current is not None and not current:
            fetcher._next_partition_records = None

    def lag(self) -> int | None:
        total, known = 0, False
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            known = True
            total += max(0, high - self._consumer.position(tp))
        return total if known else None

    def lag_by_partition(self) -> dict[int, int]:
        # The records topic's partitions only: the metric's label is the partition number.
        return {p: lag for (t, p), lag in self.partition_lags().items() if t == self.topic and lag is not None}

    def partition_lags(self) -> dict[tuple[str, int], int | None]:
        out: dict[tuple[str, int], int | None] = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)  # known after the partition's first fetch
            out[(tp.topic, tp.partition)] = None if high is None else max(0, high - self._consumer.position(tp))
        return out

    def backlog_done(self) -> bool:
        assigned = self._consumer.assignment()
        if not assigned:
            return False
        if self._targets is None:
            # Looked up here, not in the rebalance callback: that runs on kafka-python's IO
            # thread, where blocking calls are refused.
            self._targets = dict(self._consumer.end_offsets(list(assigned)))
            self._confirmed: set[TopicPartition] = set()
            log.info("end offsets at start: %s", {f"{t.topic}[{t.partition}]": o for t, o in self._targets.items()})
        for tp in assigned - self._confirmed:
            # The first fetch's high watermark is the log end as the broker saw it at start;
            # some brokers answer ListOffsets with a batch's base offset, so take the larger.
            high = self._consumer.highwater(tp)
            if high is not None:
                self._targets[tp] = max(self._targets.get(tp, 0), high)
                self._confirmed.add(tp)
        if assigned - self._confirmed:
            return False
        # A position past the high watermark is out of range (the log was truncated or
        # recreated), not the end of the backlog: the fetcher resets it first.
        return all(
            self._targets[tp] <= self._consumer.position(tp) <= (self._consumer.highwater(tp) or 0)
            for tp in assigned
        )

    def connected(self) -> bool:
        """Assigned partitions and a group heartbeat within the session timeout.

        The heartbeat age is the client's ``last-heartbeat-seconds-ago`` metric (the
        same one the Java client exports), so this works against any Kafka broker.
        """
        if not self._consumer.assignment():
            return False
        for group in (self._consumer.metrics() or {}).values():
            ago = group.get("last-heartbeat-seconds-ago")
            if ago is not None:
                # inf until the first heartbeat after joining: assigned and fresh counts as up.
                return not (math.isfinite(ago) and ago >= self._session_timeout_s)
        return True

    def close(self) -> None:
        # The owner checkpoints before closing; leaving the group must not trigger another one.
        self.on_revoke = None
        self._consumer.close(autocommit=False)


def _failure_reason(exc: BaseException) -> str:
    """The bounded reason (SEND_FAILURE_REASONS) for a refused or failed send."""
    if isinstance(exc, (kerr.MessageSizeTooLargeError, kerr.RecordListTooLargeError)):
        return "too_large"
    if isinstance(exc, kerr.AuthorizationError):
        return "not_authorized"
    if isinstance(exc, (kerr.UnknownTopicOrPartitionError, kerr.InvalidTopicError)):
        return "topic_missing"
    if isinstance(exc, (kerr.KafkaTimeoutError, kerr.RequestTimedOutError)):
        return "timeout"
    return "refused"


class KafkaSink:
    """Produces with ``acks=all``. A send the cluster refuses, at once or later on its
    future, is returned by the next :meth:`flush` as a :class:`SendFailure`, never raised.

    A topic whose metadata cannot be had (missing with auto-create off, or the broker away)
    fails sends at once for ``recheck_s`` instead of blocking each one for ``max_block_ms``.
    """

    def __init__(
        self, *, bootstrap: str, client_options: dict[str, Any] | None = None, max_request_size: int = 1 << 20,
        connect_timeout_s: float = 60.0, recheck_s: float = 60.0,
    ) -> None:
        opts = dict(client_options or {})
        # A send waits this long at most for a topic's metadata (default: 60 s per record).
        opts.setdefault("max_block_ms", min(int(opts.get("request_timeout_ms", 30000)), 10000))
        self._producer = connect(
            lambda bootstrap_ms: KafkaProducer(
                bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=5, max_request_size=max_request_size,
                bootstrap_timeout_ms=bootstrap_ms, **opts,
            ),
            bootstrap, connect_timeout_s,
        )
        self.max_request_size = max_request_size
        self.recheck_s = recheck_s
        self._pending: list[tuple[Any, str, Any]] = []
        self._failures: list[SendFailure] = []
        self._unavailable: dict[str, float] = {}  # topic -> monotonic time its sends fail fast until

    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = (),
        tag: Any = None,
    ) -> None:
        until = self._unavailable.get(topic)
        if until is not None and time.monotonic() < until:
            self._failures.append(SendFailure(topic, "topic_missing", "no metadata for the topic (rechecked "
                                              f"every {self.recheck_s:g}s)", tag))
            return
        try:
            future = self._producer.send(topic, value=value, key=key, headers=list(headers))
        except kerr.KafkaTimeoutError as exc:
            # Raised before sending: no metadata for the topic within max_block_ms.
            self._unavailable[topic] = time.monotonic() + self.recheck_s
            self._failures.append(SendFailure(topic, "topic_missing", f"{exc} (missing topic with auto-create "
                                              "off, or the broker unreachable)", tag))
            return
        except KafkaError as exc:
            self._failures.append(SendFailure(topic, _failure_reason(exc), str(exc), tag))
            return
        except ValueError as exc:  # kafka-python checks topic names itself, e.g. "illegal character"
            self._failures.append(SendFailure(topic, "refused", str(exc), tag))
            return
        self._unavailable.pop(topic, None)
        self._pending.append((future, topic, tag))

    def flush(self) -> list[SendFailure]:
        pending, self._pending = self._pending, []
        failures, self._failures = self._failures, []
        try:
            self._producer.flush()
        except KafkaError as exc:  # the futures below say which sends it concerns
            log.warning("producer flush: %s", exc)
        for future, topic, tag in pending:
            if not future.is_done:
                failures.append(SendFailure(topic, "timeout", "not delivered when the flush returned", tag))
            elif future.failed():
                failures.append(SendFailure(topic, _failure_reason(future.exception), str(future.exception), tag))
        return failures

    def check_topics(self, topics: Sequence[str]) -> dict[str, str]:
        """Asks for each topic's metadata, which creates it where the broker auto-creates topics."""
        problems = {}
        for topic in topics:
            try:
                if not self._producer.partitions_for(topic):
                    problems[topic] = "topic_missing: no partitions"
            except KafkaError as exc:
                reason = "topic_missing" if isinstance(exc, kerr.KafkaTimeoutError) else _failure_reason(exc)
                problems[topic] = f"{reason}: {exc}"
            except ValueError as exc:  # an illegal topic name
                problems[topic] = f"refused: {exc}"
        return problems

    def close(self) -> None:
        self._producer.close()


def raise_failures(failures: list[SendFailure]) -> None:
    """For producers that must not lose a message (``produce``, the demo): a failure is an error."""
    if failures:
        raise ConnectorError(f"{len(failures)} sends failed, first: {failures[0].reason}: {failures[0].detail}")


def client_options(cfg) -> dict[str, Any]:
    """kafka-python settings for security and timeouts, taken from a RunConfig."""
    opts: dict[str, Any] = {"security_protocol": cfg.security_protocol, "request_timeout_ms": cfg.request_timeout_ms}
    if cfg.sasl_mechanism:
        opts["sasl_mechanism"] = cfg.sasl_mechanism
        opts["sasl_plain_username"] = cfg.sasl_username
        opts["sasl_plain_password"] = cfg.sasl_password.get_secret_value() if cfg.sasl_password else None
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(cfg, name)
        if value is not None:
            opts[name] = str(value)
    return opts
