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
