"""The hand-written first-order MLP inner loop equals autograd's."""

import pytest
import torch
from torch import nn

from stream_meta.meta.functional import loss
from stream_meta.meta.mlp_sgd import mlp_sgd_adapt
from stream_meta.model import build_mlp, init_params


def _autograd_adapt(model, params, x, y, steps, lr, kind, names, scales):
    fast = {k: v.detach().clone() for k, v in params.items()}
    for _ in range(steps):
        leaves = {k: fast[k].requires_grad_() for k in names}
        grads = torch.autograd.grad(loss(model, fast, x, y, kind), list(leaves.values()))
        for k, g in zip(leaves, grads):
            fast[k] = (fast[k] - (lr if scales is None else lr * scales[k]) * g).detach()
    return fast


@pytest.mark.parametrize("kind", ["ce", "mse"])
@pytest.mark.parametrize("sizes", [[5, 7, 3], [5, 8, 6, 4], [5, 4]])
@pytest.mark.parametrize("which", ["all", "head", "scaled"])
def test_matches_autograd_in_float64(kind, sizes, which):
    torch.manual_seed(0)
    model = build_mlp(sizes).double()
    params = {k: v.double() for k, v in init_params(model, torch.Generator().manual_seed(1)).items()}
    params = {k: v + 0.1 * torch.randn_like(v) for k, v in params.items()}  # non-zero biases
    x = torch.randn(9, sizes[0], dtype=torch.float64)
    y = torch.randint(sizes[-1], (9,)) if kind == "ce" else torch.randn(9, sizes[-1], dtype=torch.float64)
    names = tuple(params) if which != "head" else tuple(list(params)[-2:])
    scales = {k: torch.rand_like(params[k]) * 2 for k in names} if which == "scaled" else None
    got = mlp_sgd_adapt(model, params, x, y, steps=3, lr=0.2, kind=kind, names=names, scales=scales)
    want = _autograd_adapt(model, params, x, y, 3, 0.2, kind, names, scales)
    for k in params:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)


def test_unsupported_models_fall_back():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    params = dict(model.named_parameters())
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    assert mlp_sgd_adapt(model, params, x, y, steps=1, lr=0.1, kind="ce", names=tuple(params), scales=None) is None
