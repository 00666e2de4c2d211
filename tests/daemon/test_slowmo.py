"""SlowMo's outer step (daemon/slowmo.py) against a hand-written reference."""

from __future__ import annotations

import torch

from stream_meta.daemon.slowmo import PREFIX, SlowMomentum


def _group_round(members: list[SlowMomentum], states: list[dict], moved: bool = True) -> list[dict]:
    """What an all-reduce round computes: the mean of every sent tensor, then each member's step."""
    sent = [{**s, **m.tensors(s)} for m, s in zip(members, states)]
    mean = {k: sum(s[k] for s in sent) / len(sent) for k in sent[0]}
    return [m.step(dict(mean), moved) for m in members]


def test_zero_momentum_is_plain_averaging_and_optimizer_state_is_only_averaged():
    members = [SlowMomentum(0.0), SlowMomentum(0.0)]
    states = [{"params/w": torch.tensor([1.0, 2.0]), "optimizer/exp_avg/w": torch.tensor([0.5, 0.5])},
              {"params/w": torch.tensor([3.0, 6.0]), "optimizer/exp_avg/w": torch.tensor([1.5, 0.5])}]
    for _ in range(3):
        out = _group_round(members, states)
        assert torch.equal(out[0]["params/w"], torch.tensor([2.0, 4.0]))
        assert torch.equal(out[0]["optimizer/exp_avg/w"], torch.tensor([1.0, 0.5]))
        assert not any(k.startswith(PREFIX) for k in out[0])
        states = [dict(out[0]), dict(out[1])]


def test_momentum_follows_the_reference_recursion_and_members_agree():
    beta = 0.5
    members = [SlowMomentum(beta), SlowMomentum(beta)]
    x = [torch.tensor([1.0, -1.0]), torch.tensor([3.0, 1.0])]
    out = _group_round(members, [{"params/w": v} for v in x])
    anchor, u = torch.tensor([2.0, 0.0]), torch.zeros(2)  # round 1: anchors are the members' own, u = 0
    assert torch.equal(out[0]["params/w"], anchor) and torch.equal(out[1]["params/w"], anchor)
    for step in ([0.2, -0.4], [0.6, 0.0], [-0.2, 0.2]):  # each member moves from the result by its own step
        local = [anchor + torch.tensor(step), anchor + 2 * torch.tensor(step)]
        out = _group_round(members, [{"params/w": v} for v in local])
        mean = (local[0] + local[1]) / 2
        u = beta * u + (anchor - mean)  # the reference, written out
        anchor = anchor - u
        assert torch.allclose(out[0]["params/w"], anchor) and torch.equal(out[0]["params/w"], out[1]["params/w"])
    assert not torch.allclose(anchor, mean)  # momentum moved it past plain averaging


def test_no_slow_step_when_nobody_learned():
    members = [SlowMomentum(0.9), SlowMomentum(0.9)]
    _group_round(members, [{"params/w": torch.tensor([0.0])}, {"params/w": torch.tensor([2.0])}])
    _group_round(members, [{"params/w": torch.tensor([3.0])}, {"params/w": torch.tensor([3.0])}])
    out = _group_round(members, [{"params/w": torch.tensor([4.0])}, {"params/w": torch.tensor([4.0])}])
    assert float(out[0]["params/w"]) > 4.0  # learned: momentum carries it past the mean
    still = _group_round(members, [dict(out[0]), dict(out[1])], moved=False)
    assert torch.equal(still[0]["params/w"], out[0]["params/w"])  # waiting rounds do not drift


def test_a_slow_learning_rate_scales_the_averaged_update_from_the_anchor():
    members = [SlowMomentum(0.0, lr=1.5), SlowMomentum(0.0, lr=1.5)]
    _group_round(members, [{"params/w": torch.tensor([1.0])}, {"params/w": torch.tensor([1.0])}])  # anchor 1
    out = _group_round(members, [{"params/w": torch.tensor([2.0])}, {"params/w": torch.tensor([4.0])}])
    assert torch.allclose(out[0]["params/w"], torch.tensor([1.0 + 1.5 * (3.0 - 1.0)]))  # anchor + lr * (mean - anchor)
