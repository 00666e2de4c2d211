"""Every engine equals the reference (plain torch.func), for every algorithm: CE and MSE
with 1-D and 2-D targets, full and partial adaptation, ragged meta-batches, and the
fast weights ``adapt`` returns; ``auto`` picks the fast path where it applies and says why not."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from tests.meta.helpers import float64_params, random_episodes
from stream_meta.meta import ALGORITHMS, InnerLoop, LearnedStepSizes, get_algorithm
from stream_meta.meta.engines import choose_engine
from stream_meta.meta.losses import MeanSquaredError
from stream_meta.model import build_mlp

FAST_ALGS = {"maml", "fomaml", "reptile", "anil"}  # plain SGD inner loop: the fast path applies
NAMES = sorted(set(ALGORITHMS) - {"gail-meta"})  # gail-meta runs no engine: its own meta-gradient, test_gail.py


def engines_for(name: str) -> list[str]:
    return ["fast", "auto"] if name in FAST_ALGS else ["auto"]


def perturbed_extra(alg, theta, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype)) for k, v in alg.init_extra(theta).items()}


def run(name, engine, model, theta, eps, steps=2, **kw):
    alg = get_algorithm(name, backend=engine, **kw)
    return alg.meta_gradient(model, theta, perturbed_extra(alg, theta), eps, steps=steps, lr=0.3)


def assert_same(a, b, rtol=1e-10, atol=1e-12):
    (ga, ea, sa), (gb, eb, sb) = a, b
    for x, y in ((ga, gb), (ea, eb)):
        assert sorted(x) == sorted(y)
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=rtol, atol=atol)
    for key in ("query_loss", "query_loss_before", "grad_norm"):
        assert sa[key] == pytest.approx(sb[key], rel=1e-9)


def episodes(kind: str, ragged: bool, seed: int = 0):
    """CE, MSE with [N, 3] targets, or MSE with [N] targets (a one-output model)."""
    out = 1 if kind == "mse-1d" else 3
    kw = {"in_dim": 5, "classes": out, "regression": kind != "ce", "flat_targets": kind == "mse-1d"}
    eps = random_episodes(4, support=6, query=5, seed=seed, **kw)
    if ragged:  # the daemon's shape: sizes differ, feature shapes do not
        eps += random_episodes(2, support=4, query=9, seed=seed + 1, **kw)
        eps += random_episodes(1, support=1, query=1, seed=seed + 2, **kw)
        eps.insert(1, eps.pop())
    return build_mlp([5, 7, 6, out]).double(), eps


HEADS = {"full": None, "head": ("4.weight", "4.bias"), "mixed": ("0.bias", "2.weight", "4.bias")}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["ce", "mse-2d", "mse-1d"])
@pytest.mark.parametrize("ragged", [False, True], ids=["equal", "ragged"])
def test_every_engine_equals_the_reference(name, kind, ragged):
    model, eps = episodes(kind, ragged)
    theta = float64_params(model, seed=1)
    loss = "ce" if kind == "ce" else "mse"
    ref = run(name, "reference", model, theta, eps, loss=loss)
    for engine in engines_for(name):
        assert_same(run(name, engine, model, theta, eps, loss=loss), ref)


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "anil"])
@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_partial_adaptation_equals_the_reference(relu_mlp, name, head, steps):
    """Head-only and scattered adapted sets (ANIL's ``head``; the rest through subclassing)."""
    theta = float64_params(relu_mlp, seed=4)
    eps = random_episodes(5, in_dim=5, classes=3, seed=5)
    names = HEADS[head]

    class Partial(type(get_algorithm(name))):
        def adapted_names(self, model, params):
            return tuple(params) if names is None else names

    def go(backend):
        return Partial(backend=backend).meta_gradient(relu_mlp, theta, {}, eps, steps=steps, lr=0.3)

    ref = go("reference")
    assert_same(go("fast"), ref)
    assert_same(go("auto"), ref)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["ce", "mse-1d"])
def test_adapt_equals_the_reference(name, kind):
    model, eps = episodes(kind, False)
    theta = float64_params(model, seed=2)
    loss = "ce" if kind == "ce" else "mse"
    ref_alg = get_algorithm(name, backend="reference", loss=loss)
    extra = perturbed_extra(ref_alg, theta)
    want = ref_alg.adapt(model, theta, extra, eps[0].support_x, eps[0].support_y, steps=3, lr=0.3)
    assert any(not torch.equal(want[k], theta[k]) for k in theta)
    for engine in engines_for(name):
        got = get_algorithm(name, backend=engine, loss=loss).adapt(
            model, theta, extra, eps[0].support_x, eps[0].support_y, steps=3, lr=0.3)
        for k in theta:
            torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)


def test_reptile_loop_and_mse_1d_regressions():
    """Two former crashes: MSE with 1-D targets in adapt, and Reptile on the reference."""
    model, eps = episodes("mse-1d", True)
    theta = float64_params(model)
    for name in NAMES:
        for engine in ["reference", *engines_for(name)]:
            alg = get_algorithm(name, loss="mse", backend=engine)
            fast = alg.adapt(model, theta, alg.init_extra(theta), eps[0].support_x, eps[0].support_y, steps=2, lr=0.1)
            assert all(torch.isfinite(v).all() for v in fast.values())
            assert run(name, engine, model, theta, eps, loss="mse")[2]["nonfinite"] is False


def test_float32_engines_agree(relu_mlp):
    model = relu_mlp.float()
    theta = {k: v.float() for k, v in float64_params(model).items()}
    eps = random_episodes(8, in_dim=5, classes=3, dtype=torch.float32)
    for name in ("maml", "fomaml", "reptile"):
        ref = run(name, "reference", model, theta, eps)
        got = run(name, "fast", model, theta, eps)
        for k in theta:
            torch.testing.assert_close(got[0][k], ref[0][k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "anil"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_low_rank_and_dense_phases_equal_the_reference(name, steps):
    """A wide hidden layer and a small support set keep later layers in low-rank form
    for the first steps, then switch to dense per-task deltas (R (in + out) >= in out)."""
    model = build_mlp([5, 20, 20, 3]).double()
    theta = float64_params(model)
    eps = random_episodes(3, in_dim=5, classes=3, support=4, query=5)
    kw = {"head": ("2.weight", "2.bias", "4.weight", "4.bias")} if name == "anil" else {}
    assert_same(run(name, "fast", model, theta, eps, steps=steps, **kw),
                run(name, "reference", model, theta, eps, steps=steps, **kw))


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile"])
def test_smooth_activations_use_autograd_on_the_fast_path(tanh_mlp, name):
    theta = {k: v.detach().clone() for k, v in tanh_mlp.named_parameters()}
    eps = random_episodes(4, in_dim=3, classes=3)
    assert_same(run(name, "fast", tanh_mlp, theta, eps), run(name, "reference", tanh_mlp, theta, eps))


def test_auto_choice_and_reasons(relu_mlp, caplog):
    names = tuple(float64_params(relu_mlp))
    sgd = InnerLoop(1, 0.1, names)
    assert choose_engine("auto", relu_mlp, sgd) == ("fast", "the fast path applies")
    stepped = InnerLoop(1, 0.1, names, rule=LearnedStepSizes(2.0))
    engine, why = choose_engine("auto", relu_mlp, stepped)
    assert engine == "reference" and "not linear" in why
    assert choose_engine("auto", relu_mlp, sgd, flat_inputs=False)[0] == "reference"
    conv = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    engine, why = choose_engine("auto", conv, InnerLoop(1, 0.1, ("1.weight",)))
    assert engine == "reference" and "not an nn.Sequential MLP" in why
    with pytest.raises(ValueError, match="not linear"):
        choose_engine("fast", relu_mlp, stepped)
    with pytest.raises(ValueError, match="unknown backend"):
        choose_engine("gpu", relu_mlp, sgd)

    class LearnedLoss(MeanSquaredError):
        learned = True

    with pytest.raises(ValueError, match="meta-parameters"):
        choose_engine("fast", relu_mlp, InnerLoop(1, 0.1, names, loss=LearnedLoss()))
    # The choice is logged, once per distinct outcome.
    caplog.set_level(logging.INFO, logger="stream_meta.meta.engines")
    odd = InnerLoop(1, 0.1, names, rule=LearnedStepSizes(7.5))
    choose_engine("auto", relu_mlp, odd)
    choose_engine("auto", relu_mlp, odd)
    lines = [r.getMessage() for r in caplog.records if "7.5" in r.getMessage()]
    assert lines == ["meta engine: auto chose reference (fast path declines: the update rule "
                     "LearnedStepSizes(max_scale=7.5) is not linear)"]


def test_non_mlp_model_runs_on_the_reference():
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
    for name in ("maml", "anil", "metasgd", "reptile"):
        assert get_algorithm(name).engine(model, theta)[0] == "reference"
        assert_same(run(name, "auto", model, theta, eps), run(name, "reference", model, theta, eps))
        with pytest.raises(ValueError, match="fast backend"):
            run(name, "fast", model, theta, eps)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["ce", "mse-1d"])
def test_ragged_meta_batch_is_the_mean_of_single_episodes(name, kind):
    """Padding (one call for episodes of different sizes) changes nothing: every engine's
    meta-batch result is the mean of the reference's single-episode results."""
    model, eps = episodes(kind, True, seed=7)
    theta = float64_params(model, seed=3)
    loss = "ce" if kind == "ce" else "mse"
    singles = [run(name, "reference", model, theta, [e], loss=loss) for e in eps]
    for engine in ["reference", *engines_for(name)]:
        grads, extra_grads, stats = run(name, engine, model, theta, eps, loss=loss)
        for k in theta:
            torch.testing.assert_close(grads[k], torch.stack([s[0][k] for s in singles]).mean(0), rtol=1e-10, atol=1e-12)
        for k in extra_grads:
            torch.testing.assert_close(extra_grads[k], torch.stack([s[1][k] for s in singles]).mean(0), rtol=1e-10, atol=1e-12)
        for key in ("query_loss", "query_loss_before"):
            assert stats[key] == pytest.approx(sum(s[2][key] for s in singles) / len(eps), rel=1e-10)
        assert stats["tasks"] == len(eps)
