"""A learned inner optimiser: a small coordinate-wise MLP update rule (Metz et al.'s style)
on top of Meta-SGD's learned per-entry step sizes.

For every adapted entry ``p`` with gradient ``g`` the rule reads normalised features
``[g, p, m_0.5, m_0.9, m_0.99, sqrt(v), tanh(t/1), tanh(t/3), tanh(t/10)]`` (momenta
``m_b`` and second moment ``v`` kept per task in the rule's ``state``; each per-entry
feature divided by its root mean square over the tensor) and outputs a direction ``d``
and a log-magnitude ``s``; the step is

    delta = -lr * a * (exp(B * tanh(s)) * g + B * tanh(d) * rms(g))

with ``a`` the entry's learned step-size multiplier (Meta-SGD's, ``extra["rule.scale.<name>"]``,
starting at 1, kept in ``[0, max_scale]``): with the network's output at zero this *is*
Meta-SGD's step ``-lr * a * g``, so the rule can learn at least what Meta-SGD learns, and
the network a residual on top. The output layer starts at zero and ``a`` at 1, so
``tanh(0) = 0`` and the first update of a fresh rule *is* ``-lr * g`` (SGD); ``B``
(``bound``) bounds both the multiplier (within ``[e^-B, e^B]``) and the learned direction
(at most ``B`` times the tensor's gradient RMS). Network weights and step sizes live in
``extra`` under ``rule.*`` and are meta-learned through the inner steps by the reference engine.

>>> import torch
>>> rule = CoordinatewiseMLP()
>>> fast = {"w": torch.ones(3)}
>>> meta = rule.init_params(fast, ("w",))
>>> new, _ = rule.step(fast, {"w": torch.ones(3)}, rule.init_state(fast, meta), meta, lr=0.5)
>>> new["w"].tolist()  # at initialisation: exactly SGD
[0.5, 0.5, 0.5]
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from stream_meta.meta.rules import sgd_update
from stream_meta.model import Params

DECAYS = (0.5, 0.9, 0.99)
SECOND_MOMENT_DECAY = 0.999
STEP_SCALES = (1.0, 3.0, 10.0)
PER_ENTRY = ("g", "p", *(f"m{b}" for b in DECAYS), "rms")  # features of each entry; then the step embedding
N_FEATURES = len(PER_ENTRY) + len(STEP_SCALES)
KEYS = ("rule.w1", "rule.b1", "rule.w2", "rule.b2")
SCALE = "rule.scale."  # + the parameter's name: its entries' learned step-size multipliers
_EPS = 1e-12


@functools.lru_cache(maxsize=32)
def _segments(sizes: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[sum(sizes), len(sizes)]`` one-hot: which tensor each flat entry belongs to (a
    matrix, so per-tensor means and their broadcast back are one product each, also
    under ``vmap``)."""
    index = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
    return torch.nn.functional.one_hot(index, len(sizes)).to(dtype)


@dataclass(frozen=True)
class CoordinatewiseMLP:
    """The neural optimiser's update rule (see the module doc). ``hidden``: the MLP's
    width; ``bound``: ``B``, the bound on its outputs; ``max_scale``: the step-size
    multipliers' upper bound (Meta-SGD's)."""

    name: ClassVar[str] = "coordinatewise-mlp"
    linear: ClassVar[bool] = False
    hidden: int = 16
    # 0.5 (multiplier within [0.61, 1.65]): better than 2 at every task position on the
    # few-shot stream (README, "The seed's learners").
    bound: float = 0.5
    max_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {self.hidden}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"bound must be finite and > 0, got {self.bound}")
        if not self.max_scale > 0:
            raise ValueError(f"max_scale must be > 0, got {self.max_scale}")

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
            # Meta-SGD's multipliers at 1: the base rule starts as SGD with the inner lr.
            **{SCALE + k: torch.ones_like(params[k]) for k in adapted},
        }

    def check(self, extra: Params, adapted: tuple[str, ...]) -> None:
        missing = [k for k in (*KEYS, *(SCALE + k for k in adapted)) if k not in extra]
        if missing:
            raise ValueError(f"extra lacks the neural optimiser's weights {missing}; use init_extra()")
        if extra["rule.w1"].shape != (N_FEATURES, self.hidden):
            raise ValueError(f"rule.w1 has shape {tuple(extra['rule.w1'].shape)}, the rule wants "
                             f"{(N_FEATURES, self.hidden)} (hidden={self.hidden})")

    def project(self, extra: Params) -> None:
        # The network's outputs are bounded by tanh whatever its weights; the step sizes
        # are kept in Meta-SGD's bounds.
        with torch.no_grad():
            for k, v in extra.items():
                if k.startswith(SCALE):
                    v.clamp_(0.0, self.max_scale)

    def init_state(self, fast: Params, meta: Params) -> dict[str, Any]:
        # The state is kept flat (every adapted entry in one vector, in ``fast``'s key
        # order): one network call per step instead of one per tensor (see ``step``).
        keys = tuple(fast)
        ref = next(iter(fast.values()))
        zeros = ref.new_zeros(sum(fast[k].numel() for k in keys))
        # Clamped once per task (as Meta-SGD's), used at every step.
        scale = torch.cat([meta[SCALE + k].clamp(0.0, self.max_scale).reshape(-1) for k in keys])
        return {"t": 0, "keys": keys, "m": [zeros for _ in DECAYS], "v": zeros, "scale": scale}

    def step(self, fast: Params, grads: Params, state: dict[str, Any], meta: Params, *, lr: float
             ) -> tuple[Params, dict[str, Any]]:
        """One inner step of every tensor at once: the module doc's rule, per tensor's
        normalisation, computed on the concatenation of all adapted entries."""
        t, keys = state["t"], state["keys"]
        shapes = [fast[k].shape for k in keys]
        sizes = [fast[k].numel() for k in keys]
        g = torch.cat([grads[k].reshape(-1) for k in keys])
        p = torch.cat([fast[k].reshape(-1) for k in keys])
        m = [b * mi + (1 - b) * g for b, mi in zip(DECAYS, state["m"])]
        v = SECOND_MOMENT_DECAY * state["v"] + (1 - SECOND_MOMENT_DECAY) * g * g
        n_in = len(PER_ENTRY)
        # A constant row of ones: the first bias rides in the product. (Rows and blocks are
        # taken with split/unbind, whose backward is one cat, not a zero-fill per slice.)
        f = torch.stack([g, p, *m, torch.sqrt(v + _EPS), torch.ones_like(g)])  # [7, N]
        features = f.split([n_in, 1])[0]
        seg = _segments(tuple(sizes), f.dtype, f.device)  # [N, tensors], one-hot
        # Each feature's root mean square over its tensor: [6, tensors] (row 0: rms(g)).
        rms = torch.sqrt((features * features) @ seg / seg.sum(0) + _EPS)
        w1 = meta["rule.w1"]
        w_in, w_step = w1.split([n_in, len(STEP_SCALES)])
        # The step embedding is the same for every entry: folded into the first bias.
        emb = torch.tensor([math.tanh(t / c) for c in STEP_SCALES], dtype=w1.dtype, device=w1.device)
        b1 = (meta["rule.b1"] + emb @ w_step)[None]
        # The normalisation is a per-tensor scale of each feature: it goes into that
        # tensor's first-layer weights ([7, hidden]) instead of over every entry.
        pre = [torch.cat([w_in / r[:, None], b1]).T @ block
               for r, block in zip(rms.unbind(1), f.split(sizes, dim=1))]
        h = torch.tanh(torch.cat(pre, dim=1))  # [hidden, N]
        d, s = torch.tanh(torch.addmm(meta["rule.b2"][:, None], meta["rule.w2"].T, h)).unbind(0)
        rms_g = rms.unbind(0)[0] @ seg.T
        delta = sgd_update(state["scale"] * (torch.exp(self.bound * s) * g + self.bound * d * rms_g), lr)
        new = {k: fast[k] + dk.reshape(shape) for k, dk, shape in zip(keys, delta.split(sizes), shapes)}
        return {**fast, **new}, {"t": t + 1, "keys": keys, "m": m, "v": v, "scale": state["scale"]}

    def update(self, g: torch.Tensor, lr: float) -> torch.Tensor:
        raise NotImplementedError("a learned optimiser is not a linear rule")
