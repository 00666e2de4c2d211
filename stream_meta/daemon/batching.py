"""Cuts the polled records into learn batches that do not depend on how the polls fell.

A batch holds the records of one partition whose offsets lie in one aligned block
``[k*N, (k+1)*N)``. A block is handed out when it is complete, or once its oldest record
has waited ``max_wait_s`` (a slow topic is not held back), or when the daemon drains
(stop, end of backlog). Because checkpoints fall between batches and blocks are aligned
to offsets, a daemon restored from a checkpoint cuts the rest of the stream exactly as an
uninterrupted one did: with ``--deterministic`` the learning is the same, batch for batch.

>>> from connectors.base import RawRecord
>>> b = Batcher(size=4, max_wait_s=60)
>>> b.add([RawRecord("t", 0, o, b"") for o in range(2, 9)], now=0.0)
>>> [[r.offset for r in batch] for batch, _ in b.ready(now=1.0)]
[[2, 3], [4, 5, 6, 7]]
>>> [[r.offset for r in batch] for batch, arrived in b.ready(now=1.0, drain=True)]
[[8]]

A labels topic beside the records is merged in by :class:`stream_meta.daemon.merge.TimeMerge`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from connectors.base import RawRecord


class Batcher:
    """Holds polled records until their offset-aligned block is complete (or waited enough)."""

    def __init__(self, size: int, max_wait_s: float) -> None:
        self.size = size
        self.max_wait_s = max_wait_s
        self._blocked = False  # a ready block waits for another partition to be fetched (TimeMerge)
        # (topic, partition) -> records not handed out yet, in offset order, with when each was polled
        self._held: OrderedDict[tuple[str, int], list[tuple[RawRecord, float]]] = OrderedDict()
        self._since: dict[tuple[str, int], float] = {}

    def add(self, records: Iterable[RawRecord], now: float) -> None:
        for r in records:
            key = (r.topic, r.partition)
            held = self._held.setdefault(key, [])
            if not held:
                self._since[key] = now
            held.append((r, now))

    def ready(
        self, now: float, drain: bool = False, lags: dict[tuple[str, int], int | None] | None = None,
    ) -> list[tuple[list[RawRecord], list[float]]]:
        """The batches that may be learned now, each with when its records were polled.

        ``lags`` (the source's ``partition_lags``) is read by :class:`TimeMerge` only.
        """
        out: list[tuple[list[RawRecord], list[float]]] = []
        for key in list(self._held):
            while cut := self._cut(key, now, drain):
                out.append(self._take(key, cut, now))
            self._forget_empty(key)
        return out

    def full(self) -> set[tuple[str, int]]:
        """Partitions whose fetching should pause: none here (every complete block goes at once)."""
        return set()

    def _cut(self, key: tuple[str, int], now: float, drain: bool) -> int:
        """How many held records of ``key`` form its next block, if it may go now (else 0)."""
        held = self._held.get(key)
        if not held:
            return 0
        block_end = (held[0][0].offset // self.size + 1) * self.size
        cut = 0
        while cut < len(held) and held[cut][0].offset < block_end:
            cut += 1
        complete = cut < len(held) or held[cut - 1][0].offset == block_end - 1
        return cut if complete or drain or now - self._since[key] >= self.max_wait_s else 0

    def _take(self, key: tuple[str, int], cut: int, now: float) -> tuple[list[RawRecord], list[float]]:
        held = self._held[key]
        taken = held[:cut]
        del held[:cut]
        self._since[key] = now
        return [r for r, _ in taken], [t for _, t in taken]

    def _forget_empty(self, key: tuple[str, int]) -> None:
        if key in self._held and not self._held[key]:
            del self._held[key]
            self._since.pop(key, None)

    def poll_size(self, next_offsets: dict[tuple[str, int], int]) -> int | None:
        """Records to ask the next poll for: those that complete the held block, or (nothing held)
        the rest of the block the next offset falls in. Polling further ahead would leave records
        waiting, polled, while earlier blocks are learned: their poll-to-prediction latency would
        grow with the poll size. With several partitions held or assigned: one block's worth.

        >>> b = Batcher(size=64, max_wait_s=1)
        >>> b.poll_size({("t", 0): 1000}), b.add([RawRecord("t", 0, 1000, b"")], now=0.0), b.poll_size({})
        (24, None, 23)
        """
        if len(self._held) == 1:
            last = next(iter(self._held.values()))[-1][0].offset
            return max(1, (last // self.size + 1) * self.size - last - 1)  # 0: complete, not yet handed out
        if not self._held and len(next_offsets) == 1:
            return self.size - next(iter(next_offsets.values())) % self.size
        return self.size

    def wait_s(self, now: float) -> float | None:
        """How long until the oldest held block is due anyway (None: nothing held, or a block
        waits for labels to be fetched: the poll returns as soon as they come)."""
        if not self._since or self._blocked:
            return None
        return max(0.0, min(self._since.values()) + self.max_wait_s - now)

    def clear(self) -> int:
        """Forgets every held record (partitions were revoked: their next owner reads them); returns how many."""
        n = sum(len(h) for h in self._held.values())
        self._held.clear()
        self._since.clear()
        return n

    def __len__(self) -> int:
        return sum(len(h) for h in self._held.values())
