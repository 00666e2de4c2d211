"""Task signatures: class-conditional input means, to recognise a task that comes back.

Each task keeps the running mean of its inputs per class (the newest ``horizon`` records
of a class weigh most) and its usual distance of a record to its class's mean. New
records fit a stored task when their mean distance to that task's class means, relative
to the task's usual distance, is small. Unlike fast weights re-adapted from meta-
parameters that have moved on since, a signature does not drift while the task is away.
Bounded: the ``capacity`` most recently used tasks are kept (``C x d`` floats each).

>>> import torch
>>> s = TaskSignatures(capacity=4)
>>> for i in range(20):
...     s.update("a", torch.tensor([float(i % 2), 0.0]) + 0.01 * (i % 3), i % 2)
...     s.update("b", torch.tensor([0.0, 5.0 + i % 2]) + 0.01 * (i % 3), i % 2)
>>> s.best(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([1, 0]), exclude="b")[0]
'a'
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch


@dataclass
class _Signature:
    means: dict[int, torch.Tensor] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    dist: float | None = None  # EWMA of a record's squared distance to its class mean (per feature)


class TaskSignatures:
    """Bounded task -> class means; :meth:`best` scores new records against them."""

    def __init__(self, capacity: int = 64, horizon: int = 50, alpha: float = 0.05) -> None:
        self.capacity, self.horizon, self.alpha = capacity, horizon, alpha
        self._tasks: OrderedDict[str, _Signature] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task: str) -> bool:
        return task in self._tasks

    def update(self, task: str, x: torch.Tensor, y: int) -> None:
        sig = self._tasks.get(task)
        if sig is None:
            sig = self._tasks[task] = _Signature()
            while len(self._tasks) > self.capacity:
                self._tasks.popitem(last=False)
        self._tasks.move_to_end(task)
        x = x.detach().float()
        mu, k = sig.means.get(y), sig.counts.get(y, 0)
        if mu is None:
            sig.means[y], sig.counts[y] = x.clone(), 1
            return
        if k >= 2:  # prequential: the distance before this record moves the mean
            d = float(((x - mu) ** 2).mean())
            sig.dist = d if sig.dist is None else (1 - self.alpha) * sig.dist + self.alpha * d
        k = min(k + 1, self.horizon)
        sig.means[y] = mu + (x - mu) / k
        sig.counts[y] = k

    def score(self, task: str, x: torch.Tensor, y: torch.Tensor) -> float:
        """Mean distance of the rows to ``task``'s class means over its usual distance (inf: unknown)."""
        sig = self._tasks.get(task)
        if sig is None or not sig.dist:
            return float("inf")
        ds = [float(((x[i] - sig.means[int(c)]) ** 2).mean()) for i, c in enumerate(y.tolist()) if int(c) in sig.means]
        if len(ds) * 2 < len(y):  # most of the new records' classes were never seen in that task
            return float("inf")
        return sum(ds) / len(ds) / sig.dist

    def best(self, x: torch.Tensor, y: torch.Tensor, exclude: str | None = None) -> tuple[str | None, float]:
        """The stored task the rows fit best and its score."""
        scores = {t: self.score(t, x, y) for t in self._tasks if t != exclude}
        if not scores:
            return None, float("inf")
        t = min(scores, key=scores.get)
        return t, scores[t]

    def state_dict(self) -> dict:
        return {"tasks": [
            {"task": t, "classes": list(s.means), "means": torch.stack(list(s.means.values())) if s.means else torch.empty(0),
             "counts": [s.counts[c] for c in s.means], "dist": s.dist}
            for t, s in self._tasks.items()]}

    def load_state_dict(self, state: dict) -> None:
        self._tasks.clear()
        for e in state["tasks"]:
            means = e["means"].unbind(0) if e["classes"] else ()
            self._tasks[e["task"]] = _Signature(dict(zip(e["classes"], means)), dict(zip(e["classes"], e["counts"])), e["dist"])
