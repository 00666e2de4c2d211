"""Online learners with a River-like interface: ``predict`` first, then ``learn``.

:class:`OnlineMetaLearner` keeps shared meta-parameters, adapts per-task fast
weights from them on the task's recent records, and meta-updates whenever a
task completes an episode, mixing replayed past episodes into the meta-batch.
:class:`OnlineSGDLearner` is the plain baseline: one SGD step per record.

>>> import torch
>>> m = OnlineMetaLearner(input_dim=4, num_classes=2, hidden=(8,), support_size=3, query_size=1, episode_stride=1)
>>> for i in range(6):
...     _ = m.predict("t", torch.full((4,), float(i % 2)))
...     _ = m.learn("t", torch.full((4,), float(i % 2)), i % 2)
>>> m.meta_updates
5
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.func import functional_call

from stream_meta.learn.episodes import EpisodeBuilder
from stream_meta.meta import ALGORITHMS, Episode, get_algorithm, meta_step
from stream_meta.meta.mlp import mlp_forward
from stream_meta.model import Params, build_mlp, init_params
from stream_meta.learn.probes import ForgettingProbe
from stream_meta.learn.regularizers import build_regularizer
from stream_meta.learn.replay import EpisodeReservoir, RecordMemory


@dataclass
class LearnReport:
    """What one ``learn`` call did, for metrics."""

    meta_updates: int = 0
    nonfinite_skips: int = 0
    query_loss_before: float | None = None
    query_loss_after: float | None = None
    stats: dict = field(default_factory=dict)


class Learner(Protocol):
    meta_updates: int

    def predict(self, task: str, x: torch.Tensor) -> int: ...

    def learn(self, task: str, x: torch.Tensor, y: int) -> LearnReport: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class OnlineMetaLearner:
    """Shared meta-parameters + per-task fast weights + episode replay."""

    def __init__(
        self,
        *,
        input_dim: int,
        num_classes: int,
        hidden: tuple[int, ...] = (100, 100),
        algorithm: str = "fomaml",
        inner_steps: int = 5,
        inner_lr: float = 0.1,
        meta_lr: float = 1e-2,
        support_size: int = 20,
        query_size: int = 5,
        episode_stride: int = 5,
        replay_capacity: int = 200,
        replay_per_update: int = 3,
        max_tasks: int = 1000,
        fast_weight_cache: int = 16,
        seed: int = 0,
        memory_capacity: int = 0,
        memory_policy: str = "reservoir",
        memory_query: int = 0,
        regularizer: str = "none",
        reg_strength: float = 0.0,
        reg_decay: float = 1.0,
        probe_per_task: int = 0,
        probe_every: int = 1000,
    ) -> None:
        self.input_dim, self.num_classes, self.hidden = input_dim, num_classes, tuple(hidden)
        self.memory_capacity, self.memory_policy, self.memory_query = memory_capacity, memory_policy, memory_query
        self.regularizer, self.reg_strength, self.reg_decay = regularizer, reg_strength, reg_decay
        self.probe_per_task, self.probe_every = probe_per_task, probe_every
        self.algorithm, self.inner_steps, self.inner_lr, self.meta_lr = algorithm, inner_steps, inner_lr, meta_lr
        self.replay_per_update, self.max_tasks, self.seed = replay_per_update, max_tasks, seed
        self.fast_weight_cache = fast_weight_cache

        self.model = build_mlp([input_dim, *self.hidden, num_classes])
        self._rng = torch.Generator().manual_seed(seed)
        self.params: Params = {k: v.requires_grad_() for k, v in init_params(self.model, self._rng).items()}
        self.alg = get_algorithm(algorithm)
        self.extra: Params = {k: v.detach().clone().requires_grad_() for k, v in self.alg.init_extra(self.params).items()}
        self.optimizer = torch.optim.Adam([*self.params.values(), *self.extra.values()], lr=meta_lr)
        self.episodes = EpisodeBuilder(support_size, query_size, episode_stride, max_tasks)
        self.replay = EpisodeReservoir(replay_capacity)
        # Record-level replay (MER / La-MAML): replayed records join each meta-update's query set.
        self.memory = RecordMemory(memory_capacity, memory_policy)
        self.reg = build_regularizer(regularizer, reg_strength, reg_decay)
        self._last_task: str | None = None
        # Live forgetting estimate on records held out from learning (off when probe_per_task == 0).
        self.probe = ForgettingProbe(probe_per_task) if probe_per_task > 0 else None
        self.retained_accuracy: float | None = None
        self.forgetting: float | None = None
        self._since_probe = 0
        self._fast: OrderedDict[str, Params] = OrderedDict()  # fresh fast weights per task
        self.meta_updates = 0
        self.nonfinite_skips = 0

    # -- prediction ---------------------------------------------------------
    def fast_weights(self, task: str) -> Params:
        """The meta-parameters adapted to ``task``'s recent records.

        ``inner_steps`` SGD steps from the meta-parameters on the task's window;
        cached per task, and between meta-updates kept fresh with one step per new
        record (see :meth:`learn`) instead of re-adapting from scratch.
        """
        fast = self._fast.get(task)
        if fast is not None:
            self._fast.move_to_end(task)
            return fast
        window = self.episodes.window(task)
        if window is None or self.inner_steps == 0:
            return self.params
        fast = self._adapt(self.params, window, self.inner_steps)
        self._fast[task] = fast
        while len(self._fast) > self.fast_weight_cache:
            self._fast.popitem(last=False)
        return fast

    def _adapt(self, start: Params, window: tuple[torch.Tensor, torch.Tensor], steps: int) -> Params:
        with torch.enable_grad():
            return self.alg.adapt(self.model, start, self.extra, window[0], window[1], steps=steps, lr=self.inner_lr)

    @torch.no_grad()
    def logits(self, task: str, x: torch.Tensor) -> torch.Tensor:
        out = mlp_forward(self.model, self.fast_weights(task), x.unsqueeze(0))[0]
        if not bool(torch.isfinite(out).all()):
            # Diverged fast weights: drop them and fall back to the meta-parameters.
            self._fast.pop(task, None)
            out = mlp_forward(self.model, self.params, x.unsqueeze(0))[0]
        return out

    def predict(self, task: str, x: torch.Tensor) -> int:
        return int(self.logits(task, x).argmax())

    # -- learning -------------------------------------------------------------
    def learn(self, task: str, x: torch.Tensor, y: int) -> LearnReport:
        report = LearnReport()
        if self.probe is not None:
            if self.probe.offer(task, x, y):
                return report  # held out: a probe record is never learned from
            self._since_probe += 1
            if self._since_probe >= self.probe_every:
                self._since_probe = 0
                self.retained_accuracy, self.forgetting = self.probe.evaluate(self._probe_predict, task)
        if task != self._last_task:
            if self._last_task is not None:
                self._task_boundary(self._last_task)
            self._last_task = task
        for episode in self.episodes.add(task, x, y):
            self._meta_update(episode, report)
            self.replay.add(episode, self._rng)
        fast = self._fast.get(task)
        if fast is not None and self.inner_steps > 0:
            # One more inner step on the grown window keeps the cached fast weights
            # current at a fraction of re-adapting from the meta-parameters.
            self._fast[task] = self._adapt(fast, self.episodes.window(task), 1)
        self.memory.add(task, x, y, self._rng)
        return report

    @torch.no_grad()
    def _probe_predict(self, task: str, x: torch.Tensor) -> torch.Tensor:
        # Adapted from the meta-parameters on the task's window, as predict would, but
        # without touching the fast-weight cache.
        window = self.episodes.window(task)
        fast = self.params if window is None or self.inner_steps == 0 else self._adapt(self.params, window, self.inner_steps)
        return mlp_forward(self.model, fast, x).argmax(1)

    def _task_boundary(self, finished: str) -> None:
        """The stream moved on from ``finished``: consolidate the regulariser on its records."""
        if self.reg is not None:
            window = self.episodes.window(finished)
            tasks, mx, my = self.memory.records()
            mine = torch.tensor([t == finished for t in tasks], dtype=torch.bool)
            if window is not None and bool(mine.any()):
                window = torch.cat([window[0], mx[mine]]), torch.cat([window[1], my[mine]])
            self.reg.on_boundary(self.model, self.params, window)

    def _meta_update(self, episode: Episode, report: LearnReport) -> None:
        if self.memory_query > 0 and len(self.memory):
            mx, my = self.memory.sample(self.memory_query, self._rng)
            episode = Episode(episode.task, episode.support_x, episode.support_y,
                              torch.cat([episode.query_x, mx]), torch.cat([episode.query_y, my]))
        batch = [episode, *self.replay.sample(self.replay_per_update, self._rng)]
        loss_grads: Params = {}

        def penalise(grads: Params) -> Params:
            loss_grads.update(grads)  # the regulariser's after_step reads the loss's own gradient
            return self.reg.add_penalty_grad(self.params, grads)

        before = {k: v.detach().clone() for k, v in self.params.items()} if self.reg is not None else None
        stats = meta_step(self.alg, self.model, self.params, self.extra, batch, self.optimizer,
                          steps=self.inner_steps, lr=self.inner_lr, adjust=penalise if self.reg is not None else None)
        report.stats = stats
        if stats["nonfinite"]:  # the algorithm checked losses and gradients; nothing was updated
            self.nonfinite_skips += 1
            report.nonfinite_skips += 1
            return
        if self.reg is not None:
            self.reg.after_step(before, self.params, loss_grads)
        self._fast.clear()  # every cached adaptation started from the old meta-parameters
        self.meta_updates += 1
        report.meta_updates += 1
        report.query_loss_before = stats.get("query_loss_before")
        report.query_loss_after = stats["query_loss"]

    # -- state ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "fast": [{"task": t, "params": dict(p)} for t, p in self._fast.items()],
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "extra": {k: v.detach().clone() for k, v in self.extra.items()},
            # A copy: the optimiser's own dict holds its live moment tensors.
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "episodes": self.episodes.state_dict(),
            "replay": self.replay.state_dict(),
            "rng": self._rng.get_state(),
            "meta_updates": self.meta_updates,
            "nonfinite_skips": self.nonfinite_skips,
            "memory": self.memory.state_dict(),
            "regularizer": None if self.reg is None else self.reg.state_dict(),
            "last_task": self._last_task,
            "probe": None if self.probe is None else {
                **self.probe.state_dict(), "since": self._since_probe,
                "retained_accuracy": self.retained_accuracy, "forgetting": self.forgetting,
            },
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
            for k, v in state["extra"].items():
                self.extra[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        self.episodes.load_state_dict(state["episodes"])
        self.replay.load_state_dict(state["replay"])
        self._rng.set_state(state["rng"])
        self.meta_updates = int(state["meta_updates"])
        self.nonfinite_skips = int(state["nonfinite_skips"])
        self._fast = OrderedDict((e["task"], e["params"]) for e in state["fast"])
        if "memory" in state:  # checkpoints written before record replay existed lack these
            self.memory.load_state_dict(state["memory"])
            if self.reg is not None and state["regularizer"] is not None:
                self.reg.load_state_dict(state["regularizer"])
            self._last_task = state["last_task"]
        if self.probe is not None and state.get("probe") is not None:
            self.probe.load_state_dict(state["probe"])
            self._since_probe = int(state["probe"]["since"])
            self.retained_accuracy, self.forgetting = state["probe"]["retained_accuracy"], state["probe"]["forgetting"]


class OnlineSGDLearner:
    """Baseline: one model for all tasks, one SGD step per labelled record."""

    def __init__(
        self, *, input_dim: int, num_classes: int, hidden: tuple[int, ...] = (100, 100), lr: float = 0.1, seed: int = 0
    ) -> None:
        self.input_dim, self.num_classes, self.hidden, self.lr, self.seed = input_dim, num_classes, tuple(hidden), lr, seed
        self.model = build_mlp([input_dim, *self.hidden, num_classes])
        self.params = {k: v.requires_grad_() for k, v in init_params(self.model, torch.Generator().manual_seed(seed)).items()}
        self.optimizer = torch.optim.SGD(list(self.params.values()), lr=lr)
        self.meta_updates = 0
        self.nonfinite_skips = 0
        self.replay = EpisodeReservoir(0)

    @torch.no_grad()
    def predict(self, task: str, x: torch.Tensor) -> int:
        return int(functional_call(self.model, self.params, (x.unsqueeze(0),))[0].argmax())

    def learn(self, task: str, x: torch.Tensor, y: int) -> LearnReport:
        out = functional_call(self.model, self.params, (x.unsqueeze(0),))
        loss = torch.nn.functional.cross_entropy(out, torch.tensor([y]))
        if not torch.isfinite(loss):
            self.nonfinite_skips += 1
            return LearnReport(nonfinite_skips=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return LearnReport()

    def state_dict(self) -> dict:
        return {"params": {k: v.detach().clone() for k, v in self.params.items()}, "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])


def learner_names() -> list[str]:
    """Every value ``algorithm`` accepts: the meta-algorithms and the ``sgd`` baseline."""
    return [*ALGORITHMS, "sgd"]
