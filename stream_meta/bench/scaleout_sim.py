"""``stream-meta bench scaleout-sim``: the members of ``bench scaleout`` in one process, to screen ideas.

N learners built as the daemon builds them (``--learn-batch 1``), each fed its share of the
stream (the split of ``bench scaleout``: ``iid`` round-robin, ``noniid`` whole tasks), with
blocking rounds every ``--sync-every`` meta-updates: each member learns until its round is
due (or its share ends), then the members' shared tensors are averaged with :class:`Sync`'s
weights (the members that learned since the last round), SlowMo's step
(:class:`~stream_meta.daemon.slowmo.SlowMomentum`) and step scaling
(:func:`~stream_meta.daemon.sync_config.step_factor`). Same seed, same figures as the real daemons'
(it reproduced every accuracy of the README's 10-task table), without processes or gloo,
several times faster; it says nothing about speed, faults or overlapped rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from stream_meta.bench.args import floats, ints, one_of
from stream_meta.bench.members import member_of
from stream_meta.bench.scaleout import _as_flags, accuracy_of
from stream_meta.daemon.slowmo import SlowMomentum
from stream_meta.daemon.sync_config import LR_SCALES, step_factor

Row = tuple[str, torch.Tensor, int]  # task, x, y


def shares(dataset: str, n_tasks: int | None, records: int | None, members: int, partition: str) -> list[list[Row]]:
    """Each member's records in stream order, decoded as the daemon decodes them (float32)."""
    from stream_meta.data.datasets import stream

    out: list[list[Row]] = [[] for _ in range(members)]
    tasks: dict[str, int] = {}
    for n, rec in enumerate(stream(dataset, limit=records, n_tasks=n_tasks)):
        t = tasks.setdefault(rec["task"], len(tasks))
        out[member_of(n, t, members, partition)].append((rec["task"], torch.tensor(rec["x"], dtype=torch.float32),
                                                         int(rec["y"])))
    return out


def _average(learners: list, learned: list[bool], slow: SlowMomentum | None) -> float:
    """One blocking round, as :meth:`Sync._round` computes it; the members' weight sum."""
    shared = [learner.shared_tensors() for learner in learners]
    weights = [1.0 if x else 0.0 for x in learned]
    total = sum(weights)
    if total == 0:  # nobody learned: the plain mean (all equal already, but for a first round)
        weights, total = [1.0] * len(learners), float(len(learners))
    has_reg = all(any(k.startswith("regularizer/") for k in s) for s in shared)
    names = [k for k in shared[0] if has_reg or not k.startswith("regularizer/")]
    mean = {k: sum(w * s[k].to(torch.float32) for w, s in zip(weights, shared)) / total for k in names}
    if slow is not None:
        mean.update(slow.tensors(mean))  # every member holds the same anchor and momentum
        mean = slow.step(mean, moved=any(learned))
    for learner in learners:
        learner.load_shared({k: v.clone() for k, v in mean.items()})
    return float(sum(1.0 for x in learned if x))


def simulate(parts: list[list[Row]], flags: list[str], every: int, lr_scale: str = "linear",
             outer_lr: float = 1.0, momentum: float = 0.0) -> tuple[list, int]:
    """The members' learners after the stream and the rounds taken (one member: no rounds)."""
    from stream_meta.daemon.app import build_learner
    from stream_meta.daemon.config import load_config

    cfg = load_config(_as_flags(flags), env={})
    learners = [build_learner(cfg) for _ in parts]
    grouped = len(parts) > 1
    slow = SlowMomentum(momentum, outer_lr) if grouped and (momentum or outer_lr != 1.0) else None
    for learner in learners:
        learner.scale_meta_steps(step_factor(lr_scale, len(parts)) if grouped else 1.0)  # as a group forms
    pos, rounds = [0] * len(parts), 0
    while any(p < len(part) for p, part in zip(pos, parts)):
        learned = [False] * len(parts)
        for m, (learner, part) in enumerate(zip(learners, parts)):
            start = learner.meta_updates
            while pos[m] < len(part):
                task, x, y = part[pos[m]]
                pos[m] += 1
                learner.learn(task, x, y)
                if learner.meta_updates - start >= every and grouped:
                    break
            learned[m] = learner.meta_updates != start
        if grouped:
            n = _average(learners, learned, slow)
            rounds += 1
            if n > 0:
                for learner in learners:
                    learner.scale_meta_steps(step_factor(lr_scale, n))
    return learners, rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-meta bench scaleout-sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: stream-meta bench scaleout-sim --dataset digits-permutations "
                                            "--partition iid,noniid --sync-lr-scale none,linear --seed 0,1,2")
    parser.add_argument("--dataset", default="digits-rotations", help="digits-rotations or digits-permutations")
    parser.add_argument("--tasks", type=int, default=None, help="tasks in the stream (default: the data set's, 10)")
    parser.add_argument("--records", type=int, default=None, help="stream length (default: all records of --tasks)")
    parser.add_argument("--members", type=int, default=2, help="members of the group")
    parser.add_argument("--partition", type=one_of("iid", "noniid"), default=["iid", "noniid"], help="comma-separated")
    parser.add_argument("--sync-every", type=ints, default=[10], help="comma-separated meta-updates between rounds")
    parser.add_argument("--sync-lr-scale", type=one_of(*LR_SCALES), default=["linear"], help="comma-separated")
    parser.add_argument("--sync-outer-lr", type=floats, default=[1.0], help="comma-separated SlowMo slow lrs")
    parser.add_argument("--sync-momentum", type=floats, default=[0.0], help="comma-separated SlowMo momenta")
    parser.add_argument("--seed", type=ints, default=[0], help="comma-separated learner seeds")
    parser.add_argument("--preset", default=None, help="the daemons' --preset (default: the daemon's default learner)")
    parser.add_argument("--support", type=int, default=20, help="records each task is adapted on before scoring")
    parser.add_argument("--no-single", action="store_true", help="skip the one-daemon baseline")
    args = parser.parse_args(argv)
    if args.members < 2:
        parser.error("--members must be >= 2")
    torch.set_num_threads(1)
    print(f"load average at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    whole = shares(args.dataset, args.tasks, args.records, 1, "iid")
    splits = {p: shares(args.dataset, args.tasks, args.records, args.members, p) for p in args.partition}
    for seed in args.seed:
        flags = ["--input-dim", "64", "--num-classes", "10", "--seed", str(seed)] + (
            ["--preset", args.preset] if args.preset else [])
        runs = [] if args.no_single else [("single", "-", whole, 1, "none", 1.0, 0.0)]
        runs += [(f"group-{p}", p, splits[p], e, s, lr, m) for p in args.partition for e in args.sync_every
                 for s in args.sync_lr_scale for lr in args.sync_outer_lr for m in args.sync_momentum]
        for label, partition, parts, every, scale, lr, m in runs:
            started = time.perf_counter()
            learners, rounds = simulate(parts, flags, every, scale, lr, m)
            acc = accuracy_of(learners[0], args.dataset, args.support, args.tasks)
            grouped = label != "single"
            print(json.dumps({"run": label, "seed": seed, "sync_every": every if grouped else None,
                              "sync_lr_scale": scale if grouped else None, "sync_outer_lr": lr if grouped else None,
                              "sync_momentum": m if grouped else None, "rounds": rounds,
                              "meta_updates": learners[0].meta_updates, "accuracy_all_tasks": round(acc, 4),
                              "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return 0
