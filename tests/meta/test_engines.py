"""The vectorised engines (vmap, lowrank) equal the per-task loop, for every algorithm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.meta.helpers import float64_params, random_episodes
from stream_meta.meta import ALGORITHMS, get_algorithm
from stream_meta.meta.engines import choose_backend
from stream_meta.meta.functional import InnerLoop

LOWRANK_ALGS = ["maml", "fomaml", "reptile", "anil"]
MANUAL_ALGS = ["fomaml", "reptile"]  # first order / Reptile on a ReLU MLP


def engines_for(name: str) -> list[str]:
    engines = ["vmap", "lowrank"] if name in LOWRANK_ALGS else ["vmap"]
    return engines + (["manual"] if name in MANUAL_ALGS else [])


def perturbed_extra(alg, theta, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype)) for k, v in alg.init_extra(theta).items()}


def run(name, engine, model, theta, eps, **kw):
    alg = get_algorithm(name, backend=engine, **kw)
    extra = perturbed_extra(alg, theta)
    return alg.meta_gradient(model, theta, extra, eps, steps=2, lr=0.3)


def assert_same(a, b, rtol=1e-10, atol=1e-12):
    (ga, ea, sa), (gb, eb, sb) = a, b
    for x, y in ((ga, gb), (ea, eb)):
        assert sorted(x) == sorted(y)
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=rtol, atol=atol)
    for key in ("query_loss", "query_loss_before", "grad_norm"):
        assert sa[key] == pytest.approx(sb[key], rel=1e-9)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_vectorised_equals_loop(relu_mlp, name):
    theta = float64_params(relu_mlp)
    eps = random_episodes(5, in_dim=5, classes=3)
    ref = run(name, "loop", relu_mlp, theta, eps)
    for engine in engines_for(name):
        assert_same(run(name, engine, relu_mlp, theta, eps), ref)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_vectorised_equals_loop_mse(relu_mlp, name):
    theta = float64_params(relu_mlp, seed=1)
    eps = random_episodes(4, in_dim=5, classes=3, regression=True, seed=2)
    ref = run(name, "loop", relu_mlp, theta, eps, loss="mse")
    for engine in engines_for(name):
        assert_same(run(name, engine, relu_mlp, theta, eps, loss="mse"), ref)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_mixed_shapes_group_and_average_like_the_loop(relu_mlp, name):
    """Episodes of different sizes are grouped by shape; the mean is over all tasks."""
    theta = float64_params(relu_mlp, seed=2)
    eps = random_episodes(3, in_dim=5, classes=3, support=6, query=5, seed=1)
    eps += random_episodes(2, in_dim=5, classes=3, support=4, query=9, seed=2)
    eps.insert(1, eps.pop())  # interleaved
    per_task = [run(name, "loop", relu_mlp, theta, [e]) for e in eps]
    mean = {k: torch.stack([p[0][k] for p in per_task]).mean(0) for k in theta}
    for engine in ["auto", "loop", *engines_for(name)]:
        grads, _, stats = run(name, engine, relu_mlp, theta, eps)
        for k in theta:
            torch.testing.assert_close(grads[k], mean[k], rtol=1e-10, atol=1e-12)
        assert stats["query_loss"] == pytest.approx(sum(p[2]["query_loss"] for p in per_task) / len(eps), rel=1e-10)
        assert stats["tasks"] == len(eps)


def test_float32_engines_agree(relu_mlp):
    model = relu_mlp.float()
    theta = {k: v.float() for k, v in float64_params(model).items()}
    eps = random_episodes(8, in_dim=5, classes=3, dtype=torch.float32)
    ref = run("maml", "loop", model, theta, eps)
    for engine in ("vmap", "lowrank"):
        got = run("maml", engine, model, theta, eps)
        for k in theta:
            torch.testing.assert_close(got[0][k], ref[0][k], rtol=1e-4, atol=1e-5)


def test_anil_custom_head_and_bias_only_adaptation(relu_mlp):
    theta = float64_params(relu_mlp)
    eps = random_episodes(4, in_dim=5, classes=3)
    for head in [("4.bias",), ("2.weight", "2.bias", "4.weight", "4.bias"), ("2.bias",)]:
        ref = run("anil", "loop", relu_mlp, theta, eps, head=head)
        for engine in ("vmap", "lowrank"):
            assert_same(run("anil", engine, relu_mlp, theta, eps, head=head), ref)


def test_auto_backend_choice(relu_mlp, tanh_mlp):
    spec = InnerLoop(1, 0.1, ("0.weight",))
    assert choose_backend("auto", relu_mlp, spec, learned=False, tasks=1) == "lowrank"
    for order in ("first", "reptile"):
        first = InnerLoop(1, 0.1, ("0.weight",), order=order)
        assert choose_backend("auto", relu_mlp, first, learned=False, tasks=1) == "manual"
        assert choose_backend("auto", tanh_mlp, first, learned=False, tasks=1) == "lowrank"  # ReLU only
        assert choose_backend("auto", relu_mlp, first, learned=True, tasks=8) == "vmap"
    with pytest.raises(ValueError, match="manual"):
        choose_backend("manual", relu_mlp, spec, learned=False, tasks=8)  # second order
    assert choose_backend("auto", relu_mlp, spec, learned=True, tasks=8) == "vmap"
    assert choose_backend("auto", relu_mlp, spec, learned=True, tasks=1) == "loop"
    assert choose_backend("auto", relu_mlp, spec, learned=True, tasks=3) == "loop"
    assert choose_backend("auto", relu_mlp, spec, learned=True, tasks=4) == "vmap"
    assert choose_backend("auto", relu_mlp, spec, learned=False, tasks=8, flat_inputs=False) == "vmap"
    conv = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert choose_backend("auto", conv, InnerLoop(1, 0.1, ("1.weight",)), learned=False, tasks=8) == "vmap"
    with pytest.raises(ValueError, match="lowrank"):
        choose_backend("lowrank", relu_mlp, spec, learned=True, tasks=8)
    with pytest.raises(ValueError, match="unknown backend"):
        choose_backend("gpu", relu_mlp, spec, learned=False, tasks=8)


def test_non_mlp_model_runs_on_vmap_and_matches_loop():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(5, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.body(x)) + x.sum(-1, keepdim=True))

    model = Net().double()
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    eps = random_episodes(4, in_dim=5, classes=3)
    for name in ("maml", "anil", "metasgd"):
        assert_same(run(name, "auto", model, theta, eps), run(name, "loop", model, theta, eps))


@pytest.mark.parametrize("name", LOWRANK_ALGS)
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_lowrank_low_rank_and_dense_phases_equal_loop(name, steps):
    """A wide hidden layer and a small support set keep later layers in low-rank form
    for the first steps, then switch to dense per-task deltas (R (in + out) >= in out)."""
    from stream_meta.model import build_mlp

    model = build_mlp([5, 20, 20, 3]).double()
    theta = float64_params(model)
    eps = random_episodes(3, in_dim=5, classes=3, support=4, query=5)
    kw = {"head": ("2.weight", "2.bias", "4.weight", "4.bias")} if name == "anil" else {}
    got = get_algorithm(name, backend="lowrank", **kw).meta_gradient(model, theta, {}, eps, steps=steps, lr=0.3)
    ref = get_algorithm(name, backend="loop", **kw).meta_gradient(model, theta, {}, eps, steps=steps, lr=0.3)
    assert_same(got, ref)


def assert_same_group(got, ref):
    """Two GroupResults (meta-gradients and query losses) equal to float64 precision."""
    for k in ref.grads:
        torch.testing.assert_close(got.grads[k], ref.grads[k], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.query_loss, ref.query_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.query_loss_before, ref.query_loss_before, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", ["first", "reptile"])
@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_manual_equals_loop_for_step_counts_losses_and_partial_adaptation(relu_mlp, order, steps, kind):
    from stream_meta.meta.engines import meta_gradient_mean

    theta = {k: v.requires_grad_() for k, v in float64_params(relu_mlp, seed=4).items()}
    eps = random_episodes(6, in_dim=5, classes=3, seed=5, regression=kind == "mse")
    for names in (tuple(theta), ("4.weight", "4.bias"), ("0.bias", "2.weight")):
        spec = InnerLoop(steps, 0.3, names, order=order, loss=kind)
        assert_same_group(meta_gradient_mean(relu_mlp, theta, None, spec, eps, backend="manual"),
                          meta_gradient_mean(relu_mlp, theta, None, spec, eps, backend="loop"))


@pytest.mark.parametrize("order", ["first", "reptile"])
@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_manual_pads_episodes_of_different_sizes_into_one_call(relu_mlp, order, kind):
    from stream_meta.meta.engines import _one_manual_call, meta_gradient_mean

    theta = {k: v.requires_grad_() for k, v in float64_params(relu_mlp, seed=6).items()}
    reg = kind == "mse"
    eps = random_episodes(3, in_dim=5, classes=3, support=6, query=5, seed=1, regression=reg)
    eps += random_episodes(2, in_dim=5, classes=3, support=4, query=9, seed=2, regression=reg)
    eps += random_episodes(1, in_dim=5, classes=3, support=1, query=1, seed=3, regression=reg)
    for names in (tuple(theta), ("2.weight", "2.bias", "4.weight")):
        spec = InnerLoop(3, 0.3, names, order=order, loss=kind)
        assert _one_manual_call("auto", relu_mlp, spec, None, eps)
        assert_same_group(meta_gradient_mean(relu_mlp, theta, None, spec, eps, backend="auto"),
                          meta_gradient_mean(relu_mlp, theta, None, spec, eps, backend="loop"))
    assert not _one_manual_call("auto", relu_mlp, InnerLoop(3, 0.3, tuple(theta), order="second"), None, eps)
