"""FOMAML, Reptile and (second-order) MAML against their closed forms on a linear
regression model, where every gradient can be written by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.meta.helpers import random_episodes
from stream_meta.meta import get_algorithm

ENGINES = ["reference", "fast"]
D = 4


def augmented(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


def grad_mse(phi: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d/dphi of mean((Z phi - y)^2) for phi = [w, b], Z = [x, 1]: (2/N) Z^T (Z phi - y)."""
    z = augmented(x)
    return 2.0 / z.shape[0] * z.T @ (z @ phi - y.reshape(-1))


def sgd(phi: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    for _ in range(steps):
        phi = phi - lr * grad_mse(phi, x, y)
    return phi


@pytest.fixture
def setup():
    model = nn.Sequential(nn.Linear(D, 1)).double()
    g = torch.Generator().manual_seed(0)
    theta = {"0.weight": torch.randn(1, D, generator=g, dtype=torch.float64),
             "0.bias": torch.randn(1, generator=g, dtype=torch.float64)}
    phi0 = torch.cat([theta["0.weight"].reshape(-1), theta["0.bias"]])
    eps = random_episodes(3, in_dim=D, classes=1, support=7, query=5, regression=True, seed=4)
    return model, theta, phi0, eps


def as_vector(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads["0.weight"].reshape(-1), grads["0.bias"]])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("steps", [1, 3])
def test_fomaml_is_query_gradient_at_fast_weights(setup, engine, steps):
    model, theta, phi0, eps = setup
    lr = 0.05
    expected = torch.stack(
        [grad_mse(sgd(phi0, e.support_x, e.support_y, steps, lr), e.query_x, e.query_y) for e in eps]
    ).mean(0)
    grads, _, _ = get_algorithm("fomaml", loss="mse", backend=engine).meta_gradient(
        model, theta, {}, eps, steps=steps, lr=lr
    )
    torch.testing.assert_close(as_vector(grads), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("steps", [1, 3])
def test_reptile_is_theta_minus_fast_weights_on_support_and_query(setup, engine, steps):
    model, theta, phi0, eps = setup
    lr = 0.05
    expected = torch.stack(
        [
            phi0 - sgd(phi0, torch.cat([e.support_x, e.query_x]), torch.cat([e.support_y, e.query_y]), steps, lr)
            for e in eps
        ]
    ).mean(0)
    grads, _, _ = get_algorithm("reptile", loss="mse", backend=engine).meta_gradient(
        model, theta, {}, eps, steps=steps, lr=lr
    )
    torch.testing.assert_close(as_vector(grads), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_maml_is_jacobian_transposed_query_gradient(setup, engine, steps):
    """For a quadratic support loss, d phi_K / d theta = (I - lr H)^K with H = (2/N) Z^T Z."""
    model, theta, phi0, eps = setup
    lr = 0.05
    expected = []
    for e in eps:
        z = augmented(e.support_x)
        jac = torch.linalg.matrix_power(torch.eye(D + 1, dtype=torch.float64) - lr * 2.0 / z.shape[0] * z.T @ z, steps)
        phi = sgd(phi0, e.support_x, e.support_y, steps, lr)
        expected.append(jac.T @ grad_mse(phi, e.query_x, e.query_y))
    grads, _, _ = get_algorithm("maml", loss="mse", backend=engine).meta_gradient(
        model, theta, {}, eps, steps=steps, lr=lr
    )
    torch.testing.assert_close(as_vector(grads), torch.stack(expected).mean(0), rtol=1e-12, atol=1e-12)
