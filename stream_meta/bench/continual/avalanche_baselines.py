"""Avalanche strategies on the identical stream, as reference baselines.

Run in a process of its own per method (``python -m stream_meta.bench.continual.avalanche_baselines
SPEC.json``): ``import avalanche.training`` costs seconds and hundreds of MB, and peak
RSS is then the method's own. Same MLP 2x100 (``stream_meta.model.build_mlp``), same
task order and records, memory 200, records in minibatches of 10, one pass.

Traps of avalanche-lib 0.6 handled here:

- online streams (sub-experiences of 10) make its forgetting/BWT metrics 0.0, so the
  accuracy matrix is computed here, on the tasks' held-out tensors, after each task;
- EWC / SI / MAS / LwF consolidate per experience: they get one experience per task
  (one epoch of minibatches of 10 = a single pass), not per sub-experience;
- its ``@deprecated`` wrapper resets warning filters: warnings are silenced after import;
- LaMAML (v1) needs the ``higher`` package and v2 calls ``model(x, t)`` and
  re-initialises the weights: such a method is reported as not runnable, with the reason.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings

import torch

from stream_meta.bench.continual.metrics import peak_rss_mb

# method -> (how it is fed: "online" = sub-experiences of 10, "task" = one experience per task)
METHODS: dict[str, str] = {
    "online-naive": "online", "naive": "task", "replay": "task", "ewc": "task", "si": "task",
    "mas": "task", "gdumb": "task", "er-ace": "online", "mir": "online", "mer": "online",
    "lamaml": "online", "agem": "online",
}
MEMORY = 200
MB = 10


def _strategy(name: str, model: torch.nn.Module, lr: float, mb: int = MB):
    from torch.nn import CrossEntropyLoss
    from torch.optim import SGD

    import avalanche.training as at
    from avalanche.training.plugins import EvaluationPlugin

    common = dict(criterion=CrossEntropyLoss(), train_mb_size=mb, train_epochs=1, eval_mb_size=1000,
                  device="cpu", evaluator=EvaluationPlugin(loggers=[]))
    opt = SGD(model.parameters(), lr=lr)
    if name == "online-naive":
        online = {k: v for k, v in common.items() if k != "train_epochs"}
        return at.OnlineNaive(model=model, optimizer=opt, train_passes=1, **online)
    if name == "naive":
        return at.Naive(model=model, optimizer=opt, **common)
    if name == "replay":
        return at.Replay(model=model, optimizer=opt, mem_size=MEMORY, **common)
    if name == "ewc":
        return at.EWC(model=model, optimizer=opt, ewc_lambda=1.0, mode="online", decay_factor=0.9, **common)
    if name == "si":
        return at.SynapticIntelligence(model=model, optimizer=opt, si_lambda=1.0, **common)
    if name == "mas":
        return at.MAS(model=model, optimizer=opt, lambda_reg=1.0, **common)
    if name == "gdumb":
        return at.GDumb(model=model, optimizer=opt, mem_size=MEMORY, **common)
    if name == "er-ace":
        return at.ER_ACE(model=model, optimizer=opt, mem_size=MEMORY, batch_size_mem=MB, **common)
    if name == "mir":
        return at.MIR(model=model, optimizer=opt, mem_size=MEMORY, subsample=50, batch_size_mem=MB, **common)
    if name == "mer":
        return at.MER(model=model, optimizer=opt, mem_size=MEMORY, batch_size_mem=MB, n_inner_steps=5,
                      beta=0.1, gamma=0.1, **common)
    if name == "lamaml":
        return at.LaMAML(model=model, optimizer=opt, **common)
    if name == "agem":
        return at.AGEM(model=model, optimizer=opt, patterns_per_exp=MEMORY // 20, sample_size=MB, **common)
    raise ValueError(f"unknown Avalanche baseline {name!r}; choose from {sorted(METHODS)}")


def check_runnable(name: str) -> None:
    """Raises with the reason when ``name`` cannot run here (before the costly import)."""
    if name not in METHODS:
        raise ValueError(f"unknown Avalanche baseline {name!r}; choose from {sorted(METHODS)}")
    if name == "lamaml":
        try:
            import higher  # noqa: F401
        except ImportError:
            raise RuntimeError("avalanche's LaMAML (v1) needs the `higher` package (not installed; unmaintained); "
                               "lamaml_v2 calls model(x, t) and re-initialises the model's weights") from None


def run(spec: dict) -> dict:
    """Runs one method on the tasks in ``spec["data"]`` (an .npz from the bench); returns its row."""
    check_runnable(spec["method"])
    torch.set_num_threads(1)
    torch.manual_seed(spec["seed"])
    name = spec["method"]
    from stream_meta.bench.continual.runner import load_tasks

    tasks = [tuple(torch.from_numpy(a) for a in (t.train_x, t.train_y, t.test_x, t.test_y))
             for t in load_tasks(spec["data"])]
    n_tasks = len(tasks)
    mb = int(spec.get("minibatch", MB))
    started = time.perf_counter()
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.scenarios.online import split_online_stream
    from avalanche.benchmarks.utils.classification_dataset import (
        _make_taskaware_tensor_classification_dataset as tensor_dataset,
    )

    warnings.simplefilter("ignore")  # after import: its @deprecated wrapper resets the filters on each call
    from stream_meta.model import build_mlp, init_params

    def dataset(x: torch.Tensor, y: torch.Tensor):
        # Task label 0 everywhere: one head, no task identity (MER asserts minibatches carry one).
        return tensor_dataset(x, y, targets=y.tolist(), task_labels=0)

    bm = benchmark_from_datasets(train=[dataset(t[0], t[1]) for t in tasks], test=[dataset(t[2], t[3]) for t in tasks])
    import_seconds = time.perf_counter() - started
    d = tasks[0][0].shape[1]
    model = build_mlp([d, 100, 100, 10])
    with torch.no_grad():
        for k, v in init_params(model, torch.Generator().manual_seed(spec["seed"])).items():
            model.get_parameter(k).copy_(v)
    strategy = _strategy(name, model, spec.get("lr", 0.1), mb)
    matrix: list[list[float]] = []
    learn_seconds = 0.0
    for i, exp in enumerate(bm.train_stream):
        t0 = time.perf_counter()
        if METHODS[name] == "online":
            for sub in split_online_stream([exp], mb, shuffle=False, access_task_boundaries=True):
                strategy.train(sub)
        else:
            strategy.train(exp)
        learn_seconds += time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            matrix.append([float((model(t[2]).argmax(1) == t[3]).float().mean()) for t in tasks])
        print(json.dumps({"progress": [i + 1, n_tasks]}), file=sys.stderr, flush=True)
    records = sum(len(t[1]) for t in tasks)
    return {
        "matrix": matrix, "records": records, "learn_seconds": learn_seconds, "setup_seconds": import_seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str]) -> int:
    spec = json.loads(open(argv[0]).read())
    try:
        out = run(spec)
    except Exception as exc:  # reported as the method's reason, never hidden
        out = {"error": f"{type(exc).__name__}: {exc}".strip(), "traceback": traceback.format_exc(limit=4)}
    with open(spec["out"], "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
