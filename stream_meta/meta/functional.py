"""Shared pieces of the MAML family: episodes, task losses, the inner-loop spec,
and plain single-task adaptation.

>>> import torch
>>> from stream_meta.model import build_mlp, init_params
>>> model = build_mlp([4, 8, 3])
>>> theta = init_params(model, torch.Generator().manual_seed(0))
>>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
>>> fast = adapt(model, theta, x, y, steps=2, lr=0.1)
>>> bool(loss(model, fast, x, y) < loss(model, theta, x, y))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from stream_meta.meta.mlp_sgd import mlp_sgd_adapt
from stream_meta.model import Params

LossKind = Literal["ce", "mse"]
LOSSES: tuple[str, ...] = ("ce", "mse")
Order = Literal["second", "first", "reptile"]


@dataclass(frozen=True)
class Episode:
    """A task episode: adapt on the support set, evaluate on the query set."""

    task: str
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


def task_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss of one task's outputs ``out`` ([N, C]) against targets ``y``.

    ``"ce"``: cross-entropy, ``y`` holds class indices [N]. ``"mse"``: mean squared
    error, ``y`` holds as many values as ``out`` (e.g. [N, 1] or [N]).
    """
    if kind == "ce":
        return F.cross_entropy(out, y)
    if kind == "mse":
        return F.mse_loss(out, y.reshape(out.shape))
    raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")


def batched_task_loss(
    kind: str, out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-task losses [T] of stacked outputs ``out`` ([T, N, C]): the mean over rows, or
    with ``weights`` ([T, N], e.g. 0 on padding rows) the weighted sum of row losses."""
    t, n = out.shape[0], out.shape[1]
    if kind == "ce":
        rows = F.cross_entropy(out.reshape(t * n, -1), y.reshape(t * n), reduction="none").view(t, n)
    elif kind == "mse":
        sq = (out - y.reshape(out.shape)).pow(2)
        if weights is None:
            return sq.reshape(t, -1).mean(1)
        rows = sq.reshape(t, n, -1).mean(2)
    else:
        raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")
    return rows.mean(1) if weights is None else (rows * weights).sum(1)


def loss(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Mean loss (``kind``: "ce" or "mse") of ``model`` applied with ``params``."""
    return task_loss(kind, functional_call(model, params, (x,)), y)


def adapt(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    create_graph: bool = False,
    kind: str = "ce",
    names: tuple[str, ...] | None = None,
    scales: Params | None = None,
) -> Params:
    """Fast weights after ``steps`` SGD steps on ``(x, y)`` starting from ``params``.

    Only ``names`` are adapted (default: all); the step size of ``n`` is ``lr``, times
    ``scales[n]`` when given (Meta-SGD). With ``create_graph`` the result stays
    differentiable w.r.t. ``params`` (second-order MAML); otherwise it is detached.
    """
    names = tuple(params) if names is None else names
    if not create_graph:
        detached = None if scales is None else {k: v.detach() for k, v in scales.items()}
        fast = mlp_sgd_adapt(model, params, x, y, steps=steps, lr=lr, kind=kind, names=names, scales=detached)
        if fast is not None:
            return fast
    if create_graph:
        fast = dict(params)
    else:
        fast = {k: v.detach() for k, v in params.items()}
        scales = None if scales is None else {k: v.detach() for k, v in scales.items()}
    with torch.enable_grad():
        for _ in range(steps):
            if not create_graph:
                fast.update({k: fast[k].requires_grad_() for k in names})
            grads = torch.autograd.grad(
                loss(model, fast, x, y, kind), [fast[k] for k in names], create_graph=create_graph
            )
            for k, g in zip(names, grads):
                step = lr if scales is None else lr * scales[k]
                fast[k] = fast[k] - step * g if create_graph else (fast[k] - step * g).detach()
    return fast


@dataclass(frozen=True)
class InnerLoop:
    """What one task's adaptation and scoring compute; every engine obeys it.

    From ``phi = theta``, ``steps`` times: ``phi[n] -= lr * scale[n] * grad_n L(phi; inner set)``
    for the ``adapted`` names ``n`` (the others stay ``theta``). ``scale`` is 1, or the
    learned Meta-SGD multipliers clamped to ``[0, max_scale]``. ``order``:

    - ``"second"``: meta-gradient of ``L(phi; query)`` through every inner step;
    - ``"first"``: the same with each inner gradient treated as a constant (FOMAML);
    - ``"reptile"``: the inner set is support + query and the "gradient" is ``theta - phi``.
    """

    steps: int
    lr: float
    adapted: tuple[str, ...]
    order: Order = "second"
    loss: str = "ce"
    max_scale: float = math.inf

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not math.isfinite(self.lr) or self.lr < 0:
            raise ValueError(f"inner lr must be finite and >= 0, got {self.lr}")
        if self.order not in ("second", "first", "reptile"):
            raise ValueError(f"unknown order {self.order!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSSES}")
        if not self.adapted:
            raise ValueError("at least one parameter must be adapted")


@dataclass
class GroupResult:
    """Sums over the tasks of one group (engines return sums; callers average)."""

    grads: Params
    scale_grads: Params
    query_loss: torch.Tensor
    query_loss_before: torch.Tensor


@dataclass(frozen=True)
class TaskBatch:
    """A group of equal-shaped tasks stacked on a leading task dimension.

    ``x``/``y`` hold each task's support rows followed by its query rows; the inner
    loop uses rows ``[:inner_end]`` and the query rows ``[query_start:]`` (for Reptile
    the inner set is support + query, so the two overlap).
    """

    x: torch.Tensor
    y: torch.Tensor
    inner_end: int
    query_start: int

    @property
    def tasks(self) -> int:
        return self.x.shape[0]

    def inner(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[:, : self.inner_end], self.y[:, : self.inner_end]

    def query(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[:, self.query_start :], self.y[:, self.query_start :]

    @staticmethod
    def stack(episodes: list[Episode], order: str) -> TaskBatch:
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
