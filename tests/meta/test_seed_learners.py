"""The neural optimiser and LMML: their own meta-parameters get the meta-gradients finite
differences measure (float64), at initialisation they are exactly SGD/MAML, their
outputs stay within their bounds, and the guards hold."""

from __future__ import annotations

import math

import pytest
import torch

from tests.meta.helpers import random_episodes
from stream_meta.meta import get_algorithm, meta_step
from stream_meta.meta.learned_loss import LearnedLoss
from stream_meta.meta.neural_optimizer import CoordinatewiseMLP

# Second order: the total derivative, as differences see it (first order drops a part of it).
CASES = [("neural-optimizer", {}), ("lmml", {}), ("lmml", {"net_modulate": True})]


def _theta(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _moved(extra, seed=0, scale=0.3):
    """``extra`` away from its initial point (there the first layer's gradient is 0)."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in extra.items()}


@pytest.mark.parametrize("name,options", CASES)
def test_meta_gradients_of_the_learners_own_parameters_equal_finite_differences(tanh_mlp, name, options):
    theta = _theta(tanh_mlp)
    eps = random_episodes(3, in_dim=3, classes=3)
    alg = get_algorithm(name, **options)
    extra = _moved(alg.init_extra(theta))
    _, extra_grads, stats = alg.meta_gradient(tanh_mlp, theta, extra, eps, steps=2, lr=0.3)
    assert not stats["nonfinite"]
    h = 1e-6
    for key, value in extra.items():
        for idx in [(0,) * value.dim(), tuple(s - 1 for s in value.shape)]:
            def at(delta):
                shifted = value.clone()
                shifted[idx] += delta
                return alg.meta_gradient(tanh_mlp, theta, {**extra, key: shifted}, eps, steps=2, lr=0.3)[2]["query_loss"]

            want = (at(h) - at(-h)) / (2 * h)
            assert extra_grads[key][idx].item() == pytest.approx(want, rel=1e-5, abs=1e-9), (key, idx)
    assert any(float(v.abs().max()) > 1e-6 for v in extra_grads.values())


@pytest.mark.parametrize("name,options,equal_to", [("neural-optimizer", {}, "maml"), ("lmml", {}, "maml"),
                                                  ("lmml", {"net_modulate": True}, "maml"),
                                                  ("neural-optimizer", {"first_order": True}, "fomaml")])
def test_at_initialisation_they_are_sgd_and_maml(tanh_mlp, name, options, equal_to):
    """Same fast weights and the same meta-gradient of the model's parameters as the rule
    and loss they start as."""
    theta = _theta(tanh_mlp)
    eps = random_episodes(3, in_dim=3, classes=3)
    alg, base = get_algorithm(name, **options), get_algorithm(equal_to)
    extra = alg.init_extra(theta)
    ep = eps[0]
    ours = alg.adapt(tanh_mlp, theta, extra, ep.support_x, ep.support_y, steps=3, lr=0.3)
    theirs = base.adapt(tanh_mlp, theta, {}, ep.support_x, ep.support_y, steps=3, lr=0.3)
    grads, _, stats = alg.meta_gradient(tanh_mlp, theta, extra, eps, steps=3, lr=0.3)
    base_grads, _, base_stats = base.meta_gradient(tanh_mlp, theta, {}, eps, steps=3, lr=0.3)
    for k in theta:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grads[k], base_grads[k], rtol=1e-10, atol=1e-12)
    assert stats["query_loss"] == pytest.approx(base_stats["query_loss"], rel=1e-12)
    # ... and no longer once their own parameters have moved.
    moved = alg.adapt(tanh_mlp, theta, _moved(extra), ep.support_x, ep.support_y, steps=3, lr=0.3)
    assert any(not torch.allclose(moved[k], theirs[k]) for k in theta)


def test_the_neural_optimisers_update_is_bounded():
    """Network outputs bounded by ``B``, step sizes by ``max_scale`` (the weights at 100)."""
    rule = CoordinatewiseMLP(hidden=8, bound=1.5, max_scale=2.0)
    p, g = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    meta = {k: 100 * torch.ones_like(v) for k, v in rule.init_params({"w": p}, ("w",)).items()}
    state = rule.init_state({"w": p}, meta)
    new, state = rule.step({"w": p}, {"w": g}, state, meta, lr=0.1)
    limit = 0.1 * 2.0 * (math.exp(1.5) * g.abs() + 1.5 * g.pow(2).mean().sqrt())
    assert bool(((new["w"] - p).abs() <= limit + 1e-12).all())
    assert bool(((new["w"] - p).abs() > 0.1 * 1.0 * g.abs()).any())  # the multipliers act (beyond 1)
    assert state["t"] == 1 and len(state["m"]) == 3  # per-task optimiser state is carried


def test_the_neural_optimisers_step_sizes_are_projected_into_their_bounds():
    rule = CoordinatewiseMLP(hidden=4, max_scale=3.0)
    extra = rule.init_params({"w": torch.zeros(3)}, ("w",))
    extra["rule.scale.w"] = torch.tensor([-1.0, 2.0, 7.0])
    extra["rule.w2"] = torch.full((4, 2), 9.0)
    rule.project(extra)
    assert extra["rule.scale.w"].tolist() == [0.0, 2.0, 3.0]
    assert bool((extra["rule.w2"] == 9.0).all())  # the network's weights are not clamped
    with pytest.raises(ValueError, match=r"rule.scale.v"):
        rule.check(extra, ("w", "v"))


def test_with_its_network_at_zero_the_neural_optimiser_is_meta_sgd(tanh_mlp):
    """Moved step sizes, the network's output layer at zero: the same fast weights as
    Meta-SGD with those step sizes, the same meta-gradient of the model's parameters and
    of the step sizes (Meta-SGD's ``extra`` under the parameters' own names)."""
    theta = _theta(tanh_mlp)
    eps = random_episodes(3, in_dim=3, classes=3)
    ours, metasgd = get_algorithm("neural-optimizer"), get_algorithm("metasgd")
    scales = _moved(metasgd.init_extra(theta), seed=4)
    extra = {**_moved(ours.init_extra(theta)), **{f"rule.scale.{k}": v for k, v in scales.items()}}
    extra["rule.w2"], extra["rule.b2"] = torch.zeros_like(extra["rule.w2"]), torch.zeros_like(extra["rule.b2"])
    ep = eps[0]
    fast = ours.adapt(tanh_mlp, theta, extra, ep.support_x, ep.support_y, steps=3, lr=0.3)
    want = metasgd.adapt(tanh_mlp, theta, scales, ep.support_x, ep.support_y, steps=3, lr=0.3)
    sgd = get_algorithm("maml").adapt(tanh_mlp, theta, {}, ep.support_x, ep.support_y, steps=3, lr=0.3)
    grads, extra_grads, _ = ours.meta_gradient(tanh_mlp, theta, extra, eps, steps=3, lr=0.3)
    want_grads, want_scale_grads, _ = metasgd.meta_gradient(tanh_mlp, theta, scales, eps, steps=3, lr=0.3)
    for k in theta:
        torch.testing.assert_close(fast[k], want[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(extra_grads[f"rule.scale.{k}"], want_scale_grads[k], rtol=1e-10, atol=1e-12)
    assert any(not torch.allclose(fast[k], sgd[k]) for k in theta)  # the step sizes moved it off SGD
    assert float(extra_grads["rule.w2"].abs().max()) > 0  # the network still learns from here


def test_the_learned_loss_term_is_bounded_and_zero_at_init():
    loss = LearnedLoss(hidden=8, bound=0.5)
    out, y = 5 * torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 4, (7,))
    meta = loss.init_params({"b": torch.zeros(4, dtype=torch.float64)})
    assert bool((loss.learned_term(out, y, meta) == 0).all())
    big = {k: 100 * torch.ones_like(v) for k, v in meta.items()}
    assert float(loss.learned_term(out, y, big).abs().max()) <= 0.5
    with pytest.raises(ValueError, match="built for 4 classes"):
        loss.learned_term(torch.zeros(7, 3, dtype=torch.float64), y % 3, meta)


@pytest.mark.parametrize("name", ["neural-optimizer", "lmml"])
def test_nonfinite_meta_parameters_are_skipped_and_counted(tanh_mlp, name):
    theta = _theta(tanh_mlp)
    eps = random_episodes(2, in_dim=3, classes=3)
    alg = get_algorithm(name)
    extra = alg.init_extra(theta)
    key = sorted(extra)[-1]
    extra[key] = torch.full_like(extra[key], math.nan)
    params = {k: v.clone().requires_grad_() for k, v in theta.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in extra.items()}
    opt = torch.optim.SGD([*params.values(), *leaves.values()], lr=0.1)
    stats = meta_step(alg, tanh_mlp, params, leaves, eps, opt, steps=2, lr=0.3)
    assert stats["nonfinite"]
    assert all(torch.equal(params[k], theta[k]) for k in theta)


@pytest.mark.parametrize("name,metric", [("neural-optimizer", "update_norm_ratio"), ("lmml", "learned_loss_ratio")])
def test_health_metrics_start_at_one_and_move_with_the_learned_part(tanh_mlp, name, metric):
    theta = _theta(tanh_mlp)
    ep = random_episodes(1, in_dim=3, classes=3)[0]
    alg = get_algorithm(name)
    extra = alg.init_extra(theta)
    at_init = alg.health_metrics(tanh_mlp, theta, extra, ep.support_x, ep.support_y, steps=2, lr=0.3)
    assert at_init[metric] == pytest.approx(1.0, rel=1e-9)
    moved = alg.health_metrics(tanh_mlp, theta, _moved(extra, scale=1.0), ep.support_x, ep.support_y, steps=2, lr=0.3)
    assert moved[metric] != pytest.approx(1.0, rel=1e-3)


def test_options_are_checked():
    with pytest.raises(ValueError, match="its own inner loss"):
        get_algorithm("lmml", inner_loss="ce")
    with pytest.raises(ValueError, match="bound"):
        get_algorithm("neural-optimizer", net_bound=0.0)
    with pytest.raises(ValueError, match="hidden"):
        get_algorithm("lmml", net_hidden=0)


def _per_tensor_step(rule, fast, grads, state, meta, lr):
    """The neural optimiser's step written out tensor by tensor (its first form, with the
    step sizes): the reference for the flat, one-call-per-step form the rule runs."""
    t, out = state["t"], {}
    m = [{k: b * state["m"][i][k] + (1 - b) * g for k, g in grads.items()} for i, b in enumerate((0.5, 0.9, 0.99))]
    v = {k: 0.999 * state["v"][k] + 0.001 * g * g for k, g in grads.items()}
    for k, g in grads.items():
        feats = [f / torch.sqrt(f.pow(2).mean() + 1e-12)
                 for f in (g, fast[k], *(mi[k] for mi in m), torch.sqrt(v[k] + 1e-12))]
        feats += [torch.full_like(g, math.tanh(t / s)) for s in (1.0, 3.0, 10.0)]
        x = torch.stack(feats, dim=-1).reshape(-1, 9)
        o = torch.tanh(torch.tanh(x @ meta["rule.w1"] + meta["rule.b1"]) @ meta["rule.w2"] + meta["rule.b2"])
        d, s = o[:, 0].reshape(g.shape), o[:, 1].reshape(g.shape)
        rms = torch.sqrt(g.pow(2).mean() + 1e-12)
        a = meta[f"rule.scale.{k}"].clamp(0.0, rule.max_scale)
        out[k] = fast[k] - lr * a * (torch.exp(rule.bound * s) * g + rule.bound * d * rms)
    return out, {"t": t + 1, "m": m, "v": v}


def test_the_neural_optimisers_flat_step_equals_the_per_tensor_rule(tanh_mlp):
    """Several steps, moved weights, tensors of different shapes (a bias of 1 entry too):
    the flat step gives the per-tensor reference's fast weights and the same gradients
    of its weights."""
    rule = CoordinatewiseMLP(hidden=8, bound=0.7, max_scale=1.2)  # some moved step sizes clamped
    g = torch.Generator().manual_seed(3)
    fast = {"a": torch.randn(4, 3, generator=g, dtype=torch.float64), "b": torch.randn(1, generator=g, dtype=torch.float64),
            "c": torch.randn(5, generator=g, dtype=torch.float64)}
    meta = {k: v.requires_grad_() for k, v in _moved(rule.init_params(fast, tuple(fast)), scale=0.5).items()}
    ours, ref, sgd = dict(fast), dict(fast), dict(fast)
    state = rule.init_state(fast, meta)
    ref_state = {"t": 0, "m": [{k: torch.zeros_like(v) for k, v in fast.items()} for _ in range(3)],
                 "v": {k: torch.zeros_like(v) for k, v in fast.items()}}
    for _ in range(4):
        grads = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in fast.items()}
        ours, state = rule.step(ours, grads, state, meta, lr=0.3)
        ref, ref_state = _per_tensor_step(rule, ref, grads, ref_state, meta, 0.3)
        sgd = {k: v - 0.3 * grads[k] for k, v in sgd.items()}
    for k in fast:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-12, atol=1e-13)
    assert all(not torch.allclose(ours[k], sgd[k]) for k in fast)  # the moved rule is not SGD
    got = torch.autograd.grad(sum(v.pow(2).sum() for v in ours.values()), list(meta.values()))
    want = torch.autograd.grad(sum(v.pow(2).sum() for v in ref.values()), list(meta.values()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_modulated_learned_loss_starts_as_the_plain_one_and_depends_on_the_task_state():
    """MeTAL's modulation at zero is the identity; moved, the learned term changes with
    the set's label frequencies even where every row's own inputs are the same."""
    plain, film = LearnedLoss(hidden=8, bound=0.5), LearnedLoss(hidden=8, bound=0.5, modulate=True)
    out, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    meta = _moved(film.init_params({"b": torch.zeros(4, dtype=torch.float64)}), scale=0.5)
    at_zero = {k: torch.zeros_like(v) if k.startswith("loss.film.") else v for k, v in meta.items()}
    base = {k: v for k, v in meta.items() if not k.startswith("loss.film.")}
    torch.testing.assert_close(film.learned_term(out, y, at_zero), plain.learned_term(out, y, base), rtol=0, atol=0)
    # Row 0 kept, the other rows' labels changed: the plain term of row 0 moves only
    # through the concatenated mean statistics; the modulated one also through the label
    # frequencies, so the two differ.
    y2 = torch.tensor([0, 0, 0, 0, 0, 0])
    assert not torch.allclose(film.learned_term(out, y2, meta)[0] - film.learned_term(out, y, meta)[0],
                              plain.learned_term(out, y2, base)[0] - plain.learned_term(out, y, base)[0])
