"""Inner losses: the task loss an inner loop descends, one pluggable part of an :class:`InnerLoop`.

An :class:`InnerLoss` maps a task's outputs and targets to one loss per row; every
engine reduces rows the same way (:func:`reduce_rows`: the mean, or a weighted sum when
episodes of different sizes are padded into one batch). A loss may carry meta-learned
parameters of its own (a learned loss, as in LMML): they live in the algorithm's
``extra`` dict under keys starting with ``"loss."``, and the reference engine
differentiates them; the MLP fast path takes only losses without them.

>>> import torch
>>> out, y = torch.zeros(2, 3), torch.tensor([0, 2])
>>> round(float(reduce_rows(CrossEntropy().rows(out, y, {}))), 4)
1.0986
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from stream_meta.model import Params


@runtime_checkable
class InnerLoss(Protocol):
    """One task loss. ``out``: outputs ``[..., N, C]``; ``y``: targets ``[..., N]``
    (class indices, or one value per row when ``C == 1``) or ``[..., N, C]``."""

    name: str
    learned: bool  # has meta-parameters of its own

    def init_params(self, params: Params) -> Params:
        """The loss's own meta-parameters (keys start with ``"loss."``); empty if none."""
        ...

    def rows(self, out: torch.Tensor, y: torch.Tensor, meta: Params) -> torch.Tensor:
        """The loss of each row, ``[..., N]``; ``meta`` is the algorithm's ``extra``."""
        ...

    # ``output_grad(out, y, weights)``: ``d sum(weights * rows) / d out`` in closed form
    # (``weights``: ``[..., N]``, or one number for every row); a loss without one sets
    # ``output_grad = None`` and engines differentiate ``rows`` instead.
    output_grad: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | float], torch.Tensor] | None


def reduce_rows(rows: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-task loss from row losses ``[..., N]``: the mean, or ``sum(weights * rows)``."""
    return rows.mean(-1) if weights is None else (rows * weights).sum(-1)


def _per_row(weights: torch.Tensor | float) -> torch.Tensor | float:
    return weights.unsqueeze(-1) if isinstance(weights, torch.Tensor) else weights


@dataclass(frozen=True)
class CrossEntropy:
    """Cross-entropy of logits against class indices."""

    name: ClassVar[str] = "ce"
    learned: ClassVar[bool] = False

    def init_params(self, params: Params) -> Params:
        return {}

    def rows(self, out: torch.Tensor, y: torch.Tensor, meta: Params) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none").view(y.shape)

    def output_grad(self, out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | float) -> torch.Tensor:
        return (torch.softmax(out, -1) - F.one_hot(y, out.shape[-1]).to(out.dtype)) * _per_row(weights)


@dataclass(frozen=True)
class MeanSquaredError:
    """Squared error averaged over the output columns; 1-D targets (``[..., N]``) go
    with one output column."""

    name: ClassVar[str] = "mse"
    learned: ClassVar[bool] = False

    def init_params(self, params: Params) -> Params:
        return {}

    def rows(self, out: torch.Tensor, y: torch.Tensor, meta: Params) -> torch.Tensor:
        return (out - y.reshape(out.shape)).pow(2).mean(-1)

    def output_grad(self, out: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | float) -> torch.Tensor:
        return (out - y.reshape(out.shape)) * (2 / out.shape[-1]) * _per_row(weights)


LOSSES: dict[str, type] = {"ce": CrossEntropy, "mse": MeanSquaredError}


def get_loss(loss: str | InnerLoss) -> InnerLoss:
    """The loss called ``loss`` (``"ce"``, ``"mse"``), or ``loss`` itself if it is one."""
    if isinstance(loss, str):
        try:
            return LOSSES[loss]()
        except KeyError:
            raise ValueError(f"unknown loss {loss!r}; choose one of {tuple(LOSSES)}") from None
    if not isinstance(loss, InnerLoss):
        raise ValueError(f"loss must be a name in {tuple(LOSSES)} or an InnerLoss, got {loss!r}")
    return loss
