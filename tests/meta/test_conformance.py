"""Conformance suite every meta-algorithm passes: replayable, no hidden state, inputs
untouched, the learner-facing protocol intact."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.meta.helpers import float64_params, random_episodes
from stream_meta.meta import ALGORITHMS, MetaAlgorithm, get_algorithm, meta_step
from stream_meta.model import build_mlp, init_params

NAMES = sorted(ALGORITHMS)


def train(name: str, seed: int, steps: int = 3) -> dict[str, torch.Tensor]:
    model = build_mlp([5, 8, 3])
    alg = get_algorithm(name)
    params = {k: v.requires_grad_() for k, v in init_params(model, torch.Generator().manual_seed(seed)).items()}
    extra = {k: v.requires_grad_() for k, v in alg.init_extra(params).items()}
    opt = torch.optim.Adam([*params.values(), *extra.values()], lr=1e-2)
    for i in range(steps):
        eps = random_episodes(4, in_dim=5, classes=3, seed=seed * 100 + i, dtype=torch.float32)
        meta_step(alg, model, params, extra, eps, opt, steps=2, lr=0.1)
    return {k: v.detach().clone() for k, v in {**params, **{"extra." + k: v for k, v in extra.items()}}.items()}


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result(name):
    a, b, c = train(name, 0), train(name, 0), train(name, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", NAMES)
def test_no_hidden_state_and_inputs_untouched(relu_mlp, name):
    alg = get_algorithm(name)
    config = copy.deepcopy(vars(alg))
    theta = float64_params(relu_mlp)
    extra = alg.init_extra(theta)
    eps = random_episodes(3, in_dim=5, classes=3)
    snapshot = copy.deepcopy((theta, extra, eps))
    first = alg.meta_gradient(relu_mlp, theta, extra, eps, steps=2, lr=0.2)
    alg.adapt(relu_mlp, theta, extra, eps[0].support_x, eps[0].support_y, steps=2, lr=0.2)
    second = alg.meta_gradient(relu_mlp, theta, extra, eps, steps=2, lr=0.2)
    # Stateless: the same call gives the same answer; config and defaults unchanged.
    for x, y in zip(first[:2], second[:2]):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert first[2] == second[2]
    assert vars(alg) == config
    for got, want in zip((theta, extra), snapshot[:2]):
        assert all(torch.equal(got[k], want[k]) for k in want)
    for ep, want in zip(eps, snapshot[2]):
        assert torch.equal(ep.support_x, want.support_x) and torch.equal(ep.query_y, want.query_y)
    assert all(v.grad is None for v in theta.values())


@pytest.mark.parametrize("name", NAMES)
def test_protocol_and_stats(relu_mlp, name):
    alg = get_algorithm(name)
    assert isinstance(alg, MetaAlgorithm)
    assert get_algorithm(name) is not alg
    theta = float64_params(relu_mlp)
    extra = alg.init_extra(theta)
    grads, extra_grads, stats = alg.meta_gradient(relu_mlp, theta, extra, random_episodes(2, in_dim=5, classes=3),
                                                  steps=1, lr=0.1)
    assert sorted(grads) == sorted(theta) and sorted(extra_grads) == sorted(extra)
    assert all(grads[k].shape == theta[k].shape and grads[k].dtype == theta[k].dtype for k in theta)
    assert isinstance(stats["query_loss"], float) and isinstance(stats["query_loss_before"], float)
    assert stats["nonfinite"] is False and stats["clipped"] is False
    assert isinstance(stats["grad_norm"], float) and stats["tasks"] == 2
    alg.project_extra(extra)  # a no-op or an in-place clamp, never an error
    fast = alg.adapt(relu_mlp, theta, extra, torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0]),
                     steps=1, lr=0.1)
    assert sorted(fast) == sorted(theta) and not any(v.requires_grad for v in fast.values())


@pytest.mark.parametrize("name", NAMES)
def test_constructor_arguments_are_stored_unchanged_and_shown(name):
    """River's habit: configuration is what was passed, readable back and in the repr."""
    config = {"loss": "ce" if name == "gail-meta" else "mse", "clip_grad_norm": 3.5, "max_inner_lr": 4.0, "backend": "reference"}
    alg = get_algorithm(name, **config)
    for key, value in config.items():
        assert getattr(alg, key) == value
        assert f"{key}={value!r}" in repr(alg)
    assert alg.spec(build_mlp([5, 8, 3]), init_params(build_mlp([5, 8, 3]), torch.Generator()), steps=1, lr=0.5).loss.name == config["loss"]
