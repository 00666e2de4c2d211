"""Scale-out settings: who a member is, when it syncs, how its meta-steps scale, and the
group's metrics (the rounds themselves: :mod:`stream_meta.daemon.sync`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream_meta.errors import ConfigError

LR_SCALES = ("none", "sqrt", "linear")


def step_factor(lr_scale: str, members: float) -> float:
    """The meta-step factor for ``members`` learning in parallel under rule ``lr_scale``.

    >>> [step_factor(rule, 4) for rule in LR_SCALES], step_factor("linear", 0)
    ([1.0, 2.0, 4.0], 1.0)
    """
    n = max(1.0, float(members))
    return {"none": 1.0, "sqrt": n ** 0.5, "linear": n}[lr_scale]


@dataclass(frozen=True)
class SyncSettings:
    """Who this member is and when it syncs."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    every: int = 10
    every_s: float | None = None
    timeout_s: float = 30.0
    overlap: bool = False  # one-round-stale averaging: the all-reduce runs while the member learns on
    momentum: float = 0.0  # SlowMo's outer momentum on the averaged update (0: plain averaging)
    outer_lr: float = 1.0  # SlowMo's slow learning rate: how far along the averaged update to move
    lr_scale: str = "linear"  # meta-steps x members learning in parallel: none, sqrt, linear (see the module)


def settings_from_env(env: Mapping[str, str], every: int, every_s: float | None, timeout_s: float,
                      overlap: bool = False, momentum: float = 0.0, outer_lr: float = 1.0,
                      lr_scale: str = "linear") -> SyncSettings | None:
    """The group from ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``/``MASTER_PORT``; None without one.
    ``RANK`` may also be a StatefulSet pod name (``stream-meta-3`` -> 3)."""
    world = int(env.get("WORLD_SIZE", "1") or "1")
    if world <= 1:
        return None
    raw_rank = env.get("RANK", "")
    try:
        rank = int(raw_rank.rsplit("-", 1)[-1])
    except ValueError:
        raise ConfigError(f"RANK={raw_rank!r}: need an integer (or a pod name ending in -<ordinal>)") from None
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} outside 0..WORLD_SIZE-1 ({world})")
    if not env.get("MASTER_ADDR") or not env.get("MASTER_PORT"):
        raise ConfigError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT (member 0's host and rendezvous port)")
    if overlap and (momentum or outer_lr != 1.0):
        raise ConfigError("--sync-momentum and --sync-outer-lr need blocking rounds: not with --sync-overlap")
    if lr_scale not in LR_SCALES:
        raise ConfigError(f"--sync-lr-scale {lr_scale!r}: choose one of {', '.join(LR_SCALES)}")
    return SyncSettings(rank, world, env["MASTER_ADDR"], int(env["MASTER_PORT"]), every, every_s, timeout_s, overlap,
                        momentum, outer_lr, lr_scale)


class SyncMetrics:
    """The group's metrics, on the registry the daemon passes in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rounds = Counter("stream_meta_sync_rounds_total", "Meta-parameter averaging rounds completed",
                              registry=registry)
        self.failures = Counter("stream_meta_sync_failures_total", "Sync rounds or rendezvous that failed or "
                                "timed out (the member learned alone meanwhile)", registry=registry)
        self.seconds = Histogram("stream_meta_sync_seconds", "Wall time of one averaging round", registry=registry,
                                 buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
        self.bytes = Gauge("stream_meta_sync_bytes", "Bytes this member sent into the last round's all-reduce",
                           registry=registry)
        self.members = Gauge("stream_meta_sync_members", "Members in the group (0: learning alone)", registry=registry)
        self.divergence = Gauge("stream_meta_sync_divergence", "L2 norm of this member's meta-parameters minus the "
                                "group mean, before the last averaging", registry=registry)
        self.round = Gauge("stream_meta_sync_round", "Rounds this member took part in (checkpointed)",
                           registry=registry)
