"""An ``nn.Sequential`` MLP read as layers, for the engines that write its passes out by hand."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Parameter-free modules applied element-wise, so they act on [T, N, d] as on [N, d].
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus, nn.Identity)


@dataclass(frozen=True)
class MLPLayer:
    """One ``nn.Linear`` of an MLP and the element-wise activations after it."""

    weight: str
    bias: str | None
    acts: tuple[nn.Module, ...]


def mlp_layers(model: nn.Module) -> tuple[MLPLayer, ...] | None:
    """The layers of ``model`` if it is an ``nn.Sequential`` MLP, else ``None``."""
    if not isinstance(model, nn.Sequential):
        return None
    layers: list[tuple[str, str | None, list[nn.Module]]] = []
    for name, m in model.named_children():
        if isinstance(m, nn.Linear):
            layers.append((f"{name}.weight", f"{name}.bias" if m.bias is not None else None, []))
        elif isinstance(m, _ELEMENTWISE) and layers:
            layers[-1][2].append(m)
        else:
            return None
    return tuple(MLPLayer(w, b, tuple(a)) for w, b, a in layers) or None
