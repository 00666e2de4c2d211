import dataclasses
import io

import pytest
import torch

from stream_meta.learn.config import InnerLoopConfig, MetaStepConfig, ModelConfig, ReplayConfig
from stream_meta.learn.learner import learner_names, OnlineMetaLearner
from stream_meta.learn.sgd import OnlineSGDLearner

MODEL = ModelConfig(6, 3, (16,))
META = MetaStepConfig(support_size=6, query_size=3, episode_stride=2, replay_per_update=2)
REPLAY = ReplayConfig(episode_capacity=5)


def _learner(algorithm: str = "fomaml", model: ModelConfig = MODEL, meta: MetaStepConfig = META, **inner) -> OnlineMetaLearner:
    return OnlineMetaLearner(model, inner_cfg=InnerLoopConfig(algorithm=algorithm, **inner), meta_cfg=meta, replay_cfg=REPLAY)


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
    a = _learner(algorithm)
    b = _learner(algorithm)
    _drive(a, recs[:60])
    _drive(b, recs[:60])
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
    # round-trip through bytes, as a checkpoint does (weights_only: no code runs)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    c = _learner(algorithm)
    c.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert a.meta_updates == c.meta_updates > 0
    _drive(a, recs[60:])
    _drive(c, recs[60:])
    for k in a.params:
        assert torch.equal(a.params[k], c.params[k]), k
    assert [e.task for e in a.replay._items] == [e.task for e in c.replay._items]


def test_meta_learner_learns_and_adapts_on_a_multi_task_stream():
    learner = _learner("fomaml", ModelConfig(6, 3, (32,)), dataclasses.replace(META, meta_lr=3e-3), lr=0.3)
    before = _params(learner)
    recs = list(_stream(600))
    late = _drive(learner, recs[:400]) and _drive(learner, recs[400:])
    assert late / 200 > 0.7  # far above the 1/3 of chance
    assert any(not torch.equal(before[k], learner.params[k]) for k in before)
    assert learner.meta_updates > 100 and len(learner.replay) == 5


def test_fast_weights_differ_from_meta_parameters_once_a_task_has_data():
    learner = _learner()
    task, x, y = next(_stream(1))
    assert learner.fast_weights(task) is learner.params
    learner.learn(task, x, y)
    fast = learner.fast_weights(task)
    assert any(not torch.equal(fast[k], learner.params[k]) for k in fast)


def test_nonfinite_meta_update_is_skipped_and_parameters_kept():
    learner = _learner()
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
    a = OnlineSGDLearner(ModelConfig(6, 3, (8,)))
    recs = list(_stream(40))
    _drive(a, recs[:20])
    b = OnlineSGDLearner(ModelConfig(6, 3, (8,)))
    b.load_state_dict(a.state_dict())
    _drive(a, recs[20:])
    _drive(b, recs[20:])
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])


def test_configuration_groups_are_stored_as_given_and_reach_the_algorithm():
    inner = InnerLoopConfig(algorithm="metasgd", steps=2, lr=0.2, first_order=True, max_scale=3.0, backend="reference")
    meta = dataclasses.replace(META, clip_grad_norm=0.5)
    learner = OnlineMetaLearner(MODEL, inner_cfg=inner, meta_cfg=meta, replay_cfg=REPLAY, seed=3)
    _drive(learner, _stream(20))
    assert (learner.model_cfg, learner.inner_cfg, learner.meta_cfg, learner.replay_cfg) == (MODEL, inner, meta, REPLAY)
    assert learner.inner_cfg is inner and learner.meta_cfg is meta  # kept, not copied field by field
    alg = learner.alg
    assert (alg.name, alg.first_order, alg.max_scale, alg.backend, alg.clip_grad_norm) == ("metasgd", True, 3.0, "reference", 0.5)
    assert all(float(v.detach().max()) <= 3.0 for v in learner.extra.values())  # max_scale bounds the learned step sizes
    assert learner.health().meta_updates == learner.meta_updates > 0
    assert "sgd" in learner_names() and "fomaml" in learner_names()


def test_sgd_baseline_takes_its_own_step_size():
    a, b = OnlineSGDLearner(MODEL, lr=0.1), OnlineSGDLearner(MODEL, lr=0.5)
    assert b.optimizer.param_groups[0]["lr"] == 0.5 and b.lr == 0.5
    task, x, y = next(_stream(1))
    start = _params(a)
    a.learn(task, x, y)
    b.learn(task, x, y)
    for k in start:  # same start (same seed), steps five times as long
        torch.testing.assert_close(b.params[k] - start[k], 5 * (a.params[k] - start[k]))


def test_mse_loss_learns_class_labels_as_one_hot_targets():
    learner = _learner("fomaml", loss="mse")
    recs = list(_stream(200))
    _drive(learner, recs[:100])
    assert learner.alg.loss == "mse" and learner.meta_updates > 0 and learner.nonfinite_skips == 0
    assert _drive(learner, recs[100:]) / 100 > 0.5  # above the 1/3 of chance


def test_health_reports_replay_and_forgetting():
    learner = OnlineMetaLearner(MODEL, meta_cfg=META, replay_cfg=ReplayConfig(episode_capacity=5, memory_capacity=7))
    h = learner.health()
    assert (h.replay_episodes, h.memory_records, h.retained_accuracy, h.forgetting) == (0, 0, None, None)
    _drive(learner, _stream(60))
    h = learner.health()
    assert h.replay_episodes == 5 and h.memory_records == 7 and h.replay_bytes > 0 and h.memory_bytes > 0
    sgd = OnlineSGDLearner(MODEL).health()
    assert (sgd.replay_episodes, sgd.memory_records, sgd.forgetting) == (0, 0, None)


def test_state_dict_shares_no_live_tensors_with_the_learner():
    recs = list(_stream(80))
    a = _learner()
    _drive(a, recs[:40])
    b = _learner()
    b.load_state_dict(a.state_dict())  # directly, not through bytes
    _drive(a, recs[40:])
    _drive(b, recs[40:])
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k
