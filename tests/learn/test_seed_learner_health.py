"""The seed's learners report their own health metric through ``learner.health()``,
measured on the stream's episodes, checkpointed, and absent for the other algorithms."""

from __future__ import annotations

import pytest
import torch

from stream_meta.learn.config import InnerLoopConfig, MetaStepConfig, ModelConfig
from stream_meta.learn.learner import HEALTH_EVERY, OnlineMetaLearner


def _learn(algorithm: str, records: int) -> OnlineMetaLearner:
    learner = OnlineMetaLearner(ModelConfig(6, 3, (8,)), inner_cfg=InnerLoopConfig(algorithm=algorithm, steps=2),
                                meta_cfg=MetaStepConfig(support_size=4, query_size=2, episode_stride=2), seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(records):
        x = torch.randn(6, generator=g)
        learner.learn("t", x, int(x[0] > 0) + int(x[1] > 0))
    return learner


@pytest.mark.parametrize("algorithm,metric", [("neural-optimizer", "update_norm_ratio"), ("lmml", "learned_loss_ratio")])
def test_health_carries_the_algorithms_metric(algorithm, metric):
    learner = _learn(algorithm, 8)  # measured after the first meta-update, then every HEALTH_EVERY
    assert 1 <= learner.meta_updates <= HEALTH_EVERY
    metrics = learner.health().learner_metrics
    assert metric in metrics and metrics[metric] > 0
    # The learned part has moved away from its start (where the metric is exactly 1).
    assert metrics[metric] != 1.0
    restored = OnlineMetaLearner(ModelConfig(6, 3, (8,)), inner_cfg=InnerLoopConfig(algorithm=algorithm, steps=2))
    restored.load_state_dict(learner.state_dict())
    assert restored.health().learner_metrics == metrics
    assert all(torch.equal(restored.extra[k], v) for k, v in learner.extra.items())


def test_other_algorithms_report_none():
    assert _learn("fomaml", 8).health().learner_metrics == {}


def test_a_state_whose_learned_tensors_have_other_names_is_refused_before_anything_is_loaded():
    """The neural optimiser's state from before its step sizes (``rule.scale.*`` absent):
    refused naming what differs; the learner keeps its own state."""
    learner = _learn("neural-optimizer", 8)
    old = learner.state_dict()
    old["extra"] = {k: v for k, v in old["extra"].items() if not k.startswith("rule.scale.")}
    fresh = OnlineMetaLearner(ModelConfig(6, 3, (8,)), inner_cfg=InnerLoopConfig(algorithm="neural-optimizer", steps=2))
    before = {k: v.clone() for k, v in fresh.params.items()}
    with pytest.raises(ValueError, match=r"learned tensors differ .*not in it: rule\.scale\.0\.bias"):
        fresh.load_state_dict(old)
    assert all(torch.equal(fresh.params[k], v) for k, v in before.items())
    assert fresh.meta_updates == 0


@pytest.mark.parametrize("algorithm,restarts", [("neural-optimizer", True), ("metasgd", False)])
def test_cached_fast_weights_are_refreshed_from_the_meta_parameters_by_the_neural_optimiser(algorithm, restarts):
    """A record that completes no episode refreshes the task's cached fast weights: the
    neural optimiser adapts again from the meta-parameters (its rule's per-task state is not
    cached); the others take one more step from the cached weights."""
    learner = OnlineMetaLearner(ModelConfig(6, 3, (8,)), inner_cfg=InnerLoopConfig(algorithm=algorithm, steps=2),
                                meta_cfg=MetaStepConfig(support_size=4, query_size=2, episode_stride=50), seed=0)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, generator=g) for _ in range(3)]
    learner.learn("t", xs[0], 0)
    cached = learner.fast_weights("t")
    learner.learn("t", xs[1], 1)
    learner.learn("t", xs[2], 2)
    assert learner.meta_updates == 0  # no episode yet (stride 50): the cache was refreshed, not cleared
    window = learner.episodes.window("t")
    fresh = learner.alg.adapt(learner.model, learner.params, learner.extra, *window, steps=2, lr=learner.inner_cfg.lr)
    refreshed = learner.fast_weights("t")
    same = all(torch.allclose(refreshed[k], fresh[k]) for k in fresh)
    assert same == restarts
    assert any(not torch.allclose(refreshed[k], cached[k]) for k in cached)  # refreshed either way
