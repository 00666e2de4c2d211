"""Inner update rules: how one inner step moves the fast weights, one pluggable part of an
:class:`InnerLoop`.

A rule is configuration; what it learns lives in the algorithm's ``extra`` dict (handed
to it as ``meta``) and what it carries from step to step within one task (a learned
optimiser's hidden state, momentum) in a ``state`` it creates per task. Engines call
``init_state`` once per task and ``step`` once per inner step; the reference engine
differentiates through ``step`` (``meta`` included), so a neural optimiser with its own
meta-parameters plugs in by implementing these methods. A rule whose step is
``update(g)``, one fixed linear map of the gradient for every tensor, says so with
``linear = True``; only such rules run on the MLP fast path, which applies ``update``
to the low-rank factors of a gradient instead of to the gradient.

>>> import torch
>>> fast, _ = SGD().step({"w": torch.ones(2)}, {"w": torch.ones(2)}, {}, {}, lr=0.5)
>>> fast["w"].tolist()
[0.5, 0.5]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from stream_meta.model import Params


def sgd_update(g: torch.Tensor, lr: float | torch.Tensor) -> torch.Tensor:
    """The change an SGD step of size ``lr`` makes: the one place this is written."""
    return -lr * g


@runtime_checkable
class UpdateRule(Protocol):
    """One inner-loop update rule (see the module doc)."""

    name: str
    linear: bool

    def init_params(self, params: Params, adapted: tuple[str, ...]) -> Params:
        """The rule's own meta-parameters, learned by the outer loop; empty if none."""
        ...

    def check(self, extra: Params, adapted: tuple[str, ...]) -> None:
        """Raise ``ValueError`` if ``extra`` lacks the rule's meta-parameters."""
        ...

    def project(self, extra: Params) -> None:
        """Clamp the rule's meta-parameters in place after an outer step."""
        ...

    def init_state(self, fast: Params, meta: Params) -> Any:
        """Per-task state before the first inner step (``fast``: the adapted tensors)."""
        ...

    def step(self, fast: Params, grads: Params, state: Any, meta: Params, *, lr: float) -> tuple[Params, Any]:
        """Fast weights after one step on ``grads`` (the adapted names only), and the new state."""
        ...

    def update(self, g: torch.Tensor, lr: float) -> torch.Tensor:
        """For a ``linear`` rule: the change of a tensor whose gradient is ``g``."""
        ...


@dataclass(frozen=True)
class SGD:
    """Plain SGD with one global step size ``lr``."""

    name: ClassVar[str] = "sgd"
    linear: ClassVar[bool] = True

    def init_params(self, params: Params, adapted: tuple[str, ...]) -> Params:
        return {}

    def check(self, extra: Params, adapted: tuple[str, ...]) -> None:
        pass

    def project(self, extra: Params) -> None:
        pass

    def init_state(self, fast: Params, meta: Params) -> None:
        return None

    def update(self, g: torch.Tensor, lr: float) -> torch.Tensor:
        return sgd_update(g, lr)

    def step(self, fast: Params, grads: Params, state: None, meta: Params, *, lr: float) -> tuple[Params, None]:
        return {**fast, **{k: fast[k] + self.update(g, lr) for k, g in grads.items()}}, state


@dataclass(frozen=True)
class LearnedStepSizes:
    """Meta-SGD / La-MAML: a learned multiplier per parameter entry, step ``lr * clamp(s, 0, max_scale)``.

    The multipliers sit in ``extra`` under the parameter's own name and start at 1.
    """

    name: ClassVar[str] = "learned-step-sizes"
    linear: ClassVar[bool] = False
    max_scale: float = math.inf

    def __post_init__(self) -> None:
        if not self.max_scale > 0:
            raise ValueError(f"max_scale must be > 0, got {self.max_scale}")

    def init_params(self, params: Params, adapted: tuple[str, ...]) -> Params:
        return {k: torch.ones_like(v) for k, v in params.items()}

    def check(self, extra: Params, adapted: tuple[str, ...]) -> None:
        missing = [k for k in adapted if k not in extra]
        if missing:
            raise ValueError(f"extra lacks step-size multipliers for {missing}; use init_extra()")

    def project(self, extra: Params) -> None:
        with torch.no_grad():
            for k, v in extra.items():
                if not k.startswith("loss."):
                    v.clamp_(0.0, self.max_scale)

    def scales(self, meta: Params, names: tuple[str, ...] | Params) -> Params:
        """The clamped multipliers of ``names``: what the inner loop uses."""
        return {k: meta[k].clamp(0.0, self.max_scale) for k in names}

    def init_state(self, fast: Params, meta: Params) -> Params:
        return self.scales(meta, fast)  # clamped once per task, used at every step

    def update(self, g: torch.Tensor, lr: float) -> torch.Tensor:
        raise NotImplementedError("learned step sizes differ per entry: not a linear rule")

    def step(self, fast: Params, grads: Params, state: Params, meta: Params, *, lr: float) -> tuple[Params, Params]:
        return {**fast, **{k: fast[k] + sgd_update(g * state[k], lr) for k, g in grads.items()}}, state
