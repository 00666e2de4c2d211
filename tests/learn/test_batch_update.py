"""``batch_update``: a learn batch's one meta-update per task takes one outer step per new
episode (``each``, with ``batch_inner_steps`` inner steps) or one step on all of them
(``one``). One record at a time learns exactly as before whichever is set."""

import pytest
import torch

from stream_meta.learn.config import BATCH_UPDATES, MetaStepConfig
from stream_meta.learn.learner import OnlineMetaLearner
from tests.learn import two_tasks
from tests.learn.two_tasks import rows as _rows


def _learner(update: str, algorithm: str = "reptile", **meta) -> OnlineMetaLearner:
    return two_tasks.learner(algorithm, batch_update=update, **meta)


def _adam_steps(learner: OnlineMetaLearner) -> int:
    return int(next(iter(learner.optimizer.state.values()))["step"])


def test_config_rejects_unknown_values():
    with pytest.raises(ValueError, match="batch_update"):
        MetaStepConfig(batch_update="some")
    with pytest.raises(ValueError, match="batch_inner_steps"):
        MetaStepConfig(batch_inner_steps=0)


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_one_record_at_a_time_learns_the_same_whatever_the_batch_update(algorithm):
    tasks, x, y = _rows(80)
    learners = {u: _learner(u, algorithm, batch_inner_steps=3) for u in BATCH_UPDATES}
    for learner in learners.values():
        for i in range(len(tasks)):
            learner.learn(tasks[i], x[i], int(y[i]))
    a, b = learners.values()
    assert a.meta_updates == b.meta_updates > 10
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k


def test_each_takes_one_outer_step_per_new_episode_inside_one_meta_update():
    tasks, x, y = _rows(40)  # two tasks of 20 records: each batch of 20 completes several episodes of one task
    each, one = _learner("each"), _learner("one")
    for learner in (each, one):
        for first in range(0, 40, 20):
            report = learner.learn_batch(tasks[first:first + 20], x[first:first + 20], y[first:first + 20])
            assert report.meta_updates == 1  # at most one meta-update per task per batch
    episodes = len(each.replay)  # every completed episode was offered to a reservoir with room for all
    assert episodes == len(one.replay) >= 10
    assert each.meta_updates == one.meta_updates == 2
    assert _adam_steps(each) == episodes  # one outer step per episode ...
    assert _adam_steps(one) == 2  # ... where "one" takes one per meta-update


def test_each_outer_step_uses_batch_inner_steps():
    tasks, x, y = _rows(20)
    seen: list[int] = []
    learners = [_learner("each", batch_inner_steps=s) for s in (1, 3)]
    for learner in learners:
        real = learner.alg.meta_gradient

        def spy(*args, steps, **kw):
            seen.append(steps)
            return real(*args, steps=steps, **kw)

        learner.alg.meta_gradient = spy
        learner.learn_batch(tasks, x, y)
    assert set(seen) == {1, 3} and len(seen) == 2 * _adam_steps(learners[0])
    assert not torch.equal(learners[0].params["0.weight"], learners[1].params["0.weight"])
