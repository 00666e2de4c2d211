"""The two interfaces the daemon talks to: a :class:`Source` of raw records and a :class:`Sink`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to consume


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One message as it came off the source, undecoded."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()  # e.g. content-type of wire format v2
    timestamp_ms: int | None = None  # the message's time on the source (Kafka CreateTime/LogAppendTime), if any

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Source(Protocol):
    """Where records come from. Offsets are committed only after a checkpoint."""

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[RawRecord]:
        """Records available now (possibly none after ``timeout_s``), at most ``max_records``
        (default: the source's own limit)."""

    def commit(self, offsets: Offsets) -> None:
        """Marks everything before ``offsets`` as processed (a fallback to the checkpoint)."""

    def lag(self) -> int | None:
        """Records behind the end of the assigned partitions, if known."""

    def lag_by_partition(self) -> dict[int, int]:
        """Records behind the end of each assigned partition whose end is known (may be empty)."""

    def partition_lags(self) -> dict[tuple[str, int], int | None]:
        """Every assigned (topic, partition): records not yet returned by ``poll`` (None: end not known yet)."""

    def pause_only(self, partitions: set[tuple[str, int]]) -> None:
        """Stops fetching ``partitions`` (the owner holds enough of them) and resumes every other one."""

    def backlog_done(self) -> bool:
        """True once every record present when the source started was returned."""

    def connected(self) -> bool:
        """False while the source knows it cannot reach its backend."""

    def close(self) -> None: ...


# Why a destination refused a message: a bounded set (a Prometheus label).
SEND_FAILURE_REASONS = ("too_large", "topic_missing", "not_authorized", "timeout", "refused")


@dataclass(frozen=True, slots=True)
class SendFailure:
    """A message the destination did not take; ``tag`` is what the caller gave to ``send``."""

    topic: str
    reason: str  # one of SEND_FAILURE_REASONS
    detail: str
    tag: Any = None


class Sink(Protocol):
    """Where predictions and dead letters go.

    A message the destination refuses never raises from ``send``: sends may be
    asynchronous, so every failure, early or late, is returned by the next ``flush``.
    """

    def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = (),
        tag: Any = None,
    ) -> None: ...

    def flush(self) -> list[SendFailure]:
        """Blocks until everything sent so far is delivered or has failed; returns the failures."""

    def check_topics(self, topics: Sequence[str]) -> dict[str, str]:
        """Topics this sink cannot write to (or have created), with the reason; empty if all are fine."""

    def close(self) -> None: ...
