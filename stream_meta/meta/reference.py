"""The reference engine: the inner loop and the meta-gradient in plain ``torch.func``.

Any model, any update rule, any loss: a task's program is written once, as the spec
(:class:`~stream_meta.meta.spec.InnerLoop`) reads, with ``torch.func.grad`` for every
gradient, and ``torch.func.vmap`` maps it over a group of equal-shaped tasks. It is the
ground truth every other engine is tested against, and the engine ``auto`` falls back
to when the fast path declines a spec.

>>> import torch
>>> from stream_meta.model import build_mlp, init_params
>>> from stream_meta.meta.spec import InnerLoop
>>> model = build_mlp([4, 8, 3])
>>> theta = init_params(model, torch.Generator().manual_seed(0))
>>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
>>> fast = adapt(model, theta, {}, InnerLoop(2, 0.1, tuple(theta), "first"), x, y)
>>> bool(loss(model, fast, x, y) < loss(model, theta, x, y))
True
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from stream_meta.meta.losses import InnerLoss, get_loss, reduce_rows
from stream_meta.meta.spec import GroupResult, InnerLoop, TaskBatch
from stream_meta.model import Params


def _task_loss(model: nn.Module, kind: InnerLoss, params: Params, meta: Params, x: torch.Tensor,
               y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    out = functional_call(model, params, (x,))
    if getattr(kind, "set_statistics", False):  # it averages over the set: padding rows must not count
        return reduce_rows(kind.rows(out, y, meta, weights=weights), weights)
    return reduce_rows(kind.rows(out, y, meta), weights)


def loss(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, kind: str | InnerLoss = "ce") -> torch.Tensor:
    """Mean loss (``kind``: ``"ce"``, ``"mse"`` or an :class:`InnerLoss`) of ``model`` at ``params``."""
    return _task_loss(model, get_loss(kind), params, {}, x, y)


def run_inner(model: nn.Module, spec: InnerLoop, theta: Params, meta: Params, x: torch.Tensor, y: torch.Tensor,
              weights: torch.Tensor | None = None) -> Params:
    """One task's fast weights after ``spec.steps`` steps of ``spec.rule`` on ``(x, y)``
    (rows weighted by ``weights`` when padded); differentiable (inside ``torch.func``
    transforms) as ``spec.order`` says."""
    fast = {k: theta[k] for k in spec.adapted}
    frozen = {k: v for k, v in theta.items() if k not in fast}

    def inner_loss(f: Params) -> torch.Tensor:
        return _task_loss(model, spec.inner, {**frozen, **f}, meta, x, y, weights)

    state = spec.rule.init_state(fast, meta)
    for _ in range(spec.steps):
        g = grad(inner_loss)(fast)
        if spec.order != "second":
            g = {k: v.detach() for k, v in g.items()}
        fast, state = spec.rule.step(fast, g, state, meta, lr=spec.lr)
    return {**frozen, **fast}


def adapt(model: nn.Module, theta: Params, extra: Params, spec: InnerLoop, x: torch.Tensor, y: torch.Tensor) -> Params:
    """Fast weights for one task from ``(x, y)`` under ``spec`` (detached; the order does
    not change them)."""
    spec = replace(spec, order="first")
    theta = {k: v.detach() for k, v in theta.items()}
    meta = {k: v.detach() for k, v in extra.items()}
    with torch.no_grad():
        return {k: v.detach() for k, v in run_inner(model, spec, theta, meta, x, y).items()}


def reference_group(model: nn.Module, theta: Params, extra: Params, spec: InnerLoop, batch: TaskBatch) -> GroupResult:
    """Sums over the tasks of ``batch`` of the meta-gradient and query losses (tasks of
    different sizes come padded, with row weights: one ``vmap`` instead of one per shape)."""
    (ix, iy), (qx, qy) = batch.inner(), batch.query()
    theta = {k: v.detach() for k, v in theta.items()}
    meta = {k: v.detach() for k, v in extra.items()}
    iw, qw = batch.inner_w, batch.query_w

    def scores(th: Params, fast: Params, mt: Params, qx_, qy_, qw_):
        return (_task_loss(model, spec.loss, fast, mt, qx_, qy_, qw_),
                _task_loss(model, spec.loss, th, mt, qx_, qy_, qw_))

    dims = (None, None, 0, 0, 0, 0, None if iw is None else 0, None if qw is None else 0)
    if spec.order == "reptile":

        def reptile_task(th, mt, x, y, qx_, qy_, iw_, qw_):
            fast = run_inner(model, spec, th, mt, x, y, iw_)
            after, before = scores(th, fast, mt, qx_, qy_, qw_)
            return {k: th[k] - fast[k] for k in th}, after, before

        with torch.no_grad():
            diffs, after, before = vmap(reptile_task, in_dims=dims)(theta, meta, ix, iy, qx, qy, iw, qw)
        zeros = {k: torch.zeros_like(v) for k, v in meta.items()}
        return GroupResult({k: v.sum(0) for k, v in diffs.items()}, zeros, after.sum(), before.sum())

    def meta_loss(th: Params, mt: Params, x, y, qx_, qy_, iw_, qw_):
        fast = run_inner(model, spec, th, mt, x, y, iw_)
        after, before = scores(th, fast, mt, qx_, qy_, qw_)
        return after, (after.detach(), before.detach())

    (g_theta, g_meta), (after, before) = vmap(grad(meta_loss, argnums=(0, 1), has_aux=True), in_dims=dims)(
        theta, meta, ix, iy, qx, qy, iw, qw
    )
    return GroupResult(
        {k: v.sum(0) for k, v in g_theta.items()},
        {k: v.sum(0) for k, v in g_meta.items()},
        after.sum(),
        before.sum(),
    )
