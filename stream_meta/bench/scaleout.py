"""``stream-meta bench scaleout``: members learning one model vs one daemon vs members alone.

Real daemons (``stream-meta run --input-file ... --stop-at-end``, one process per member,
gloo over loopback) on a digits stream split into per-member files: ``iid`` deals the
records round-robin, ``noniid`` gives each member whole tasks (as partitions keyed by task
would). For each run: combined records/s (all records over the slowest member's processing
time ``elapsed_seconds``: sync rounds included; start-up, rendezvous and the end-of-stream
rounds excluded, the same definition for one daemon and for a group), the same over the
busiest member's CPU time in those spells (``cpu_seconds``: what two members would reach
with a core each and no waiting, whatever else the machine runs), the share of the time
spent in sync rounds, and the accuracy over **all** tasks of the meta-parameters a
member ends with (adapted on each task's first ``--support`` records, scored on its
held-out records). Baselines: one daemon on the whole stream, and the members alone
without syncing (their mean accuracy). ``--repeat`` runs each configuration that many
times, interleaved, and reports the best and the median rate (the best is the least
disturbed by other processes on the machine). ``--kafka`` adds the same runs through the
bundled broker (one topic, 2 partitions keyed by task).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from stream_meta.bench.args import floats, ints, one_of
from stream_meta.bench.members import free_port, run_members, write_split
from stream_meta.daemon.checkpoint import CheckpointStore


def accuracy_all_tasks(ckpt_dir: Path, dataset: str, flags: list[str], support: int,
                       n_tasks: int | None = None) -> float:
    """Mean held-out accuracy over every task of the meta-parameters in ``ckpt_dir``'s latest checkpoint."""
    from stream_meta.daemon.app import build_learner
    from stream_meta.daemon.config import load_config

    learner = build_learner(load_config(_as_flags(flags), env={}))
    learner.load_state_dict(CheckpointStore(ckpt_dir).load_latest().state["learner"])
    return accuracy_of(learner, dataset, support, n_tasks)


def accuracy_of(learner, dataset: str, support: int, n_tasks: int | None = None) -> float:
    """Mean held-out accuracy over every task of ``learner``'s meta-parameters, each adapted on
    the task's first ``support`` records."""
    from stream_meta.data.datasets import make_tasks
    from stream_meta.meta.mlp import mlp_forward

    accs = []
    for task in make_tasks(dataset, n_tasks=n_tasks):
        sx, sy = torch.from_numpy(task.train_x[:support]), torch.from_numpy(task.train_y[:support])
        fast = learner._adapt(learner.params, (sx, sy), learner.inner_cfg.steps) if hasattr(learner, "_adapt") \
            else learner.params
        with torch.no_grad():
            pred = mlp_forward(learner.model, fast, torch.from_numpy(task.test_x)).argmax(-1)
        accs.append(float((pred == torch.from_numpy(task.test_y)).float().mean()))
    return sum(accs) / len(accs)


def _sync_bytes(state: dict, flags: list[str]) -> int:
    """Bytes one member sends into one round (float32 payload plus the float64 header)."""
    from stream_meta.daemon.app import build_learner
    from stream_meta.daemon.config import load_config

    learner = build_learner(load_config(_as_flags(flags), env={}))
    learner.load_state_dict(state)
    return 4 * sum(t.numel() for t in learner.shared_tensors().values()) + 8 * 5


def round_cost(flags: list[str], rounds: int = 30) -> dict:
    """Seconds and bytes of one averaging round between two members (threads of this process,
    gloo over loopback), the daemon's model as ``flags`` configure it."""
    import threading

    from prometheus_client import CollectorRegistry

    from stream_meta.daemon.app import build_learner
    from stream_meta.daemon.config import load_config
    from stream_meta.daemon.sync import Sync
    from stream_meta.daemon.sync_config import SyncMetrics, SyncSettings

    cfg, port = load_config(_as_flags(flags), env={}), free_port()
    learners = [build_learner(cfg) for _ in range(2)]
    regs = [CollectorRegistry(), CollectorRegistry()]
    syncs: list = [None, None]
    seconds: list[list[float]] = [[], []]

    def member(rank: int) -> None:
        syncs[rank] = Sync(learners[rank], SyncSettings(rank, 2, "127.0.0.1", port, 1, None, 30.0),
                           SyncMetrics(regs[rank]))
        for i in range(1, rounds + 1):
            started = time.perf_counter()
            syncs[rank].after_learn(learners[rank].meta_updates + i)
            seconds[rank].append(time.perf_counter() - started)

    threads = [threading.Thread(target=member, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times = sorted(seconds[0])
    return {"rounds": rounds, "median_ms": round(1000 * times[len(times) // 2], 2),
            "p90_ms": round(1000 * times[int(len(times) * 0.9)], 2),
            "bytes_per_member": int(regs[0].get_sample_value("stream_meta_sync_bytes"))}


def _as_flags(flags: list[str]) -> dict:
    out = {}
    for name, value in zip(flags[::2], flags[1::2]):
        out[name.lstrip("-").replace("-", "_")] = value
    return out


@dataclass(frozen=True)
class Config:
    """One row of the table: who runs, on what split, syncing how."""

    label: str
    members: int
    partition: str
    sync: bool
    every: int = 10
    momentum: float = 0.0
    overlap: bool = False
    kafka: bool = False
    outer_lr: float = 1.0
    lr_scale: str = "linear"  # the daemons' --sync-lr-scale

    def flags(self) -> list[str]:
        if not self.sync:
            return []
        return ["--sync-lr-scale", self.lr_scale] + (["--sync-momentum", str(self.momentum)] if self.momentum else []) + (
            ["--sync-outer-lr", str(self.outer_lr)] if self.outer_lr != 1 else []) + (
            ["--sync-overlap"] if self.overlap else [])


def _attempt(cfg: Config, summaries: list[dict], manifests: list[dict]) -> dict:
    """Rates of one run: all records over the slowest member's processing time."""
    records = sum(s["records_consumed"] for s in summaries)
    slowest = max(s["elapsed_seconds"] for s in summaries)
    in_sync = max((m.get("sync_seconds") or 0.0) for m in manifests)
    busiest = max(s.get("cpu_seconds") or 0.0 for s in summaries)  # CPU time: the same on a busy machine
    return {"records": records, "records_per_s": round(records / slowest, 1), "sync_share": round(in_sync / slowest, 3),
            "records_per_cpu_s": round(records / busiest, 1) if busiest > 0 else None,
            "per_member_per_s": [s["records_per_second"] for s in summaries], "load": round(os.getloadavg()[0], 2)}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def run(dataset: str, records: int | None, n_tasks: int | None, configs: list[Config], support: int,
        flags: list[str], repeat: int = 1, bootstrap: str | None = None) -> list[dict]:
    """Every config ``repeat`` times (interleaved, so a busy spell hits all alike); one row each."""
    attempts: dict[str, list[dict]] = {c.label: [] for c in configs}
    rows: dict[str, dict] = {}
    with TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        root = Path(tmp)
        splits: dict[tuple[int, str], list[Path]] = {}
        for attempt in range(repeat):
            for cfg in configs:
                work = root / f"{cfg.label}-{attempt}"
                work.mkdir()
                if cfg.kafka:
                    from stream_meta.bench.scaleout_kafka import run_kafka_members

                    summaries = run_kafka_members(bootstrap, dataset, records, n_tasks, cfg.members, work,
                                                  cfg.sync, cfg.every, flags + cfg.flags())
                else:
                    key = (cfg.members, cfg.partition)
                    if key not in splits:
                        (root / "splits" / f"{key[0]}-{key[1]}").mkdir(parents=True)
                        splits[key] = write_split(root / "splits" / f"{key[0]}-{key[1]}", dataset, cfg.members,
                                                  cfg.partition, records, n_tasks)
                    summaries = run_members(splits[key], work, cfg.sync, cfg.every, flags + cfg.flags())
                latest = [CheckpointStore(work / f"member-{r}").load_latest() for r in range(cfg.members)]
                attempts[cfg.label].append(_attempt(cfg, summaries, [c.manifest for c in latest]))
                if attempt == 0:  # the learning is the same every time (rounds fall on meta-update counts)
                    accs = [accuracy_all_tasks(work / f"member-{r}", dataset, flags, support, n_tasks)
                            for r in range(cfg.members)]
                    grouped = cfg.sync and cfg.members > 1
                    rows[cfg.label] = {
                        "run": cfg.label, "members": cfg.members, "partition": cfg.partition,
                        "source": "kafka" if cfg.kafka else "file", "sync_every": cfg.every if grouped else None,
                        "sync_momentum": cfg.momentum if grouped else None,
                        "sync_overlap": cfg.overlap if grouped else None,
                        "sync_outer_lr": cfg.outer_lr if grouped else None,
                        "sync_lr_scale": cfg.lr_scale if grouped else None,
                        "sync_rounds": latest[0].manifest.get("sync_round"),
                        "sync_bytes": _sync_bytes(latest[0].state["learner"], flags) if grouped else 0,
                        "accuracy_all_tasks": round(sum(accs) / len(accs), 4),
                        "accuracy_per_member": [round(a, 4) for a in accs]}
                print(json.dumps({"run": cfg.label, "attempt": attempt, **attempts[cfg.label][-1]}), flush=True)
                shutil.rmtree(work)
    for label, tries in attempts.items():
        rates = [t["records_per_s"] for t in tries]
        best = max(tries, key=lambda t: t["records_per_s"])
        cpu = [t["records_per_cpu_s"] for t in tries if t["records_per_cpu_s"]]
        rows[label].update(records=best["records"], records_per_s=best["records_per_s"],
                           records_per_cpu_s=round(_median(cpu), 1) if cpu else None,
                           records_per_s_median=round(_median(rates), 1), records_per_s_all=rates,
                           sync_share=best["sync_share"], load_at_best=best["load"])
    return [rows[c.label] for c in configs]


def configs_for(sync_everies: list[int], partitions: list[str], momenta: list[float], overlaps: list[bool],
                kafka: bool, outer_lrs: tuple[float, ...] = (1.0,),
                lr_scales: tuple[str, ...] = ("linear",)) -> list[Config]:
    """The table's rows: one daemon, members alone, groups (cadence x momentum x outer lr x overlap x
    step scaling; a label names what differs from the daemon's defaults), Kafka."""
    out = [Config("single", 1, "iid", False)]
    for partition in partitions:
        out.append(Config(f"alone-{partition}", 2, partition, False))
        for every in sync_everies:
            for m in momenta:
                for lr in outer_lrs:
                    for scale in lr_scales:
                        for overlap in overlaps:
                            if overlap and (m or lr != 1):
                                continue  # outer momentum / lr need blocking rounds
                            label = f"group-{partition}-every{every}" + (f"-momentum{m:g}" if m else "") + (
                                f"-outerlr{lr:g}" if lr != 1 else "") + (
                                f"-lrscale-{scale}" if scale != "linear" else "") + ("-overlap" if overlap else "")
                            out.append(Config(label, 2, partition, True, every, m, overlap, outer_lr=lr,
                                              lr_scale=scale))
    if kafka:
        out.append(Config("kafka-single", 1, "noniid", False, kafka=True))
        for overlap in overlaps:
            out.append(Config("kafka-group-noniid-every10" + ("-overlap" if overlap else ""), 2, "noniid", True, 10,
                              overlap=overlap, kafka=True))
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def print_table(rows: list[dict], repeat: int) -> None:
    base = {src: next(r for r in rows if r["members"] == 1 and r["source"] == src)
            for src in {r["source"] for r in rows}}
    print(f"\n{'run':34} {'rec/s':>8} {'x one':>6} {'median':>8} {'x one':>6} {'rec/cpu-s':>9} {'x one':>6} "
          f"{'in sync':>7} {'acc all':>8}  per member")
    for r in rows:
        one = base[r["source"]]
        print(f"{r['run']:34} {r['records_per_s']:8.1f} {r['records_per_s'] / one['records_per_s']:6.2f} "
              f"{r['records_per_s_median']:8.1f} {r['records_per_s_median'] / one['records_per_s_median']:6.2f} "
              f"{r['records_per_cpu_s'] or 0:9.1f} {_ratio(r['records_per_cpu_s'], one['records_per_cpu_s']):>6} "
              f"{r['sync_share']:7.1%} {r['accuracy_all_tasks']:8.4f}  {r['accuracy_per_member']}")
    for r in rows:
        plain = not r["sync_momentum"] and r["sync_outer_lr"] in (1, None) and r.get("sync_lr_scale") in ("linear", None)
        if r["members"] == 2 and r["sync_every"] == 10 and plain:
            mode = "overlapped" if r["sync_overlap"] else "blocking"
            one = base[r["source"]]
            print(f"SPEED-UP {r['source']} {r['partition']} {mode}: 2 members at --sync-every 10 = "
                  f"{r['records_per_s'] / one['records_per_s']:.2f}x one member (best of {repeat}; median "
                  f"{r['records_per_s_median'] / one['records_per_s_median']:.2f}x; issue #15 asks >= 1.6x on files; "
                  f"per CPU-second {_ratio(r['records_per_cpu_s'], one['records_per_cpu_s'])}x, the bound with a "
                  "core per member and no waiting); "
                  f"accuracy all tasks {r['accuracy_all_tasks']:.4f} vs one daemon {one['accuracy_all_tasks']:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-meta bench scaleout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: stream-meta bench scaleout --sync-every 10 "
                                            "--partition iid,noniid --tasks 40 --repeat 3 --kafka")
    parser.add_argument("--dataset", default="digits-rotations", help="digits-rotations or digits-permutations")
    parser.add_argument("--records", type=int, default=None, help="stream length (default: all records of --tasks)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks in the stream (default: the data set's, 10); "
                        "more tasks make a longer stream, so start-up effects weigh less")
    parser.add_argument("--sync-every", type=ints, default=[1, 10, 100], help="comma-separated meta-updates between rounds")
    parser.add_argument("--sync-momentum", type=floats, default=[0.0], help="comma-separated outer momenta (0: plain averaging)")
    parser.add_argument("--sync-outer-lr", type=floats, default=[1.0], help="comma-separated slow learning rates (1: to the mean)")
    parser.add_argument("--sync-lr-scale", type=one_of("none", "sqrt", "linear"), default=["linear"],
                        help="comma-separated: the members' meta-steps x members learning in parallel (linear, the "
                        "daemon's default), x its square root, or none (meta_lr as alone)")
    parser.add_argument("--overlap", type=one_of("off", "on"), default=["off"], help="comma-separated: off, on (the daemons' --sync-overlap)")
    parser.add_argument("--partition", type=one_of("iid", "noniid"), default=["iid", "noniid"], help="comma-separated: iid, noniid")
    parser.add_argument("--support", type=int, default=20, help="records each task is adapted on before scoring")
    parser.add_argument("--learn-batch", type=int, default=1, help="the daemons' --learn-batch")
    parser.add_argument("--preset", default=None, help="the daemons' --preset (default: the daemon's default learner)")
    parser.add_argument("--seed", type=int, default=0, help="the daemons' --seed (the learner's initialisation and "
                        "sampling; the stream is the same): runs are deterministic, so seeds give the spread")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration (best and median reported)")
    parser.add_argument("--kafka", action="store_true", help="also one daemon and a 2-member group through the "
                        "bundled broker (--bootstrap: another), one topic with 2 partitions keyed by task")
    parser.add_argument("--bootstrap", default=None, help="with --kafka: a running broker instead of the bundled one")
    parser.add_argument("--no-round-cost", action="store_true", help="skip the loopback round-cost measurement")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    torch.set_num_threads(1)
    flags = ["--input-dim", "64", "--num-classes", "10", "--learn-batch", str(args.learn_batch), "--seed", str(args.seed)]
    if args.preset is not None:
        flags += ["--preset", args.preset]
    configs = configs_for(args.sync_every, args.partition, args.sync_momentum,
                          [v == "on" for v in args.overlap], args.kafka, tuple(args.sync_outer_lr),
                          tuple(args.sync_lr_scale))
    print(f"load average at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    if args.kafka and args.bootstrap is None:
        from stream_meta.data.local_broker import LocalBroker

        with LocalBroker() as broker:
            rows = run(args.dataset, args.records, args.tasks, configs, args.support, flags, args.repeat,
                       broker.bootstrap)
    else:
        rows = run(args.dataset, args.records, args.tasks, configs, args.support, flags, args.repeat, args.bootstrap)
    print_table(rows, args.repeat)
    if not args.no_round_cost:
        cost = round_cost(flags)
        print(f"sync round, 2 members on loopback: median {cost['median_ms']} ms, p90 {cost['p90_ms']} ms, "
              f"{cost['bytes_per_member']} bytes sent per member")
    print(f"(load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0
