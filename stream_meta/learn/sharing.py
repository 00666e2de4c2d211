"""Adam's state as named tensors, so a scale-out group can average it beside the parameters."""

from __future__ import annotations

import torch

from stream_meta.model import Params


def adam_moments(optimizer: torch.optim.Optimizer, named: Params) -> dict[str, torch.Tensor]:
    """Adam's step count and moments per named parameter (zeros where it has not stepped yet),
    so every member of a group sends the same layout."""
    out = {}
    for name, p in named.items():
        state = optimizer.state.get(p, {})
        out[f"optimizer/step/{name}"] = torch.as_tensor(state.get("step", 0.0), dtype=torch.float32).clone().reshape(1)
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"optimizer/{key}/{name}"] = state[key].clone() if key in state else torch.zeros_like(p.detach())
    return out


def load_adam_moments(optimizer: torch.optim.Optimizer, named: Params, tensors: dict[str, torch.Tensor]) -> None:
    for name, p in named.items():
        if f"optimizer/step/{name}" not in tensors:
            continue
        state = optimizer.state[p]
        state["step"] = tensors[f"optimizer/step/{name}"].reshape(()).clone()
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = tensors[f"optimizer/{key}/{name}"].clone()
