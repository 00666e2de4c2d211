"""First-order meta-gradients (FOMAML, Reptile) for ReLU MLPs, tasks batched, with the
backward pass written out.

A first-order inner loop keeps no graph, so autograd only adds bookkeeping; at the
daemon's sizes (a few tasks of ~30 rows per meta-update) that bookkeeping is most of
the time. Here each task's fast weights are stacked on a leading task dimension
(``[T, out, in]``; the meta-parameters are shared until a layer is first updated) and
the gradients are a few batched products per layer, as in
:mod:`stream_meta.meta.mlp_sgd` for one task:

    dW_t = D_t^T H_t        db_t = sum_rows D_t        D_t <- (D_t W_t) * [H_t > 0]

The result equals the ``loop`` engine (checked in the tests, float64); models that are
not ReLU MLPs, learned step sizes and second order go to the other engines.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stream_meta.meta.functional import Episode, GroupResult, InnerLoop, TaskBatch, batched_task_loss
from stream_meta.meta.mlp_sgd import relu_mlp
from stream_meta.model import Params


def supports_manual(model: nn.Module, spec: InnerLoop, learned: bool) -> bool:
    """Whether :func:`manual_group` computes ``spec`` for ``model``."""
    mlp = relu_mlp(model)
    if mlp is None or learned or spec.order == "second" or spec.loss not in ("ce", "mse"):
        return False
    known = {n for layer in mlp[0] for n in (layer.weight, layer.bias) if n is not None}
    return set(spec.adapted) <= known


def _layer(layer, has_relu: bool, params: Params, h: torch.Tensor) -> torch.Tensor:
    """One linear layer (+ ReLU) on [T, N, in]; its parameters are shared (2-D weight,
    1-D bias) or per task (one more leading dimension)."""
    w = params[layer.weight]
    h = h @ w.t() if w.dim() == 2 else torch.bmm(h, w.transpose(1, 2))
    if layer.bias is not None:
        b = params[layer.bias]
        h = h + (b if b.dim() == 1 else b.unsqueeze(1))
    return h.clamp_min(0) if has_relu else h


def _output_grad(kind: str, out: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """d(per-task loss)/d(outputs), [T, N, C]: the mean over rows, or the ``w``-weighted
    sum ([T, N]; padding rows weigh 0)."""
    n, c = out.shape[1], out.shape[2]
    scale = 1 / n if w is None else w.unsqueeze(2)
    if kind == "ce":
        return (torch.softmax(out, dim=2) - F.one_hot(y, c).to(out.dtype)) * scale
    return 2 * (out - y.reshape(out.shape)) * scale / c


def _padded(episodes: Sequence[Episode], order: str) -> tuple[TaskBatch, torch.Tensor, torch.Tensor]:
    """Episodes of different sizes in one batch: support rows padded to the largest
    support set, then query rows padded to the largest query set, with row weights
    (1 / the task's own row count, 0 on padding) for the inner set and the query set."""
    t = len(episodes)
    s_max = max(e.support_x.shape[0] for e in episodes)
    q_max = max(e.query_x.shape[0] for e in episodes)
    first = episodes[0]
    x = first.support_x.new_zeros((t, s_max + q_max, *first.support_x.shape[1:]))
    y = first.support_y.new_zeros((t, s_max + q_max, *first.support_y.shape[1:]))
    inner_w = x.new_zeros((t, s_max + q_max if order == "reptile" else s_max))
    query_w = x.new_zeros((t, q_max))
    for i, e in enumerate(episodes):
        s, q = e.support_x.shape[0], e.query_x.shape[0]
        x[i, :s], y[i, :s], x[i, s_max:s_max + q], y[i, s_max:s_max + q] = e.support_x, e.support_y, e.query_x, e.query_y
        inner = s + q if order == "reptile" else s
        inner_w[i, :s] = 1 / inner
        if order == "reptile":
            inner_w[i, s_max:s_max + q] = 1 / inner
        query_w[i, :q] = 1 / q
    return TaskBatch(x, y, inner_w.shape[1], s_max), inner_w, query_w


def manual_ragged(model: nn.Module, theta: Params, spec: InnerLoop, episodes: Sequence[Episode]) -> GroupResult:
    """:func:`manual_group` over episodes of different sizes at once (zero-weight padding
    rows instead of one call per shape: the daemon's new episode carries replayed
    records in its query set, its replayed companions do not)."""
    batch, inner_w, query_w = _padded(episodes, spec.order)
    return _manual(model, theta, spec, batch, inner_w, query_w)


def manual_group(model: nn.Module, theta: Params, scales: Params | None, spec: InnerLoop, batch: TaskBatch) -> GroupResult:
    """Sums over the tasks of meta-gradient and query losses, first order or Reptile
    (see :func:`_manual`)."""
    if scales is not None:
        raise ValueError("the manual engine takes one global step size, not learned ones")
    return _manual(model, theta, spec, batch, None, None)


@torch.no_grad()
def _manual(
    model: nn.Module, theta: Params, spec: InnerLoop, batch: TaskBatch,
    inner_w: torch.Tensor | None, query_w: torch.Tensor | None,
) -> GroupResult:
    """Sums over the tasks of meta-gradient and query losses, first order or Reptile.

    Layers below the lowest adapted one (``f``) never change, and ``f``'s input ``A``
    is the same at every step, so (as in :mod:`stream_meta.meta.lowrank`) its fast
    weight is kept as ``W - lr * S^T A`` with ``S`` the running sum of its
    pre-activation gradients and applied as ``H W^T - (H A^T) lr S``: one shared GEMM
    and two small batched products instead of a ``[T, out, in]`` weight per task.
    Layers above ``f`` hold dense per-task fast weights.
    """
    if not supports_manual(model, spec, False) or batch.x.dim() != 3:
        raise ValueError("the manual engine needs a ReLU MLP, [T, N, features] inputs, first order or Reptile, "
                         "and one global step size")
    layers, relu = relu_mlp(model)
    theta = {k: v.detach() for k, v in theta.items()}
    adapted = set(spec.adapted)
    f = min(i for i, layer in enumerate(layers) if layer.weight in adapted or layer.bias in adapted)
    wf, bf = layers[f].weight, layers[f].bias
    ni, q0 = batch.inner_end, batch.query_start
    iy, qy = batch.y[:, :ni], batch.y[:, q0:]

    prefix = [batch.x]  # inputs of layers 0..f: one pass over inner + query rows through the fixed layers
    for i in range(f):
        prefix.append(_layer(layers[i], relu[i], theta, prefix[-1]))
    h = prefix[f]
    a_in = h[:, :ni]
    base = h @ theta[wf].t() + (theta[bf] if bf is not None else 0)
    base_in, base_q = base[:, :ni], base[:, q0:]
    gram = torch.bmm(h, a_in.transpose(1, 2)) if wf in adapted and spec.steps else None
    gram_in, gram_q = (gram[:, :ni], gram[:, q0:]) if gram is not None else (None, None)

    fast = dict(theta)  # layers above f: shared until first updated, then [T, ...]
    s_sum = db_f = None  # lr * running sums of f's pre-activation gradients, [T, rows, out] / [T, out]

    def forward(query: bool, params: Params, updated: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs and the inputs of the layers above f, at ``params`` (and f's updates)."""
        z = base_q if query else base_in
        if updated and s_sum is not None:
            z = torch.baddbmm(z, gram_q if query else gram_in, s_sum, alpha=-1.0)
        if updated and db_f is not None:
            z = z - db_f.unsqueeze(1)
        ins = [z.clamp_min(0) if relu[f] else z]
        for i in range(f + 1, len(layers)):
            ins.append(_layer(layers[i], relu[i], params, ins[-1]))
        return ins.pop(), ins

    def backward(d: torch.Tensor, ins: list[torch.Tensor], summed: bool) -> tuple[Params, torch.Tensor]:
        """Gradients of the layers above f (per task, or summed over tasks) and of the
        loss with respect to f's pre-activations."""
        grads: Params = {}
        for i in range(len(layers) - 1, f, -1):
            layer, x = layers[i], ins[i - f - 1]
            if summed:
                grads[layer.weight] = d.reshape(-1, d.shape[2]).t() @ x.reshape(-1, x.shape[2])
            else:
                grads[layer.weight] = torch.bmm(d.transpose(1, 2), x)
            if layer.bias is not None:
                grads[layer.bias] = d.sum((0, 1)) if summed else d.sum(1)
            w = fast[layer.weight]
            d = d @ w if w.dim() == 2 else torch.bmm(d, w)
            if relu[i - 1]:
                d = d * (x > 0)
        return grads, d

    for _ in range(spec.steps):
        out, ins = forward(False, fast, True)
        grads, d = backward(_output_grad(spec.loss, out, iy, inner_w), ins, summed=False)
        for k, g in grads.items():
            if k in adapted:
                fast[k] = fast[k] - spec.lr * g  # a shared parameter becomes per task
        d = spec.lr * d
        if wf in adapted:
            s_sum = d if s_sum is None else s_sum + d
        if bf is not None and bf in adapted:
            db_f = d.sum(1) if db_f is None else db_f + d.sum(1)

    before = batched_task_loss(spec.loss, forward(True, theta, False)[0], qy, query_w).sum()
    out, ins = forward(True, fast, True)
    after = batched_task_loss(spec.loss, out, qy, query_w).sum()
    t = batch.tasks
    if spec.order == "reptile":
        diffs = {k: t * v - fast[k].sum(0) if fast[k].dim() > v.dim() else torch.zeros_like(v) for k, v in theta.items()}
        if s_sum is not None:  # sum over tasks of W - (W - S^T A)
            diffs[wf] = s_sum.reshape(-1, s_sum.shape[2]).t() @ a_in.reshape(-1, a_in.shape[2])
        if db_f is not None:
            diffs[bf] = db_f.sum(0)
        return GroupResult(diffs, {}, after, before)

    # FOMAML: the query loss's gradient at the fast weights, for every parameter.
    grads, d = backward(_output_grad(spec.loss, out, qy, query_w), ins, summed=True)
    for i in range(f, -1, -1):  # f and the fixed layers below it
        x = prefix[i][:, q0:]
        grads[layers[i].weight] = d.reshape(-1, d.shape[2]).t() @ x.reshape(-1, x.shape[2])
        if layers[i].bias is not None:
            grads[layers[i].bias] = d.sum((0, 1))
        if i == 0:
            break
        back = d @ theta[layers[i].weight]
        if i == f and s_sum is not None:  # through f's fast weight W - S^T A
            back = back - torch.bmm(torch.bmm(d, s_sum.transpose(1, 2)), a_in)
        d = back * (x > 0) if relu[i - 1] else back
    return GroupResult({k: grads[k] for k in theta}, {}, after, before)
