"""The two pluggable parts of the inner loop: a new update rule or loss plugs in through
``get_algorithm(rule=..., loss=..., inner_loss=...)`` and no engine changes. Their own
meta-parameters get meta-gradients (checked by finite differences); the fast path takes a
linear rule by calling its ``update``, and declines the rest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from tests.meta.helpers import float64_params, random_episodes
from stream_meta.meta import SGD, get_algorithm, meta_step
from stream_meta.meta.losses import MeanSquaredError
from stream_meta.model import Params


@dataclass(frozen=True)
class MomentumLearnedLR:
    """A toy learned optimiser: momentum (per-task state) and a meta-learned log step size."""

    name: ClassVar[str] = "momentum-learned-lr"
    linear: ClassVar[bool] = False
    beta: float = 0.5

    def init_params(self, params: Params, adapted: tuple[str, ...]) -> Params:
        return {"rule.log_lr": torch.zeros((), dtype=next(iter(params.values())).dtype)}

    def check(self, extra: Params, adapted: tuple[str, ...]) -> None:
        if "rule.log_lr" not in extra:
            raise ValueError("extra lacks rule.log_lr; use init_extra()")

    def project(self, extra: Params) -> None:
        pass

    def init_state(self, fast: Params, meta: Params) -> Params:
        return {k: torch.zeros_like(v) for k, v in fast.items()}

    def step(self, fast: Params, grads: Params, state: Params, meta: Params, *, lr: float) -> tuple[Params, Params]:
        m = {k: self.beta * state[k] + g for k, g in grads.items()}
        size = lr * torch.exp(meta["rule.log_lr"])
        return {**fast, **{k: fast[k] - size * m[k] for k in grads}}, m

    def update(self, g: torch.Tensor, lr: float) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class ShiftedScaledMSE(MeanSquaredError):
    """A toy learned loss: ``exp(loss.log_w) * (out - y - loss.shift)^2``."""

    name: ClassVar[str] = "shifted-scaled-mse"
    learned: ClassVar[bool] = True

    def init_params(self, params: Params) -> Params:
        dtype = next(iter(params.values())).dtype
        return {"loss.log_w": torch.tensor(0.3, dtype=dtype), "loss.shift": torch.tensor(0.2, dtype=dtype)}

    def rows(self, out: torch.Tensor, y: torch.Tensor, meta: Params) -> torch.Tensor:
        return torch.exp(meta["loss.log_w"]) * (out - y.reshape(out.shape) - meta["loss.shift"]).pow(2).mean(-1)

    output_grad = None  # no closed form: engines differentiate rows


@dataclass(frozen=True)
class HalfSGD(SGD):
    """SGD at half the step size: linear, so the fast path may take it."""

    def update(self, g: torch.Tensor, lr: float) -> torch.Tensor:
        return -0.5 * lr * g


def finite_difference(alg, model, theta, extra, eps, key, h=1e-6):
    def at(delta):
        shifted = {**extra, key: extra[key] + delta}
        return alg.meta_gradient(model, theta, shifted, eps, steps=2, lr=0.3)[2]["query_loss"]

    return (at(h) - at(-h)) / (2 * h)


@pytest.mark.parametrize("name", ["maml", "anil"])  # second order: the total derivative, as differences see it
def test_a_learned_optimiser_with_state_gets_meta_gradients(tanh_mlp, name):
    theta = {k: v.detach().clone() for k, v in tanh_mlp.named_parameters()}
    eps = random_episodes(3, in_dim=3, classes=3, regression=True)
    alg = get_algorithm(name, loss="mse", rule=MomentumLearnedLR())
    extra = {k: v + 0.1 for k, v in alg.init_extra(theta).items()}
    assert alg.engine(tanh_mlp, theta) == ("reference", "fast path declines: the update rule "
                                           "MomentumLearnedLR(beta=0.5) is not linear")
    _, extra_grads, stats = alg.meta_gradient(tanh_mlp, theta, extra, eps, steps=2, lr=0.3)
    assert not stats["nonfinite"] and sorted(extra_grads) == ["rule.log_lr"]
    assert extra_grads["rule.log_lr"].item() != 0
    want = finite_difference(alg, tanh_mlp, theta, extra, eps, "rule.log_lr")
    assert extra_grads["rule.log_lr"].item() == pytest.approx(want, rel=1e-6, abs=1e-10)
    with pytest.raises(ValueError, match="rule.log_lr"):
        alg.meta_gradient(tanh_mlp, theta, {}, eps, steps=1, lr=0.3)


def test_momentum_state_changes_the_result(tanh_mlp):
    """The state is carried from step to step (with beta 0 it would be plain SGD)."""
    theta = {k: v.detach().clone() for k, v in tanh_mlp.named_parameters()}
    ep = random_episodes(1, in_dim=3, classes=3)[0]
    extra = {"rule.log_lr": torch.zeros((), dtype=torch.float64)}
    with_m = get_algorithm("maml", rule=MomentumLearnedLR(0.9)).adapt(tanh_mlp, theta, extra, ep.support_x, ep.support_y, steps=3, lr=0.3)
    without = get_algorithm("maml", rule=MomentumLearnedLR(0.0)).adapt(tanh_mlp, theta, extra, ep.support_x, ep.support_y, steps=3, lr=0.3)
    sgd = get_algorithm("maml").adapt(tanh_mlp, theta, {}, ep.support_x, ep.support_y, steps=3, lr=0.3)
    for k in theta:
        torch.testing.assert_close(without[k], sgd[k], rtol=1e-12, atol=1e-14)
    assert any(not torch.allclose(with_m[k], sgd[k]) for k in theta)


@pytest.mark.parametrize("key", ["loss.log_w", "loss.shift"])
def test_a_learned_inner_loss_gets_meta_gradients(tanh_mlp, key):
    theta = {k: v.detach().clone() for k, v in tanh_mlp.named_parameters()}
    eps = random_episodes(3, in_dim=3, classes=3, regression=True)
    alg = get_algorithm("maml", loss="mse", inner_loss=ShiftedScaledMSE())
    extra = alg.init_extra(theta)
    assert sorted(extra) == ["loss.log_w", "loss.shift"]
    assert alg.engine(tanh_mlp, theta)[1] == "fast path declines: the loss has meta-parameters"
    _, extra_grads, _ = alg.meta_gradient(tanh_mlp, theta, extra, eps, steps=2, lr=0.3)
    assert extra_grads[key].item() != 0
    want = finite_difference(alg, tanh_mlp, theta, extra, eps, key)
    assert extra_grads[key].item() == pytest.approx(want, rel=1e-6, abs=1e-10)
    # meta_step updates the loss's parameters like any other.
    params = {k: v.clone().requires_grad_() for k, v in theta.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in extra.items()}
    opt = torch.optim.SGD([*params.values(), *leaves.values()], lr=0.1)
    meta_step(alg, tanh_mlp, params, leaves, eps, opt, steps=2, lr=0.3)
    assert not torch.equal(leaves[key], extra[key])


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile"])
def test_the_fast_path_calls_the_rules_update(relu_mlp, name):
    """A linear rule runs on the fast path and gives the reference's answer, not plain SGD's."""
    theta = float64_params(relu_mlp)
    eps = random_episodes(4, in_dim=5, classes=3)
    eps += random_episodes(2, in_dim=5, classes=3, support=3, query=7, seed=1)

    def go(backend, rule):
        return get_algorithm(name, backend=backend, rule=rule).meta_gradient(relu_mlp, theta, {}, eps, steps=2, lr=0.3)

    fast, ref, sgd = go("fast", HalfSGD()), go("reference", HalfSGD()), go("fast", None)
    for k in theta:
        torch.testing.assert_close(fast[0][k], ref[0][k], rtol=1e-10, atol=1e-12)
    assert any(not torch.allclose(fast[0][k], sgd[0][k]) for k in theta)
    fast_w = get_algorithm(name, backend="fast", rule=HalfSGD()).adapt(relu_mlp, theta, {}, eps[0].support_x, eps[0].support_y, steps=2, lr=0.3)
    ref_w = get_algorithm(name, backend="reference", rule=HalfSGD()).adapt(relu_mlp, theta, {}, eps[0].support_x, eps[0].support_y, steps=2, lr=0.3)
    for k in theta:
        torch.testing.assert_close(fast_w[k], ref_w[k], rtol=1e-10, atol=1e-12)
