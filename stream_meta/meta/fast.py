"""The MLP fast path: tasks batched, fast weights kept as low-rank updates.

The inner-loop gradient of a linear layer on ``S`` rows is ``D^T A`` (``D``: gradients
of the layer's pre-activations, ``A``: its inputs), so for a *linear* update rule (one
fixed linear map ``update`` of the gradient, e.g. SGD) a task's fast weight after ``k``
steps is ``W + sum_j update(D_j)^T A_j`` and never needs forming: applied to inputs
``H`` it is ``H W^T + (H A^T) U``. ``H W^T`` uses the shared ``W`` for all tasks (one
large GEMM), and the lowest adapted layer's input never changes, so its update is a
Gram matrix times a running sum of ``U``. Later layers switch to a dense per-task
delta once that is cheaper. The fast path is handed the spec's rule and loss: it calls
``rule.update`` on the factors and the loss's ``rows``/``output_grad``; it keeps no copy.

Pre-activation gradients come from autograd (second order: with ``create_graph``), or,
for first order and Reptile on ReLU MLPs with a closed-form loss gradient, from the
backward pass written out (``D <- (D W) * [H > 0]``), which skips autograd's
bookkeeping: at the daemon's sizes that bookkeeping is most of the time.
:func:`declines` says what the fast path does not take; the tests check it against
:mod:`stream_meta.meta.reference`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from stream_meta.meta.losses import reduce_rows
from stream_meta.meta.mlp import MLPLayer, mlp_layers
from stream_meta.meta.spec import Episode, GroupResult, InnerLoop, TaskBatch
from stream_meta.model import Params


def declines(model: nn.Module, spec: InnerLoop, flat_inputs: bool = True) -> str | None:
    """Why the fast path cannot compute ``spec`` for ``model``, or None if it can."""
    layers = mlp_layers(model)
    if layers is None:
        return "the model is not an nn.Sequential MLP"
    if not flat_inputs:
        return "inputs are not [rows, features]"
    if not set(spec.adapted) <= _linear_names(model):
        return "it adapts parameters outside the MLP's linear layers"
    if not spec.rule.linear:
        return f"the update rule {spec.rule!r} is not linear"
    if spec.loss.learned or spec.inner.learned:
        return "the loss has meta-parameters"
    return None


@lru_cache(maxsize=64)
def _linear_names(model: nn.Module) -> frozenset[str]:
    layers = mlp_layers(model) or ()
    return frozenset(n for layer in layers for n in (layer.weight, layer.bias) if n is not None)


@lru_cache(maxsize=64)
def _plan(model: nn.Module, adapted: tuple[str, ...]) -> tuple[list[bool], list[bool], int, list[int]]:
    """Which layers' weights and biases adapt, the lowest adapted layer, the adapted layers."""
    layers = mlp_layers(model) or ()
    names = set(adapted)
    w_ad = [layer.weight in names for layer in layers]
    b_ad = [layer.bias is not None and layer.bias in names for layer in layers]
    f = next(i for i in range(len(layers)) if w_ad[i] or b_ad[i])
    return w_ad, b_ad, f, [i for i in range(f, len(layers)) if w_ad[i] or b_ad[i]]


def _by_hand(model: nn.Module, spec: InnerLoop, adapt_only: bool = False) -> bool:
    """Whether first-order gradients are written out: first order or Reptile (or plain
    adaptation), every activation a ReLU (or none), none on the output, losses with a
    closed-form ``output_grad``."""
    layers = mlp_layers(model)
    return ((adapt_only or spec.order != "second") and layers is not None
            and all(layer.relu is not None for layer in layers) and not layers[-1].relu
            and spec.loss.output_grad is not None and spec.inner.output_grad is not None)


class _Updates:
    """A task batch's accumulated inner-loop updates (``rule.update`` already applied), per layer.

    Lowest adapted layer ``f``: ``u`` [T, S, out], the running sum of its pre-activation
    updates (its input ``A`` never changes). Later layers: low-rank rows ``a``/``d``
    ([T, R, in] / [T, R, out]) while ``R (in + out) < in out`` (second order), then the
    dense per-task fast weight ``w`` [T, out, in]. ``db``: bias deltas [T, out].
    """

    def __init__(self) -> None:
        self.u: torch.Tensor | None = None
        self.a: dict[int, torch.Tensor] = {}
        self.d: dict[int, torch.Tensor] = {}
        self.w: dict[int, torch.Tensor] = {}
        self.db: dict[int, torch.Tensor] = {}


class _Run:
    """One batch's inner loop on the fast path; ``query`` False for plain adaptation.
    With ``point`` no inner steps: :meth:`query_grads` is then the gradient of the inner
    loss at ``theta`` on the query rows (a ReLU MLP's, by hand; the caller checked)."""

    def __init__(self, model: nn.Module, theta: Params, spec: InnerLoop, batch: TaskBatch, query: bool,
                 point: bool = False) -> None:
        layers = mlp_layers(model)
        if layers is None or (not point and declines(model, spec, batch.x.dim() == 3) is not None):
            raise ValueError(f"the fast path cannot take this: {declines(model, spec, batch.x.dim() == 3)}")
        self.layers: tuple[MLPLayer, ...] = layers
        self.spec, self.theta, self.batch = spec, theta, batch
        self.steps = 0 if point else spec.steps
        self.score = spec.inner if point else spec.loss  # the loss of the query rows
        self.second = spec.order == "second" and not point
        self.w_ad, self.b_ad, f, self.targets = _plan(model, spec.adapted)
        self.f = f
        # By hand only where every activation is a ReLU (or none) and the output has none.
        self.by_hand = point or _by_hand(model, spec)
        ni, q0 = batch.inner_end, batch.query_start
        if point:  # one task's rows, unbatched ([N, features]): all of them, no steps
            self.iy = self.qy = batch.y
            self.iw = self.qw = 1.0 / batch.x.shape[0]
            self.prefix = [batch.x]
            for i in range(f):
                self.prefix.append(layers[i].act(self._linear(i, self.prefix[-1])))
            self.base_in = self.base_q = self._linear(f, self.prefix[f])
            return
        self.iy, self.qy = batch.y[:, :ni], batch.y[:, q0:]
        self.iw = batch.inner_w if batch.inner_w is not None else 1.0 / ni
        self.qw = batch.query_w if batch.query_w is not None else 1.0 / max(batch.x.shape[1] - q0, 1)
        with torch.set_grad_enabled(not self.by_hand):
            # Layers below f never change and f's input is the same at every step:
            # one pass over inner + query rows.
            x = batch.x if query else batch.x[:, :ni]
            self.prefix = [x]
            for i in range(f):
                self.prefix.append(layers[i].act(self._linear(i, self.prefix[-1])))
            h = self.prefix[f]
            self.a_in = h[:, :ni] if self.second else h[:, :ni].detach()
            base = self._linear(f, h)
            if not query:
                self.base_in, self.base_q = base, None
            elif q0 == ni:  # disjoint sets: one split node, so one cheap backward
                self.base_in, self.base_q = torch.split(base, [ni, base.shape[1] - ni], 1)
            else:
                self.base_in, self.base_q = base[:, :ni], base[:, q0:]
            self.gram_in = self.gram_q = None
            if self.w_ad[f] and self.steps > 0:
                gram = torch.bmm(h, self.a_in.transpose(1, 2))
                self.gram_in, self.gram_q = gram[:, :ni], (gram[:, q0:] if query else None)

    def _linear(self, i: int, h: torch.Tensor) -> torch.Tensor:
        layer = self.layers[i]
        return F.linear(h, self.theta[layer.weight], None if layer.bias is None else self.theta[layer.bias])

    def forward(self, query: bool, up: _Updates) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Outputs at the fast weights; pre-activations of layers >= f and inputs of layers > f."""
        f, theta = self.f, self.theta
        z = self.base_q if query else self.base_in
        if up.u is not None:
            z = torch.baddbmm(z, self.gram_q if query else self.gram_in, up.u)
        if f in up.db:
            z = z + up.db[f].unsqueeze(1)
        zs, ins = {f: z}, {}
        h = self.layers[f].act(z)
        for i in range(f + 1, len(self.layers)):
            ins[i] = h
            layer = self.layers[i]
            if i in up.w:
                z = torch.bmm(h, up.w[i].transpose(1, 2))
                if layer.bias is not None:
                    z = z + theta[layer.bias]
            else:
                z = self._linear(i, h)
                if i in up.a:
                    z = torch.baddbmm(z, torch.bmm(h, up.a[i].transpose(1, 2)), up.d[i])
            if i in up.db:
                z = z + up.db[i].unsqueeze(1)
            zs[i] = z
            h = self.layers[i].act(z)
        return h, zs, ins

    def back(self, i: int, d: torch.Tensor, up: _Updates) -> torch.Tensor:
        """``d @ W_i`` at layer ``i``'s fast weight (``d``: its pre-activation gradients)."""
        if i in up.w:
            return torch.bmm(d, up.w[i])
        r = d @ self.theta[self.layers[i].weight]
        if i == self.f and up.u is not None:
            return r + torch.bmm(torch.bmm(d, up.u.transpose(1, 2)), self.a_in)
        if i in up.a:
            return r + torch.bmm(torch.bmm(d, up.d[i].transpose(1, 2)), up.a[i])
        return r

    def inner_grads(self, up: _Updates) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Gradients of the summed inner losses w.r.t. the adapted layers' pre-activations."""
        out, zs, ins = self.forward(False, up)
        if not self.by_hand:
            total = reduce_rows(self.spec.inner.rows(out, self.iy, {}), self._w(self.iw)).sum()
            ds = torch.autograd.grad(total, [zs[i] for i in self.targets], create_graph=self.second)
            return dict(zip(self.targets, ds)), ins
        d, grads = self.spec.inner.output_grad(out, self.iy, self.iw), {}
        for i in range(len(self.layers) - 1, self.f - 1, -1):
            grads[i] = d
            if i > self.f:
                d = self.back(i, d, up)
                if self.layers[i - 1].relu:
                    d = d * (ins[i] > 0)
        return grads, ins

    @staticmethod
    def _w(w: torch.Tensor | float) -> torch.Tensor | None:
        return w if isinstance(w, torch.Tensor) else None

    def adapt(self) -> _Updates:
        """The inner loop: ``spec.steps`` steps of ``spec.rule.update`` on the factors."""
        up, rule, lr = _Updates(), self.spec.rule, self.spec.lr
        with torch.set_grad_enabled(not self.by_hand):
            for _ in range(self.steps):
                ds, ins = self.inner_grads(up)
                new = _Updates()
                for i in self.targets:
                    u = rule.update(ds[i] if self.second else ds[i].detach(), lr)
                    if self.b_ad[i]:
                        new.db[i] = u.sum(1) if i not in up.db else up.db[i] + u.sum(1)
                    if not self.w_ad[i]:
                        continue
                    if i == self.f:
                        new.u = u if up.u is None else up.u + u
                        continue
                    a = ins[i] if self.second else ins[i].detach()
                    if i in up.w:
                        new.w[i] = torch.baddbmm(up.w[i], u.transpose(1, 2), a)
                        continue
                    a_cat = a if i not in up.a else torch.cat([up.a[i], a], 1)
                    d_cat = u if i not in up.d else torch.cat([up.d[i], u], 1)
                    # Written-out first order: dense at once (fewer products per pass at
                    # the daemon's sizes); autograd: low rank while it is cheaper.
                    if self.by_hand or a_cat.shape[1] * (a.shape[2] + u.shape[2]) >= a.shape[2] * u.shape[2]:
                        new.w[i] = torch.baddbmm(self.theta[self.layers[i].weight], d_cat.transpose(1, 2), a_cat)
                    else:
                        new.a[i], new.d[i] = a_cat, d_cat
                up = new
        return up

    def deltas(self, up: _Updates, summed: bool) -> Params:
        """The fast weights minus ``theta`` per task (``[T, ...]``), or summed over tasks."""
        out: Params = {}
        for i in self.targets:
            layer = self.layers[i]
            if i in up.db:
                out[layer.bias] = up.db[i].sum(0) if summed else up.db[i]  # type: ignore[index]
            pair = (up.u, self.a_in) if i == self.f else (up.d.get(i), up.a.get(i))
            if pair[0] is not None:
                d, a = pair
                out[layer.weight] = (d.reshape(-1, d.shape[2]).t() @ a.reshape(-1, a.shape[2]) if summed
                                     else torch.bmm(d.transpose(1, 2), a))
            elif i in up.w:
                w = self.theta[layer.weight]
                out[layer.weight] = up.w[i].sum(0) - up.w[i].shape[0] * w if summed else up.w[i] - w
        return out

    def query_grads(self, up: _Updates, with_loss: bool = False) -> tuple[Params, torch.Tensor | None]:
        """FOMAML by hand: the query loss's gradient at the fast weights, for every
        parameter, and (``with_loss``) the loss."""
        out, _, ins = self.forward(True, up)
        loss = reduce_rows(self.score.rows(out, self.qy, {}), self._w(self.qw)).sum() if with_loss else None
        d = self.score.output_grad(out, self.qy, self.qw)
        q0, grads = self.batch.query_start, {}
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            x = ins[i] if i > self.f else (self.prefix[i] if q0 == 0 else self.prefix[i][:, q0:])
            if d.dim() == 2:  # one task, unbatched (point mode)
                grads[layer.weight] = d.t() @ x
            else:
                grads[layer.weight] = d.reshape(-1, d.shape[2]).t() @ x.reshape(-1, x.shape[2])
            if layer.bias is not None:
                grads[layer.bias] = d.sum(0) if d.dim() == 2 else d.sum((0, 1))
            if i > 0:
                d = self.back(i, d, up)
                if self.layers[i - 1].relu:
                    d = d * (x > 0)
        return grads, loss


def adapt_declines(model: nn.Module, spec: InnerLoop, flat_inputs: bool = True) -> str | None:
    """Why :func:`fast_adapt` cannot adapt under ``spec``, or None. Plain adaptation needs
    no meta-gradient, so with the backward written out any rule runs (dense gradients,
    ``rule.step``); otherwise the low-rank path's conditions (:func:`declines`) hold."""
    layers = mlp_layers(model)
    if layers is None or not flat_inputs or not set(spec.adapted) <= _linear_names(model):
        return declines(model, spec, flat_inputs)
    return None if _by_hand(model, spec, True) and not spec.inner.learned else declines(model, spec, flat_inputs)


def fast_adapt(model: nn.Module, theta: Params, extra: Params, spec: InnerLoop, x: torch.Tensor, y: torch.Tensor) -> Params:
    """One task's fast weights from ``(x, y)`` (detached): what the reference's ``adapt`` gives."""
    n = x.shape[0]
    if _by_hand(model, spec, True) and not spec.inner.learned:
        # Dense gradients by hand, one step at a time, moved by the rule itself: for one
        # task this beats the low-rank bookkeeping, and any rule (learned step sizes,
        # state) runs.
        batch = TaskBatch(x, y, n, 0)  # unbatched: point mode takes [N, features]
        meta = {k: v.detach() for k, v in extra.items()}
        fast = {k: v.detach() for k, v in theta.items()}
        state = spec.rule.init_state({k: fast[k] for k in spec.adapted}, meta)
        with torch.no_grad():
            for _ in range(spec.steps):
                grads, _ = _Run(model, fast, spec, batch, query=True, point=True).query_grads(_Updates())
                if len(grads) != len(spec.adapted):
                    grads = {k: grads[k] for k in spec.adapted}
                fast, state = spec.rule.step(fast, grads, state, meta, lr=spec.lr)
        return fast
    spec = replace(spec, order="first")
    hand = _by_hand(model, spec)
    theta = {k: v.detach() if hand else v.detach().requires_grad_() for k, v in theta.items()}
    run = _Run(model, theta, spec, TaskBatch(x.unsqueeze(0), y.unsqueeze(0), n, n), query=False)
    up = run.adapt()
    with torch.no_grad():
        deltas = run.deltas(up, summed=False)
        return {k: v.detach() + deltas[k][0] if k in deltas else v.detach() for k, v in theta.items()}


def fast_group(model: nn.Module, theta: Params, extra: Params, spec: InnerLoop, batch: TaskBatch) -> GroupResult:
    """Sums over the tasks of ``batch`` (equal shapes, or padded with row weights) of the
    meta-gradient and query losses. ``theta`` must be leaves requiring grad."""
    # Autograd differentiates theta unless the gradients are written out (first order:
    # through updates held constant).
    run = _Run(model, {k: v.detach() for k, v in theta.items()} if _by_hand(model, spec) else theta, spec, batch, True)
    up = run.adapt()
    no_extra = {k: torch.zeros_like(v) for k, v in extra.items()}
    qw = run._w(run.qw)
    with torch.no_grad():
        before = reduce_rows(spec.loss.rows(run.forward(True, _Updates())[0], run.qy, {}), qw).sum()
    if spec.order == "reptile":
        with torch.no_grad():
            after = reduce_rows(spec.loss.rows(run.forward(True, up)[0], run.qy, {}), qw).sum()
            diffs = run.deltas(up, summed=True)
            grads = {k: -diffs[k] if k in diffs else torch.zeros_like(v) for k, v in theta.items()}
        return GroupResult(grads, no_extra, after, before)
    if run.by_hand:
        with torch.no_grad():
            grads, after = run.query_grads(up, with_loss=True)
        return GroupResult({k: grads[k] for k in theta}, no_extra, after, before)
    with torch.enable_grad():
        q = reduce_rows(spec.loss.rows(run.forward(True, up)[0], run.qy, {}), qw).sum()
        names = list(theta)
        gs = torch.autograd.grad(q, [theta[k] for k in names], allow_unused=True)
    grads = {k: torch.zeros_like(theta[k]) if g is None else g for k, g in zip(names, gs)}
    return GroupResult(grads, no_extra, q.detach(), before)


def one_step_applies(model: nn.Module, spec: InnerLoop) -> bool:
    """Whether :func:`one_step_reptile` computes ``spec``: Reptile, one inner step, every
    linear-layer parameter adapted, gradients written out (a ReLU MLP, closed-form loss)."""
    return (spec.order == "reptile" and spec.steps == 1 and _by_hand(model, spec) and spec.rule.linear
            and not spec.loss.learned and not spec.inner.learned and set(spec.adapted) == _linear_names(model))


@torch.no_grad()
def one_step_reptile(model: nn.Module, theta: Params, spec: InnerLoop, episodes: Sequence[Episode]) -> GroupResult:
    """Sums over ``episodes`` of Reptile's ``theta - phi`` after ONE inner step, and of the
    query losses before and after it, without a task dimension or padding.

    One step from ``theta`` moves a linear layer by ``update(D)^T A`` on its task's rows
    (``D``: pre-activation gradients, ``A``: inputs, both at ``theta``), so the summed
    "gradient" is one backward pass over every episode's rows, each weighted by 1 / its
    episode's rows; the query rows at each task's ``phi`` add ``(H A^T * same task) U``.
    This is the cheap outer step of a large learn batch (``batch_inner_steps`` 1); the
    tests check it against the reference engine.
    """
    layers = mlp_layers(model)
    assert layers is not None
    dtype = episodes[0].support_x.dtype
    s = torch.tensor([e.support_x.shape[0] for e in episodes])
    q = torch.tensor([e.query_x.shape[0] for e in episodes])
    x = torch.cat([t for e in episodes for t in (e.support_x, e.query_x)])
    y = torch.cat([t for e in episodes for t in (e.support_y, e.query_y)])
    n = s + q
    task = torch.repeat_interleave(torch.arange(len(episodes)), n)
    w = (1.0 / n.to(dtype))[task]
    first = torch.cumsum(n, 0) - n  # each episode's first row
    q_rows = torch.nonzero(torch.arange(x.shape[0]) - first[task] >= s[task]).squeeze(1)  # its last q rows
    q_w = (1.0 / q.to(dtype))[task[q_rows]]
    ins = [x]
    for layer in layers[:-1]:
        ins.append(layer.act(_lin(theta, layer, ins[-1])))
    out = _lin(theta, layers[-1], ins[-1])
    before = (spec.loss.rows(out[q_rows], y[q_rows], {}) * q_w).sum()
    d = spec.inner.output_grad(out, y, w)
    ups: list[torch.Tensor] = [d] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        ups[i] = spec.rule.update(d, spec.lr)
        if i > 0:
            d = (d @ theta[layers[i].weight]) * (ins[i] > 0)
    grads: Params = {}
    for i, layer in enumerate(layers):
        grads[layer.weight] = -(ups[i].t() @ ins[i])
        if layer.bias is not None:
            grads[layer.bias] = -ups[i].sum(0)
    # The query rows at their own task's fast weights: phi = theta + U^T A on that task's rows.
    same = (task[q_rows].unsqueeze(1) == task.unsqueeze(0)).to(x.dtype)
    h = x[q_rows]
    for i, layer in enumerate(layers):
        z = _lin(theta, layer, h) + ((h @ ins[i].t()) * same) @ ups[i]
        if layer.bias is not None:
            z = z + same @ ups[i]
        h = layer.act(z)
    after = (spec.loss.rows(h, y[q_rows], {}) * q_w).sum()
    return GroupResult({k: grads[k] for k in theta}, {}, after, before)


def _lin(theta: Params, layer: MLPLayer, h: torch.Tensor) -> torch.Tensor:
    return F.linear(h, theta[layer.weight], None if layer.bias is None else theta[layer.bias])
