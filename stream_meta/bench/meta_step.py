"""Meta-update throughput: vectorised engines vs a naive per-task loop of cloned modules.

Prints one row per (algorithm, meta-batch): tasks/s of the naive baseline (``copy``
of the ``nn.Module`` per task; FOMAML: ``torch.optim.SGD`` inner steps, MAML: the
learn2learn-style clone whose parameters stay differentiable; ``loss.backward()`` for
the meta-gradient; ``neural-optimizer`` and ``lmml`` are timed against naive MAML,
which is what they compute at initialisation, so the agreement check holds for them too), of each engine of :mod:`stream_meta.meta.engines` through
:func:`stream_meta.meta.meta_step`, and the speedup of the default (``auto``) over
naive. Every implementation does the same meta-update (meta-gradient + Adam step) on
the same random tasks in the same run; the implementations are called round-robin and
each timing is the fastest (``--stat min``, default) or median of ``--repeats`` calls.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from stream_meta.meta.algorithms import get_algorithm
from stream_meta.meta.api import meta_step
from stream_meta.meta.spec import Episode
from stream_meta.model import build_mlp, init_params
from stream_meta.bench.args import ints, names

EXAMPLE = """example:
  python -m stream_meta.bench.meta_step --batches 1,8,32 --algorithms maml,fomaml --repeats 5 --threads 1
  stream-meta bench meta-step --device cuda --json meta-step.json
"""


# The naive loop each algorithm is timed and checked against: itself, or (the seed's
# learners) the algorithm it equals at initialisation.
NAIVE_TWIN = {"maml": "maml", "fomaml": "fomaml", "neural-optimizer": "maml", "lmml": "maml", "gail-meta": "maml"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="stream-meta bench meta-step",
        description=__doc__.splitlines()[0],
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--batches", type=ints, default=[1, 8, 32], help="meta-batch sizes (default 1,8,32)")
    p.add_argument("--algorithms", type=names, default=["maml", "fomaml"],
                   help=f"of {','.join(NAIVE_TWIN)} (default maml,fomaml)")
    p.add_argument("--engines", type=names, default=["auto", "reference"],
                   help="engines to time: auto, reference, fast (default auto,reference)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=7, help="timed meta-updates per implementation and cell")
    p.add_argument(
        "--stat", choices=["min", "median"], default="min",
        help="how repeats are reduced: min (the least-disturbed run, as timeit advises on shared machines) or median",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--sizes", type=ints, default=[784, 100, 100, 10], help="MLP layer sizes (default 784,100,100,10)")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=5, help="support examples per class")
    p.add_argument("--queries", type=int, default=15, help="query examples per class")
    p.add_argument("--steps", type=int, default=1, help="inner SGD steps")
    p.add_argument("--lr", type=float, default=0.4, help="inner step size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tolerance", type=float, default=1e-6,
        help="fail if an engine's float64 meta-gradient differs from naive's by more (relative norm; default 1e-6)",
    )
    p.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    args = p.parse_args(argv)
    bad = [a for a in args.algorithms if a not in NAIVE_TWIN]
    if bad:
        p.error(f"--algorithms takes {','.join(NAIVE_TWIN)}; got {bad}")
    if args.ways > args.sizes[-1]:
        p.error("--ways must not exceed the model's output size")
    return args


def make_tasks(args: argparse.Namespace, n: int, device: torch.device) -> list[Episode]:
    """``n`` random N-way tasks (Gaussian inputs, balanced labels), from ``--seed``."""
    g = torch.Generator().manual_seed(args.seed)
    d = args.sizes[0]
    eps = []
    for i in range(n):
        sy = torch.arange(args.ways).repeat_interleave(args.shots)
        qy = torch.arange(args.ways).repeat_interleave(args.queries)
        sx = torch.randn(len(sy), d, generator=g)
        qx = torch.randn(len(qy), d, generator=g)
        eps.append(Episode(f"t{i}", sx.to(device), sy.to(device), qx.to(device), qy.to(device)))
    return eps


def _set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    module._parameters[leaf] = value  # a non-leaf tensor: keeps the graph to the meta-params


def naive_step(alg: str, model: nn.Module, opt: torch.optim.Optimizer, episodes: Sequence[Episode], steps: int, lr: float) -> None:
    """The straightforward meta-update most code bases write: one cloned module per task."""
    opt.zero_grad(set_to_none=True)
    n = len(episodes)
    if alg == "fomaml":
        meta = [torch.zeros_like(p) for p in model.parameters()]
        for ep in episodes:
            learner = copy.deepcopy(model)
            inner = torch.optim.SGD(learner.parameters(), lr=lr)
            for _ in range(steps):
                inner.zero_grad()
                F.cross_entropy(learner(ep.support_x), ep.support_y).backward()
                inner.step()
            learner.zero_grad()
            F.cross_entropy(learner(ep.query_x), ep.query_y).backward()
            for m, p in zip(meta, learner.parameters()):
                m += p.grad / n
        for p, m in zip(model.parameters(), meta):
            p.grad = m
    else:
        for ep in episodes:
            learner = copy.deepcopy(model)
            for name, p in model.named_parameters():
                _set_param(learner, name, p.clone())
            for _ in range(steps):
                names = [k for k, _ in learner.named_parameters()]
                ps = list(learner.parameters())
                gs = torch.autograd.grad(F.cross_entropy(learner(ep.support_x), ep.support_y), ps, create_graph=True)
                for k, p, g in zip(names, ps, gs):
                    _set_param(learner, k, p - lr * g)
            (F.cross_entropy(learner(ep.query_x), ep.query_y) / n).backward()
    opt.step()


def agreement(alg_name: str, args: argparse.Namespace, init: dict[str, torch.Tensor], tasks: Sequence[Episode], device: torch.device) -> float:
    """Largest relative difference, over engines and parameters, between each engine's
    meta-gradient and the naive loop's (``.grad`` after one naive step), on ``device`` in
    float64 (float32 rounding, amplified by K inner steps, would hide nothing but blur the
    check): the timed implementations compute the same thing."""
    init = {k: v.double() for k, v in init.items()}
    tasks = [Episode(e.task, e.support_x.double(), e.support_y, e.query_x.double(), e.query_y) for e in tasks]
    model = build_mlp(args.sizes).to(device).double()
    model.load_state_dict(init)
    naive_step(NAIVE_TWIN[alg_name], model, torch.optim.SGD(model.parameters(), lr=0.0), tasks, args.steps, args.lr)
    ref = {k: p.grad for k, p in model.named_parameters()}
    worst = 0.0
    for engine in args.engines:
        alg = get_algorithm(alg_name, backend=engine)
        params = {k: v.clone().requires_grad_() for k, v in init.items()}
        grads, _, _ = alg.meta_gradient(model, params, alg.init_extra(params), tasks, steps=args.steps, lr=args.lr)
        for k, g in grads.items():
            worst = max(worst, ((g - ref[k]).norm() / ref[k].norm().clamp_min(1e-12)).item())
    return worst


def _time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device, stat: str = "min"
) -> dict[str, float]:
    """Seconds per call of each function (``stat`` over ``repeats`` calls), the calls
    interleaved round-robin so that every implementation sees the same machine load."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():  # warm-up
        fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    reduce = min if stat == "min" else statistics.median
    return {k: reduce(v) for k, v in times.items()}


def matmul_peak(device: torch.device, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of an ``n``-square float32 matrix product on ``device``: the ceiling that
    the implementations' own GFLOP/s are read against."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sec = _time_interleaved({"mm": partial(torch.mm, a, b)}, repeats, device)["mm"]
    return 2 * n**3 / sec / 1e9


def gflop(fn: Callable[[], object]) -> float:
    """Matrix-product GFLOP of one call of ``fn`` (forward and backward), as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    template = build_mlp(args.sizes).to(device)
    init = {k: v.to(device) for k, v in init_params(template, torch.Generator().manual_seed(args.seed)).items()}
    rows = []
    for alg_name in args.algorithms:
        own = alg_name == "gail-meta"  # no engine: generator + discriminator + expert, one task at a time
        resolved = {e: ("own loop", "gail-meta runs no engine") if own else get_algorithm(alg_name, backend=e).engine(template, init)
                    for e in args.engines}
        print(f"# {alg_name}: " + "; ".join(f"{e} runs {r[0]} ({r[1]})" for e, r in resolved.items()), flush=True)
        for t in args.batches:
            tasks = make_tasks(args, t, device)
            row: dict = {"algorithm": alg_name, "meta_batch": t, "engines": {e: r[0] for e, r in resolved.items()}}
            # gail-meta's gradients are checked against finite differences in tests/meta/test_gail.py
            row["max_rel_diff"] = float("nan") if own else agreement(alg_name, args, init, tasks, device)
            if row["max_rel_diff"] > args.tolerance:
                raise SystemExit(f"{alg_name} meta-batch {t}: engines differ from naive by {row['max_rel_diff']:.2e} > {args.tolerance}")
            naive_model = build_mlp(args.sizes).to(device)
            naive_model.load_state_dict(init)
            naive_opt = torch.optim.Adam(naive_model.parameters(), lr=1e-4)
            fns: dict[str, Callable[[], object]] = {
                "naive": partial(naive_step, NAIVE_TWIN[alg_name], naive_model, naive_opt, tasks, args.steps, args.lr)
            }
            for engine in args.engines:
                alg = get_algorithm(alg_name, backend=engine)
                params = {k: v.clone().requires_grad_() for k, v in init.items()}
                extra = {k: v.requires_grad_() for k, v in alg.init_extra(params).items()}
                opt = torch.optim.Adam([*params.values(), *extra.values()], lr=1e-4)
                fns[engine] = partial(
                    meta_step, alg, template, params, extra, tasks, opt, steps=args.steps, lr=args.lr
                )
            main_engine = args.engines[0]
            work = {k: gflop(fns[k]) for k in ("naive", main_engine)}
            for k, sec in _time_interleaved(fns, args.repeats, device, args.stat).items():
                row[k] = t / sec
            row["speedup"] = row[main_engine] / row["naive"]
            for k, g in work.items():
                row[f"{k}_gflop_per_s"] = g * row[k] / t
            rows.append(row)
            print(_format_row(row, args.engines), flush=True)
    return rows


def _format_row(row: dict, engines: list[str]) -> str:
    cells = [f"{row['algorithm']:<8}", f"{row['meta_batch']:>5}", f"{row['naive']:>9.1f}"]
    cells += [f"{row[e]:>9.1f}" for e in engines]
    cells.append(f"{row['speedup']:>7.2f}x")
    cells.append(f"{row['max_rel_diff']:>9.1e}")
    cells += [f"{row[f'{k}_gflop_per_s']:>7.1f}" for k in ("naive", engines[0])]
    return " ".join(cells)


def main(argv: list[str] | None = None) -> int:
    """Run the meta-step benchmark; returns a process exit code."""
    args = parse_args(argv)
    cfg = (
        f"model {'-'.join(map(str, args.sizes))} MLP, {args.ways}-way {args.shots}-shot support, "
        f"{args.queries}/class query, {args.steps} inner step(s) lr {args.lr}, Adam outer step, "
        f"device {args.device}, {args.threads} thread(s), torch {torch.__version__}, {args.stat} of {args.repeats}"
    )
    torch.set_num_threads(args.threads)
    peak = matmul_peak(torch.device(args.device))
    cfg += f", float32 1024x1024 matmul {peak:.0f} GFLOP/s"
    print(cfg)
    print("tasks/s per implementation; speedup = " + args.engines[0] + " / naive; "
          "grad_diff = largest relative difference of an engine's float64 meta-gradient from naive's; "
          "GF/s = matrix-product GFLOP/s of naive and of " + args.engines[0] + " (against the matmul figure above)")
    header = ["algorithm", "batch", "naive"] + args.engines + ["speedup", "grad_diff", "GF/s n", f"GF/s {args.engines[0][:2]}"]
    widths = [8, 5, 9] + [9] * len(args.engines) + [8, 9, 7, 7]
    print(" ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(zip(header, widths))))
    rows = run(args)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"config": cfg, "matmul_gflop_per_s": peak, "args": {k: v for k, v in vars(args).items()}, "machine": platform.machine(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
