"""A learned inner optimiser: a small coordinate-wise MLP update rule (Metz et al.'s style).

For every adapted entry ``p`` with gradient ``g`` the rule reads normalised features
``[g, p, m_0.5, m_0.9, m_0.99, sqrt(v), tanh(t/1), tanh(t/3), tanh(t/10)]`` (momenta
``m_b`` and second moment ``v`` kept per task in the rule's ``state``; each per-entry
feature divided by its root mean square over the tensor) and outputs a direction ``d``
and a log-magnitude ``s``; the step is

    delta = -lr * (exp(B * tanh(s)) * g + B * tanh(d) * rms(g))

a residual around SGD: the network's output layer starts at zero, so ``tanh(0) = 0``
and the first update of a fresh rule *is* ``-lr * g``; ``B`` (``bound``) bounds both
the multiplier (within ``[e^-B, e^B]``) and the learned direction (at most ``B`` times
the tensor's gradient RMS). The network's weights live in ``extra`` under ``rule.*``
and are meta-learned through the inner steps by the reference engine.

>>> import torch
>>> rule = CoordinatewiseMLP()
>>> fast = {"w": torch.ones(3)}
>>> meta = rule.init_params(fast, ("w",))
>>> new, _ = rule.step(fast, {"w": torch.ones(3)}, rule.init_state(fast, meta), meta, lr=0.5)
>>> new["w"].tolist()  # at initialisation: exactly SGD
[0.5, 0.5, 0.5]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from stream_meta.meta.rules import sgd_update
from stream_meta.model import Params

DECAYS = (0.5, 0.9, 0.99)
SECOND_MOMENT_DECAY = 0.999
STEP_SCALES = (1.0, 3.0, 10.0)
N_FEATURES = 3 + len(DECAYS) + len(STEP_SCALES)  # g, p, rms + momenta + step embedding
KEYS = ("rule.w1", "rule.b1", "rule.w2", "rule.b2")
_EPS = 1e-12


def _normalise(f: torch.Tensor) -> torch.Tensor:
    """``f`` over its root mean square (per tensor, so every layer's features are O(1))."""
    return f / torch.sqrt(f.pow(2).mean() + _EPS)


@dataclass(frozen=True)
class CoordinatewiseMLP:
    """The neural optimiser's update rule (see the module doc). ``hidden``: the MLP's
    width; ``bound``: ``B``, the bound on its outputs."""

    name: ClassVar[str] = "coordinatewise-mlp"
    linear: ClassVar[bool] = False
    hidden: int = 16
    # 0.5 (multiplier within [0.61, 1.65]): better than 2 at every task position on the
    # few-shot stream (README, "The seed's learners").
    bound: float = 0.5

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"bound must be finite and > 0, got {self.bound}")

    def init_params(self, params: Params, adapted: tuple[str, ...]) -> Params:
        dtype = next(iter(params.values())).dtype
        # A fixed generator: the rule's start does not depend on (or consume) the model's seed.
        g = torch.Generator().manual_seed(1234)
        w1 = torch.randn(N_FEATURES, self.hidden, generator=g, dtype=torch.float64) / math.sqrt(N_FEATURES)
        return {
            "rule.w1": w1.to(dtype),
            "rule.b1": torch.zeros(self.hidden, dtype=dtype),
            # Zero output layer: the learned part starts at nothing, the rule at SGD.
            "rule.w2": torch.zeros(self.hidden, 2, dtype=dtype),
            "rule.b2": torch.zeros(2, dtype=dtype),
        }

    def check(self, extra: Params, adapted: tuple[str, ...]) -> None:
        missing = [k for k in KEYS if k not in extra]
        if missing:
            raise ValueError(f"extra lacks the neural optimiser's weights {missing}; use init_extra()")
        if extra["rule.w1"].shape != (N_FEATURES, self.hidden):
            raise ValueError(f"rule.w1 has shape {tuple(extra['rule.w1'].shape)}, the rule wants "
                             f"{(N_FEATURES, self.hidden)} (hidden={self.hidden})")

    def project(self, extra: Params) -> None:
        pass  # outputs are bounded by tanh whatever the weights

    def init_state(self, fast: Params, meta: Params) -> dict[str, Any]:
        zeros = {k: torch.zeros_like(v) for k, v in fast.items()}
        return {"t": 0, "m": [dict(zeros) for _ in DECAYS], "v": dict(zeros)}

    def outputs(self, p: torch.Tensor, g: torch.Tensor, m: list[torch.Tensor], v: torch.Tensor, t: int,
                meta: Params) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tanh(d), tanh(s))`` for every entry of one tensor."""
        per_entry = [_normalise(f) for f in (g, p, *m, torch.sqrt(v + _EPS))]
        steps = [torch.full_like(g, math.tanh(t / s)) for s in STEP_SCALES]
        x = torch.stack([*per_entry, *steps], dim=-1).reshape(-1, N_FEATURES)
        h = torch.tanh(x @ meta["rule.w1"] + meta["rule.b1"])
        out = torch.tanh(h @ meta["rule.w2"] + meta["rule.b2"])
        return out[:, 0].reshape(g.shape), out[:, 1].reshape(g.shape)

    def delta(self, p: torch.Tensor, g: torch.Tensor, m: list[torch.Tensor], v: torch.Tensor, t: int,
              meta: Params, lr: float) -> torch.Tensor:
        """The change of one tensor: ``-lr * (exp(B tanh s) g + B tanh(d) rms(g))``."""
        d, s = self.outputs(p, g, m, v, t, meta)
        rms = torch.sqrt(g.pow(2).mean() + _EPS)
        return sgd_update(torch.exp(self.bound * s) * g + self.bound * d * rms, lr)

    def step(self, fast: Params, grads: Params, state: dict[str, Any], meta: Params, *, lr: float
             ) -> tuple[Params, dict[str, Any]]:
        t = state["t"]
        m = [{k: b * state["m"][i][k] + (1 - b) * g for k, g in grads.items()} for i, b in enumerate(DECAYS)]
        v = {k: SECOND_MOMENT_DECAY * state["v"][k] + (1 - SECOND_MOMENT_DECAY) * g * g for k, g in grads.items()}
        new = {k: fast[k] + self.delta(fast[k], g, [mi[k] for mi in m], v[k], t, meta, lr) for k, g in grads.items()}
        return {**fast, **new}, {"t": t + 1, "m": m, "v": v}

    def update(self, g: torch.Tensor, lr: float) -> torch.Tensor:
        raise NotImplementedError("a learned optimiser is not a linear rule")
