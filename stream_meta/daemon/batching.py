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

With a ``labels_topic`` the two topics are merged by message time (Kafka Streams'
rule): a records block goes once every labels partition shows a label timed at or after
its first record or is caught up (nothing left to fetch), preceded by the labels timed
before it, ``size`` at a time; the labels after the last record go, in aligned blocks, once
every records partition is caught up. The merged order is then a function of the logs,
not of fetch timing, so a restored daemon learns late labels exactly where an
uninterrupted one did; at ``size`` 1 it learns exactly what it would from one topic holding
both in time order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from connectors.base import RawRecord


class Batcher:
    """Holds polled records until their offset-aligned block is complete (or waited enough)."""

    def __init__(self, size: int, max_wait_s: float, labels_topic: str | None = None) -> None:
        self.size = size
        self.max_wait_s = max_wait_s
        self.labels_topic = labels_topic
        self._blocked = False  # a ready block waits for a labels partition to be fetched
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

        ``lags`` (the source's :meth:`partition_lags`) is read with a ``labels_topic`` only.
        """
        if self.labels_topic is not None:
            return self._ready_merged(now, drain, lags or {})
        out: list[tuple[list[RawRecord], list[float]]] = []
        for key in list(self._held):
            while cut := self._cut(key, now, drain):
                out.append(self._take(key, cut, now))
            self._forget_empty(key)
        return out

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

    def _ready_merged(
        self, now: float, drain: bool, lags: dict[tuple[str, int], int | None],
    ) -> list[tuple[list[RawRecord], list[float]]]:
        """Records blocks, each led by the labels timed before it; then labels alone (see the module)."""
        def caught_up(key: tuple[str, int]) -> bool:
            return drain or (lags.get(key) == 0 and not self._held.get(key))

        label_keys = sorted(k for k in {*self._held, *lags} if k[0] == self.labels_topic)
        out: list[tuple[list[RawRecord], list[float]]] = []
        self._blocked = False
        for key in [k for k in self._held if k[0] != self.labels_topic]:
            while cut := self._cut(key, now, drain):
                before = self._labels_before(self._held[key][0][0].timestamp_ms, label_keys, drain, lags)
                if before is None:  # a label timed before this block may still be on its way
                    self._blocked = True
                    return out
                for k, n in before:
                    while n:
                        out.append(self._take(k, min(n, self.size), now))
                        n -= min(n, self.size)
                    self._forget_empty(k)
                out.append(self._take(key, cut, now))
            self._forget_empty(key)
        if all(caught_up(k) for k in {*self._held, *lags} if k[0] != self.labels_topic):
            for key in label_keys:  # their records were all learned or are not in the logs
                while cut := self._cut(key, now, drain or lags.get(key) == 0):
                    out.append(self._take(key, cut, now))
                self._forget_empty(key)
        return out

    def _labels_before(
        self, head_ms: int | None, label_keys: list[tuple[str, int]], drain: bool,
        lags: dict[tuple[str, int], int | None],
    ) -> list[tuple[tuple[str, int], int]] | None:
        """Per labels partition, how many held labels are timed before ``head_ms`` (a prefix, so a
        late-stamped label holds back the ones after it); None while a partition may hold more."""
        out = []
        for key in label_keys:
            held = self._held.get(key, [])
            n = 0
            while n < len(held) and (head_ms is None or held[n][0].timestamp_ms is None
                                     or held[n][0].timestamp_ms < head_ms):
                n += 1
            if n == len(held) and not drain and lags.get(key) != 0:
                return None
            if n:
                out.append((key, n))
        return out

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
