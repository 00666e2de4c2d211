"""Online learners with a River-like interface: ``predict`` first, then ``learn``.

:class:`OnlineMetaLearner` keeps shared meta-parameters, adapts per-task fast
weights from them on the task's recent records, and meta-updates whenever a
task completes an episode, mixing replayed past episodes into the meta-batch.
:class:`~stream_meta.learn.sgd.OnlineSGDLearner` is the plain baseline: one SGD step per record.

Each takes its configuration in groups (:mod:`stream_meta.learn.config`), whole:

>>> import torch
>>> from stream_meta.learn.config import MetaStepConfig, ModelConfig
>>> m = OnlineMetaLearner(ModelConfig(4, 2, (8,)), meta_cfg=MetaStepConfig(support_size=3, query_size=1, episode_stride=1))
>>> for i in range(6):
...     _ = m.predict("t", torch.full((4,), float(i % 2)))
...     _ = m.learn("t", torch.full((4,), float(i % 2)), i % 2)
>>> m.meta_updates
5
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from stream_meta.learn.config import (
    InnerLoopConfig, MetaStepConfig, ModelConfig, ProbeConfig, RegularizerConfig, ReplayConfig,
)
from stream_meta.learn.base import LearnerHealth, LearnReport
from stream_meta.learn.episodes import EpisodeBuilder
from stream_meta.meta import ALGORITHMS, Episode, get_algorithm, meta_step
from stream_meta.meta.algorithms import GradientMetaAlgorithm
from stream_meta.meta.mlp import mlp_forward
from stream_meta.model import Params, build_mlp, init_params
from stream_meta.learn.probes import ForgettingProbe
from stream_meta.learn.regularizers import build_regularizer
from stream_meta.learn.replay import EpisodeReservoir, RecordMemory
from stream_meta.learn.sharing import adam_moments, load_adam_moments

HEALTH_EVERY = 10  # meta-updates between two measures of the algorithm's own health metrics


class OnlineMetaLearner:
    """Shared meta-parameters + per-task fast weights + episode replay."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        *,
        inner_cfg: InnerLoopConfig = InnerLoopConfig(),
        meta_cfg: MetaStepConfig = MetaStepConfig(),
        replay_cfg: ReplayConfig = ReplayConfig(),
        reg_cfg: RegularizerConfig = RegularizerConfig(),
        probe_cfg: ProbeConfig = ProbeConfig(),
        fast_weight_cache: int = 16,
        seed: int = 0,
    ) -> None:
        self.model_cfg, self.inner_cfg, self.meta_cfg = model_cfg, inner_cfg, meta_cfg
        self.replay_cfg, self.reg_cfg, self.probe_cfg = replay_cfg, reg_cfg, probe_cfg
        self.fast_weight_cache, self.seed = fast_weight_cache, seed

        self.model = build_mlp([model_cfg.input_dim, *model_cfg.hidden, model_cfg.num_classes])
        self._rng = torch.Generator().manual_seed(seed)
        self.params: Params = {k: v.requires_grad_() for k, v in init_params(self.model, self._rng).items()}
        self.alg = build_algorithm(inner_cfg, meta_cfg)
        self.alg.adapted_names(self.model, self.params)  # an ANIL head naming no parameter fails here, not mid-stream
        # A generating algorithm (gail-meta) writes fast weights even with zero inner steps.
        self._adapts = inner_cfg.steps > 0 or getattr(self.alg, "generates", False)
        self.extra: Params = {k: v.detach().clone().requires_grad_() for k, v in self.alg.init_extra(self.params).items()}
        self.optimizer = torch.optim.Adam([*self.params.values(), *self.extra.values()], lr=meta_cfg.meta_lr)
        self.episodes = EpisodeBuilder(meta_cfg.support_size, meta_cfg.query_size, meta_cfg.episode_stride, meta_cfg.max_tasks)
        self.replay = EpisodeReservoir(replay_cfg.episode_capacity)
        # Record-level replay (MER / La-MAML): replayed records join each meta-update's query set.
        self.memory = RecordMemory(replay_cfg.memory_capacity, replay_cfg.memory_policy)
        self.reg = build_regularizer(reg_cfg.name, reg_cfg.strength, reg_cfg.decay)
        self._last_task: str | None = None
        # Live forgetting estimate on records held out from learning (off when per_task == 0).
        self.probe = ForgettingProbe(probe_cfg.per_task) if probe_cfg.per_task > 0 else None
        self.retained_accuracy: float | None = None
        self.forgetting: float | None = None
        self._since_probe = 0
        self._fast: OrderedDict[str, Params] = OrderedDict()  # fresh fast weights per task
        self.meta_updates = 0
        self.nonfinite_skips = 0
        self._learner_metrics: dict[str, float] = {}
        self._group_scale = 1.0  # set by a scale-out group (scale_meta_steps); 1 alone

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
        if window is None or not self._adapts:
            return self.params
        fast = self._adapt(self.params, window, self.inner_cfg.steps)
        self._fast[task] = fast
        while len(self._fast) > self.fast_weight_cache:
            self._fast.popitem(last=False)
        return fast

    def _adapt(self, start: Params, window: tuple[torch.Tensor, torch.Tensor], steps: int) -> Params:
        with torch.enable_grad():
            return self.alg.adapt(
                self.model, start, self.extra, window[0], self._targets(window[1]), steps=steps, lr=self.inner_cfg.lr
            )

    def _targets(self, y: torch.Tensor) -> torch.Tensor:
        """Class labels as the inner loss wants them: indices for CE, one-hot rows for MSE."""
        if self.inner_cfg.loss == "mse":
            return F.one_hot(y, self.model_cfg.num_classes).to(torch.get_default_dtype())
        return y

    def _as_targets(self, episode: Episode) -> Episode:
        if self.inner_cfg.loss == "ce":
            return episode
        return Episode(episode.task, episode.support_x, self._targets(episode.support_y),
                       episode.query_x, self._targets(episode.query_y))

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

    @torch.no_grad()
    def predict_batch(self, tasks: Sequence[str], x: torch.Tensor) -> torch.Tensor:
        """Labels for the rows of ``x`` [n, d], row ``i`` with ``tasks[i]``'s fast weights:
        one forward pass per task in the batch."""
        out = torch.empty(len(tasks), dtype=torch.long)
        for task, rows in _rows_by_task(tasks).items():
            logits = mlp_forward(self.model, self.fast_weights(task), x[rows])
            if not bool(torch.isfinite(logits).all()):
                self._fast.pop(task, None)  # diverged fast weights: fall back to the meta-parameters
                logits = mlp_forward(self.model, self.params, x[rows])
            out[rows] = logits.argmax(1)
        return out

    @torch.no_grad()
    def task_losses(self, tasks: Sequence[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-row cross-entropy of ``x`` [n, d] against ``y`` [n] under each row's task's fast
        weights (the meta-parameters for a task without records): the signal task detection
        and recurring-task matching read (:mod:`stream_meta.learn.tasks`)."""
        out = torch.empty(len(tasks))
        for task, rows in _rows_by_task(tasks).items():
            logits = mlp_forward(self.model, self.fast_weights(task), x[rows])
            out[rows] = F.cross_entropy(logits, y[rows], reduction="none")
        return torch.nan_to_num(out, nan=float("inf"))

    def adapted_losses(self, support_x: torch.Tensor, support_y: torch.Tensor, x: torch.Tensor,
                       y: torch.Tensor) -> torch.Tensor:
        """Per-row cross-entropy of ``(x, y)`` under fast weights adapted from the meta-parameters
        on ``support`` alone (the OSAKA / Continual-MAML challenger: "a task that began with
        these records"); nothing is cached or learned."""
        fast = self.params if len(support_y) == 0 or self.inner_cfg.steps == 0 else self._adapt(
            self.params, (support_x, support_y), self.inner_cfg.steps)
        with torch.no_grad():
            out = F.cross_entropy(mlp_forward(self.model, fast, x), y, reduction="none")
        return torch.nan_to_num(out, nan=float("inf"))

    @torch.no_grad()
    def prior_losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-row cross-entropy under the meta-parameters: what a new task starts from."""
        return torch.nan_to_num(F.cross_entropy(mlp_forward(self.model, self.params, x), y, reduction="none"), nan=float("inf"))

    # -- learning -------------------------------------------------------------
    def learn(self, task: str, x: torch.Tensor, y: int) -> LearnReport:
        return self.learn_batch([task], x.unsqueeze(0), torch.tensor([y]))

    def learn_batch(self, tasks: Sequence[str], x: torch.Tensor, y: torch.Tensor) -> LearnReport:
        """Learns labelled rows ``x`` [n, d], ``y`` [n] of ``tasks`` together.

        Every row joins its task's window; each task that completed episodes gets one
        meta-update, on all of them (with replayed episodes and memory records), and every
        completed episode is then offered to the replay memory; cached fast weights take
        one inner step on their grown window. One row is exactly :meth:`learn`.
        """
        report = LearnReport()
        newest: dict[str, list[Episode]] = {}
        kept: list[int] = []
        for i, task in enumerate(tasks):
            xi, yi = x[i].clone(), int(y[i])  # a row of its own: windows keep it, not the whole batch
            if self.probe is not None:
                if self.probe.offer(task, xi, yi):
                    continue  # held out: a probe record is never learned from
                self._since_probe += 1
                if self._since_probe >= self.probe_cfg.every:
                    self._since_probe = 0
                    self.retained_accuracy, self.forgetting = self.probe.evaluate(self._probe_predict, task)
            if task != self._last_task:
                if self._last_task is not None:
                    self._task_boundary(self._last_task)
                self._last_task = task
            kept.append(i)
            episodes = self.episodes.add(task, xi, yi)
            if episodes:
                newest.setdefault(task, []).extend(episodes)
        for task, episodes in newest.items():
            self._meta_update(episodes, report, batched=len(tasks) > 1)
            for episode in episodes:
                self.replay.add(episode, self._rng)
        if self._adapts:
            # One more inner step on the grown window keeps the cached fast weights
            # current at a fraction of re-adapting from the meta-parameters.
            for task in dict.fromkeys(tasks[i] for i in kept):
                fast = self._fast.get(task)
                if fast is not None:
                    self._fast[task] = (self._adapt(self.params, self.episodes.window(task), self.inner_cfg.steps)
                                        if getattr(self.alg, "generates", False)  # regenerating is the cheap refresh
                                        or getattr(self.alg, "restarts", False)
                                        else self._adapt(fast, self.episodes.window(task), 1))
        for i in kept:
            self.memory.add(tasks[i], x[i], int(y[i]), self._rng)
        return report

    def refile(self, src: str, dst: str, n: int) -> int:
        """Moves ``src``'s newest ``n`` window records to ``dst``: a task boundary detected
        ``n`` records late gives the new task the records that were its own. Nothing is
        learned again; the two tasks' fast weights are re-adapted when next used."""
        moved = self.episodes.move_newest(src, dst, n)
        if moved:
            self._fast.pop(src, None)
            self._fast.pop(dst, None)
        return moved

    @torch.no_grad()
    def _probe_predict(self, task: str, x: torch.Tensor) -> torch.Tensor:
        # Adapted from the meta-parameters on the task's window, as predict would, but
        # without touching the fast-weight cache.
        window = self.episodes.window(task)
        steps = self.inner_cfg.steps
        fast = self.params if window is None or not self._adapts else self._adapt(self.params, window, steps)
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

    def _meta_update(self, episodes: list[Episode], report: LearnReport, batched: bool = False) -> None:
        """The one meta-update of a task for its new ``episodes`` (every one its learn batch
        completed). One record at a time, or ``batch_update="one"``: one outer step on all
        of them. A batch of several records with ``"each"``: one outer step per episode,
        oldest first (``batch_inner_steps`` inner steps, by default the inner loop's), as one
        record at a time would take them, so a large batch does not take fewer steps."""
        if batched and self.meta_cfg.batch_update == "each":
            inner = self.meta_cfg.batch_inner_steps or self.inner_cfg.steps
            steps = [([e], inner, 1.0) for e in episodes]
        else:
            steps = [(episodes, self.inner_cfg.steps, self.meta_cfg.step_scale(len(episodes)))]
        last: Episode | None = None
        for group, inner_steps, scale in steps:
            stats, episode = self._outer_step(group, inner_steps, scale)
            report.stats = stats
            if stats["nonfinite"]:  # the algorithm checked losses and gradients; nothing was updated
                self.nonfinite_skips += 1
                report.nonfinite_skips += 1
                continue
            last = episode
            report.query_loss_before = stats.get("query_loss_before")
            report.query_loss_after = stats["query_loss"]
        if last is None:
            return
        self._fast.clear()  # every cached adaptation started from the old meta-parameters
        self.meta_updates += 1
        report.meta_updates += 1
        self._measure_health(self._as_targets(last))

    def _outer_step(self, episodes: list[Episode], steps: int, step_scale: float) -> tuple[dict, Episode]:
        """One step of the meta-parameters on ``episodes`` (the newest's query set gets the
        replayed memory records) and replayed episodes; the stats and that newest episode."""
        *older, episode = episodes
        if self.replay_cfg.memory_query > 0 and len(self.memory):
            mx, my = self.memory.sample(self.replay_cfg.memory_query, self._rng)
            episode = Episode(episode.task, episode.support_x, episode.support_y,
                              torch.cat([episode.query_x, mx]), torch.cat([episode.query_y, my]))
        replayed = self.replay.sample(self.meta_cfg.replay_per_update, self._rng)
        batch = [self._as_targets(e) for e in (*older, episode, *replayed)]
        loss_grads: Params = {}

        def penalise(grads: Params) -> Params:
            loss_grads.update(grads)  # the regulariser's after_step reads the loss's own gradient
            return self.reg.add_penalty_grad(self.params, grads)

        before = {k: v.detach().clone() for k, v in self.params.items()} if self.reg is not None else None
        stats = meta_step(self.alg, self.model, self.params, self.extra, batch, self.optimizer,
                          steps=steps, lr=self.inner_cfg.lr,
                          adjust=penalise if self.reg is not None else None,
                          step_scale=step_scale * self._group_scale)
        self._learner_metrics.update(stats.get("learner_stats", {}))
        if not stats["nonfinite"] and self.reg is not None:
            self.reg.after_step(before, self.params, loss_grads)
        return stats, episode

    def _measure_health(self, episode: Episode) -> None:
        """The algorithm's own health metrics on the new episode's support set, every
        ``HEALTH_EVERY`` meta-updates (one extra adaptation: cheap next to a meta-step)."""
        measure = getattr(self.alg, "health_metrics", None)
        if measure is None or (self.meta_updates - 1) % HEALTH_EVERY:
            return
        self._learner_metrics = measure(self.model, self.params, self.extra, episode.support_x, episode.support_y,
                                        steps=self.inner_cfg.steps, lr=self.inner_cfg.lr)

    # -- scale-out ------------------------------------------------------------
    def shared_tensors(self) -> dict[str, torch.Tensor]:
        """Copies of what members of a group average: meta-parameters, learned extras (step
        sizes), the outer optimiser's moments and, once a task boundary has set them, the
        regulariser's importances and anchor (``regularizer/`` keys). Replay, task windows and
        fast weights stay local. A parameter the optimiser has not stepped yet reads as zeros."""
        out = {f"params/{k}": v.detach().clone() for k, v in self.params.items()}
        out.update({f"extra/{k}": v.detach().clone() for k, v in self.extra.items()})
        out.update(adam_moments(self.optimizer, {**self.params, **{f"extra.{k}": v for k, v in self.extra.items()}}))
        if self.reg is not None and self.reg.importance is not None and self.reg.anchor is not None:
            out.update({f"regularizer/importance/{k}": v.clone() for k, v in self.reg.importance.items()})
            out.update({f"regularizer/anchor/{k}": v.clone() for k, v in self.reg.anchor.items()})
        return out

    def load_shared(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take the group's averages (keys as :meth:`shared_tensors` names them; absent ones stay)."""
        named = {**self.params, **{f"extra.{k}": v for k, v in self.extra.items()}}
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(tensors[f"params/{k}"])
            for k, v in self.extra.items():
                v.copy_(tensors[f"extra/{k}"])
        load_adam_moments(self.optimizer, named, tensors)
        if self.reg is not None and any(k.startswith("regularizer/") for k in tensors):
            self.reg.importance = {k: tensors[f"regularizer/importance/{k}"].clone() for k in self.params
                                   if f"regularizer/importance/{k}" in tensors}
            self.reg.anchor = {k: tensors[f"regularizer/anchor/{k}"].clone() for k in self.params
                               if f"regularizer/anchor/{k}" in tensors}
        self._fast.clear()  # every cached adaptation started from the old meta-parameters

    def scale_meta_steps(self, factor: float) -> None:
        """Every meta-step from now on is ``factor`` times ``meta_lr``'s (a group's members learn
        in parallel, so each makes fewer sequential steps); the optimiser keeps its own lr."""
        if not factor > 0:
            raise ValueError(f"meta-step factor must be > 0, got {factor}")
        self._group_scale = float(factor)

    # -- state ----------------------------------------------------------------
    def health(self) -> LearnerHealth:
        return LearnerHealth(
            meta_updates=self.meta_updates,
            nonfinite_skips=self.nonfinite_skips,
            replay_episodes=len(self.replay),
            replay_bytes=self.replay.nbytes(),
            memory_records=len(self.memory),
            memory_bytes=self.memory.nbytes(),
            retained_accuracy=self.retained_accuracy,
            forgetting=self.forgetting,
            learner_metrics=dict(self._learner_metrics),
        )

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
            "learner_metrics": dict(self._learner_metrics),
            "memory": self.memory.state_dict(),
            "regularizer": None if self.reg is None else self.reg.state_dict(),
            "last_task": self._last_task,
            "probe": None if self.probe is None else {
                **self.probe.state_dict(), "since": self._since_probe,
                "retained_accuracy": self.retained_accuracy, "forgetting": self.forgetting,
            },
        }

    def load_state_dict(self, state: dict) -> None:
        # The learned tensors' names say what they mean (e.g. the neural optimiser's step
        # sizes, added later): a checkpoint with other names is refused before anything is copied.
        missing, unknown = sorted(set(self.extra) - set(state["extra"])), sorted(set(state["extra"]) - set(self.extra))
        if missing or unknown:
            def show(names: list[str]) -> str:
                return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "") or "none"

            raise ValueError(f"{self.alg.name}'s learned tensors differ from the checkpoint's (this learner's not in it: "
                             f"{show(missing)}; in it, not this learner's: {show(unknown)}): "
                             "written by another version or settings of the learner")
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
        self._learner_metrics = dict(state.get("learner_metrics", {}))
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


def build_algorithm(inner_cfg: InnerLoopConfig, meta_cfg: MetaStepConfig) -> GradientMetaAlgorithm:
    """The meta-algorithm ``inner_cfg`` names, with every option of both groups it takes."""
    return get_algorithm(inner_cfg.algorithm, clip_grad_norm=meta_cfg.clip_grad_norm, **inner_cfg.algorithm_options())


def _rows_by_task(tasks: Sequence[str]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        rows.setdefault(task, []).append(i)
    return rows


def learner_names() -> list[str]:
    """Every value ``algorithm`` accepts: the meta-algorithms and the ``sgd`` baseline."""
    return [*ALGORITHMS, "sgd"]
