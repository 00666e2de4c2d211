"""A tiny two-task stream and learner for the learn-batch tests (``batch_update``,
``batch_step_scale``): 6-d inputs, 3 classes, tasks alternating every 20 records."""

import torch

from stream_meta.learn.config import InnerLoopConfig, MetaStepConfig, ModelConfig, ReplayConfig
from stream_meta.learn.learner import OnlineMetaLearner

MODEL = ModelConfig(6, 3, (16,))


def learner(algorithm: str = "reptile", **meta) -> OnlineMetaLearner:
    """A small learner with replay; ``meta`` overrides :class:`MetaStepConfig` fields."""
    fields = {"support_size": 6, "query_size": 3, "episode_stride": 2, "replay_per_update": 2, **meta}
    return OnlineMetaLearner(MODEL, inner_cfg=InnerLoopConfig(algorithm=algorithm),
                             meta_cfg=MetaStepConfig(**fields),
                             replay_cfg=ReplayConfig(episode_capacity=50, memory_capacity=20, memory_query=3))


def rows(n: int, seed: int = 0) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """``n`` records: task ids, inputs around per-task class centres, labels."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(2, 3, 6, generator=g) * 2
    tasks = [f"task-{(i // 20) % 2}" for i in range(n)]
    y = torch.randint(3, (n,), generator=g)
    x = torch.stack([centers[int(t[-1]), int(c)] for t, c in zip(tasks, y)]) + 0.3 * torch.randn(n, 6, generator=g)
    return tasks, x, y
