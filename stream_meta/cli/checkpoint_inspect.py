"""``stream-meta checkpoint inspect``: what a checkpoint holds, without running anything in it."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from stream_meta.daemon.checkpoint import CheckpointStore
from stream_meta.errors import CheckpointError


def params_digest(params: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the meta-parameters' names, shapes, dtypes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def describe_checkpoint(directory: Path) -> dict:
    ckpt = CheckpointStore(directory).load_latest()
    if ckpt is None:
        raise CheckpointError(f"no valid checkpoint in {directory}")
    learner = ckpt.state["learner"]
    m = ckpt.manifest
    return {
        "directory": str(directory),
        "sequence": ckpt.seq,
        "format_version": m["format_version"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m["created"])),
        "offsets": {f"{t}[{p}]": o for (t, p), o in sorted(ckpt.offsets.items())},
        "records_consumed": m.get("records_consumed"),
        "records_learned": m.get("records_learned"),
        "tasks_seen": m.get("tasks_seen"),
        "meta_updates": m.get("meta_updates"),
        "replay_episodes": m.get("replay_episodes"),
        "sync_round": m.get("sync_round"),  # None: written outside a scale-out group
        "config": m.get("config"),  # the settings it was written with (None before fingerprints)
        "bytes": m["bytes"],
        "meta_parameters_sha256": params_digest(learner["params"]),
        # The algorithm's own meta-learned tensors (step sizes, a learned optimiser's or
        # loss's network, gail-meta's generator and discriminator): a second digest, so the first keeps meaning "the model".
        "extra_sha256": params_digest(learner.get("extra", {})),
    }
