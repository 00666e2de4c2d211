"""The bench's learners are built from configuration groups, as the daemon's are."""

import pytest

from stream_meta.bench.continual.runner import LEARNERS, build
from stream_meta.daemon.config import load_config
from stream_meta.learn.config import InnerLoopConfig, ReplayConfig
from stream_meta.learn.learner import OnlineMetaLearner
from stream_meta.learn.sgd import OnlineSGDLearner


def test_every_bench_learner_builds_with_the_groups_the_daemon_builds_for_its_preset():
    for name in LEARNERS:
        learner = build(name, 8, 10, seed=0)
        if name == "sgd":
            assert isinstance(learner, OnlineSGDLearner) and learner.lr == 0.1
            continue
        assert isinstance(learner, OnlineMetaLearner)
        daemon = load_config({}, env={}, overrides={"preset": name, "input_dim": 8})
        for group in ("inner_cfg", "meta_cfg", "replay_cfg", "reg_cfg"):
            assert getattr(learner, group) == getattr(daemon, group), (name, group)
    tuned = build("reptile+er-tuned", 8, 10, seed=0)
    assert tuned.inner_cfg == InnerLoopConfig(algorithm="reptile") and tuned.meta_cfg.replay_per_update == 6
    assert tuned.replay_cfg == ReplayConfig(memory_capacity=200, memory_policy="task", memory_query=10)


def test_overrides_replace_fields_of_a_group():
    learner = build("reptile+er", 8, 10, seed=0, overrides={"meta_cfg": {"meta_lr": 5e-3}, "replay_cfg": {"memory_query": 3}})
    assert learner.meta_cfg.meta_lr == 5e-3 and learner.optimizer.param_groups[0]["lr"] == 5e-3
    assert learner.replay_cfg.memory_query == 3 and learner.replay_cfg.memory_policy == "task"  # the rest kept
    with pytest.raises(ValueError, match="unknown group"):
        build("fomaml", 8, 10, seed=0, overrides={"meta_lr": 5e-3})
