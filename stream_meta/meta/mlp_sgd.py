"""First-order inner loop for ReLU MLPs with the backward pass written out.

Adapting fast weights for a prediction needs no graph: ``K`` plain SGD steps.
For an MLP the gradients are a few matrix products (``dW = D^T H``,
``D <- (D W) * [h > 0]``), so doing them by hand skips autograd's per-op
bookkeeping, which dominates at the daemon's sizes (a window of ~25 records).
The result equals :func:`stream_meta.meta.functional.adapt` without
``create_graph`` (checked in the tests); anything else falls back to it.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from stream_meta.meta.mlp import mlp_layers
from stream_meta.model import Params


def _relu_only(acts: tuple[nn.Module, ...]) -> bool | None:
    """True for one ReLU, False for none; None for anything this module does not handle."""
    if not acts:
        return False
    if len(acts) == 1 and isinstance(acts[0], nn.ReLU):
        return True
    return None


@lru_cache(maxsize=64)
def relu_mlp(model: nn.Module) -> tuple[tuple, tuple[bool, ...]] | None:
    """The model's layers and which of them end in a ReLU, if it is a ReLU MLP."""
    layers = mlp_layers(model)
    if layers is None:
        return None
    relu = tuple(_relu_only(layer.acts) for layer in layers)
    if any(r is None for r in relu) or relu[-1]:
        return None
    return layers, relu


@torch.no_grad()
def mlp_sgd_adapt(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    kind: str,
    names: tuple[str, ...],
    scales: Params | None,
) -> Params | None:
    """``steps`` SGD steps on ``(x, y)`` from ``params``, or None if ``model`` is not a ReLU MLP."""
    mlp = relu_mlp(model)
    if mlp is None or kind not in ("ce", "mse"):
        return None
    layers, relu = mlp
    adapted = set(names)
    fast = {k: v.detach() for k, v in params.items()}
    n = x.shape[0]
    for _ in range(steps):
        inputs = []
        h = x
        for layer, has_relu in zip(layers, relu):
            inputs.append(h)
            b = fast[layer.bias] if layer.bias else None
            h = torch.addmm(b, h, fast[layer.weight].t()) if b is not None else h @ fast[layer.weight].t()
            if has_relu:
                h = h.clamp_min(0)
        if kind == "ce":
            d = (torch.softmax(h, dim=1) - F.one_hot(y, h.shape[1]).to(h.dtype)) / n
        else:
            d = 2 * (h - y) / h.numel()
        for i in reversed(range(len(layers))):
            layer = layers[i]
            w = fast[layer.weight]
            gw, gb = d.t() @ inputs[i], d.sum(0)
            if i > 0:
                d = d @ w
                if relu[i - 1]:
                    d = d * (inputs[i] > 0)
            for name, g in ((layer.weight, gw), (layer.bias, gb)):
                if name and name in adapted:
                    step = lr if scales is None else lr * scales[name]
                    fast[name] = fast[name] - step * g
    return fast


@torch.no_grad()
def mlp_forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``functional_call(model, params, (x,))`` without its per-call reparametrisation
    cost, for ReLU MLPs (other models go through ``functional_call``)."""
    mlp = relu_mlp(model)
    if mlp is None:
        return torch.func.functional_call(model, params, (x,))
    layers, relu = mlp
    h = x
    for layer, has_relu in zip(layers, relu):
        w = params[layer.weight]
        h = torch.addmm(params[layer.bias], h, w.t()) if layer.bias else h @ w.t()
        if has_relu:
            h = h.clamp_min(0)
    return h
