"""bench scaleout-sim: the members of bench scaleout in one process (nothing here times anything)."""

from __future__ import annotations

import pytest
import torch

from stream_meta.bench.scaleout_sim import shares, simulate
from stream_meta.daemon.sync_config import LR_SCALES, step_factor

FLAGS = ["--input-dim", "64", "--num-classes", "10"]


def test_the_split_is_bench_scaleouts_and_loses_no_record():
    whole = shares("digits-rotations", 2, 160, 1, "iid")[0]
    noniid, iid = shares("digits-rotations", 2, 160, 2, "noniid"), shares("digits-rotations", 2, 160, 2, "iid")
    assert len(whole) == sum(map(len, noniid)) == sum(map(len, iid)) == 160
    assert {t for t, _, _ in noniid[0]}.isdisjoint({t for t, _, _ in noniid[1]})
    assert [y for _, _, y in iid[0]] == [y for _, _, y in whole[0::2]]


def test_members_end_equal_and_step_scaling_changes_what_they_learn():
    parts = shares("digits-rotations", 2, 160, 2, "noniid")
    ends = {}
    for scale in ("none", "linear"):
        learners, rounds = simulate(parts, FLAGS, every=2, lr_scale=scale)
        assert rounds >= 3
        assert all(torch.equal(learners[0].params[k], learners[1].params[k]) for k in learners[0].params)
        ends[scale] = learners[0].params
    assert not all(torch.equal(ends["none"][k], ends["linear"][k]) for k in ends["none"])
    single, rounds = simulate(shares("digits-rotations", 2, 160, 1, "iid"), FLAGS, every=2)
    assert rounds == 0 and single[0].meta_updates > learners[0].meta_updates  # one learner reads it all


@pytest.mark.parametrize("rule, want", [("none", 1.0), ("sqrt", 2.0 ** 0.5), ("linear", 2.0)])
def test_step_factor_rules(rule, want):
    assert rule in LR_SCALES
    assert step_factor(rule, 2) == want and step_factor(rule, 0) == step_factor(rule, 1) == 1.0
