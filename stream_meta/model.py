"""The model: an MLP used functionally, its parameters held in explicit dicts."""

from __future__ import annotations

import torch
from torch import nn

Params = dict[str, torch.Tensor]


def build_mlp(sizes: list[int] | tuple[int, ...]) -> nn.Sequential:
    """An MLP ``sizes[0] -> ... -> sizes[-1]`` with ReLU between layers.

    It serves as a stateless template for :func:`torch.func.functional_call`;
    the learned values live in a separate :data:`Params` dict.
    """
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"MLP sizes must be >= 2 positive ints, got {sizes}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def init_params(model: nn.Module, generator: torch.Generator) -> Params:
    """Fresh parameters for ``model`` drawn only from ``generator`` (replayable)."""
    params: Params = {}
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            fan_in = p.shape[1]
            bound = (6.0 / fan_in) ** 0.5  # Kaiming-uniform, suited to ReLU
            params[name] = (torch.rand(p.shape, generator=generator) * 2 - 1) * bound
        else:
            params[name] = torch.zeros(p.shape)
    return params


def num_parameters(params: Params) -> int:
    return sum(p.numel() for p in params.values())
