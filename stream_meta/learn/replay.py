"""Bounded replay memory of past episodes (reservoir sampling, Vitter's Algorithm R).

Each of the ``n`` episodes offered so far is in memory with probability
``capacity / n``; insertion is O(1) whatever the stream length.
"""

from __future__ import annotations

import torch

from stream_meta.meta import Episode


class EpisodeReservoir:
    """Uniform sample of the episode stream, at most ``capacity`` episodes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: list[Episode] = []
        self._offered = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def offered(self) -> int:
        return self._offered

    def add(self, episode: Episode, generator: torch.Generator) -> None:
        self._offered += 1
        if self.capacity == 0:
            return
        if len(self._items) < self.capacity:
            self._items.append(episode)
            return
        j = int(torch.randint(self._offered, (1,), generator=generator))
        if j < self.capacity:
            self._items[j] = episode

    def sample(self, n: int, generator: torch.Generator) -> list[Episode]:
        """Up to ``n`` distinct stored episodes, uniformly at random."""
        if n <= 0 or not self._items:
            return []
        idx = torch.randperm(len(self._items), generator=generator)[:n]
        return [self._items[int(i)] for i in idx]

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for e in self._items
            for t in (e.support_x, e.support_y, e.query_x, e.query_y)
        )

    def state_dict(self) -> dict:
        return {
            "offered": self._offered,
            "episodes": [
                {"task": e.task, "sx": e.support_x, "sy": e.support_y, "qx": e.query_x, "qy": e.query_y}
                for e in self._items
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        self._offered = int(state["offered"])
        self._items = [Episode(d["task"], d["sx"], d["sy"], d["qx"], d["qy"]) for d in state["episodes"]]


POLICIES: tuple[str, ...] = ("reservoir", "task", "class")


class RecordMemory:
    """Bounded, tensor-backed memory of labelled records with O(1) insertion.

    Records are grouped by ``policy``: one group (``"reservoir"``: Vitter's
    Algorithm R, uniform over the stream), the record's task (``"task"``) or its
    label (``"class"``). While the memory has room every record is kept. Once it is
    full, a record of a group that is not among the largest replaces a random
    member of a largest group, so the groups level out; a record of a largest
    group is kept with probability ``stored / seen`` of its group, replacing a
    random member of its own group (reservoir sampling within the group, the
    class-balanced reservoir of Chrysakis & Moens, 2020). Insertion costs
    O(number of groups held), never more as the stream grows; the tensors are
    allocated once, so the memory's size in bytes is fixed by ``capacity``.

    >>> m = RecordMemory(4, policy="class")
    >>> g = torch.Generator().manual_seed(0)
    >>> for i in range(100):
    ...     m.add("t", torch.full((3,), float(i)), 0 if i < 90 else 1, g)
    >>> sorted(m.group_sizes().values())
    [2, 2]
    """

    def __init__(self, capacity: int, policy: str = "reservoir") -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if policy not in POLICIES:
            raise ValueError(f"unknown replay policy {policy!r}; choose one of {POLICIES}")
        self.capacity, self.policy = capacity, policy
        self._x: torch.Tensor | None = None  # [capacity, dim], allocated on the first record
        self._y = torch.zeros(capacity, dtype=torch.long)
        self._tasks: list[str] = []  # task of each slot
        self._members: dict[object, list[int]] = {}  # group -> its slots
        self._pos: list[int] = []  # slot -> its index in its group's list
        self._seen: dict[object, int] = {}  # group -> records offered (groups held only)
        self._offered = 0

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def offered(self) -> int:
        return self._offered

    def _group(self, task: str, y: int) -> object:
        return None if self.policy == "reservoir" else task if self.policy == "task" else int(y)

    def group_sizes(self) -> dict[object, int]:
        return {g: len(m) for g, m in self._members.items()}

    def _detach(self, slot: int) -> None:
        group = self._group(self._tasks[slot], int(self._y[slot]))
        members = self._members[group]
        i, last = self._pos[slot], members[-1]
        members[i], self._pos[last] = last, i
        members.pop()
        if not members:
            del self._members[group]
            del self._seen[group]

    def _write(self, slot: int, task: str, x: torch.Tensor, y: int, group: object) -> None:
        if self._x is None:
            self._x = torch.zeros(self.capacity, x.numel(), dtype=torch.float32)
        self._x[slot] = x.reshape(-1)
        self._y[slot] = int(y)
        if slot == len(self._tasks):
            self._tasks.append(task)
            self._pos.append(0)
        else:
            self._tasks[slot] = task
        members = self._members.setdefault(group, [])
        self._pos[slot] = len(members)
        members.append(slot)

    def add(self, task: str, x: torch.Tensor, y: int, generator: torch.Generator) -> None:
        """Offers one record; it is stored, replaces one, or is dropped (see the class doc)."""
        self._offered += 1
        if self.capacity == 0:
            return
        group = self._group(task, y)
        seen = self._seen[group] = self._seen.get(group, 0) + 1
        if len(self._tasks) < self.capacity:
            self._write(len(self._tasks), task, x, y, group)
            return
        largest = max(len(m) for m in self._members.values())
        held = len(self._members.get(group, ()))
        if held < largest:
            candidates = [g for g, m in self._members.items() if len(m) == largest]
            victims = self._members[candidates[int(torch.randint(len(candidates), (1,), generator=generator))]]
        else:
            if int(torch.randint(seen, (1,), generator=generator)) >= held:
                return
            victims = self._members[group]
        slot = victims[int(torch.randint(len(victims), (1,), generator=generator))]
        self._detach(slot)
        self._seen.setdefault(group, seen)  # the group may have been emptied and dropped
        self._write(slot, task, x, y, group)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``n`` distinct stored records ``(x [k, dim], y [k])``, uniformly at random."""
        k = min(n, len(self._tasks))
        if k <= 0 or self._x is None:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
        idx = torch.randperm(len(self._tasks), generator=generator)[:k]
        return self._x[idx], self._y[idx]

    def records(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Every stored record: ``(tasks, x, y)`` in slot order."""
        n = len(self._tasks)
        x = self._x[:n] if self._x is not None else torch.empty(0, 0)
        return list(self._tasks), x, self._y[:n]

    def nbytes(self) -> int:
        x = 0 if self._x is None else self._x.numel() * self._x.element_size()
        return x + self._y.numel() * self._y.element_size()

    def state_dict(self) -> dict:
        tasks, x, y = self.records()
        return {
            "capacity": self.capacity, "policy": self.policy, "offered": self._offered,
            "tasks": tasks, "x": x.clone(), "y": y.clone(),
            "seen": [[g, n] for g, n in self._seen.items()],
            "members": [[g, list(m)] for g, m in self._members.items()],  # their order steers eviction
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity or state["policy"] != self.policy:
            raise ValueError(
                f"replay memory state is for capacity={state['capacity']} policy={state['policy']!r}, "
                f"this memory has capacity={self.capacity} policy={self.policy!r}"
            )
        self.__init__(self.capacity, self.policy)
        for task, x, y in zip(state["tasks"], state["x"], state["y"].tolist()):
            self._write(len(self._tasks), task, x, y, self._group(task, y))
        self._seen = {g: int(n) for g, n in state["seen"]}
        self._members = {g: list(m) for g, m in state["members"]}
        for members in self._members.values():
            for i, slot in enumerate(members):
                self._pos[slot] = i
        self._offered = int(state["offered"])
