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
from stream_meta.learn.config import InnerLoopConfig, MetaStepConfig, ModelConfig, RegularizerConfig, ReplayConfig
from stream_meta.bench.continual.metrics import peak_rss_mb

# stream-meta learners the bench knows: name -> OnlineMetaLearner's configuration groups
# ("sgd": the baseline). Groups left out take their defaults, as in the daemon.
_ER = ReplayConfig(memory_capacity=200, memory_policy="reservoir", memory_query=10)
_ER_TASK = ReplayConfig(memory_capacity=200, memory_policy="task", memory_query=10)
_REPTILE = InnerLoopConfig(algorithm="reptile")
LEARNERS: dict[str, dict] = {
    "sgd": {},
    "fomaml": {},
    "fomaml+er": dict(replay_cfg=_ER),
    "fomaml+er-task": dict(replay_cfg=_ER_TASK),
    "fomaml+er+ewc": dict(replay_cfg=_ER, reg_cfg=RegularizerConfig("ewc", 10.0, 0.9)),
    "fomaml+er+si": dict(replay_cfg=_ER, reg_cfg=RegularizerConfig("si", 1.0)),
    "fomaml+er+mas": dict(replay_cfg=_ER, reg_cfg=RegularizerConfig("mas", 1.0)),
    "fomaml+ewc": dict(reg_cfg=RegularizerConfig("ewc", 10.0, 0.9)),
    # Reptile moves the meta-parameters toward fast weights adapted on support + replayed
    # records: MER's recipe, and the meta-parameters alone then hold every task.
    "reptile": dict(inner_cfg=_REPTILE),
    "reptile+er": dict(inner_cfg=_REPTILE, replay_cfg=_ER_TASK),
    # Tuned on MNIST Permutations 5 x 1000: smaller meta steps, more replayed episodes.
    "reptile+er-tuned": dict(inner_cfg=_REPTILE, replay_cfg=_ER_TASK,
                             meta_cfg=MetaStepConfig(meta_lr=5e-3, replay_per_update=6)),
    "reptile+er+ewc": dict(inner_cfg=_REPTILE, replay_cfg=_ER_TASK, reg_cfg=RegularizerConfig("ewc", 1.0, 0.9)),
    # The seed's learners: the neural optimiser first-order like fomaml (its rule is still
    # meta-learned); LMML second order (its loss learns only through the inner gradients).
    "neural-optimizer": dict(inner_cfg=InnerLoopConfig(algorithm="neural-optimizer", first_order=True)),
    "lmml": dict(inner_cfg=InnerLoopConfig(algorithm="lmml")),
}


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
    from stream_meta.learn.learner import OnlineMetaLearner, OnlineSGDLearner

    if method not in LEARNERS:
        raise ValueError(f"unknown stream-meta learner {method!r}; choose from {sorted(LEARNERS)}")
    model_cfg = ModelConfig(input_dim, num_classes)
    if method == "sgd":
        return OnlineSGDLearner(model_cfg, lr=0.1, seed=seed)
    groups = {"inner_cfg": InnerLoopConfig(), "meta_cfg": MetaStepConfig(), "replay_cfg": ReplayConfig(),
              "reg_cfg": RegularizerConfig(), **LEARNERS[method]}
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
        "peak_rss_mb": peak_rss_mb(),
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
