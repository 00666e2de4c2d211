"""An ``nn.Sequential`` MLP read as layers, for the fast path and for cheap forward passes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from stream_meta.model import Params

# Parameter-free modules applied element-wise, so they act on [T, N, d] as on [N, d].
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus, nn.Identity)


@dataclass(frozen=True)
class MLPLayer:
    """One ``nn.Linear`` of an MLP and the element-wise activations after it."""

    weight: str
    bias: str | None
    acts: tuple[nn.Module, ...]
    relu: bool | None  # True: exactly one ReLU; False: no activation; None: anything else

    def act(self, z: torch.Tensor) -> torch.Tensor:
        if self.relu is not None:
            return torch.relu(z) if self.relu else z  # relu, not clamp_min: a cheaper double backward
        for a in self.acts:
            z = a(z)
        return z


@lru_cache(maxsize=64)
def mlp_layers(model: nn.Module) -> tuple[MLPLayer, ...] | None:
    """The layers of ``model`` if it is an ``nn.Sequential`` MLP, else ``None``."""
    if not isinstance(model, nn.Sequential):
        return None
    layers: list[tuple[str, str | None, list[nn.Module]]] = []
    for name, m in model.named_children():
        if isinstance(m, nn.Linear):
            layers.append((f"{name}.weight", f"{name}.bias" if m.bias is not None else None, []))
        elif isinstance(m, _ELEMENTWISE) and layers:
            layers[-1][2].append(m)
        else:
            return None
    return tuple(MLPLayer(w, b, tuple(a), _relu(a)) for w, b, a in layers) or None


def _relu(acts: list[nn.Module]) -> bool | None:
    if not acts:
        return False
    return True if len(acts) == 1 and isinstance(acts[0], nn.ReLU) else None


@torch.no_grad()
def mlp_forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``functional_call(model, params, (x,))`` without its per-call reparametrisation
    cost, for MLPs (other models go through ``functional_call``)."""
    layers = mlp_layers(model)
    if layers is None:
        return torch.func.functional_call(model, params, (x,))
    h = x
    for layer in layers:
        w = params[layer.weight]
        h = torch.addmm(params[layer.bias], h, w.t()) if layer.bias else h @ w.t()
        h = layer.act(h)
    return h
