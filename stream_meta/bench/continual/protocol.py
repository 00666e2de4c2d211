"""The MER / La-MAML protocol for stream-meta's learners: one pass over the tasks,
test-then-train per record, and after each task an evaluation on the held-out data
of every task.

Two accuracy matrices are kept for a meta-learner:

- ``matrix``: the shared meta-parameters alone (what the published MER / La-MAML
  numbers report: one network, no test-time adaptation);
- ``matrix_adapted``: for each task, fast weights adapted from the current
  meta-parameters on that task's last records the stream delivered (the learner's
  own window size and inner steps), as the daemon predicts. A task not reached yet
  is evaluated with the meta-parameters.

>>> import numpy as np, torch
>>> from stream_meta.data.datasets import make_tasks
>>> from stream_meta.learn.config import ModelConfig
>>> torch.set_num_threads(1)
>>> tasks = make_tasks("digits-split", n_tasks=2, per_task=20, test_per_task=10)
>>> r = run_protocol(OnlineSGDLearner(ModelConfig(64, 10, (8,))), tasks)
>>> len(r.matrix), r.matrix_adapted is None, r.records
(2, True, 40)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stream_meta.data.datasets import Task
from stream_meta.bench.continual.metrics import cl_metrics
from stream_meta.learn.learner import OnlineMetaLearner
from stream_meta.learn.sgd import OnlineSGDLearner
from stream_meta.meta.mlp import mlp_forward
from stream_meta.daemon.stats import POSITION_BUCKETS, position_bucket

Progress = Callable[[int, int], None]  # (tasks done, tasks in all)


@dataclass
class ProtocolResult:
    matrix: list[list[float]]
    matrix_adapted: list[list[float]] | None
    records: int
    learn_seconds: float
    fewshot_curve: dict[str, float | None]  # test-then-train accuracy by position in task
    prequential_accuracy: float

    def summary(self) -> dict:
        m = cl_metrics(self.matrix).as_dict()
        m["ra_adapted"] = None if self.matrix_adapted is None else cl_metrics(self.matrix_adapted).ra
        m["records_per_second"] = self.records / self.learn_seconds if self.learn_seconds > 0 else None
        return m


@torch.no_grad()
def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def _window(learner) -> int:
    return learner.episodes.support_size + learner.episodes.query_size


def evaluate(learner, tasks: Sequence[Task], recent: dict[str, deque]) -> tuple[list[float], list[float] | None]:
    """Accuracy per task with the meta-parameters, and with per-task adapted fast weights."""
    tests = [(torch.from_numpy(t.test_x), torch.from_numpy(t.test_y)) for t in tasks]
    meta = [_accuracy(mlp_forward(learner.model, learner.params, x), y) for x, y in tests]
    if not isinstance(learner, OnlineMetaLearner) or learner.inner_cfg.steps == 0:
        return meta, None
    adapted = []
    for task, (x, y) in zip(tasks, tests):
        seen = recent.get(task.name)
        if not seen:
            adapted.append(meta[len(adapted)])
            continue
        wx = torch.stack([r[0] for r in seen])
        wy = torch.tensor([r[1] for r in seen], dtype=torch.long)
        fast = learner._adapt(learner.params, (wx, wy), learner.inner_cfg.steps)
        adapted.append(_accuracy(mlp_forward(learner.model, fast, x), y))
    return meta, adapted


def run_protocol(learner: OnlineMetaLearner | OnlineSGDLearner, tasks: Sequence[Task], *,
                 progress: Progress | None = None, learn_batch: int = 1) -> ProtocolResult:
    """Streams ``tasks`` through ``learner`` as the daemon does with ``--learn-batch``
    (predict ``learn_batch`` records together, then learn them together; 1 = per record)
    and evaluates every task after each one. ``learner`` is an ``OnlineMetaLearner`` or
    ``OnlineSGDLearner``."""
    matrix: list[list[float]] = []
    adapted_rows: list[list[float]] | None = []
    size = _window(learner) if isinstance(learner, OnlineMetaLearner) else 1
    recent: dict[str, deque] = {}
    hits = {b: [0, 0] for b, _, _ in POSITION_BUCKETS}
    correct = records = 0
    learn_seconds = 0.0
    for i, task in enumerate(tasks):
        xs = torch.from_numpy(task.train_x)
        ys = task.train_y.tolist()
        window = recent.setdefault(task.name, deque(maxlen=size))
        start = time.perf_counter()
        yt = torch.from_numpy(task.train_y).long()
        for first in range(0, len(ys), learn_batch):
            x, y = xs[first:first + learn_batch], yt[first:first + learn_batch]
            names = [task.name] * len(y)
            oks = (learner.predict_batch(names, x) == y).tolist()
            learner.learn_batch(names, x, y)
            for pos, (xi, yi, ok) in enumerate(zip(x, ys[first:first + learn_batch], oks), start=first + 1):
                window.append((xi, yi))
                correct += ok
                bucket = hits[position_bucket(pos)]
                bucket[0] += ok
                bucket[1] += 1
        learn_seconds += time.perf_counter() - start
        records += len(ys)
        meta, adapted = evaluate(learner, tasks, recent)
        matrix.append(meta)
        if adapted is None:
            adapted_rows = None
        elif adapted_rows is not None:
            adapted_rows.append(adapted)
        if progress is not None:
            progress(i + 1, len(tasks))
    curve = {b: (c / n if n else None) for b, (c, n) in hits.items()}
    return ProtocolResult(matrix, adapted_rows, records, learn_seconds, curve, correct / max(records, 1))


def nan_to_none(matrix: list[list[float]] | None) -> list[list[float | None]] | None:
    if matrix is None:
        return None
    return [[None if np.isnan(v) else v for v in row] for row in matrix]
