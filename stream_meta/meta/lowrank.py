"""Tasks-vectorised MAML for MLPs with fast weights kept in low-rank form.

The inner-loop gradient of a linear layer on a support set of ``S`` rows is
``D^T A`` (``D``: gradient w.r.t. the layer's pre-activations, ``A``: its inputs), a
rank-``S`` matrix. So a task's fast weight after ``k`` steps,
``W - lr * sum_j D_j^T A_j``, never needs to be formed: applied to inputs ``H`` it is

    H W^T - (H A^T) (lr D)        (A, D: the k steps' rows, concatenated)

``H W^T`` uses the *shared* ``W`` for all tasks at once (one large GEMM instead of
``T`` small ones), and no ``[T, out, in]`` per-task weight tensor is ever built; for
the first adapted layer ``A`` is the same at every step, so its update collapses to a
Gram matrix times a running sum of ``D``. The math is exact; autograd differentiates it
(second order: ``D`` is computed with ``create_graph``), and the tests check it against
the per-task loop. Only for ``nn.Sequential`` MLPs (``nn.Linear`` and element-wise
activations) and one global step size (not Meta-SGD's per-parameter ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stream_meta.meta.functional import GroupResult, InnerLoop, TaskBatch, batched_task_loss
from stream_meta.meta.mlp import MLPLayer, mlp_layers
from stream_meta.model import Params

def supports_lowrank(model: nn.Module, adapted: tuple[str, ...]) -> bool:
    layers = mlp_layers(model)
    if layers is None:
        return False
    known = {n for layer in layers for n in (layer.weight, layer.bias) if n is not None}
    return set(adapted) <= known


def _act(layer: MLPLayer, z: torch.Tensor) -> torch.Tensor:
    for a in layer.acts:
        z = a(z)
    return z


class _Updates:
    """A task batch's accumulated inner-loop updates (already scaled by ``lr``), per layer.

    First adapted layer: ``dsum`` [T, S, out], the running sum of pre-activation
    gradients (its input never changes). Later layers: the low-rank rows ``a``/``d``
    ([T, R, in] / [T, R, out]) while ``R (in + out) < in out``, then a dense per-task
    weight delta ``dw`` [T, out, in], whichever is cheaper. ``db``: bias deltas [T, out].
    """

    def __init__(self) -> None:
        self.dsum: torch.Tensor | None = None
        self.a: dict[int, torch.Tensor] = {}
        self.d: dict[int, torch.Tensor] = {}
        self.dw: dict[int, torch.Tensor] = {}
        self.db: dict[int, torch.Tensor] = {}


def lowrank_group(model: nn.Module, theta: Params, scales: Params | None, spec: InnerLoop, batch: TaskBatch) -> GroupResult:
    """Sums over the tasks of meta-gradient and query losses (see the module doc)."""
    if scales is not None:
        raise ValueError("the lowrank engine takes one global step size, not learned ones")
    layers = mlp_layers(model)
    if layers is None or not supports_lowrank(model, spec.adapted) or batch.x.dim() != 3:
        raise ValueError("the lowrank engine needs an nn.Sequential MLP and [T, N, features] inputs")
    adapted = set(spec.adapted)
    w_ad = [layer.weight in adapted for layer in layers]
    b_ad = [layer.bias is not None and layer.bias in adapted for layer in layers]
    first = next(i for i in range(len(layers)) if w_ad[i] or b_ad[i])
    second = spec.order == "second"
    ni, q0 = batch.inner_end, batch.query_start
    iy, qy = batch.y[:, :ni], batch.y[:, q0:]

    def linear(i: int, h: torch.Tensor) -> torch.Tensor:
        layer = layers[i]
        return F.linear(h, theta[layer.weight], None if layer.bias is None else theta[layer.bias])

    with torch.enable_grad():
        # Layers before the first adapted one never change, and the first adapted
        # layer's input is the same at every step: one pass over support + query.
        h = batch.x
        for i in range(first):
            h = _act(layers[i], linear(i, h))
        h_in = h[:, :ni]
        base = linear(first, h)
        if q0 == ni:  # disjoint sets: one split node, so one cheap backward
            base_in, base_q = torch.split(base, [ni, base.shape[1] - ni], 1)
        else:
            base_in, base_q = base[:, :ni], base[:, q0:]
        gram_in = gram_q = None
        if w_ad[first] and spec.steps > 0:
            gram = torch.bmm(h, (h_in if second else h_in.detach()).transpose(1, 2))
            gram_in, gram_q = gram[:, :ni], gram[:, q0:]

    def forward(query: bool, up: _Updates) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Outputs at the fast weights; pre-activations and inputs of the adapted layers."""
        zs: dict[int, torch.Tensor] = {}
        ins: dict[int, torch.Tensor] = {}
        z = base_q if query else base_in
        if up.dsum is not None:
            z = torch.baddbmm(z, gram_q if query else gram_in, up.dsum, alpha=-1.0)
        if first in up.db:
            z = z - up.db[first].unsqueeze(1)
        zs[first] = z
        h = _act(layers[first], z)
        for i in range(first + 1, len(layers)):
            ins[i] = h
            layer = layers[i]
            if i in up.dw:
                z = torch.bmm(h, (theta[layer.weight] - up.dw[i]).transpose(1, 2))
                if layer.bias is not None:
                    z = z + theta[layer.bias]
            else:
                z = linear(i, h)
                if i in up.a:
                    z = torch.baddbmm(z, torch.bmm(h, up.a[i].transpose(1, 2)), up.d[i], alpha=-1.0)
            if i in up.db:
                z = z - up.db[i].unsqueeze(1)
            zs[i] = z
            h = _act(layers[i], z)
        return h, zs, ins

    up = _Updates()
    targets = [i for i in range(first, len(layers)) if w_ad[i] or b_ad[i]]
    with torch.enable_grad():
        for _ in range(spec.steps):
            out, zs, ins = forward(False, up)
            inner = batched_task_loss(spec.loss, out, iy).sum()
            ds = torch.autograd.grad(inner, [zs[i] for i in targets], create_graph=second)
            new = _Updates()
            for i, d in zip(targets, ds):
                d = spec.lr * d if second else (spec.lr * d).detach()
                if b_ad[i]:
                    new.db[i] = d.sum(1) if i not in up.db else up.db[i] + d.sum(1)
                if not w_ad[i]:
                    continue
                if i == first:
                    new.dsum = d if up.dsum is None else up.dsum + d
                    continue
                a = ins[i] if second else ins[i].detach()
                if i in up.dw:
                    new.dw[i] = torch.baddbmm(up.dw[i], d.transpose(1, 2), a)
                    continue
                a_cat = a if i not in up.a else torch.cat([up.a[i], a], 1)
                d_cat = d if i not in up.d else torch.cat([up.d[i], d], 1)
                if a_cat.shape[1] * (a.shape[2] + d.shape[2]) >= a.shape[2] * d.shape[2]:
                    new.dw[i] = torch.bmm(d_cat.transpose(1, 2), a_cat)
                else:
                    new.a[i], new.d[i] = a_cat, d_cat
            up = new

    with torch.no_grad():
        before = batched_task_loss(spec.loss, forward(True, _Updates())[0], qy).sum()
    if spec.order == "reptile":
        with torch.no_grad():
            after = batched_task_loss(spec.loss, forward(True, up)[0], qy).sum()
            grads = {k: torch.zeros_like(v) for k, v in theta.items()}
            for i in targets:
                layer = layers[i]
                if i in up.db:
                    grads[layer.bias] = up.db[i].sum(0)  # type: ignore[index]
                if i == first and up.dsum is not None:
                    d, a = up.dsum, h_in
                elif i in up.d:
                    d, a = up.d[i], up.a[i]
                elif i in up.dw:
                    grads[layer.weight] = up.dw[i].sum(0)
                    continue
                else:
                    continue
                grads[layer.weight] = d.reshape(-1, d.shape[-1]).T @ a.reshape(-1, a.shape[-1])
        return GroupResult(grads, {}, after, before)

    with torch.enable_grad():
        q = batched_task_loss(spec.loss, forward(True, up)[0], qy).sum()
        names = list(theta)
        gs = torch.autograd.grad(q, [theta[k] for k in names], allow_unused=True)
    grads = {k: torch.zeros_like(theta[k]) if g is None else g for k, g in zip(names, gs)}
    return GroupResult(grads, {}, q.detach(), before)
