"""One method on one saved stream, in a process of its own (clean peak RSS, no
Avalanche import cost shared with anyone): ``python -m stream_meta.bench.continual.runner SPEC.json``.

The bench saves the tasks once per seed (:func:`save_tasks`), then starts one worker
per method; a worker writes its result JSON to ``spec["out"]`` and progress lines
``{"progress": [done, total]}`` to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from collections.abc import Sequence

import numpy as np
import torch

from stream_meta.data.datasets import Task
from stream_meta.learn.config import ModelConfig
from stream_meta.bench.continual.metrics import peak_rss_mb
from stream_meta.learn.presets import PRESETS, preset_groups, preset_settings

# stream-meta learners the bench knows: the daemon's presets ("sgd": the baseline).
# One table: stream_meta/learn/presets.py.
LEARNERS: dict[str, dict] = {name: preset_settings(name) for name in PRESETS}


def save_tasks(tasks: Sequence[Task], path: str) -> None:
    arrays: dict[str, np.ndarray] = {"n_tasks": np.array(len(tasks)), "names": np.array([t.name for t in tasks])}
    for i, t in enumerate(tasks):
        arrays.update({f"train_x{i}": t.train_x, f"train_y{i}": t.train_y, f"test_x{i}": t.test_x, f"test_y{i}": t.test_y})
    np.savez(path, **arrays)


def load_tasks(path: str) -> list[Task]:
    data = np.load(path)
    return [
        Task(str(data["names"][i]), data[f"train_x{i}"], data[f"train_y{i}"], data[f"test_x{i}"], data[f"test_y{i}"])
        for i in range(int(data["n_tasks"]))
    ]


def build(method: str, input_dim: int, num_classes: int, seed: int, overrides: dict | None = None):
    """``overrides`` maps a group's name to fields replaced in it, e.g.
    ``{"meta_cfg": {"meta_lr": 5e-3}}`` (JSON in a worker's spec)."""
    from stream_meta.learn.learner import OnlineMetaLearner
    from stream_meta.learn.sgd import OnlineSGDLearner

    if method not in LEARNERS:
        raise ValueError(f"unknown stream-meta learner {method!r}; choose from {sorted(LEARNERS)}")
    model_cfg = ModelConfig(input_dim, num_classes)
    if LEARNERS[method]["algorithm"] == "sgd":
        return OnlineSGDLearner(model_cfg, lr=0.1, seed=seed)
    groups = preset_groups(method)
    for name, fields in (overrides or {}).items():
        if name not in groups:
            raise ValueError(f"unknown group {name!r} in overrides; choose from {sorted(groups)}")
        groups[name] = dataclasses.replace(groups[name], **fields)
    return OnlineMetaLearner(model_cfg, seed=seed, **groups)


def plain_sgd_records_per_second(tasks: Sequence[Task], minibatch: int, limit: int = 10_000, seed: int = 0) -> float:
    """Records/s of a bare torch loop over the stream's first ``limit`` records: the
    same MLP 2x100, one SGD step per ``minibatch`` records, no predictions, no
    evaluation, no framework. A ceiling on this machine for any learner that takes at
    least one SGD step per ``minibatch`` records."""
    import torch.nn.functional as F

    from stream_meta.model import build_mlp

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    x = torch.from_numpy(np.concatenate([t.train_x for t in tasks])[:limit]).float()
    y = torch.from_numpy(np.concatenate([t.train_y for t in tasks])[:limit]).long()
    model = build_mlp([x.shape[1], 100, 100, 10])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    t0 = time.perf_counter()
    for i in range(0, len(y), minibatch):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i:i + minibatch]), y[i:i + minibatch]).backward()
        opt.step()
    return len(y) / (time.perf_counter() - t0)


def run(spec: dict) -> dict:
    from stream_meta.bench.continual.protocol import run_protocol

    torch.set_num_threads(1)
    torch.manual_seed(spec["seed"])
    tasks = load_tasks(spec["data"])
    learner = build(spec["method"], tasks[0].train_x.shape[1], 10, spec["seed"], spec.get("overrides"))

    def progress(done: int, total: int) -> None:
        print(json.dumps({"progress": [done, total]}), file=sys.stderr, flush=True)

    r = run_protocol(learner, tasks, progress=progress, learn_batch=spec.get("learn_batch", 1))
    return {
        "matrix": r.matrix, "matrix_adapted": r.matrix_adapted, "records": r.records, "learn_seconds": r.learn_seconds,
        "fewshot_curve": r.fewshot_curve, "prequential_accuracy": r.prequential_accuracy,
        "peak_rss_mb": peak_rss_mb(), "meta_updates": learner.health().meta_updates,
    }


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[0]).read())
    try:
        out = run(spec)
    except Exception as exc:
        out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=4)}
    with open(spec["out"], "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
