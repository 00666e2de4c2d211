"""Inner-loop adaptation and meta-gradients for the MAML family.

>>> import torch
>>> from stream_meta.model import build_mlp, init_params
>>> model = build_mlp([4, 8, 3])
>>> theta = init_params(model, torch.Generator().manual_seed(0))
>>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
>>> ep = Episode("t", x[:4], y[:4], x[4:], y[4:])
>>> alg = get_algorithm("fomaml")
>>> extra = alg.init_extra(theta)
>>> grads, extra_grads, stats = alg.meta_gradient(model, theta, extra, [ep], steps=2, lr=0.1)
>>> sorted(grads) == sorted(theta)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from stream_meta.model import Params


@dataclass(frozen=True)
class Episode:
    """A task episode: adapt on the support set, evaluate on the query set."""

    task: str
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


def loss(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``model`` applied with ``params``."""
    return F.cross_entropy(functional_call(model, params, (x,)), y)


def adapt(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    create_graph: bool = False,
) -> Params:
    """Fast weights after ``steps`` SGD steps on ``(x, y)`` starting from ``params``.

    With ``create_graph`` the result stays differentiable w.r.t. ``params``
    (second-order MAML); otherwise each step is detached from the last.
    """
    fast = params if create_graph else {k: v.detach().requires_grad_() for k, v in params.items()}
    for _ in range(steps):
        names = list(fast)
        grads = torch.autograd.grad(loss(model, fast, x, y), [fast[k] for k in names], create_graph=create_graph)
        if create_graph:
            fast = {k: fast[k] - lr * g for k, g in zip(names, grads)}
        else:
            fast = {k: (fast[k] - lr * g).detach().requires_grad_() for k, g in zip(names, grads)}
    return {k: v if create_graph else v.detach() for k, v in fast.items()}


class MetaAlgorithm(Protocol):
    """One member of the MAML family.

    ``params`` are the shared meta-parameters (model weights); ``extra`` holds any
    further meta-learned tensors (e.g. Meta-SGD's per-parameter step sizes), empty
    for plain MAML. ``meta_gradient`` returns gradients for both, to be applied by
    an outer optimiser, and ``stats`` with the mean query loss after adaptation
    (``query_loss``) and before it (``query_loss_before``).
    """

    name: str

    def init_extra(self, params: Params) -> Params: ...

    def adapt(
        self, model: nn.Module, params: Params, extra: Params, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float
    ) -> Params: ...

    def meta_gradient(
        self, model: nn.Module, params: Params, extra: Params, episodes: list[Episode], *, steps: int, lr: float
    ) -> tuple[Params, Params, dict[str, float]]: ...


class _PlainSGDInner:
    """Inner loop of plain SGD with one global step size; no extra meta-parameters."""

    def init_extra(self, params: Params) -> Params:
        return {}

    def adapt(self, model, params, extra, x, y, *, steps, lr):
        return adapt(model, params, x, y, steps=steps, lr=lr)


def _mean(dicts: list[Params]) -> Params:
    return {k: torch.stack([d[k] for d in dicts]).mean(0) for k in dicts[0]}


class FOMAML(_PlainSGDInner):
    """First-order MAML: the query-loss gradient at the fast weights."""

    name = "fomaml"

    def meta_gradient(self, model, params, extra, episodes, *, steps, lr):
        grads, before, after = [], 0.0, 0.0
        for ep in episodes:
            fast = adapt(model, params, ep.support_x, ep.support_y, steps=steps, lr=lr)
            fast = {k: v.requires_grad_() for k, v in fast.items()}
            q = loss(model, fast, ep.query_x, ep.query_y)
            g = torch.autograd.grad(q, list(fast.values()))
            grads.append(dict(zip(fast, g)))
            after += q.item()
            with torch.no_grad():
                before += loss(model, params, ep.query_x, ep.query_y).item()
        n = len(episodes)
        return _mean(grads), {}, {"query_loss": after / n, "query_loss_before": before / n}


class MAML(_PlainSGDInner):
    """Second-order MAML: differentiates the query loss through all inner steps."""

    name = "maml"

    def meta_gradient(self, model, params, extra, episodes, *, steps, lr):
        theta = {k: v.detach().requires_grad_() for k, v in params.items()}
        grads, before, after = [], 0.0, 0.0
        for ep in episodes:
            fast = adapt(model, theta, ep.support_x, ep.support_y, steps=steps, lr=lr, create_graph=True)
            q = loss(model, fast, ep.query_x, ep.query_y)
            g = torch.autograd.grad(q, list(theta.values()))
            grads.append(dict(zip(theta, g)))
            after += q.item()
            with torch.no_grad():
                before += loss(model, params, ep.query_x, ep.query_y).item()
        n = len(episodes)
        return _mean(grads), {}, {"query_loss": after / n, "query_loss_before": before / n}


class Reptile(_PlainSGDInner):
    """Reptile: moves the meta-parameters toward the fast weights (``theta - phi``)."""

    name = "reptile"

    def meta_gradient(self, model, params, extra, episodes, *, steps, lr):
        grads, before, after = [], 0.0, 0.0
        for ep in episodes:
            x = torch.cat([ep.support_x, ep.query_x])
            y = torch.cat([ep.support_y, ep.query_y])
            fast = adapt(model, params, x, y, steps=steps, lr=lr)
            grads.append({k: params[k].detach() - fast[k] for k in params})
            with torch.no_grad():
                before += loss(model, params, ep.query_x, ep.query_y).item()
                after += loss(model, fast, ep.query_x, ep.query_y).item()
        n = len(episodes)
        return _mean(grads), {}, {"query_loss": after / n, "query_loss_before": before / n}


ALGORITHMS: dict[str, type] = {"fomaml": FOMAML, "maml": MAML, "reptile": Reptile}


def get_algorithm(name: str) -> MetaAlgorithm:
    try:
        return ALGORITHMS[name]()
    except KeyError:
        raise ValueError(f"unknown meta-algorithm {name!r}; choose one of {sorted(ALGORITHMS)}") from None
