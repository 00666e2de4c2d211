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
