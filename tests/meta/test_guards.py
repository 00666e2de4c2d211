"""Guards: non-finite skip, meta-gradient clipping, bounded step sizes; Meta-SGD,
La-MAML and ANIL specifics."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tests.meta.helpers import float64_params, random_episodes
from stream_meta.meta import ALGORITHMS, get_algorithm, meta_step

# Every engine that takes the algorithm (the fast path: plain SGD inner loops), and auto.
ALL_ENGINES = {name: ["reference", "fast", "auto"] if name in ("maml", "fomaml", "reptile", "anil")
               else ["reference", "auto"] for name in ALGORITHMS}


def leaves(d):
    return {k: v.detach().clone().requires_grad_() for k, v in d.items()}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
@pytest.mark.parametrize("poison", ["support_x", "query_x", "query_y"])
@pytest.mark.parametrize("kind", ["mse", "ce"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
def test_nonfinite_returns_finite_zeros_and_flag(relu_mlp, name, poison, kind, ragged):
    if kind == "ce" and poison == "query_y" or kind == "mse" and name == "gail-meta":
        return  # class indices cannot hold NaN; gail-meta generates a classifier (CE only)
    theta = float64_params(relu_mlp)
    eps = random_episodes(3, in_dim=5, classes=3, regression=kind == "mse")
    if ragged:  # the fast path's padded call, as in the daemon
        eps += random_episodes(2, in_dim=5, classes=3, support=3, query=8, seed=1, regression=kind == "mse")
    bad = getattr(eps[1], poison).clone()
    bad.view(-1)[0] = math.nan if poison != "query_x" else math.inf
    eps[1] = replace(eps[1], **{poison: bad})
    for engine in ALL_ENGINES[name]:
        alg = get_algorithm(name, loss=kind, backend=engine)
        grads, extra_grads, stats = alg.meta_gradient(relu_mlp, theta, alg.init_extra(theta), eps, steps=2, lr=0.1)
        assert stats["nonfinite"] is True, engine
        for g in [*grads.values(), *extra_grads.values()]:
            assert torch.isfinite(g).all() and not g.any()
        assert sorted(grads) == sorted(theta)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_meta_step_skips_nonfinite_update(relu_mlp, name):
    alg = get_algorithm(name)
    params = leaves(float64_params(relu_mlp))
    extra = leaves(alg.init_extra(params))
    before = {k: v.detach().clone() for k, v in {**params, **extra}.items()}
    opt = torch.optim.Adam([*params.values(), *extra.values()], lr=0.1)
    eps = random_episodes(2, in_dim=5, classes=3)
    eps[0] = replace(eps[0], support_x=torch.full_like(eps[0].support_x, math.nan))
    stats = meta_step(alg, relu_mlp, params, extra, eps, opt, steps=1, lr=0.1)
    assert stats["nonfinite"]
    for k, v in {**params, **extra}.items():
        assert torch.equal(v, before[k])
    assert not opt.state  # the optimiser never stepped


@pytest.mark.parametrize("name,engine", [(n, e) for n in sorted(ALGORITHMS) for e in ALL_ENGINES[n]])
def test_clip_grad_norm_scales_to_the_bound_and_keeps_direction(relu_mlp, name, engine):
    theta = float64_params(relu_mlp)
    eps = random_episodes(3, in_dim=5, classes=3)
    free = get_algorithm(name, backend=engine)
    extra = free.init_extra(theta)
    g0, e0, s0 = free.meta_gradient(relu_mlp, theta, extra, eps, steps=2, lr=0.3)
    assert not s0["clipped"]
    bound = s0["grad_norm"] / 4
    g1, e1, s1 = get_algorithm(name, clip_grad_norm=bound, backend=engine).meta_gradient(
        relu_mlp, theta, extra, eps, steps=2, lr=0.3)
    assert s1["clipped"] and s1["grad_norm"] == pytest.approx(s0["grad_norm"])
    flat0 = torch.cat([v.reshape(-1) for v in [*g0.values(), *e0.values()]])
    flat1 = torch.cat([v.reshape(-1) for v in [*g1.values(), *e1.values()]])
    assert flat1.norm().item() == pytest.approx(bound, rel=1e-9)
    torch.testing.assert_close(flat1, flat0 / 4, rtol=1e-9, atol=1e-12)
    _, _, s2 = get_algorithm(name, clip_grad_norm=s0["grad_norm"] * 2, backend=engine).meta_gradient(
        relu_mlp, theta, extra, eps, steps=2, lr=0.3
    )
    assert not s2["clipped"]


@pytest.mark.parametrize("lr", [-0.1, 10.5, math.nan, math.inf])
@pytest.mark.parametrize("engine", ["reference", "fast", "auto"])
def test_inner_lr_is_bounded(relu_mlp, lr, engine):
    theta = float64_params(relu_mlp)
    eps = random_episodes(1, in_dim=5, classes=3)
    alg = get_algorithm("maml", backend=engine)
    with pytest.raises(ValueError, match="inner lr"):
        alg.meta_gradient(relu_mlp, theta, {}, eps, steps=1, lr=lr)
    with pytest.raises(ValueError, match="inner lr"):
        alg.adapt(relu_mlp, theta, {}, eps[0].support_x, eps[0].support_y, steps=1, lr=lr)
    get_algorithm("maml", max_inner_lr=20.0, backend=engine).meta_gradient(relu_mlp, theta, {}, eps, steps=1, lr=10.5)


@pytest.mark.parametrize("engine", ["reference", "auto"])
def test_metasgd_step_sizes_get_gradients_and_stay_in_bounds(relu_mlp, engine):
    alg = get_algorithm("metasgd", backend=engine, max_scale=2.0)
    params = leaves(float64_params(relu_mlp))
    extra = leaves(alg.init_extra(params))
    assert all(torch.equal(v, torch.ones_like(v)) for v in extra.values())  # step sizes start at lr
    eps = random_episodes(4, in_dim=5, classes=3)
    _, extra_grads, _ = alg.meta_gradient(relu_mlp, params, extra, eps, steps=2, lr=0.3)
    assert sorted(extra_grads) == sorted(params)
    for g in extra_grads.values():
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    # A huge outer learning rate pushes the multipliers against both bounds.
    opt = torch.optim.SGD([*params.values(), *extra.values()], lr=1e4)
    for i in range(5):
        meta_step(alg, relu_mlp, params, extra, random_episodes(4, in_dim=5, classes=3, seed=i), opt, steps=2, lr=0.3)
        for v in extra.values():
            assert v.min() >= 0.0 and v.max() <= 2.0
    flat = torch.cat([v.reshape(-1) for v in extra.values()])
    assert (flat == 0).any() and (flat == 2.0).any()


def test_metasgd_inner_loop_clamps_out_of_bound_step_sizes(relu_mlp):
    alg = get_algorithm("metasgd", max_scale=3.0)
    theta = float64_params(relu_mlp)
    ep = random_episodes(1, in_dim=5, classes=3)[0]
    at_bound = alg.adapt(relu_mlp, theta, {k: torch.full_like(v, 3.0) for k, v in theta.items()},
                         ep.support_x, ep.support_y, steps=2, lr=0.1)
    beyond = alg.adapt(relu_mlp, theta, {k: torch.full_like(v, 100.0) for k, v in theta.items()},
                       ep.support_x, ep.support_y, steps=2, lr=0.1)
    negative = alg.adapt(relu_mlp, theta, {k: torch.full_like(v, -5.0) for k, v in theta.items()},
                         ep.support_x, ep.support_y, steps=2, lr=0.1)
    for k in theta:
        assert torch.equal(at_bound[k], beyond[k])
        assert torch.equal(negative[k], theta[k])
    with pytest.raises(ValueError, match="init_extra"):
        alg.meta_gradient(relu_mlp, theta, {}, [ep], steps=1, lr=0.1)


def test_lamaml_scales_the_outer_gradient_by_the_learned_step_sizes(relu_mlp):
    theta = float64_params(relu_mlp)
    eps = random_episodes(3, in_dim=5, classes=3)
    g = torch.Generator().manual_seed(0)
    scales = {k: torch.rand(v.shape, generator=g, dtype=v.dtype) * 3 - 0.5 for k, v in theta.items()}
    g_sgd, e_sgd, _ = get_algorithm("metasgd").meta_gradient(relu_mlp, theta, scales, eps, steps=2, lr=0.2)
    g_la, e_la, _ = get_algorithm("lamaml").meta_gradient(relu_mlp, theta, scales, eps, steps=2, lr=0.2)
    for k in theta:
        torch.testing.assert_close(g_la[k], g_sgd[k] * scales[k].clamp(0, 10.0), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(e_la[k], e_sgd[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("engine", ["reference", "fast", "auto"])
def test_anil_inner_loop_leaves_the_body_untouched(relu_mlp, engine):
    alg = get_algorithm("anil", backend=engine)
    theta = float64_params(relu_mlp)
    assert alg.adapted_names(relu_mlp, theta) == ("4.weight", "4.bias")
    ep = random_episodes(1, in_dim=5, classes=3)[0]
    fast = alg.adapt(relu_mlp, theta, {}, ep.support_x, ep.support_y, steps=3, lr=0.5)
    for k in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(fast[k], theta[k])
    for k in ("4.weight", "4.bias"):
        assert not torch.equal(fast[k], theta[k])
    with pytest.raises(ValueError, match="head"):
        get_algorithm("anil", head=("9.weight",)).adapt(relu_mlp, theta, {}, ep.support_x, ep.support_y, steps=1, lr=0.1)


def test_constructor_validation():
    with pytest.raises(ValueError, match="loss"):
        get_algorithm("maml", loss="hinge")
    with pytest.raises(ValueError, match="clip_grad_norm"):
        get_algorithm("maml", clip_grad_norm=0.0)
    with pytest.raises(ValueError, match="backend"):
        get_algorithm("maml", backend="tpu")
    with pytest.raises(ValueError, match="UpdateRule"):
        get_algorithm("maml", rule="adam")
    with pytest.raises(ValueError, match="max_scale"):
        get_algorithm("metasgd", max_scale=-1.0)
    with pytest.raises(ValueError, match="unknown meta-algorithm"):
        get_algorithm("protonet")
    with pytest.raises(TypeError):
        get_algorithm("maml", max_scale=2.0)  # only Meta-SGD / La-MAML take it
