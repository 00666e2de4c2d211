"""Live estimate of forgetting: a small per-task probe set held out from the stream.

The first records of each task, one in every ``hold_out_every``, up to ``per_task``,
are kept aside and never learned from. Every ``every`` learned records the learner
re-evaluates all probe tasks; per task the best accuracy seen so far is kept, and

- retained accuracy = mean current accuracy over the probe tasks;
- forgetting = mean over the tasks other than the current one of (best - current);
  None while only the current task has a probe set (nothing to forget yet is not 0).

Bounded: at most ``max_tasks`` probe tasks (least recently seen dropped first), each
with at most ``per_task`` records.

>>> import torch
>>> p = ForgettingProbe(per_task=2, hold_out_every=2, max_tasks=4)
>>> [p.offer("a", torch.zeros(3), 1) for _ in range(6)]
[False, True, False, True, False, False]
>>> p.evaluate(lambda task, x: torch.ones(len(x), dtype=torch.long), current="b")
(1.0, 0.0)
>>> p.evaluate(lambda task, x: torch.ones(len(x), dtype=torch.long), current="a")
(1.0, None)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Predict = Callable[[str, torch.Tensor], torch.Tensor]  # (task, x [n, d]) -> labels [n]


@dataclass
class _Probe:
    xs: list = field(default_factory=list)
    ys: list = field(default_factory=list)
    offered: int = 0
    best: float | None = None
    last: float | None = None


class ForgettingProbe:
    """Held-out probe records per task and the forgetting they show (see the module doc)."""

    def __init__(self, per_task: int, hold_out_every: int = 10, max_tasks: int = 32) -> None:
        self.per_task, self.hold_out_every, self.max_tasks = per_task, hold_out_every, max_tasks
        self._tasks: OrderedDict[str, _Probe] = OrderedDict()

    def offer(self, task: str, x: torch.Tensor, y: int) -> bool:
        """True if the record is held out as a probe (the caller must not learn from it)."""
        p = self._tasks.get(task)
        if p is None:
            p = self._tasks[task] = _Probe()
            while len(self._tasks) > self.max_tasks:
                self._tasks.popitem(last=False)
        self._tasks.move_to_end(task)
        p.offered += 1
        if len(p.ys) >= self.per_task or p.offered % self.hold_out_every:
            return False
        p.xs.append(x.detach().clone())
        p.ys.append(int(y))
        return True

    def evaluate(self, predict: Predict, current: str | None) -> tuple[float | None, float | None]:
        """Re-evaluates every probe task; returns ``(retained_accuracy, forgetting)``."""
        accs, drops = [], []
        for task, p in self._tasks.items():
            if not p.ys:
                continue
            pred = predict(task, torch.stack(p.xs))
            acc = float((pred == torch.tensor(p.ys)).float().mean())
            p.last, p.best = acc, acc if p.best is None else max(p.best, acc)
            accs.append(acc)
            if task != current:
                drops.append(p.best - acc)
        retained = sum(accs) / len(accs) if accs else None
        forgetting = sum(drops) / len(drops) if drops else None
        return retained, forgetting

    def __len__(self) -> int:
        return len(self._tasks)

    def state_dict(self) -> dict:
        return {"tasks": [
            {"task": t, "x": torch.stack(p.xs) if p.xs else torch.empty(0), "y": torch.tensor(p.ys, dtype=torch.long),
             "offered": p.offered, "best": p.best, "last": p.last}
            for t, p in self._tasks.items()
        ]}

    def load_state_dict(self, state: dict) -> None:
        self._tasks.clear()
        for e in state["tasks"]:
            xs = list(e["x"].unbind(0)) if e["x"].numel() else []
            self._tasks[e["task"]] = _Probe(xs, [int(v) for v in e["y"]], int(e["offered"]), e["best"], e["last"])
