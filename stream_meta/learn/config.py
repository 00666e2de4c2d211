"""The learner's configuration in groups: small frozen dataclasses, each handed whole
to the piece that uses it (River's habit: constructor arguments are configuration,
stored unchanged; learned state lives apart).

No torch here, so the daemon's config can build and validate the groups at load time.
The names the meta-algorithms accept are spelled out; tests/learn/test_config.py checks
them against :mod:`stream_meta.meta`.

>>> InnerLoopConfig(algorithm="anil", first_order=True).algorithm_options()
{'loss': 'ce', 'max_inner_lr': 10.0, 'backend': 'auto', 'first_order': True}
>>> InnerLoopConfig(algorithm="maml", first_order=True)
Traceback (most recent call last):
...
ValueError: first_order applies to anil, lamaml, metasgd, neural-optimizer, not maml (first-order MAML is fomaml)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

META_ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "lamaml", "anil", "gail-meta", "neural-optimizer", "lmml")
LOSSES = ("ce", "mse")
BACKENDS = ("auto", "reference", "fast")
MEMORY_POLICIES = ("reservoir", "task", "class")
REGULARIZERS = ("none", "ewc", "si", "mas")
BATCH_STEP_SCALES = ("none", "sqrt", "linear")
# Bound on the batch step scale: a learn batch completing hundreds of episodes of one task
# must not turn one Adam step into a jump that no clip on the gradient would catch.
MAX_BATCH_STEP_SCALE = 16.0
BATCH_UPDATES = ("each", "one")

# Options only some algorithms take (their constructor arguments beyond the shared ones).
ALGORITHM_OPTIONS: dict[str, tuple[str, ...]] = {
    "first_order": ("anil", "lamaml", "metasgd", "neural-optimizer"),
    "head": ("anil",),
    "max_scale": ("lamaml", "metasgd", "neural-optimizer"),
    "adversarial_weight": ("gail-meta",),
    "generator_hidden": ("gail-meta",),
    "expert_steps": ("gail-meta",),
    "prefix_shots": ("gail-meta",),
    "net_hidden": ("lmml", "neural-optimizer"),
    "net_bound": ("lmml", "neural-optimizer"),
    "net_modulate": ("lmml",),
}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class ModelConfig:
    """The MLP's shape: ``input_dim -> hidden... -> num_classes``."""

    input_dim: int
    num_classes: int
    hidden: tuple[int, ...] = (100, 100)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))  # a list given stays hashable and frozen
        _check(self.input_dim >= 1 and self.num_classes >= 2, f"need input_dim >= 1 and num_classes >= 2, got {self}")
        _check(all(s >= 1 for s in self.hidden), f"hidden sizes must be positive, got {self.hidden}")


@dataclass(frozen=True)
class InnerLoopConfig:
    """The meta-algorithm and how it adapts fast weights to a task.

    ``steps`` SGD steps of size ``lr`` on ``loss`` (``"mse"`` regresses the logits on
    one-hot labels). The remaining fields are the algorithm's own options, passed to
    it unchanged: ``first_order`` (metasgd, lamaml, anil), ``head`` (anil: names of
    the parameters adapted; default the last layer), ``max_scale`` (metasgd, lamaml, neural-optimizer:
    bound of the learned step-size multipliers; ``None`` = the algorithm's default),
    ``max_inner_lr`` and ``backend`` (every algorithm); ``net_hidden`` and ``net_bound``
    (neural-optimizer, lmml: width of the learned rule's or loss's network and the bound
    on its outputs; ``None`` = the algorithm's default).
    """

    algorithm: str = "fomaml"
    steps: int = 5
    lr: float = 0.1
    loss: str = "ce"
    first_order: bool = False
    head: tuple[str, ...] | None = None
    max_scale: float | None = None
    net_hidden: int | None = None
    net_bound: float | None = None
    net_modulate: bool = False  # lmml: MeTAL's per-task affine modulation of the loss network
    max_inner_lr: float = 10.0
    backend: str = "auto"
    adversarial_weight: float | None = None  # gail-meta: weight of the adversarial term (None = 0.1)
    generator_hidden: int | None = None  # gail-meta: generator hidden units (None = 32)
    expert_steps: int | None = None  # gail-meta: inner steps of the gradient-adapted expert (None = steps)
    prefix_shots: int | None = None  # gail-meta: heads from the first 1..N support records also trained (None = 4)

    def __post_init__(self) -> None:
        if self.head is not None:
            object.__setattr__(self, "head", tuple(self.head))
        _check(self.algorithm in META_ALGORITHMS,
               f"unknown meta-algorithm {self.algorithm!r}; choose one of {', '.join(META_ALGORITHMS)}")
        _check(self.steps >= 0, f"inner steps must be >= 0, got {self.steps}")
        _check(0 <= self.lr <= self.max_inner_lr, f"inner lr must lie in [0, max_inner_lr={self.max_inner_lr}], got {self.lr}")
        _check(self.loss in LOSSES, f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        _check(self.backend in BACKENDS, f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        _check(self.max_scale is None or self.max_scale > 0, f"max_scale must be > 0, got {self.max_scale}")
        _check(self.head is None or len(self.head) > 0, "head names at least one parameter")
        _check(self.algorithm != "gail-meta" or self.loss == "ce", "gail-meta generates a classifier head: loss must be ce")
        _check(self.net_hidden is None or self.net_hidden >= 1, f"net_hidden must be >= 1, got {self.net_hidden}")
        _check(self.net_bound is None or self.net_bound > 0, f"net_bound must be > 0, got {self.net_bound}")
        for option in ALGORITHM_OPTIONS:
            given = getattr(self, option)
            takers = ALGORITHM_OPTIONS[option]
            hint = " (first-order MAML is fomaml)" if option == "first_order" and self.algorithm == "maml" else ""
            _check(given in (None, False) or self.algorithm in takers,
                   f"{option} applies to {', '.join(takers)}, not {self.algorithm}{hint}")

    def algorithm_options(self) -> dict[str, Any]:
        """Keyword arguments for ``get_algorithm(self.algorithm, ...)``: the shared ones,
        and the algorithm's own where it takes them."""
        out: dict[str, Any] = {"loss": self.loss, "max_inner_lr": self.max_inner_lr, "backend": self.backend}
        for option in ALGORITHM_OPTIONS:
            value = getattr(self, option)
            if self.algorithm in ALGORITHM_OPTIONS[option] and value is not None:
                out[option] = value
        return out


@dataclass(frozen=True)
class MetaStepConfig:
    """How episodes are cut from a task's records and turned into meta-updates.

    An episode is ``support_size`` + ``query_size`` records, cut every
    ``episode_stride`` new records of a task (windows kept for ``max_tasks`` tasks);
    each meta-update averages it with ``replay_per_update`` replayed episodes, clips
    the meta-gradient's norm to ``clip_grad_norm`` (``None``: no clipping) and takes
    an Adam step of ``meta_lr``. A learn batch that completed ``k`` episodes of a task
    makes one meta-update. With ``batch_update="each"`` (the default) that meta-update
    takes one outer step per new episode, oldest first, as one record at a time would,
    each with its own replayed episodes and memory records and ``batch_inner_steps``
    inner steps (``None``: the inner loop's, as one record at a time takes them; 1: a cheap
    step, one pass over its records, that trains the initialisation for one step and so
    loses on few-shot streams); with ``"one"`` it takes one step on all ``k`` episodes
    together, its size multiplied by :meth:`step_scale` (``batch_step_scale``). A learn
    batch of one record (``--learn-batch 1``) learns exactly as before either way.

    >>> [MetaStepConfig(batch_step_scale=s).step_scale(9) for s in BATCH_STEP_SCALES]
    [1.0, 3.0, 9.0]
    """

    meta_lr: float = 1e-2
    clip_grad_norm: float | None = None
    support_size: int = 20
    query_size: int = 5
    episode_stride: int = 5
    replay_per_update: int = 3
    max_tasks: int = 1000
    batch_step_scale: str = "none"
    batch_update: str = "each"
    batch_inner_steps: int | None = None

    def __post_init__(self) -> None:
        _check(self.batch_update in BATCH_UPDATES,
               f"unknown batch_update {self.batch_update!r}; choose one of {', '.join(BATCH_UPDATES)}")
        _check(self.batch_inner_steps is None or self.batch_inner_steps >= 1,
               f"batch_inner_steps must be >= 1 or None, got {self.batch_inner_steps}")
        _check(self.batch_step_scale in BATCH_STEP_SCALES,
               f"unknown batch_step_scale {self.batch_step_scale!r}; choose one of {', '.join(BATCH_STEP_SCALES)}")
        _check(self.meta_lr > 0, f"meta_lr must be > 0, got {self.meta_lr}")
        _check(self.clip_grad_norm is None or self.clip_grad_norm > 0,
               f"clip_grad_norm must be > 0 or None, got {self.clip_grad_norm}")
        _check(min(self.support_size, self.query_size, self.episode_stride, self.max_tasks) >= 1,
               f"support_size, query_size, episode_stride and max_tasks must be >= 1 ({self})")
        _check(self.replay_per_update >= 0, f"replay_per_update must be >= 0, got {self.replay_per_update}")

    def step_scale(self, new_episodes: int) -> float:
        """Factor on ``meta_lr`` for a meta-update on ``new_episodes`` new episodes of one task:
        the large-batch rules (linear, Goyal et al. 2017; square root, usual with Adam),
        relative to one episode and bounded by :data:`MAX_BATCH_STEP_SCALE`."""
        k = max(1, new_episodes)
        factor = {"none": 1.0, "sqrt": float(k) ** 0.5, "linear": float(k)}[self.batch_step_scale]
        return min(factor, MAX_BATCH_STEP_SCALE)


@dataclass(frozen=True)
class ReplayConfig:
    """Episode replay (a reservoir of ``episode_capacity`` episodes) and record replay
    (``memory_capacity`` records kept by ``memory_policy``, ``memory_query`` of them
    appended to each meta-update's query set; MER / La-MAML)."""

    episode_capacity: int = 200
    memory_capacity: int = 0
    memory_policy: str = "reservoir"
    memory_query: int = 0

    def __post_init__(self) -> None:
        _check(min(self.episode_capacity, self.memory_capacity, self.memory_query) >= 0,
               f"replay sizes must be >= 0 ({self})")
        _check(self.memory_policy in MEMORY_POLICIES,
               f"unknown memory policy {self.memory_policy!r}; choose one of {', '.join(MEMORY_POLICIES)}")


@dataclass(frozen=True)
class RegularizerConfig:
    """A penalty anchoring the meta-parameters (EWC, SI, MAS), consolidated at each
    task change; ``decay`` is the share of earlier importance kept."""

    name: str = "none"
    strength: float = 0.0
    decay: float = 1.0

    def __post_init__(self) -> None:
        _check(self.name in REGULARIZERS, f"unknown regularizer {self.name!r}; choose one of {', '.join(REGULARIZERS)}")
        _check(self.strength >= 0 and 0 <= self.decay <= 1, f"need strength >= 0 and 0 <= decay <= 1 ({self})")


@dataclass(frozen=True)
class ProbeConfig:
    """Live forgetting estimate: ``per_task`` records per task held out from learning
    (0 = off), re-evaluated every ``every`` learned records."""

    per_task: int = 0
    every: int = 1000

    def __post_init__(self) -> None:
        _check(self.per_task >= 0 and self.every >= 1, f"need per_task >= 0 and every >= 1 ({self})")
