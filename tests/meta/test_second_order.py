"""Second-order meta-gradients against an explicitly unrolled autograd reference and
central finite differences, in float64 (MAML K = 1, 2, 3; Meta-SGD; ANIL)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.meta.helpers import float64_params, random_episodes
from stream_meta.meta import get_algorithm

ENGINES = ["reference", "fast"]


def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The tanh MLP written out by hand (independent of functional_call)."""
    return F.linear(torch.tanh(F.linear(x, p["0.weight"], p["0.bias"])), p["2.weight"], p["2.bias"])


def task_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y) if kind == "ce" else ((out - y) ** 2).mean()


def meta_loss(theta, scales, episodes, *, steps, lr, adapted, kind="ce"):
    """Mean query loss after ``steps`` unrolled inner SGD steps (graph kept throughout)."""
    theta = {k: v if v.requires_grad else v.clone().requires_grad_() for k, v in theta.items()}
    total = 0.0
    for ep in episodes:
        fast = dict(theta)
        for _ in range(steps):
            inner = task_loss(kind, forward(fast, ep.support_x), ep.support_y)
            grads = torch.autograd.grad(inner, [fast[k] for k in adapted], create_graph=True)
            for k, g in zip(adapted, grads):
                step = lr if scales is None else lr * scales[k]
                fast[k] = fast[k] - step * g
        total = total + task_loss(kind, forward(fast, ep.query_x), ep.query_y)
    return total / len(episodes)


def reference_grads(theta, scales, episodes, **kw):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    sleaves = None if scales is None else {k: v.detach().clone().requires_grad_() for k, v in scales.items()}
    j = meta_loss(leaves, sleaves, episodes, **kw)
    inputs = list(leaves.values()) + ([] if sleaves is None else list(sleaves.values()))
    gs = torch.autograd.grad(j, inputs)
    n = len(leaves)
    return dict(zip(leaves, gs[:n])), ({} if sleaves is None else dict(zip(sleaves, gs[n:])))


def finite_differences(fn, tensors: dict[str, torch.Tensor], eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """Central differences of scalar ``fn()`` w.r.t. every element of ``tensors`` (perturbed in place)."""
    out = {}
    for k, v in tensors.items():
        g = torch.zeros_like(v)
        flat, gflat = v.view(-1), g.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + eps
            plus = fn().item()
            flat[i] = old - eps
            minus = fn().item()
            flat[i] = old
            gflat[i] = (plus - minus) / (2 * eps)
        out[k] = g
    return out


def assert_close(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("engine", ENGINES)
def test_maml_matches_unrolled_reference_and_finite_differences(tanh_mlp, steps, engine):
    theta = float64_params(tanh_mlp)
    eps = random_episodes(3, in_dim=3, classes=3, seed=steps)
    kw = dict(steps=steps, lr=0.5, adapted=tuple(theta))
    ref, _ = reference_grads(theta, None, eps, **kw)
    grads, extra_grads, stats = get_algorithm("maml", backend=engine).meta_gradient(
        tanh_mlp, theta, {}, eps, steps=steps, lr=0.5
    )
    assert extra_grads == {} and not stats["nonfinite"]
    assert_close(grads, ref, rtol=1e-10, atol=1e-12)

    probe = {k: v.clone() for k, v in theta.items()}
    fd = finite_differences(lambda: meta_loss(probe, None, eps, **kw), probe)
    assert_close(grads, fd, rtol=1e-6, atol=1e-8)
    assert stats["query_loss"] == pytest.approx(meta_loss(theta, None, eps, **kw).item(), rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_maml_mse_matches_finite_differences(tanh_mlp, engine):
    theta = float64_params(tanh_mlp, seed=3)
    eps = random_episodes(2, in_dim=3, classes=3, regression=True, seed=7)
    kw = dict(steps=2, lr=0.2, adapted=tuple(theta), kind="mse")
    grads, _, _ = get_algorithm("maml", loss="mse", backend=engine).meta_gradient(
        tanh_mlp, theta, {}, eps, steps=2, lr=0.2
    )
    probe = {k: v.clone() for k, v in theta.items()}
    fd = finite_differences(lambda: meta_loss(probe, None, eps, **kw), probe)
    assert_close(grads, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("engine", ["reference", "auto"])
@pytest.mark.parametrize("steps", [1, 3])
def test_metasgd_matches_reference_and_finite_differences(tanh_mlp, engine, steps):
    theta = float64_params(tanh_mlp, seed=1)
    alg = get_algorithm("metasgd", backend=engine)
    g = torch.Generator().manual_seed(5)
    scales = {k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype)) for k, v in alg.init_extra(theta).items()}
    eps = random_episodes(2, in_dim=3, classes=3, seed=11)
    kw = dict(steps=steps, lr=0.4, adapted=tuple(theta))
    ref, ref_s = reference_grads(theta, scales, eps, **kw)
    grads, sgrads, _ = alg.meta_gradient(tanh_mlp, theta, scales, eps, steps=steps, lr=0.4)
    assert_close(grads, ref, rtol=1e-10, atol=1e-12)
    assert_close(sgrads, ref_s, rtol=1e-10, atol=1e-12)

    probe_t = {k: v.clone() for k, v in theta.items()}
    probe_s = {k: v.clone() for k, v in scales.items()}
    fd_s = finite_differences(lambda: meta_loss(probe_t, probe_s, eps, **kw), probe_s)
    assert_close(sgrads, fd_s, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("steps", [1, 3])
def test_anil_matches_reference_and_finite_differences(tanh_mlp, engine, steps):
    theta = float64_params(tanh_mlp, seed=2)
    eps = random_episodes(3, in_dim=3, classes=3, seed=13)
    kw = dict(steps=steps, lr=0.5, adapted=("2.weight", "2.bias"))
    ref, _ = reference_grads(theta, None, eps, **kw)
    grads, _, _ = get_algorithm("anil", backend=engine).meta_gradient(tanh_mlp, theta, {}, eps, steps=steps, lr=0.5)
    assert_close(grads, ref, rtol=1e-10, atol=1e-12)
    probe = {k: v.clone() for k, v in theta.items()}
    fd = finite_differences(lambda: meta_loss(probe, None, eps, **kw), probe)
    assert_close(grads, fd, rtol=1e-6, atol=1e-8)
    # The body is meta-learned through the head's inner steps.
    assert grads["0.weight"].abs().sum() > 0
