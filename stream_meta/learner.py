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

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch.func import functional_call

from stream_meta.episodes import EpisodeBuilder
from stream_meta.meta import ALGORITHMS, Episode, get_algorithm
from stream_meta.meta.mlp_sgd import mlp_forward
from stream_meta.model import Params, build_mlp, init_params
from stream_meta.replay import EpisodeReservoir


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
    ) -> None:
        self.input_dim, self.num_classes, self.hidden = input_dim, num_classes, tuple(hidden)
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
        for episode in self.episodes.add(task, x, y):
            self._meta_update(episode, report)
            self.replay.add(episode, self._rng)
        fast = self._fast.get(task)
        if fast is not None and self.inner_steps > 0:
            # One more inner step on the grown window keeps the cached fast weights
            # current at a fraction of re-adapting from the meta-parameters.
            self._fast[task] = self._adapt(fast, self.episodes.window(task), 1)
        return report

    def _meta_update(self, episode: Episode, report: LearnReport) -> None:
        batch = [episode, *self.replay.sample(self.replay_per_update, self._rng)]
        grads, extra_grads, stats = self.alg.meta_gradient(
            self.model, self.params, self.extra, batch, steps=self.inner_steps, lr=self.inner_lr
        )
        report.stats = stats
        if stats["nonfinite"]:  # the algorithm checked losses and gradients
            self.nonfinite_skips += 1
            report.nonfinite_skips += 1
            return
        for name, g in grads.items():
            self.params[name].grad = g
        for name, g in extra_grads.items():
            self.extra[name].grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        project = getattr(self.alg, "project_extra", None)
        if project is not None:
            with torch.no_grad():
                project(self.extra)
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
            "optimizer": self.optimizer.state_dict(),
            "episodes": self.episodes.state_dict(),
            "replay": self.replay.state_dict(),
            "rng": self._rng.get_state(),
            "meta_updates": self.meta_updates,
            "nonfinite_skips": self.nonfinite_skips,
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
        return {"params": {k: v.detach().clone() for k, v in self.params.items()}, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])


def learner_names() -> list[str]:
    """Every value ``algorithm`` accepts: the meta-algorithms and the ``sgd`` baseline."""
    return [*ALGORITHMS, "sgd"]
