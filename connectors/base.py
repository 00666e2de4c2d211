"""The two interfaces the daemon talks to: a :class:`Source` of raw records and a :class:`Sink`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to consume


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One message as it came off the source, undecoded."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Source(Protocol):
    """Where records come from. Offsets are committed only after a checkpoint."""

    def poll(self, timeout_s: float) -> list[RawRecord]:
        """Records available now (possibly none after ``timeout_s``)."""

    def commit(self, offsets: Offsets) -> None:
        """Marks everything before ``offsets`` as processed (a fallback to the checkpoint)."""

    def lag(self) -> int | None:
        """Records behind the end of the assigned partitions, if known."""

    def lag_by_partition(self) -> dict[int, int]:
        """Records behind the end of each assigned partition whose end is known (may be empty)."""

    def backlog_done(self) -> bool:
        """True once every record present when the source started was returned."""

    def connected(self) -> bool:
        """False while the source knows it cannot reach its backend."""

    def close(self) -> None: ...


class Sink(Protocol):
    """Where predictions and dead letters go."""

    def send(self, topic: str, value: bytes, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = ()) -> None: ...

    def flush(self) -> None:
        """Blocks until everything sent so far is durably delivered (or raises)."""

    def close(self) -> None: ...
