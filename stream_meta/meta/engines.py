"""Engines that compute a meta-batch's meta-gradient under one :class:`InnerLoop` spec.

Three interchangeable engines, checked against each other in the tests:

- ``loop``: one task at a time with ``torch.autograd`` (the reference; any model);
- ``vmap``: ``torch.func.vmap`` over tasks of ``torch.func.grad`` (any model);
- ``lowrank``: MLPs only, see :mod:`stream_meta.meta.lowrank` (fastest on CPU for
  second order);
- ``manual``: ReLU MLPs, first order and Reptile, the backward pass written out, see
  :mod:`stream_meta.meta.manual` (fastest on CPU where it applies).

Every engine gets one *group* of tasks with equal shapes, stacked on a leading task
dimension (a :class:`TaskBatch`), and returns sums over its tasks; :func:`meta_gradient_mean` groups a list of
episodes by shape, picks an engine per group and averages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from stream_meta.meta.functional import Episode, GroupResult, InnerLoop, TaskBatch, adapt, loss, task_loss
from stream_meta.meta.lowrank import lowrank_group, supports_lowrank
from stream_meta.meta.manual import manual_group, manual_ragged, supports_manual
from stream_meta.model import Params

Engine = Callable[..., GroupResult]
BACKENDS: tuple[str, ...] = ("auto", "loop", "vmap", "lowrank", "manual")
VMAP_MIN_TASKS = 4


def _step_sizes(spec: InnerLoop, scales: Params | None) -> Params | None:
    if scales is None:
        return None
    return {k: v.clamp(0.0, spec.max_scale) for k, v in scales.items()}


def loop_group(model: nn.Module, theta: Params, scales: Params | None, spec: InnerLoop, batch: TaskBatch) -> GroupResult:
    """Reference engine: a Python loop over tasks, ``torch.autograd`` per task.

    ``theta`` (and ``scales``, when Meta-SGD) must be leaf tensors requiring grad.
    """
    (ix, iy), (qx, qy) = batch.inner(), batch.query()
    leaves = list(theta.values()) + ([] if scales is None or spec.order == "reptile" else list(scales.values()))
    sums = [torch.zeros_like(v) for v in leaves]
    after = torch.zeros((), dtype=qx.dtype, device=qx.device)
    before = torch.zeros_like(after)
    for t in range(ix.shape[0]):
        with torch.no_grad():
            before += loss(model, theta, qx[t], qy[t], spec.loss)
        if spec.order == "reptile":
            fast = adapt(
                model, theta, ix[t], iy[t], steps=spec.steps, lr=spec.lr, kind=spec.loss,
                names=spec.adapted, scales=_step_sizes(spec, scales),
            )
            with torch.no_grad():
                after += loss(model, fast, qx[t], qy[t], spec.loss)
                for s, k in zip(sums, theta):
                    s += theta[k] - fast[k]
            continue
        fast = dict(theta)
        alphas = _step_sizes(spec, scales)
        for _ in range(spec.steps):
            inner = loss(model, fast, ix[t], iy[t], spec.loss)
            gs = torch.autograd.grad(inner, [fast[k] for k in spec.adapted], create_graph=spec.order == "second")
            for k, g in zip(spec.adapted, gs):
                fast[k] = fast[k] - spec.lr * (1.0 if alphas is None else alphas[k]) * g
        q = loss(model, fast, qx[t], qy[t], spec.loss)
        gs = torch.autograd.grad(q, leaves, allow_unused=True)
        for s, g in zip(sums, gs):
            if g is not None:
                s += g
        after += q.detach()
    n = len(theta)
    return GroupResult(
        grads=dict(zip(theta, sums[:n])),
        scale_grads=dict(zip(scales or {}, sums[n:])) if spec.order != "reptile" else {},
        query_loss=after,
        query_loss_before=before,
    )


def vmap_group(model: nn.Module, theta: Params, scales: Params | None, spec: InnerLoop, batch: TaskBatch) -> GroupResult:
    """``torch.func`` engine: ``vmap`` over the tasks of a per-task ``grad`` program."""
    (ix, iy), (qx, qy) = batch.inner(), batch.query()
    theta = {k: v.detach() for k, v in theta.items()}
    learned = scales is not None
    scales_in = {k: v.detach() for k, v in scales.items()} if learned else {}
    adapted = spec.adapted

    def inner_loss(fast: Params, frozen: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(spec.loss, functional_call(model, {**frozen, **fast}, (x,)), y)

    def run_inner(th: Params, sc: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[Params, Params]:
        fast = {k: th[k] for k in adapted}
        frozen = {k: v for k, v in th.items() if k not in fast}
        for _ in range(spec.steps):
            g = grad(inner_loss)(fast, frozen, x, y)
            if spec.order != "second":
                g = {k: v.detach() for k, v in g.items()}
            fast = {
                k: fast[k] - spec.lr * (sc[k].clamp(0.0, spec.max_scale) if learned else 1.0) * g[k] for k in adapted
            }
        return fast, frozen

    if spec.order == "reptile":

        def reptile_task(th: Params, sc: Params, x, y, qx_, qy_):
            fast, frozen = run_inner(th, sc, x, y)
            after = inner_loss(fast, frozen, qx_, qy_)
            before = inner_loss({}, th, qx_, qy_)
            return {k: th[k] - fast[k] for k in adapted}, after, before

        with torch.no_grad():
            diffs, after, before = vmap(reptile_task, in_dims=(None, None, 0, 0, 0, 0))(
                theta, scales_in, ix, iy, qx, qy
            )
        grads = {k: diffs[k].sum(0) if k in diffs else torch.zeros_like(v) for k, v in theta.items()}
        return GroupResult(grads, {}, after.sum(), before.sum())

    def meta_loss(th: Params, sc: Params, x, y, qx_, qy_):
        fast, frozen = run_inner(th, sc, x, y)
        after = inner_loss(fast, frozen, qx_, qy_)
        before = inner_loss({}, th, qx_, qy_)
        return after, (after.detach(), before.detach())

    per_task = grad(meta_loss, argnums=(0, 1) if learned else 0, has_aux=True)
    g, (after, before) = vmap(per_task, in_dims=(None, None, 0, 0, 0, 0))(theta, scales_in, ix, iy, qx, qy)
    g_theta, g_scales = g if learned else (g, {})
    return GroupResult(
        grads={k: v.sum(0) for k, v in g_theta.items()},
        scale_grads={k: v.sum(0) for k, v in g_scales.items()},
        query_loss=after.sum(),
        query_loss_before=before.sum(),
    )


ENGINES: dict[str, Engine] = {"loop": loop_group, "vmap": vmap_group, "lowrank": lowrank_group, "manual": manual_group}


def choose_backend(
    backend: str, model: nn.Module, spec: InnerLoop, learned: bool, tasks: int, flat_inputs: bool = True
) -> str:
    """The engine ``backend`` resolves to for one group of ``tasks`` equal-shaped tasks.

    ``auto``: ``manual`` where it applies (a ReLU MLP, first order or Reptile, one
    global step size), else ``lowrank`` (an MLP, one global step size), else ``vmap``
    for four or more tasks, else ``loop`` (the choice measured fastest on CPU by
    ``python -m stream_meta.bench.meta_step``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    lowrank_ok = flat_inputs and not learned and supports_lowrank(model, spec.adapted)
    if backend == "lowrank" and not lowrank_ok:
        raise ValueError("the lowrank backend needs an nn.Sequential MLP, vector inputs and one global inner step size")
    manual_ok = flat_inputs and supports_manual(model, spec, learned)
    if backend == "manual" and not manual_ok:
        raise ValueError("the manual backend needs a ReLU MLP, vector inputs, first order or Reptile, "
                         "and one global inner step size")
    if backend != "auto":
        return backend
    if manual_ok:
        return "manual"
    if lowrank_ok:
        return "lowrank"
    return "vmap" if tasks >= VMAP_MIN_TASKS else "loop"


def group_by_shape(episodes: Sequence[Episode]) -> list[list[Episode]]:
    """Episodes split into groups of equal tensor shapes, in first-seen order."""
    groups: dict[tuple, list[Episode]] = {}
    for ep in episodes:
        key = tuple((t.shape, t.dtype, t.device) for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y))
        groups.setdefault(key, []).append(ep)
    return list(groups.values())


def _one_manual_call(backend: str, model: nn.Module, spec: InnerLoop, scales: Params | None,
                     episodes: Sequence[Episode]) -> bool:
    """Whether episodes of several shapes can go to the manual engine in one padded call:
    it applies, and only the row counts differ."""
    kinds = {
        (e.support_x.shape[1:], e.query_x.shape[1:], e.support_y.shape[1:], e.query_y.shape[1:],
         e.support_x.dtype, e.query_x.dtype, *(t.device for t in (e.support_x, e.query_x, e.support_y, e.query_y)))
        for e in episodes
    }
    if len(kinds) != 1:
        return False
    sx, qx, sy, qy, dsx, dqx, *devices = kinds.pop()
    same = len(sx) == 1 and sx == qx and sy == qy and dsx == dqx and len(set(devices)) == 1
    return same and choose_backend(backend, model, spec, scales is not None, len(episodes)) == "manual"


def meta_gradient_mean(
    model: nn.Module,
    theta: Params,
    scales: Params | None,
    spec: InnerLoop,
    episodes: Sequence[Episode],
    backend: str = "auto",
) -> GroupResult:
    """Mean over ``episodes`` of the meta-gradient (and query losses) under ``spec``.

    ``theta``/``scales`` must be leaf tensors requiring grad (the loop engine
    differentiates them directly).
    """
    if not episodes:
        raise ValueError("a meta-batch needs at least one episode")
    groups = group_by_shape(episodes)
    total: GroupResult | None = None
    if len(groups) > 1 and _one_manual_call(backend, model, spec, scales, episodes):
        total, groups = manual_ragged(model, theta, spec, episodes), []
    for group in groups:
        flat = group[0].support_x.dim() == 2
        engine = ENGINES[choose_backend(backend, model, spec, scales is not None, len(group), flat)]
        res = engine(model, theta, scales, spec, TaskBatch.stack(group, spec.order))
        if total is None:
            total = res
        else:
            total = GroupResult(
                {k: total.grads[k] + res.grads[k] for k in total.grads},
                {k: total.scale_grads[k] + res.scale_grads[k] for k in total.scale_grads},
                total.query_loss + res.query_loss,
                total.query_loss_before + res.query_loss_before,
            )
    assert total is not None
    n = len(episodes)
    return GroupResult(
        {k: v / n for k, v in total.grads.items()},
        {k: v / n for k, v in total.scale_grads.items()},
        total.query_loss / n,
        total.query_loss_before / n,
    )
