import io

import pytest
import torch

from stream_meta.learn.learner import OnlineMetaLearner, OnlineSGDLearner, learner_names

KW = dict(input_dim=6, num_classes=3, hidden=(16,), support_size=6, query_size=3, episode_stride=2,
          replay_capacity=5, replay_per_update=2)


def _stream(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 3, 6, generator=g) * 2  # 4 tasks, 3 classes each
    for i in range(n):
        task = (i // 15) % 4
        y = int(torch.randint(3, (1,), generator=g))
        yield f"task-{task}", centers[task, y] + 0.3 * torch.randn(6, generator=g), y


def _drive(learner, records):
    correct = 0
    for task, x, y in records:
        correct += learner.predict(task, x) == y
        learner.learn(task, x, y)
    return correct


def _params(learner):
    return {k: v.detach().clone() for k, v in learner.params.items()}


@pytest.mark.parametrize("algorithm", ["fomaml", "maml", "reptile"])
def test_same_seed_same_result_and_round_trip_continues_identically(algorithm):
    recs = list(_stream(120))
    a = OnlineMetaLearner(algorithm=algorithm, **KW)
    b = OnlineMetaLearner(algorithm=algorithm, **KW)
    _drive(a, recs[:60])
    _drive(b, recs[:60])
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
    # round-trip through bytes, as a checkpoint does (weights_only: no code runs)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    c = OnlineMetaLearner(algorithm=algorithm, **KW)
    c.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert a.meta_updates == c.meta_updates > 0
    _drive(a, recs[60:])
    _drive(c, recs[60:])
    for k in a.params:
        assert torch.equal(a.params[k], c.params[k]), k
    assert [e.task for e in a.replay._items] == [e.task for e in c.replay._items]


def test_meta_learner_learns_and_adapts_on_a_multi_task_stream():
    learner = OnlineMetaLearner(algorithm="fomaml", inner_lr=0.3, meta_lr=3e-3, **{**KW, "hidden": (32,)})
    before = _params(learner)
    recs = list(_stream(600))
    late = _drive(learner, recs[:400]) and _drive(learner, recs[400:])
    assert late / 200 > 0.7  # far above the 1/3 of chance
    assert any(not torch.equal(before[k], learner.params[k]) for k in before)
    assert learner.meta_updates > 100 and len(learner.replay) == 5


def test_fast_weights_differ_from_meta_parameters_once_a_task_has_data():
    learner = OnlineMetaLearner(**KW)
    task, x, y = next(_stream(1))
    assert learner.fast_weights(task) is learner.params
    learner.learn(task, x, y)
    fast = learner.fast_weights(task)
    assert any(not torch.equal(fast[k], learner.params[k]) for k in fast)


def test_nonfinite_meta_update_is_skipped_and_parameters_kept():
    learner = OnlineMetaLearner(**KW)
    recs = list(_stream(30))
    _drive(learner, recs[:10])
    before = _params(learner)
    updates = learner.meta_updates
    bad = torch.full((6,), float("nan"))
    for _ in range(4):
        learner.learn("task-0", bad, 0)
    assert learner.nonfinite_skips > 0
    assert learner.meta_updates == updates
    for k in before:
        assert torch.equal(before[k], learner.params[k])


def test_sgd_baseline_round_trip():
    a = OnlineSGDLearner(input_dim=6, num_classes=3, hidden=(8,))
    recs = list(_stream(40))
    _drive(a, recs[:20])
    b = OnlineSGDLearner(input_dim=6, num_classes=3, hidden=(8,))
    b.load_state_dict(a.state_dict())
    _drive(a, recs[20:])
    _drive(b, recs[20:])
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])


def test_constructor_arguments_are_stored_unchanged():
    hidden = [16]
    learner = OnlineMetaLearner(**{**KW, "hidden": hidden})
    _drive(learner, _stream(20))
    assert hidden == [16] and learner.hidden == (16,)
    assert "sgd" in learner_names() and "fomaml" in learner_names()


def test_state_dict_shares_no_live_tensors_with_the_learner():
    recs = list(_stream(80))
    a = OnlineMetaLearner(**KW)
    _drive(a, recs[:40])
    b = OnlineMetaLearner(**KW)
    b.load_state_dict(a.state_dict())  # directly, not through bytes
    _drive(a, recs[40:])
    _drive(b, recs[40:])
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
