"""Helpers shared by the meta-learning core tests: float64 parameters, random episodes."""

from __future__ import annotations

import torch
from torch import nn

from stream_meta.meta import Episode
from stream_meta.model import Params, init_params


def float64_params(model: nn.Module, seed: int = 0) -> Params:
    return {k: v.double() for k, v in init_params(model, torch.Generator().manual_seed(seed)).items()}


def random_episodes(
    n: int,
    *,
    in_dim: int,
    classes: int,
    support: int = 6,
    query: int = 5,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    regression: bool = False,
    flat_targets: bool = False,
) -> list[Episode]:
    """``n`` random classification (or regression, targets [N, classes], or [N] with
    ``flat_targets``, for one output) episodes."""
    g = torch.Generator().manual_seed(seed)
    eps = []
    for i in range(n):
        sx = torch.randn(support, in_dim, generator=g, dtype=dtype)
        qx = torch.randn(query, in_dim, generator=g, dtype=dtype)
        if regression:
            sy = torch.randn(support, classes, generator=g, dtype=dtype)
            qy = torch.randn(query, classes, generator=g, dtype=dtype)
            if flat_targets:
                sy, qy = sy.reshape(-1), qy.reshape(-1)
        else:
            sy = torch.randint(0, classes, (support,), generator=g)
            qy = torch.randint(0, classes, (query,), generator=g)
        eps.append(Episode(f"task{i}", sx, sy, qx, qy))
    return eps
