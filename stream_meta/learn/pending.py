"""Records predicted without a label, waiting for the label to arrive.

The daemon :meth:`PendingStore.add`\\ s each unlabelled record that has an id (features,
the task it was routed to, the prediction made then, where it came from). A later label
message is :meth:`PendingStore.join`\\ ed: the record comes back once, to be learned and
scored against that prediction, or the join says why not (one of
:data:`JOIN_REASONS`). The store is bounded two ways: ``capacity`` records (the oldest
is evicted first) and a TTL counted in records the daemon consumed (``now``), so a
label that comes too late is ``label_expired`` rather than learned out of context.
Recently expired and recently joined ids are remembered (bounded) to tell an expired
or duplicate label from one for an id never seen.

>>> import torch
>>> s = PendingStore(capacity=2, ttl_records=10)
>>> s.add("r-1", torch.zeros(3), "t", prediction=1, now=0)
[]
>>> s.join("r-1", 2, now=4).delay_records
4
>>> s.join("r-1", 2, now=5)
'label_duplicate'
>>> s.join("r-9", 2, now=5)
'label_unknown_id'
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

JOIN_REASONS = ("label_unknown_id", "label_expired", "label_duplicate")


@dataclass(frozen=True, slots=True)
class Pending:
    """One unlabelled record kept for its label."""

    id: str
    x: torch.Tensor
    task: str
    prediction: int
    arrived: int  # the daemon's record count when it arrived
    topic: str = ""
    partition: int = -1
    offset: int = -1
    arrived_s: float = 0.0  # wall-clock arrival, for the delay histogram in seconds


@dataclass(frozen=True, slots=True)
class Joined:
    """A record whose label arrived: learn ``(record.x, y)`` under ``record.task``."""

    record: Pending
    y: int
    delay_records: int

    @property
    def correct(self) -> bool:
        return self.record.prediction == self.y


class PendingStore:
    """Bounded id -> :class:`Pending` map with a TTL in records; checkpointed whole."""

    def __init__(self, capacity: int = 100_000, ttl_records: int = 1_000_000, memory: int | None = None) -> None:
        if capacity < 1 or ttl_records < 1:
            raise ValueError(f"pending capacity and label TTL must be >= 1, got {capacity}, {ttl_records}")
        self.capacity, self.ttl_records = capacity, ttl_records
        self.memory = capacity if memory is None else memory  # how many expired / joined ids are remembered
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._joined: OrderedDict[str, None] = OrderedDict()
        self.evicted = 0  # lost to capacity (their labels will read as expired)
        self.expired = 0

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, rid: str) -> bool:
        return rid in self._pending

    def add(self, rid: str, x: torch.Tensor, task: str, prediction: int, now: int, *, topic: str = "",
            partition: int = -1, offset: int = -1, arrived_s: float = 0.0) -> list[Pending]:
        """Keeps a record for its label; returns the records this pushed out (expired or over capacity).

        An id already pending is replaced by the newer record (the old one is returned).
        """
        out = self.expire(now)
        old = self._pending.pop(rid, None)
        if old is not None:
            out.append(old)
        self._joined.pop(rid, None)  # an id sent again is a new record: its label is wanted again
        self._expired.pop(rid, None)
        self._pending[rid] = Pending(rid, x.detach().clone(), task, int(prediction), int(now), topic, partition,
                                     offset, arrived_s)
        while len(self._pending) > self.capacity:
            _, gone = self._pending.popitem(last=False)
            self.evicted += 1
            self._remember(self._expired, gone.id)
            out.append(gone)
        return out

    def expire(self, now: int) -> list[Pending]:
        """Drops records older than the TTL (the oldest sit first); returns them."""
        out = []
        while self._pending:
            first = next(iter(self._pending.values()))
            if now - first.arrived <= self.ttl_records:
                break
            self._pending.popitem(last=False)
            self.expired += 1
            self._remember(self._expired, first.id)
            out.append(first)
        return out

    def join(self, rid: str, y: int, now: int) -> Joined | str:
        """The pending record ``rid`` with its label ``y``, removed from the store, or a reason."""
        self.expire(now)
        rec = self._pending.pop(rid, None)
        if rec is None:
            if rid in self._joined:
                return "label_duplicate"
            if rid in self._expired:
                return "label_expired"
            return "label_unknown_id"
        self._remember(self._joined, rid)
        return Joined(rec, int(y), int(now) - rec.arrived)

    def oldest_age(self, now: int) -> int:
        """Records since the oldest pending record arrived (0 when empty): a gauge."""
        return 0 if not self._pending else int(now) - next(iter(self._pending.values())).arrived

    def nbytes(self) -> int:
        return sum(p.x.numel() * p.x.element_size() for p in self._pending.values())

    def _remember(self, ids: OrderedDict[str, None], rid: str) -> None:
        ids[rid] = None
        ids.move_to_end(rid)
        while len(ids) > self.memory:
            ids.popitem(last=False)

    # -- state ------------------------------------------------------------------
    def state_dict(self) -> dict:
        recs = list(self._pending.values())
        return {
            "x": torch.stack([p.x for p in recs]) if recs else torch.empty(0),
            "records": [{k: getattr(p, k) for k in Pending.__slots__ if k != "x"} for p in recs],
            "expired_ids": list(self._expired),
            "joined_ids": list(self._joined),
            "evicted": self.evicted,
            "expired": self.expired,
        }

    def load_state_dict(self, state: dict) -> None:
        self._pending.clear()
        xs = state["x"].unbind(0) if state["records"] else ()
        for x, meta in zip(xs, state["records"]):
            self._pending[meta["id"]] = Pending(x=x, **meta)
        self._expired = OrderedDict.fromkeys(state["expired_ids"])
        self._joined = OrderedDict.fromkeys(state["joined_ids"])
        self.evicted, self.expired = int(state["evicted"]), int(state["expired"])
