import io

import pytest
import torch

from stream_meta.learn.config import MetaStepConfig, ModelConfig, RegularizerConfig, ReplayConfig
from stream_meta.learn.learner import OnlineMetaLearner
from stream_meta.model import build_mlp
from stream_meta.learn.regularizers import MAS, OnlineEWC, SynapticIntelligence, build_regularizer

W = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
B = torch.tensor([0.1, -0.2])
X = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 1.0]])
Y = torch.tensor([0, 1, 1])


def _linear():
    return build_mlp([2, 2]), {"0.weight": W.clone(), "0.bias": B.clone()}


def test_penalty_and_its_gradient_by_hand():
    r = OnlineEWC(strength=4.0)
    assert float(r.penalty({"w": torch.ones(2)})) == 0.0 and r.penalty_grad({"w": torch.ones(2)}) == {}
    r.importance = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5]])}
    r.anchor = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([[2.0]])}
    p = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([[0.0]])}
    # 4/2 * (1*1 + 2*4 + 0.5*4) = 22
    assert float(r.penalty(p)) == pytest.approx(22.0)
    g = r.penalty_grad(p)
    assert g["a"].tolist() == [4.0, 16.0] and g["b"].tolist() == [[-4.0]]
    # and it is the autograd gradient of the penalty
    q = {k: v.clone().requires_grad_() for k, v in p.items()}
    auto = torch.autograd.grad(r.penalty(q), list(q.values()))
    assert all(torch.allclose(a, g[k]) for a, k in zip(auto, q))


def test_online_ewc_fisher_is_the_mean_squared_log_likelihood_gradient():
    model, params = _linear()
    r = OnlineEWC(strength=1.0, decay=0.5)
    r.on_boundary(model, params, (X, Y))
    # d CE / d logits = softmax - onehot; d/dW = that outer x, d/db = that
    d = torch.softmax(X @ W.t() + B, 1) - torch.nn.functional.one_hot(Y, 2)
    fw = torch.stack([torch.outer(d[i], X[i]) ** 2 for i in range(3)]).mean(0)
    fb = (d**2).mean(0)
    assert torch.allclose(r.importance["0.weight"], fw, atol=1e-6)
    assert torch.allclose(r.importance["0.bias"], fb, atol=1e-6)
    assert torch.equal(r.anchor["0.weight"], W)
    # a second boundary on the first record only: F = 0.5 F_1 + F_2
    r.on_boundary(model, params, (X[:1], Y[:1]))
    assert torch.allclose(r.importance["0.bias"], 0.5 * fb + d[0] ** 2, atol=1e-6)


def test_mas_importance_is_the_mean_absolute_output_norm_gradient():
    model, params = _linear()
    r = MAS(strength=1.0)
    r.on_boundary(model, params, (X, Y))
    f = X @ W.t() + B  # d ||f||^2 / dW = 2 f x^T, / db = 2 f
    mw = torch.stack([torch.outer(2 * f[i], X[i]).abs() for i in range(3)]).mean(0)
    assert torch.allclose(r.importance["0.weight"], mw, atol=1e-5)
    assert torch.allclose(r.importance["0.bias"], (2 * f).abs().mean(0), atol=1e-5)


def test_synaptic_intelligence_path_integral_by_hand():
    r = SynapticIntelligence(strength=1.0, xi=0.5)
    p0, p1, p2 = {"w": torch.tensor([0.0, 0.0])}, {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([3.0, 1.0])}
    r.after_step(p0, p1, {"w": torch.tensor([-1.0, 0.0])})  # omega += 1, 0
    r.after_step(p1, p2, {"w": torch.tensor([-0.5, 2.0])})  # omega += 1, -2
    r.on_boundary(build_mlp([1, 1]), p2, None)
    # omega = [2, -2] -> clamped [2, 0]; / (distance^2 + xi) = [2 / 9.5, 0]
    assert torch.allclose(r.importance["w"], torch.tensor([2 / 9.5, 0.0]))
    assert torch.equal(r.anchor["w"], p2["w"]) and r.omega is None


def test_build_regularizer():
    assert build_regularizer("none", 1.0) is None and build_regularizer("ewc", 0.0) is None
    assert isinstance(build_regularizer("si", 1.0), SynapticIntelligence)
    with pytest.raises(ValueError):
        build_regularizer("lwf", 1.0)


@pytest.mark.parametrize("reg", ["ewc", "si", "mas"])
def test_learner_with_replay_and_regularizer_round_trips(reg):
    torch.manual_seed(0)
    kw = dict(meta_cfg=MetaStepConfig(support_size=4, query_size=2, episode_stride=2),
              replay_cfg=ReplayConfig(memory_capacity=10, memory_policy="task", memory_query=3),
              reg_cfg=RegularizerConfig(reg, 10.0))
    g = torch.Generator().manual_seed(1)
    recs = [(f"t{i // 20}", torch.randn(4, generator=g), i % 3) for i in range(80)]
    a = OnlineMetaLearner(ModelConfig(4, 3, (8,)), **kw)
    for t, x, y in recs[:50]:
        a.predict(t, x)
        a.learn(t, x, y)
    assert a.reg.boundaries == 2 and a.reg.importance is not None and len(a.memory) == 10
    buf = io.BytesIO()  # through bytes, as a checkpoint does (the optimiser's state is live otherwise)
    torch.save(a.state_dict(), buf)
    b = OnlineMetaLearner(ModelConfig(4, 3, (8,)), **kw)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for t, x, y in recs[50:]:
        assert a.predict(t, x) == b.predict(t, x)
        a.learn(t, x, y)
        b.learn(t, x, y)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
