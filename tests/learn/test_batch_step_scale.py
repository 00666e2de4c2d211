"""``batch_step_scale``: a learn batch's one meta-update per task, scaled by the episodes it
learns together. One episode per update (``--learn-batch 1``) learns exactly as before."""

import pytest
import torch

from stream_meta.learn.config import BATCH_STEP_SCALES, MAX_BATCH_STEP_SCALE, MetaStepConfig
from stream_meta.learn.learner import OnlineMetaLearner
from tests.learn import two_tasks
from tests.learn.two_tasks import rows as _rows


def _learner(scale: str, algorithm: str = "reptile", **meta) -> OnlineMetaLearner:
    return two_tasks.learner(algorithm, batch_step_scale=scale, **meta)


def test_step_scale_rules_and_bound():
    assert [MetaStepConfig(batch_step_scale=s).step_scale(1) for s in BATCH_STEP_SCALES] == [1.0, 1.0, 1.0]
    assert [MetaStepConfig(batch_step_scale=s).step_scale(4) for s in BATCH_STEP_SCALES] == [1.0, 2.0, 4.0]
    assert MetaStepConfig(batch_step_scale="linear").step_scale(1000) == MAX_BATCH_STEP_SCALE
    with pytest.raises(ValueError, match="batch_step_scale"):
        MetaStepConfig(batch_step_scale="cubic")


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_one_record_at_a_time_learns_the_same_whatever_the_scale(algorithm):
    tasks, x, y = _rows(80)
    learners = {s: _learner(s, algorithm) for s in BATCH_STEP_SCALES}
    for learner in learners.values():
        for i in range(len(tasks)):
            learner.learn(tasks[i], x[i], int(y[i]))
    ref = learners["none"]
    assert ref.meta_updates > 10
    for scale, learner in learners.items():
        assert learner.meta_updates == ref.meta_updates
        for k in ref.params:
            assert torch.equal(learner.params[k], ref.params[k]), (scale, k)


def test_a_batch_of_k_episodes_takes_one_step_scaled_by_k_and_restores_meta_lr():
    tasks, x, y = _rows(15)  # one task; 15 records complete several episodes at once
    start = _learner("none", batch_update="one")  # the scale applies to batch_update "one" only
    before = {k: v.detach().clone() for k, v in start.params.items()}
    deltas, k = {}, 0
    for scale in BATCH_STEP_SCALES:
        learner = _learner(scale, batch_update="one")
        learner.learn_batch(tasks, x, y)
        assert learner.meta_updates == 1
        k = len(learner.replay)  # every completed episode was offered to a reservoir with room for all
        deltas[scale] = {n: learner.params[n].detach() - before[n] for n in before}
        assert all(g["lr"] == learner.meta_cfg.meta_lr for g in learner.optimizer.param_groups)
    assert k >= 3
    # Adam's first step is linear in lr: the scaled steps are the unscaled one times the factor.
    for scale, factor in (("sqrt", k ** 0.5), ("linear", float(k))):
        for n in before:
            torch.testing.assert_close(deltas[scale][n], factor * deltas["none"][n], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_a_group_factor_on_meta_steps_learns_as_meta_lr_times_it(algorithm):
    # scale_meta_steps(n) is what a scale-out group of n members sets (daemon/sync.py)
    tasks, x, y = _rows(80)
    scaled, doubled = _learner("none", algorithm), _learner("none", algorithm, meta_lr=0.02)
    scaled.scale_meta_steps(2.0)
    for learner in (scaled, doubled):
        for i in range(len(tasks)):
            learner.learn(tasks[i], x[i], int(y[i]))
    assert scaled.meta_updates == doubled.meta_updates > 10
    for k in doubled.params:
        assert torch.allclose(scaled.params[k], doubled.params[k], atol=1e-6), k
    assert scaled.optimizer.param_groups[0]["lr"] == 0.01  # the optimiser (and its checkpoints) keep meta_lr
    with pytest.raises(ValueError, match="> 0"):
        scaled.scale_meta_steps(0.0)


def test_the_sgd_baseline_scales_its_steps_and_restores_its_own_lr_from_a_checkpoint():
    from stream_meta.learn.sgd import OnlineSGDLearner

    tasks, x, y = _rows(20)
    scaled, doubled = OnlineSGDLearner(two_tasks.MODEL, lr=0.1), OnlineSGDLearner(two_tasks.MODEL, lr=0.2)
    scaled.scale_meta_steps(2.0)
    for learner in (scaled, doubled):
        learner.learn_batch(tasks, x, y)
    for k in doubled.params:
        assert torch.allclose(scaled.params[k], doubled.params[k], atol=1e-6), k
    fresh = OnlineSGDLearner(two_tasks.MODEL, lr=0.1)
    fresh.load_state_dict(scaled.state_dict())  # saved while in a group of 2, restored alone
    assert fresh.optimizer.param_groups[0]["lr"] == 0.1
