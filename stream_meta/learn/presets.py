"""Named learner settings, one table for the daemon (``--preset``) and the benchmarks.

Plain data, no torch: :mod:`stream_meta.daemon.config` imports it to validate and fill
a preset before anything heavy is loaded. A preset lists only what it changes from
:data:`BASE` (the learner's own constructor defaults, the daemon's defaults before
presets existed); :func:`preset_settings` returns the full learner settings.

The daemon's default is :data:`DEFAULT_PRESET`, chosen by ``stream-meta bench
defaults`` with the rule in the README (best mean rank across every protocol among the
presets that keep up; on 2026-11-30 reptile+er-tuned: mean rank 2.17 of 6 over 15
protocols; Meta-SGD ranked 1.87 but ran at a quarter of its records/s).

>>> preset_settings("fomaml")["algorithm"], preset_settings("reptile+er-tuned")["meta_lr"]
('fomaml', 0.005)
"""

from __future__ import annotations

from typing import Any

from stream_meta.learn.config import InnerLoopConfig, MetaStepConfig, RegularizerConfig, ReplayConfig

# The learner settings a preset may set, at their pre-preset values (OnlineMetaLearner's defaults).
BASE: dict[str, Any] = {
    "algorithm": "fomaml",
    "inner_steps": 5,
    "inner_lr": 0.1,
    "meta_lr": 1e-2,
    "support_size": 20,
    "query_size": 5,
    "episode_stride": 5,
    "replay_capacity": 200,
    "replay_per_update": 3,
    "memory_capacity": 0,
    "memory_policy": "reservoir",
    "memory_query": 0,
    "regularizer": "none",
    "reg_strength": 0.0,
    "reg_decay": 1.0,
    "first_order": False,
}

_ER = {"memory_capacity": 200, "memory_query": 10}  # record replay (MER / La-MAML), reservoir
_ER_TASK = {**_ER, "memory_policy": "task"}  # ... balanced by task

PRESETS: dict[str, dict[str, Any]] = {
    "sgd": {"algorithm": "sgd"},  # the baseline: one SGD step per record (lr = inner_lr)
    "fomaml": {"algorithm": "fomaml"},
    "fomaml+er": {"algorithm": "fomaml", **_ER},
    "fomaml+er-task": {"algorithm": "fomaml", **_ER_TASK},
    "fomaml+er+ewc": {"algorithm": "fomaml", **_ER, "regularizer": "ewc", "reg_strength": 10.0, "reg_decay": 0.9},
    "fomaml+er+si": {"algorithm": "fomaml", **_ER, "regularizer": "si", "reg_strength": 1.0},
    "fomaml+er+mas": {"algorithm": "fomaml", **_ER, "regularizer": "mas", "reg_strength": 1.0},
    "fomaml+ewc": {"algorithm": "fomaml", "regularizer": "ewc", "reg_strength": 10.0, "reg_decay": 0.9},
    # Reptile moves the meta-parameters toward fast weights adapted on support + replayed
    # records: MER's recipe, and the meta-parameters alone then hold every task.
    "reptile": {"algorithm": "reptile"},
    "reptile+er": {"algorithm": "reptile", **_ER_TASK},
    # Tuned on MNIST Permutations 5 x 1000: smaller meta steps, more replayed episodes.
    "reptile+er-tuned": {"algorithm": "reptile", **_ER_TASK, "meta_lr": 5e-3, "replay_per_update": 6},
    "reptile+er+ewc": {"algorithm": "reptile", **_ER_TASK, "regularizer": "ewc", "reg_strength": 1.0, "reg_decay": 0.9},
    # Meta-SGD learns a step size per parameter: the fastest few-shot adapter.
    "metasgd": {"algorithm": "metasgd"},
    "metasgd+er": {"algorithm": "metasgd", **_ER_TASK},
    # The seed's learners (README, "The seed's learners").
    "gail-meta": {"algorithm": "gail-meta"},
    # Both second order: first order, the neural optimiser was 9-13 points below Meta-SGD
    # from position 6 on (README, "The seed's learners"); LMML's loss learns only through
    # the inner gradients.
    "neural-optimizer": {"algorithm": "neural-optimizer"},
    "lmml": {"algorithm": "lmml"},
}

# Chosen by `stream-meta bench defaults` (README, "Choosing the default learner").
DEFAULT_PRESET = "reptile+er-tuned"


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def preset_settings(name: str) -> dict[str, Any]:
    """All learner settings of preset ``name``; ``ValueError`` naming the choices if unknown."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {**BASE, **PRESETS[name]}


def learner_kwargs(name: str) -> dict[str, Any]:
    """What preset ``name`` changes from :data:`BASE` (flat settings, as the daemon's keys)."""
    preset_settings(name)  # the same error for an unknown name
    return dict(PRESETS[name])


def preset_groups(name: str) -> dict[str, Any]:
    """Preset ``name`` as ``OnlineMetaLearner``'s configuration groups (``inner_cfg``,
    ``meta_cfg``, ``replay_cfg``, ``reg_cfg``), as the daemon builds them from its settings."""
    s = preset_settings(name)
    return {
        "inner_cfg": InnerLoopConfig(algorithm=s["algorithm"], steps=s["inner_steps"], lr=s["inner_lr"],
                                     first_order=s["first_order"]),
        "meta_cfg": MetaStepConfig(meta_lr=s["meta_lr"], support_size=s["support_size"], query_size=s["query_size"],
                                   episode_stride=s["episode_stride"], replay_per_update=s["replay_per_update"]),
        "replay_cfg": ReplayConfig(episode_capacity=s["replay_capacity"], memory_capacity=s["memory_capacity"],
                                   memory_policy=s["memory_policy"], memory_query=s["memory_query"]),
        "reg_cfg": RegularizerConfig(s["regularizer"], s["reg_strength"], s["reg_decay"]),
    }
