"""Penalties that anchor the meta-parameters where earlier tasks needed them.

Every regulariser is a quadratic anchor ``strength/2 * sum(importance * (theta -
anchor)**2)`` and differs only in how ``importance`` is estimated at a task boundary
(a change of task id on the stream):

- :class:`OnlineEWC`: the diagonal empirical Fisher of the finished task's records,
  kept as a running sum ``F <- decay * F + F_task`` (online EWC, Schwarz et al. 2018);
- :class:`SynapticIntelligence`: each parameter's contribution to the loss decrease
  along the task's update path, ``omega = -sum(g * dtheta)``, normalised by the
  squared distance travelled (Zenke et al. 2017);
- :class:`MAS`: the mean absolute gradient of the squared L2 norm of the model's
  output on the task's records (Aljundi et al. 2018), needing no labels.

The learner adds :meth:`Regularizer.penalty_grad` to each meta-gradient, calls
:meth:`Regularizer.after_step` after each optimiser step and
:meth:`Regularizer.on_boundary` when the task changes.

>>> import torch
>>> r = OnlineEWC(strength=2.0)
>>> r.importance, r.anchor = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.zeros(2)}
>>> float(r.penalty({"w": torch.ones(2)}))
3.0
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from stream_meta.model import Params

Records = tuple[torch.Tensor, torch.Tensor] | None


class Regularizer:
    """A quadratic anchor on the meta-parameters (see the module doc).

    Args:
        strength: lambda, the penalty's weight.
        decay: how much of the earlier tasks' importance survives each boundary
            (gamma of online EWC; 1.0 sums all tasks).
    """

    name: ClassVar[str] = ""

    def __init__(self, strength: float, decay: float = 1.0) -> None:
        if strength < 0 or not 0 <= decay <= 1:
            raise ValueError(f"need strength >= 0 and 0 <= decay <= 1, got {strength}, {decay}")
        self.strength, self.decay = strength, decay
        self.importance: Params | None = None
        self.anchor: Params | None = None
        self.boundaries = 0

    def penalty(self, params: Params) -> torch.Tensor:
        """``strength/2 * sum(importance * (params - anchor)**2)``; 0 before the first boundary."""
        if self.importance is None or self.anchor is None:
            return torch.zeros(())
        return 0.5 * self.strength * sum(
            (self.importance[k] * (params[k] - self.anchor[k]) ** 2).sum() for k in self.importance
        )

    def penalty_grad(self, params: Params) -> Params:
        """The penalty's gradient, ``strength * importance * (params - anchor)``."""
        if self.importance is None or self.anchor is None:
            return {}
        return {k: self.strength * self.importance[k] * (params[k].detach() - self.anchor[k]) for k in self.importance}

    def add_penalty_grad(self, params: Params, grads: Params) -> Params:
        extra = self.penalty_grad(params)
        return {k: g + extra[k] if k in extra else g for k, g in grads.items()}

    def after_step(self, before: Params | None, params: Params, grads: Params) -> None:
        """Called after each optimiser step with the parameters before it and the loss gradient used."""

    def task_importance(self, model: nn.Module, params: Params, records: Records) -> Params | None:
        raise NotImplementedError

    def on_boundary(self, model: nn.Module, params: Params, records: Records) -> None:
        """The task that produced ``records`` ended: fold its importance in, re-anchor."""
        theta = {k: v.detach() for k, v in params.items()}
        new = self.task_importance(model, theta, records)
        if new is not None:
            if self.importance is None:
                self.importance = {k: v.clone() for k, v in new.items()}
            else:
                self.importance = {k: self.decay * self.importance[k] + new[k] for k in new}
        self.anchor = {k: v.clone() for k, v in theta.items()}
        self.boundaries += 1

    def state_dict(self) -> dict:
        return {"importance": self.importance, "anchor": self.anchor, "boundaries": self.boundaries}

    def load_state_dict(self, state: dict) -> None:
        self.importance, self.anchor = state["importance"], state["anchor"]
        self.boundaries = int(state["boundaries"])


def _per_record_grads(model: nn.Module, params: Params, x: torch.Tensor, fn) -> Params:
    def one(p: Params, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return fn(functional_call(model, p, (xi.unsqueeze(0),))[0], yi)

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, torch.zeros(len(x), dtype=torch.long))


class OnlineEWC(Regularizer):
    """Online EWC: diagonal empirical Fisher ``mean_i (d log p(y_i|x_i) / d theta)**2``."""

    name = "ewc"

    def task_importance(self, model: nn.Module, params: Params, records: Records) -> Params | None:
        if records is None or len(records[0]) == 0:
            return None
        x, y = records

        def one(p: Params, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
        return {k: (v**2).mean(0) for k, v in g.items()}


class MAS(Regularizer):
    """Memory Aware Synapses: ``mean_i |d ||f(x_i)||^2 / d theta|`` (no labels needed)."""

    name = "mas"

    def task_importance(self, model: nn.Module, params: Params, records: Records) -> Params | None:
        if records is None or len(records[0]) == 0:
            return None
        g = _per_record_grads(model, params, records[0], lambda out, _y: (out**2).sum())
        return {k: v.abs().mean(0) for k, v in g.items()}


class SynapticIntelligence(Regularizer):
    """Synaptic Intelligence: path integral of ``-g * dtheta`` over the task, per parameter.

    At the boundary ``importance += omega / ((theta - theta_task_start)**2 + xi)``.
    """

    name = "si"

    def __init__(self, strength: float, decay: float = 1.0, xi: float = 1e-3) -> None:
        super().__init__(strength, decay)
        self.xi = xi
        self.omega: Params | None = None
        self.start: Params | None = None

    def after_step(self, before: Params | None, params: Params, grads: Params) -> None:
        if before is None:
            return
        if self.start is None:
            self.start = {k: v.clone() for k, v in before.items()}
        if self.omega is None:
            self.omega = {k: torch.zeros_like(v) for k, v in before.items()}
        for k in self.omega:
            # grads is the loss's gradient alone (the learner passes it without the penalty's).
            self.omega[k] -= grads[k] * (params[k].detach() - before[k])

    def task_importance(self, model: nn.Module, params: Params, records: Records) -> Params | None:
        if self.omega is None or self.start is None:
            return None
        # Negative contributions (the loss rose along a parameter) carry no importance.
        out = {k: self.omega[k].clamp_min(0) / ((params[k] - self.start[k]) ** 2 + self.xi) for k in self.omega}
        self.omega, self.start = None, {k: v.clone() for k, v in params.items()}
        return out

    # Copies both ways: omega grows in place every step, so sharing it would change a saved
    # state after the fact (or a loaded one under its owner).
    def state_dict(self) -> dict:
        return {**super().state_dict(), "omega": _copy(self.omega), "start": _copy(self.start)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.omega, self.start = _copy(state["omega"]), _copy(state["start"])


def _copy(params: Params | None) -> Params | None:
    return None if params is None else {k: v.clone() for k, v in params.items()}


REGULARIZERS: dict[str, type[Regularizer]] = {"ewc": OnlineEWC, "si": SynapticIntelligence, "mas": MAS}


def build_regularizer(name: str, strength: float, decay: float = 1.0) -> Regularizer | None:
    """``None`` for ``"none"`` (or zero strength), else the named regulariser."""
    if name == "none" or strength == 0:
        return None
    if name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {name!r}; choose one of {['none', *REGULARIZERS]}")
    return REGULARIZERS[name](strength, decay)
