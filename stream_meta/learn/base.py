"""What every learner gives the daemon: the :class:`Learner` protocol, what one learning call
did (:class:`LearnReport`) and a snapshot of its state (:class:`LearnerHealth`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from stream_meta.model import Params


@dataclass
class LearnReport:
    """What one ``learn`` call did, for metrics."""

    meta_updates: int = 0
    nonfinite_skips: int = 0
    query_loss_before: float | None = None
    query_loss_after: float | None = None
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LearnerHealth:
    """A snapshot of a learner's state for gauges and checkpoint manifests.

    Replay sizes are 0 for a learner without replay; ``retained_accuracy`` and
    ``forgetting`` are ``None`` until (or unless) forgetting probes have been evaluated.
    """

    meta_updates: int
    nonfinite_skips: int
    replay_episodes: int
    replay_bytes: int
    memory_records: int
    memory_bytes: int
    retained_accuracy: float | None
    forgetting: float | None
    # The algorithm's own health metrics (e.g. neural-optimizer's update_norm_ratio,
    # gail-meta's generator and discriminator losses), by name.
    learner_metrics: dict[str, float] = field(default_factory=dict)


class Learner(Protocol):
    """What the daemon uses of a learner: nothing else is read from it."""

    meta_updates: int
    params: Params  # the (meta-)parameters, e.g. to count them

    def predict(self, task: str, x: torch.Tensor) -> int: ...

    def learn(self, task: str, x: torch.Tensor, y: int) -> LearnReport: ...

    def health(self) -> LearnerHealth: ...

    def predict_batch(self, tasks: Sequence[str], x: torch.Tensor) -> torch.Tensor: ...

    def learn_batch(self, tasks: Sequence[str], x: torch.Tensor, y: torch.Tensor) -> LearnReport: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def shared_tensors(self) -> dict[str, torch.Tensor]: ...  # what a scale-out group averages

    def load_shared(self, tensors: dict[str, torch.Tensor]) -> None: ...

    # A group of n members learning in parallel makes 1/n of one learner's sequential steps:
    # each (meta-)step is this factor times the configured one (1: alone; not checkpointed).
    def scale_meta_steps(self, factor: float) -> None: ...
