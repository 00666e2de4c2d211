"""Merges a labels topic into the records' learn batches by message time (``--labels-topic``).

Kafka Streams' rule for joining topics: a records block (the offset-aligned block of
:class:`~stream_meta.daemon.batching.Batcher`) goes once every labels partition shows a
label timed at or after its first record, or has nothing left to fetch; the labels timed
before it go first. Labels are cut at the labels partition's own aligned blocks (and where
a records block begins), and labels alone go once every records partition is caught up.
The merged order is then a function of the logs, not of fetch timing: a restored daemon
learns late labels exactly where an uninterrupted one did, and at ``size`` 1 exactly what it
would from one topic holding both in time order. A label only ever goes after every
record timed before it, so it finds its record pending.

Fetching is bounded: a partition holding ``hold_limit`` messages is reported by
:meth:`TimeMerge.full` for the source to pause (a labels topic far ahead of its records
must not be read into memory whole), and labels timed before every records partition's
next record go in whole blocks as soon as they are fetched, so the partition a records
block waits for is never the one paused.

>>> from connectors.base import RawRecord
>>> m = TimeMerge(1, 60.0, "labels")
>>> m.add([RawRecord("records", 0, 0, b"r0", timestamp_ms=100)], now=0.0)
>>> m.ready(0.0, lags={("records", 0): 0, ("labels", 0): 2})  # labels before 100 may still come
[]
>>> m.add([RawRecord("labels", 0, 0, b"l", timestamp_ms=50), RawRecord("labels", 0, 1, b"m", timestamp_ms=150)], 0.0)
>>> [[(r.topic, r.offset) for r in b] for b, _ in m.ready(0.0, lags={("records", 0): 9, ("labels", 0): 0})]
[[('labels', 0)], [('records', 0)]]
"""

from __future__ import annotations

import math

from connectors.base import RawRecord
from stream_meta.daemon.batching import Batcher

Key = tuple[str, int]
Lags = dict[Key, int | None]
Batch = tuple[list[RawRecord], list[float]]


def _ms(record: RawRecord) -> float:
    # A message without a time (pre-0.10 format) cannot be ordered: it holds nothing back.
    return -math.inf if record.timestamp_ms is None else record.timestamp_ms


class TimeMerge(Batcher):
    """A :class:`Batcher` for records plus the labels topic ``labels_topic``; see the module."""

    def __init__(self, size: int, max_wait_s: float, labels_topic: str, hold_limit: int | None = None) -> None:
        super().__init__(size, max_wait_s)
        self.labels_topic = labels_topic
        self.hold_limit = max(1000, 2 * size) if hold_limit is None else max(hold_limit, 2 * size)
        self._full: set[Key] = set()

    def poll_size(self, next_offsets: dict[Key, int]) -> int | None:
        """No limit (the source's own): the merge needs the labels read ahead of the records'
        time; what it holds is bounded by pausing partitions instead (:meth:`full`)."""
        return None

    def full(self) -> set[Key]:
        """Partitions holding ``hold_limit`` messages or more, until down to half of it (so a
        pause is not undone by the next message learned): the source pauses their fetching."""
        self._full = {k for k, h in self._held.items()
                      if len(h) >= self.hold_limit or (k in self._full and len(h) > self.hold_limit // 2)}
        return set(self._full)

    def ready(self, now: float, drain: bool = False, lags: Lags | None = None) -> list[Batch]:
        lags = lags or {}
        keys = {*self._held, *lags}
        label_keys = sorted(k for k in keys if k[0] == self.labels_topic)
        record_keys = [k for k in self._held if k[0] != self.labels_topic]  # held order, as Batcher
        out: list[Batch] = []
        self._blocked = False
        for key in record_keys:
            while cut := self._cut(key, now, drain):
                head = _ms(self._held[key][0][0])
                bound = min(head if head > -math.inf else math.inf, self._bound(keys, lags, drain, skip=key))
                counts = self._labels_before(bound, label_keys, drain, lags)
                if counts is None:  # a label timed before this block may still be on its way
                    self._blocked = True
                    break
                for k, n in counts:
                    out += self._take_labels(k, n, now, whole_only=False)
                out.append(self._take(key, cut, now))
            self._forget_empty(key)
            if self._blocked:
                break
        bound = self._bound(keys, lags, drain)
        for key in label_keys:
            if bound == math.inf:  # every record is learned: the labels go, in aligned blocks
                while cut := self._cut(key, now, drain or lags.get(key) == 0):
                    out.append(self._take(key, cut, now))
            else:  # whole blocks timed before every next record go now, so none waits on a full partition
                n = self._count_before(key, bound)
                out += self._take_labels(key, n, now, whole_only=True)
            self._forget_empty(key)
        return out

    def _bound(self, keys: set[Key], lags: Lags, drain: bool, skip: Key | None = None) -> float:
        """Labels timed before this follow every record that may still come: the earliest next
        record of the records partitions (+inf for one caught up, -inf for one not fetched yet)."""
        bound = math.inf
        for key in keys:
            if key[0] == self.labels_topic or key == skip:
                continue
            held = self._held.get(key)
            if held:
                head = _ms(held[0][0])
                bound = min(bound, math.inf if head == -math.inf else head)
            elif not (drain or lags.get(key) == 0):
                bound = -math.inf
        return bound

    def _count_before(self, key: Key, bound: float) -> int:
        """How many held labels of ``key`` are timed before ``bound``: a prefix, so a late-stamped
        label holds back the ones after it."""
        held = self._held.get(key, [])
        n = 0
        while n < len(held) and _ms(held[n][0]) < bound:
            n += 1
        return n

    def _labels_before(self, bound: float, label_keys: list[Key], drain: bool, lags: Lags) -> list[tuple[Key, int]] | None:
        """Per labels partition, the held labels timed before ``bound``; None while one may hold more."""
        out = []
        for key in label_keys:
            n = self._count_before(key, bound)
            if n == len(self._held.get(key, ())) and not drain and lags.get(key) != 0:
                return None
            out.append((key, n))
        return out

    def _take_labels(self, key: Key, n: int, now: float, whole_only: bool) -> list[Batch]:
        """The first ``n`` held labels of ``key``, cut at the partition's aligned block ends (the
        same cuts whenever they go); ``whole_only``: stop at a block not complete within them."""
        out: list[Batch] = []
        while n > 0:
            held = self._held[key]
            end = (held[0][0].offset // self.size + 1) * self.size
            cut = 0
            while cut < n and held[cut][0].offset < end:
                cut += 1
            complete = held[cut - 1][0].offset == end - 1 or (cut < len(held) and held[cut][0].offset >= end)
            if whole_only and not complete:
                break
            out.append(self._take(key, cut, now))
            n -= cut
        return out
