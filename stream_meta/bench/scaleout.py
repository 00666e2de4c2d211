"""``stream-meta bench scaleout``: members learning one model vs one daemon vs members alone.

Real daemons (``stream-meta run --input-file ... --stop-at-end``, one process per member,
gloo over loopback) on a digits stream split into per-member files: ``iid`` deals the
records round-robin, ``noniid`` gives each member whole tasks (as partitions keyed by task
would). For each run: combined records/s (all records over the slowest member's processing
time, sync rounds included), sync rounds and seconds, and the accuracy over **all** tasks of
the meta-parameters a member ends with (adapted on each task's first ``--support`` records,
scored on its held-out records). Baselines: one daemon on the whole stream, and the members
alone without syncing (their mean accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from stream_meta.daemon.checkpoint import CheckpointStore
from stream_meta.daemon.records import encode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_split(directory: Path, dataset: str, members: int, partition: str, records: int | None) -> list[Path]:
    """One JSON-lines file per member."""
    from stream_meta.data.datasets import stream

    paths = [directory / f"member-{i}.jsonl" for i in range(members)]
    files = [p.open("wb") for p in paths]
    tasks: dict[str, int] = {}
    for n, rec in enumerate(stream(dataset, limit=records)):
        t = tasks.setdefault(rec["task"], len(tasks))
        files[(n if partition == "iid" else t) % members].write(encode(rec["x"], rec["y"], rec["task"], rec["id"]) + b"\n")
    for f in files:
        f.close()
    return paths


def run_members(paths: list[Path], out: Path, sync: bool, sync_every: int, flags: list[str]) -> list[dict]:
    """Start one daemon per file (a group when ``sync``), wait for all; their summaries."""
    port, procs = _free_port(), []
    for rank, src in enumerate(paths):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if sync and len(paths) > 1:
            env.update(WORLD_SIZE=str(len(paths)), RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        else:
            env.pop("WORLD_SIZE", None)
        ckpt = out / f"member-{rank}"
        cmd = [sys.executable, "-m", "stream_meta.cli", "run", "--input-file", str(src), "--checkpoint-dir", str(ckpt),
               "--stop-at-end", "--metrics-port", "0", "--summary-json", str(ckpt / "summary.json"),
               "--sync-every", str(sync_every), "--log-level", "WARNING", *flags]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"member exited {p.returncode}: {err[-2000:]}")
    return [json.loads((out / f"member-{r}" / "summary.json").read_text()) for r in range(len(paths))]


def accuracy_all_tasks(ckpt_dir: Path, dataset: str, flags: list[str], support: int) -> float:
    """Mean held-out accuracy over every task of the meta-parameters in ``ckpt_dir``'s latest checkpoint."""
    from stream_meta.daemon.app import build_learner
    from stream_meta.daemon.checkpoint import CheckpointStore
    from stream_meta.daemon.config import load_config
    from stream_meta.data.datasets import make_tasks
    from stream_meta.meta.mlp import mlp_forward

    cfg = load_config(_as_flags(flags), env={})
    learner = build_learner(cfg)
    learner.load_state_dict(CheckpointStore(ckpt_dir).load_latest().state["learner"])
    accs = []
    for task in make_tasks(dataset):
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
    from stream_meta.daemon.sync import Sync, SyncMetrics, SyncSettings

    cfg, port = load_config(_as_flags(flags), env={}), _free_port()
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


def _row(label: str, summaries: list[dict], accs: list[float], seconds: float) -> dict:
    records = sum(s["records_consumed"] for s in summaries)
    slowest = max(s["elapsed_seconds"] for s in summaries)
    return {"run": label, "members": len(summaries), "records": records,
            "records_per_s": round(records / slowest, 1), "accuracy_all_tasks": round(sum(accs) / len(accs), 4),
            "accuracy_per_member": [round(a, 4) for a in accs], "wall_s": round(seconds, 1)}


def run(dataset: str, records: int | None, sync_everies: list[int], partitions: list[str], support: int,
        flags: list[str]) -> list[dict]:
    rows = []
    with TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        root = Path(tmp)

        def one(label: str, members: int, partition: str, sync: bool, every: int) -> None:
            work = root / label
            work.mkdir()
            paths = write_split(work, dataset, members, partition, records)
            started = time.monotonic()
            summaries = run_members(paths, work, sync, every, flags)
            accs = [accuracy_all_tasks(work / f"member-{r}", dataset, flags, support) for r in range(members)]
            latest = CheckpointStore(work / "member-0").load_latest()
            rows.append({**_row(label, summaries, accs, time.monotonic() - started), "partition": partition,
                         "sync_every": every if sync and members > 1 else None,
                         "sync_rounds": latest.manifest.get("sync_round"),
                         "sync_bytes": _sync_bytes(latest.state["learner"], flags) if sync and members > 1 else 0})
            print(json.dumps(rows[-1]), flush=True)

        one("single", 1, "iid", False, 1)
        for partition in partitions:
            one(f"alone-{partition}", 2, partition, False, 1)
            for every in sync_everies:
                one(f"group-{partition}-every{every}", 2, partition, True, every)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-meta bench scaleout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: stream-meta bench scaleout --sync-every 1,10,100 "
                                            "--partition iid,noniid --dataset digits-rotations")
    parser.add_argument("--dataset", default="digits-rotations", help="digits-rotations or digits-permutations")
    parser.add_argument("--records", type=int, default=None, help="stream length (default: the whole data set)")
    parser.add_argument("--sync-every", default="1,10,100", help="comma-separated meta-updates between rounds")
    parser.add_argument("--partition", default="iid,noniid", help="comma-separated: iid, noniid")
    parser.add_argument("--support", type=int, default=20, help="records each task is adapted on before scoring")
    parser.add_argument("--learn-batch", type=int, default=1, help="the daemons' --learn-batch")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    flags = ["--input-dim", "64", "--num-classes", "10", "--learn-batch", str(args.learn_batch)]
    rows = run(args.dataset, args.records, [int(v) for v in args.sync_every.split(",")],
               args.partition.split(","), args.support, flags)
    single = rows[0]
    print(f"\n{'run':28} {'rec/s':>8} {'x single':>8} {'acc all':>8}  per member")
    for r in rows:
        print(f"{r['run']:28} {r['records_per_s']:8.1f} {r['records_per_s'] / single['records_per_s']:8.2f} "
              f"{r['accuracy_all_tasks']:8.4f}  {r['accuracy_per_member']}")
    cost = round_cost(flags)
    print(f"sync round, 2 members on loopback: median {cost['median_ms']} ms, p90 {cost['p90_ms']} ms, "
          f"{cost['bytes_per_member']} bytes sent per member")
    print(f"(load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0
