"""The researcher-facing step: meta-gradient, optimiser step, projection, in one call.

>>> import torch
>>> from stream_meta.model import build_mlp, init_params
>>> from stream_meta.meta import Episode, get_algorithm
>>> model = build_mlp([4, 8, 3])
>>> params = {k: v.requires_grad_() for k, v in init_params(model, torch.Generator().manual_seed(0)).items()}
>>> alg = get_algorithm("metasgd")
>>> extra = {k: v.requires_grad_() for k, v in alg.init_extra(params).items()}
>>> opt = torch.optim.Adam([*params.values(), *extra.values()], lr=1e-3)
>>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
>>> stats = meta_step(alg, model, params, extra, [Episode("t", x[:4], y[:4], x[4:], y[4:])], opt, steps=1, lr=0.1)
>>> stats["nonfinite"], bool(min(v.min() for v in extra.values()) >= 0)
(False, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from stream_meta.meta.algorithms import MetaAlgorithm
from stream_meta.meta.spec import Episode
from stream_meta.model import Params


def meta_step(
    alg: MetaAlgorithm,
    model: nn.Module,
    params: Params,
    extra: Params,
    episodes: Sequence[Episode],
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    lr: float,
    adjust: Callable[[Params], Params] | None = None,
    step_scale: float = 1.0,
) -> dict[str, Any]:
    """One meta-update of ``params`` and ``extra`` (leaf tensors owned by ``optimizer``).

    Computes ``alg.meta_gradient`` on ``episodes`` (``steps`` inner steps of size
    ``lr``), passes the parameters' part through ``adjust`` when given (e.g. to add a
    regulariser's penalty gradient), writes it into ``.grad``, steps ``optimizer`` and
    clamps ``extra`` with ``alg.project_extra``. When ``stats["nonfinite"]`` the update
    is skipped and the parameters are left untouched. ``step_scale`` multiplies the
    optimizer's lr for this step only (one step standing for several). Returns the stats.
    """
    grads, extra_grads, stats = alg.meta_gradient(model, params, extra, episodes, steps=steps, lr=lr)
    if stats["nonfinite"]:
        return stats
    if adjust is not None:
        grads = adjust(grads)
    for src, dst in ((grads, params), (extra_grads, extra)):
        for k, g in src.items():
            dst[k].grad = g.to(dst[k].dtype)
    if step_scale == 1.0:
        optimizer.step()
    else:
        # The lr is restored after, so the optimizer's state and checkpoints keep its own.
        base = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * step_scale
        try:
            optimizer.step()
        finally:
            for group, lr_ in zip(optimizer.param_groups, base):
                group["lr"] = lr_
    optimizer.zero_grad(set_to_none=True)
    alg.project_extra(extra)
    return stats
