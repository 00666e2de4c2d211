"""GAIL-Meta: the generated layer and its shapes, the prototype classifier it starts as,
meta-gradients of the generator's and discriminator's own parameters against finite
differences (float64), the adversarial step's directions, the learner's health stats, and
a resumed deterministic file-source run equal to an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import CollectorRegistry

from tests.meta.helpers import float64_params, random_episodes
from stream_meta.learn.config import InnerLoopConfig, MetaStepConfig, ModelConfig
from stream_meta.learn.learner import OnlineMetaLearner
from stream_meta.meta import get_algorithm, meta_step
from stream_meta.meta.gail import DISC, GEN, SCALAR_RATE, body, head_names

STEPS, LR = 2, 0.3


def perturbed(extra, seed=3):
    """Generator and discriminator away from their initial values (a zero output layer
    would make the generator's first layer's gradient trivially zero)."""
    g = torch.Generator().manual_seed(seed)
    # the scalars (stored divided by SCALAR_RATE) by 0.3 in their own units, not 3: a scale at
    # its clamp would have a zero gradient and the finite-difference check would prove nothing
    return {k: v + (0.3 / SCALAR_RATE if k.endswith("_d10") else 0.3) * torch.randn(v.shape, generator=g, dtype=v.dtype)
            for k, v in extra.items()}


def mean_objective(alg, model, theta, extra, eps, which):
    return sum(alg.objectives(model, theta, extra, e, steps=STEPS, lr=LR)[which] for e in eps) / len(eps)


def test_generated_head_is_the_last_layer_with_its_shapes(relu_mlp):
    alg = get_algorithm("gail-meta")
    theta = float64_params(relu_mlp)
    extra = alg.init_extra(theta)
    ep = random_episodes(1, in_dim=5, classes=3, support=9)[0]
    fast = alg.adapt(relu_mlp, theta, extra, ep.support_x, ep.support_y, steps=0, lr=LR)
    assert head_names(relu_mlp) == ("4.weight", "4.bias")
    assert {k: v.shape for k, v in fast.items()} == {k: v.shape for k, v in theta.items()}
    for k in theta:  # the body is the meta-learned one; only the head is written
        assert torch.equal(fast[k], theta[k]) == (k not in ("4.weight", "4.bias")), k
    # At initialisation (zero residual) the head is the prototype classifier:
    # w_c = 2 s p_c, b_c = -s |p_c|^2 for each class present in the support set.
    feats = body(relu_mlp, theta, ep.support_x)
    s = float((SCALAR_RATE * extra[GEN + "log_scale_d10"]).exp())
    assert s == pytest.approx(alg.init_scale)
    for c in ep.support_y.unique().tolist():
        p = feats[ep.support_y == c].mean(0)
        torch.testing.assert_close(fast["4.weight"][c], 2 * s * p)
        torch.testing.assert_close(fast["4.bias"][c], -s * p.pow(2).sum())


def test_generated_head_predicts_the_nearest_prototype_with_zero_steps():
    # Two classes in two directions of a one-layer body that is the identity on them.
    from stream_meta.model import build_mlp

    model = build_mlp([2, 2, 3]).double()
    theta = {"0.weight": torch.eye(2, dtype=torch.float64), "0.bias": torch.zeros(2, dtype=torch.float64),
             "2.weight": torch.zeros(3, 2, dtype=torch.float64), "2.bias": torch.zeros(3, dtype=torch.float64)}
    alg = get_algorithm("gail-meta")
    x = torch.tensor([[3.0, 0.1], [2.8, 0.0], [0.0, 3.1], [0.2, 2.9]], dtype=torch.float64)
    y = torch.tensor([2, 2, 0, 0])
    fast = alg.adapt(model, theta, alg.init_extra(theta), x, y, steps=0, lr=LR)
    q = torch.tensor([[2.5, 0.3], [0.1, 2.6]], dtype=torch.float64)
    logits = torch.relu(q @ fast["0.weight"].t() + fast["0.bias"]) @ fast["2.weight"].t() + fast["2.bias"]
    assert logits.argmax(1).tolist() == [2, 0]


def test_generator_and_discriminator_gradients_equal_finite_differences(relu_mlp):
    alg = get_algorithm("gail-meta", adversarial_weight=0.5)
    theta = float64_params(relu_mlp)
    extra = perturbed(alg.init_extra(theta))
    eps = random_episodes(2, in_dim=5, classes=3, support=6, query=5)
    _, extra_grads, stats = alg.meta_gradient(relu_mlp, theta, extra, eps, steps=STEPS, lr=LR)
    assert stats["nonfinite"] is False
    h = 1e-6
    checked = 0
    for key, which in ((GEN + "in.weight", "generator"), (GEN + "out.weight", "generator"),
                       (GEN + "log_scale_d10", "generator"), (GEN + "tau_d10", "generator"),
                       (DISC + "in.weight", "discriminator"), (DISC + "out.bias", "discriminator")):
        flat = extra[key].reshape(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 4)):
            def at(delta):
                bumped = extra[key].clone().reshape(-1)
                bumped[i] += delta
                bumped_extra = {**extra, key: bumped.view_as(extra[key])}
                return float(mean_objective(alg, relu_mlp, theta, bumped_extra, eps, which).detach())

            fd = (at(h) - at(-h)) / (2 * h)
            assert extra_grads[key].reshape(-1)[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-8), (key, i)
            checked += 1
    assert checked >= 12
    assert extra_grads[DISC + "in.weight"].abs().sum() > 0 and extra_grads[GEN + "in.weight"].abs().sum() > 0


def test_adversarial_step_lowers_both_losses_on_a_fixed_batch(relu_mlp):
    alg = get_algorithm("gail-meta", adversarial_weight=1.0)
    theta = float64_params(relu_mlp)
    extra = {k: v.detach().clone().requires_grad_() for k, v in perturbed(alg.init_extra(theta)).items()}
    params = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    eps = random_episodes(4, in_dim=5, classes=3, support=6, query=5)

    def losses(ex):
        with torch.enable_grad():
            return (float(mean_objective(alg, relu_mlp, theta, ex, eps, "generator").detach()),
                    float(mean_objective(alg, relu_mlp, theta, ex, eps, "discriminator").detach()))

    gen0, disc0 = losses(extra)
    old = {k: v.detach().clone() for k, v in extra.items()}
    # Only the adversaries step (params stay): each moves along its own loss's gradient.
    opt = torch.optim.SGD(list(extra.values()), lr=1e-2)
    stats = meta_step(alg, relu_mlp, params, extra, eps, opt, steps=STEPS, lr=LR)
    assert stats["learner_stats"]["gail_generator_loss"] == pytest.approx(gen0)
    assert stats["learner_stats"]["gail_discriminator_loss"] == pytest.approx(disc0)
    new = {k: v.detach() for k, v in extra.items()}
    gen_only = {**old, **{k: v for k, v in new.items() if k.startswith(GEN)}}
    disc_only = {**old, **{k: v for k, v in new.items() if k.startswith(DISC)}}
    assert losses(gen_only)[0] < gen0  # the generator's step lowers its loss (discriminator fixed)
    assert losses(disc_only)[1] < disc0  # the discriminator's step lowers its loss (generator fixed)
    # and each adversary moved: neither step is empty
    assert any(not torch.equal(old[k], new[k]) for k in new if k.startswith(GEN))
    assert any(not torch.equal(old[k], new[k]) for k in new if k.startswith(DISC))


def test_learner_reports_the_adversaries_losses_and_generates_with_zero_steps():
    cfg = ModelConfig(4, 3, (8,))
    m = OnlineMetaLearner(cfg, inner_cfg=InnerLoopConfig(algorithm="gail-meta", steps=0),
                          meta_cfg=MetaStepConfig(support_size=6, query_size=2, episode_stride=2))
    assert m.health().learner_metrics == {}
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        x = torch.randn(4, generator=g)
        m.predict("t", x)
        m.learn("t", x, i % 3)
    stats = m.health().learner_metrics
    assert sorted(stats) == ["gail_discriminator_loss", "gail_generator_loss"]
    assert all(v == v and abs(v) < 1e6 for v in stats.values())
    fast = m.fast_weights("t")  # generated, zero gradient steps: the head differs from the meta-parameters
    assert not torch.equal(fast["2.weight"], m.params["2.weight"].detach())
    assert torch.equal(fast["0.weight"], m.params["0.weight"].detach())
    assert any(k.startswith(GEN) for k in m.state_dict()["extra"])


@pytest.mark.parametrize("bad, needle", [
    (dict(algorithm="gail-meta", loss="mse"), "loss must be ce"),
    (dict(algorithm="maml", adversarial_weight=0.5), "adversarial_weight applies to gail-meta"),
    (dict(algorithm="fomaml", expert_steps=3), "expert_steps applies to gail-meta"),
])
def test_config_rejects_what_gail_meta_cannot_take(bad, needle):
    with pytest.raises(ValueError, match=needle):
        InnerLoopConfig(**bad)
    with pytest.raises(ValueError, match="adversarial_weight must be finite"):
        get_algorithm("gail-meta", adversarial_weight=float("nan"))


@pytest.mark.slow
def test_resumed_deterministic_file_run_equals_an_uninterrupted_one(tmp_path):
    from stream_meta.cli.checkpoint_inspect import describe_checkpoint
    from stream_meta.daemon.app import build_service
    from tests.daemon.test_service_file import _cfg, _write

    src = tmp_path / "in.jsonl"
    _write(src, 160)
    kw = {"algorithm": "gail-meta", "deterministic": True, "inner_steps": 2, "support_size": 10,
          "adversarial_weight": 0.2}
    build_service(_cfg(tmp_path / "a", src, max_records=70, **kw), CollectorRegistry()).run()
    resumed = build_service(_cfg(tmp_path / "a", src, stop_at_end=True, **kw), CollectorRegistry()).run()
    whole = build_service(_cfg(tmp_path / "b", src, stop_at_end=True, **kw), CollectorRegistry()).run()
    assert resumed["records_learned"] == whole["records_learned"] == 160
    assert resumed["meta_updates"] == whole["meta_updates"] > 0
    assert resumed["accuracy_by_task_position"] == whole["accuracy_by_task_position"]
    a, b = describe_checkpoint(tmp_path / "a" / "ckpt"), describe_checkpoint(tmp_path / "b" / "ckpt")
    assert a["meta_parameters_sha256"] == b["meta_parameters_sha256"]
    assert a["extra_sha256"] == b["extra_sha256"]
    fresh = build_service(_cfg(tmp_path / "c", src, max_records=1, **kw), CollectorRegistry())
    fresh.run()
    assert describe_checkpoint(tmp_path / "c" / "ckpt")["extra_sha256"] != a["extra_sha256"]


def test_prefix_term_is_the_query_loss_of_heads_from_the_first_support_rows(relu_mlp):
    # The reference: for m = 1..N, the head generated (and refined) from the support's first
    # m rows, scored on the rest of the episode; their mean is added to the generator's loss.
    import torch.nn.functional as F

    from stream_meta.meta.gail import generate_head, refine_head

    theta = float64_params(relu_mlp)
    alg = get_algorithm("gail-meta", prefix_shots=3)
    extra = perturbed(alg.init_extra(theta))
    ep = random_episodes(1, in_dim=5, classes=3, support=6, query=4)[0]
    o = alg.objectives(relu_mlp, theta, extra, ep, steps=STEPS, lr=LR)
    feats, q = body(relu_mlp, theta, ep.support_x), body(relu_mlp, theta, ep.query_x)
    losses = []
    for m in (1, 2, 3):
        w, b = generate_head(extra, feats[:m], ep.support_y[:m], 3)
        w, b = refine_head(w.requires_grad_(), b.requires_grad_(), feats[:m], ep.support_y[:m], STEPS, LR, False)
        rest_y = torch.cat([ep.support_y[m:], ep.query_y])
        losses.append(F.cross_entropy(torch.cat([feats[m:], q]) @ w.t() + b, rest_y))
    torch.testing.assert_close(o["prefix"], sum(losses) / 3)
    assert float(o["prefix"].detach()) > 0
    torch.testing.assert_close(o["generator"], o["query_loss"] + o["prefix"] + alg.adversarial_weight * o["adversarial"])
    off = get_algorithm("gail-meta", prefix_shots=0).objectives(relu_mlp, theta, extra, ep, steps=STEPS, lr=LR)
    assert float(off["prefix"]) == 0.0
    torch.testing.assert_close(off["generator"], off["query_loss"] + alg.adversarial_weight * off["adversarial"])
    # a one-row support has no prefix to learn from: the term is zero, not an error
    one = random_episodes(1, in_dim=5, classes=3, support=1, query=4)[0]
    assert float(alg.objectives(relu_mlp, theta, extra, one, steps=STEPS, lr=LR)["prefix"]) == 0.0
    with pytest.raises(ValueError, match="prefix_shots must be >= 0"):
        get_algorithm("gail-meta", prefix_shots=-1)


def test_state_written_with_the_unscaled_scalar_keys_is_refused_not_misread():
    # Before the scalars were stored divided by SCALAR_RATE they were keyed without "_d10":
    # such a state must fail by name (the daemon turns this into its checkpoint-mismatch error).
    m = OnlineMetaLearner(ModelConfig(4, 3, (8,)), inner_cfg=InnerLoopConfig(algorithm="gail-meta", steps=1))
    state = m.state_dict()
    state["extra"] = {k.replace("_d10", ""): v for k, v in state["extra"].items()}
    assert GEN + "tau" in state["extra"]
    with pytest.raises(ValueError, match="learned tensors differ .*not in it: gail.gen.log_scale_d10"):
        OnlineMetaLearner(ModelConfig(4, 3, (8,)), inner_cfg=InnerLoopConfig(algorithm="gail-meta", steps=1)
                          ).load_state_dict(state)


def test_a_record_unlike_every_seen_class_gets_an_unseen_label_as_tau_says():
    # Two seen classes at (3, 0, 0) and (0, 3, 0); a record at (0, 0, 3) is unlike both. The
    # absent classes' shared row wins exactly when tau (the "not seen yet" bias) is high enough.
    from stream_meta.meta.gail import generate_head

    alg = get_algorithm("gail-meta")
    theta = {"2.weight": torch.zeros(4, 3, dtype=torch.float64)}
    extra = {k: v.double() for k, v in alg.init_extra(theta).items()}
    feats = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([1, 3])
    q = torch.tensor([[2.9, 0.2, 0.1], [0.1, 3.1, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)

    def calls(tau):
        w, b = generate_head({**extra, GEN + "tau_d10": torch.tensor(tau / SCALAR_RATE, dtype=torch.float64)}, feats, y, 4)
        return (q @ w.t() + b).argmax(1).tolist()

    # s = 0.1, g = 0.5: the absent row is the prototype (0.75, 0.75, 0) with bias tau; against the
    # record at (0, 0, 3) it wins when tau > -0.1 * (18 - 10.125), the seen records' calls hold
    # while tau < 0.1 * (4.9 - 0.06); absent classes (0, 2) tie, so the lowest label is the call
    assert calls(0.0) == [1, 3, 0]
    assert calls(-1.0) == [1, 3, 1]  # too low: the new record gets a seen label
    assert calls(1.0) == [0, 0, 0]  # too high: everything is "not seen yet"
