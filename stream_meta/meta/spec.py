"""What every engine computes: episodes, the inner-loop spec, task batches, results.

The spec (:class:`InnerLoop`) names the two pluggable parts of the inner loop, the
update rule (:mod:`stream_meta.meta.rules`) and the loss (:mod:`stream_meta.meta.losses`);
engines (:mod:`stream_meta.meta.engines`) obey it and never keep copies of either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from stream_meta.meta.losses import CrossEntropy, InnerLoss
from stream_meta.meta.rules import SGD, UpdateRule
from stream_meta.model import Params

Order = Literal["second", "first", "reptile"]


@dataclass(frozen=True)
class Episode:
    """A task episode: adapt on the support set, evaluate on the query set."""

    task: str
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


@dataclass(frozen=True)
class InnerLoop:
    """What one task's adaptation and scoring compute; every engine obeys it.

    From ``phi = theta``, ``steps`` times: ``phi, state = rule.step(phi, grad L_in(phi; inner
    set), state)`` over the ``adapted`` names (the others stay ``theta``), ``L_in`` being
    ``inner_loss`` (default: ``loss``). The query set is scored with ``loss``. ``order``:

    - ``"second"``: meta-gradient of ``L(phi; query)`` through every inner step;
    - ``"first"``: the same with each inner gradient treated as a constant (FOMAML);
    - ``"reptile"``: the inner set is support + query and the "gradient" is ``theta - phi``.
    """

    steps: int
    lr: float
    adapted: tuple[str, ...]
    order: Order = "second"
    loss: InnerLoss = field(default_factory=CrossEntropy)
    rule: UpdateRule = field(default_factory=SGD)
    inner_loss: InnerLoss | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not math.isfinite(self.lr) or self.lr < 0:
            raise ValueError(f"inner lr must be finite and >= 0, got {self.lr}")
        if self.order not in ("second", "first", "reptile"):
            raise ValueError(f"unknown order {self.order!r}")
        if not self.adapted:
            raise ValueError("at least one parameter must be adapted")

    @property
    def inner(self) -> InnerLoss:
        """The loss the inner loop descends."""
        return self.loss if self.inner_loss is None else self.inner_loss


@dataclass
class GroupResult:
    """Sums over the tasks of one group (engines return sums; callers average).
    ``extra_grads``: gradients of the rule's and the loss's meta-parameters."""

    grads: Params
    extra_grads: Params
    query_loss: torch.Tensor
    query_loss_before: torch.Tensor

    def __add__(self, other: GroupResult) -> GroupResult:
        return GroupResult(
            {k: v + other.grads[k] for k, v in self.grads.items()},
            {k: v + other.extra_grads[k] for k, v in self.extra_grads.items()},
            self.query_loss + other.query_loss,
            self.query_loss_before + other.query_loss_before,
        )


@dataclass(frozen=True)
class TaskBatch:
    """Tasks stacked on a leading task dimension.

    ``x``/``y`` hold each task's support rows followed by its query rows; the inner
    loop uses rows ``[:inner_end]`` and the query rows ``[query_start:]`` (for Reptile
    the inner set is support + query, so the two overlap). Tasks of different sizes are
    padded (:meth:`pad`): then ``inner_w``/``query_w`` weigh each row (1 / the task's
    own row count, 0 on padding) and losses are weighted sums instead of means.
    """

    x: torch.Tensor
    y: torch.Tensor
    inner_end: int
    query_start: int
    inner_w: torch.Tensor | None = None
    query_w: torch.Tensor | None = None

    @property
    def tasks(self) -> int:
        return self.x.shape[0]

    def inner(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[:, : self.inner_end], self.y[:, : self.inner_end]

    def query(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[:, self.query_start :], self.y[:, self.query_start :]

    @staticmethod
    def stack(episodes: Sequence[Episode], order: str) -> TaskBatch:
        """Stack episodes of equal shapes into one batch (one copy of the data)."""
        first = episodes[0]
        s, q = first.support_x.shape[0], first.query_x.shape[0]
        x = torch.empty((len(episodes), s + q, *first.support_x.shape[1:]), dtype=first.support_x.dtype,
                        device=first.support_x.device)
        y = torch.empty((len(episodes), s + q, *first.support_y.shape[1:]), dtype=first.support_y.dtype,
                        device=first.support_y.device)
        for i, e in enumerate(episodes):
            x[i, :s], x[i, s:], y[i, :s], y[i, s:] = e.support_x, e.query_x, e.support_y, e.query_y
        return TaskBatch(x, y, s + q if order == "reptile" else s, s)

    @staticmethod
    def pad(episodes: Sequence[Episode], order: str) -> TaskBatch:
        """Episodes of different sizes (same feature shapes) in one batch: support rows
        padded to the largest support set, then query rows to the largest query set."""
        t = len(episodes)
        sizes = [(e.support_x.shape[0], e.query_x.shape[0]) for e in episodes]
        s_max, q_max = max(s for s, _ in sizes), max(q for _, q in sizes)
        first = episodes[0]
        # One cat per tensor instead of a slice copy per episode: this runs once per outer step.
        zx = first.support_x.new_zeros((max(s_max, q_max), *first.support_x.shape[1:]))
        zy = first.support_y.new_zeros((max(s_max, q_max), *first.support_y.shape[1:]))
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        inner_w: list[float] = []
        query_w: list[float] = []
        for e, (s, q) in zip(episodes, sizes):
            xs += [e.support_x, zx[:s_max - s], e.query_x, zx[:q_max - q]]
            ys += [e.support_y, zy[:s_max - s], e.query_y, zy[:q_max - q]]
            w = 1 / (s + q if order == "reptile" else s)
            inner_w += [w] * s + [0.0] * (s_max - s)
            if order == "reptile":
                inner_w += [w] * q + [0.0] * (q_max - q)
            query_w += [1 / q] * q + [0.0] * (q_max - q)
        x = torch.cat(xs).view(t, s_max + q_max, *first.support_x.shape[1:])
        y = torch.cat(ys).view(t, s_max + q_max, *first.support_y.shape[1:])
        # Python floats rounded to the dtype, as the per-slot assignment rounded them.
        inner = torch.tensor(inner_w, dtype=x.dtype, device=x.device).view(t, -1)
        query = torch.tensor(query_w, dtype=x.dtype, device=x.device).view(t, q_max)
        return TaskBatch(x, y, inner.shape[1], s_max, inner, query)
