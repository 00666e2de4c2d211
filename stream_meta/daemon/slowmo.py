"""Outer (slow) momentum on a group's averaged update: SlowMo (Wang et al., ICLR 2020).

After the members average, the meta-parameters move from the last round's result (the
*anchor*, equal on every member) by a momentum of the averaged change::

    u      <- beta * u + (anchor - mean)
    params <- anchor - lr * u          (and anchor <- params)

``beta = 0, lr = 1`` is plain averaging. The anchor and ``u`` travel in the round's
all-reduce like the other shared tensors (weighted the same way), so a member that restarts
takes the group's instead of starting from zero, and every member computes the same result.
Only meta-parameters (``params/``, ``extra/``) get momentum; the outer optimiser's moments and
regulariser state are averaged as they are.
"""

from __future__ import annotations

import torch

PREFIX = "slowmo/"


class SlowMomentum:
    """Slow momentum ``beta`` and slow learning rate ``lr`` over averaging rounds."""

    def __init__(self, beta: float, lr: float = 1.0) -> None:
        self.beta, self.lr = beta, lr
        self._anchor: dict[str, torch.Tensor] | None = None
        self._momentum: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _meta(names) -> list[str]:
        return [k for k in names if k.startswith(("params/", "extra/"))]

    def tensors(self, shared: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This member's anchor and momentum, named for the all-reduce (before a first round:
        its own meta-parameters and zeros)."""
        keys = self._meta(shared)
        if self._anchor is None or self._anchor.keys() != set(keys):
            self._anchor = {k: shared[k].clone() for k in keys}
            self._momentum = {k: torch.zeros_like(shared[k]) for k in keys}
        out = {f"{PREFIX}anchor/{k}": v for k, v in self._anchor.items()}
        out.update({f"{PREFIX}momentum/{k}": v for k, v in self._momentum.items()})
        return out

    def step(self, averaged: dict[str, torch.Tensor], moved: bool) -> dict[str, torch.Tensor]:
        """The round's result from the group's averages (``slowmo/`` names consumed). ``moved``:
        some member learned since the last round; otherwise no slow step (a round of members that
        are only waiting for each other must not keep drifting on momentum)."""
        out = {k: v for k, v in averaged.items() if not k.startswith(PREFIX)}
        anchor, momentum = {}, {}
        for k in self._meta(out):
            a, u = averaged[f"{PREFIX}anchor/{k}"], averaged[f"{PREFIX}momentum/{k}"]
            if moved:
                u = self.beta * u + (a - out[k])
                out[k] = a - self.lr * u
            anchor[k], momentum[k] = out[k].clone(), u.clone()
        self._anchor, self._momentum = anchor, momentum
        return out
