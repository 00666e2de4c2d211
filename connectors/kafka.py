"""Kafka source and sink (kafka-python). The only module that imports ``kafka``.

Offsets are never auto-committed: the daemon commits them after each
checkpoint, and on (re)assignment seeks each partition to the offset its
checkpoint holds, so state and offsets move together.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

from kafka import KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from connectors.base import Offsets, RawRecord
from stream_meta.errors import StreamMetaError

log = logging.getLogger(__name__)


class ConnectorError(StreamMetaError):
    """The broker could not be reached or refused an operation (retryable)."""


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
    """Consumes ``topic`` in consumer group ``group``.

    ``start_offsets`` (from the latest checkpoint) win over the group's committed
    offsets at start; ``on_revoke`` runs before partitions are taken away: the owner
    checkpoints and returns its offsets, which are committed before the hand-over so
    the next owner starts where this one stopped. It runs on kafka-python's IO thread:
    it must not call the consumer.
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
    ) -> None:
        self.topic = topic
        self.on_revoke = on_revoke
        self._start = dict(start_offsets or {})
        self._targets: dict[TopicPartition, int] | None = None
        self._session_timeout_s = (client_options or {}).get("session_timeout_ms", 10000) / 1000
        try:
            self._consumer = KafkaConsumer(
                bootstrap_servers=bootstrap.split(","),
                group_id=group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=max_poll_records,
                **(client_options or {}),
            )
        except KafkaError as exc:
            raise ConnectorError(f"cannot connect to Kafka at {bootstrap}: {exc}") from exc
        self._consumer.subscribe([topic], listener=_Rebalance(self))

    def _assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            # The checkpoint's offset wins once, at start (it may be ahead of the group's
            # commit after a crash). A partition that comes back after a rebalance resumes
            # from the group's committed offset: another member may have learned past ours.
            offset = self._start.pop((tp.topic, tp.partition), None)
            if offset is not None:
                log.info("seeking %s[%d] to checkpointed offset %d", tp.topic, tp.partition, offset)
                self._consumer.seek(tp, offset)

    def poll(self, timeout_s: float) -> list[RawRecord]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise ConnectorError(f"poll failed: {exc}") from exc
        self._rewind_past_end()
        out = []
        for tp in sorted(batches, key=lambda t: (t.topic, t.partition)):
            for m in batches[tp]:
                out.append(RawRecord(m.topic, m.partition, m.offset, m.value, m.key))
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
        out = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None:
                out[tp.partition] = max(0, high - self._consumer.position(tp))
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


class KafkaSink:
    """Produces with ``acks=all``; :meth:`flush` raises if any send failed."""

    def __init__(self, *, bootstrap: str, client_options: dict[str, Any] | None = None) -> None:
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=5, **(client_options or {})
            )
        except KafkaError as exc:
            raise ConnectorError(f"cannot connect to Kafka at {bootstrap}: {exc}") from exc
        self._pending: list = []

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = ()) -> None:
        self._pending.append(self._producer.send(topic, value=value, key=key, headers=list(headers)))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._producer.flush()
        failed = [f for f in pending if f.failed()]
        if failed:
            # The caller must not checkpoint or commit past these records; a restart replays them.
            raise ConnectorError(f"{len(failed)} sends failed, first: {failed[0].exception}")

    def close(self) -> None:
        self._producer.close()


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
