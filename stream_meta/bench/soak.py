"""``stream-meta bench soak``: is the daemon flat over a long stream? records/s and peak RSS.

For each stream length (default 10k and 1M records) one fresh process builds the real
service (``build_service``: the file-path wiring, the configured learner, checkpoints every
``checkpoint_every_records`` into a temporary directory) and runs it until the stream ends.
The stream is a real data set cycled: its records, encoded once (wire v2 by default), are
replayed round after round at increasing offsets; with ``--task-ids new`` (default) every
round renames its tasks (``rot-036#7``), so the daemon keeps meeting new tasks as a feed
with unbounded task ids would; ``--task-ids cycle`` keeps the data set's own ids (tasks
return). Each process reports its records/s of processing time, records/s over the whole
run, its peak RSS (``VmHWM``), and samples of RSS and rate at every tenth of the stream so
growth shows where it starts. Separate processes keep the peak RSS figures comparable.

example: stream-meta bench soak --sizes 10000,1000000 --learn-batch 64
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from connectors.base import Offsets, RawRecord

from stream_meta.bench.args import ints


def _cpu_s() -> float:
    """CPU seconds this process used (user + system): far less disturbed by other jobs on a shared
    machine than wall time, so records per CPU-second compares a 10k and a 1M run fairly."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` size in kB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class CycledSource:
    """A :class:`connectors.base.Source` replaying ``base`` (value, headers, task) round after round
    until ``total`` records were returned; a record's offset is its position in the stream."""

    def __init__(self, base: list[tuple[bytes, tuple, str]], total: int, poll_size: int, rename_tasks: bool,
                 on_poll=None, start: Offsets | None = None) -> None:
        self.base, self.total, self.poll_size, self.rename_tasks = base, total, poll_size, rename_tasks
        self.on_poll = on_poll
        self.next = (start or {}).get(("soak", 0), 0)

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[RawRecord]:
        out, limit = [], self.poll_size if max_records is None else min(max_records, self.poll_size)
        while len(out) < limit and self.next < self.total:
            rnd, i = divmod(self.next, len(self.base))
            value, headers, task = self.base[i]
            if self.rename_tasks and rnd:
                headers = tuple(h for h in headers if h[0] != "task") + (("task", f"{task}#{rnd}".encode()),)
            out.append(RawRecord("soak", 0, self.next, value, None, headers))
            self.next += 1
        if self.on_poll is not None:
            self.on_poll(self.next)
        return out

    def commit(self, offsets: Offsets) -> None:
        pass

    def lag(self) -> int | None:
        return self.total - self.next

    def lag_by_partition(self) -> dict[int, int]:
        return {0: self.total - self.next}

    def backlog_done(self) -> bool:
        return self.next >= self.total

    def connected(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _base_records(dataset: str, limit: int, data_dir: str, fmt: str) -> list[tuple[bytes, tuple, str]]:
    from stream_meta.daemon.records import encode
    from stream_meta.daemon.wire import encode_f32
    from stream_meta.data.datasets import stream

    out = []
    for r in stream(dataset, limit=limit, data_dir=data_dir):
        if fmt == "f32":
            value, headers = encode_f32(r["x"], r["y"], r["task"], r["id"])
            out.append((value, tuple(headers), r["task"]))
        else:  # v1 cannot rename tasks per round without re-encoding: the task goes in a header-free body once
            out.append((encode(r["x"], r["y"], r["task"], r["id"]), (), r["task"]))
    return out


def child(args: argparse.Namespace) -> dict:
    """One stream length in this process; returns the figures (printed as JSON by ``main``)."""
    from prometheus_client import CollectorRegistry

    from stream_meta.daemon.app import build_service, configure_torch
    from stream_meta.daemon.config import load_config
    from stream_meta.data.datasets import info

    meta = info(args.dataset)
    base = _base_records(args.dataset, args.base_records, args.data_dir, args.format)
    with tempfile.TemporaryDirectory(prefix="stream-meta-soak-") as tmp:
        dummy = Path(tmp) / "unused.jsonl"  # build_service wires the file path; the source is replaced below
        dummy.write_bytes(b"")
        flags = {"input_file": dummy, "input_dim": meta.input_dim, "num_classes": meta.num_classes,
                 "learn_batch": args.learn_batch, "stop_at_end": True, "checkpoint_dir": Path(tmp) / "ckpt",
                 "log_level": "WARNING", **json.loads(args.set)}
        cfg = load_config(flags)
        configure_torch(cfg)  # as the daemon: one thread (the default), subnormals flushed unless --set says not
        service = build_service(cfg, CollectorRegistry())
        samples: list[dict] = []
        step = max(1, args.records // 10)
        started, cpu_started = time.perf_counter(), _cpu_s()

        sampling = [0.0, 0.0]  # CPU and wall seconds spent taking samples, left out of the rates

        def on_poll(n: int) -> None:
            if n >= (len(samples) + 1) * step:
                cpu_before, wall_before = _cpu_s(), time.perf_counter()
                # gc-tracked Python objects: growth here is a container growing, not the allocator
                samples.append({"records": n, "rss_mb": _status_kb("VmRSS") / 1024, "objects": len(gc.get_objects()),
                                "processing_s": service.stats.elapsed_seconds, "wall_s": wall_before - started - sampling[1],
                                "cpu_s": cpu_before - cpu_started - sampling[0]})
                sampling[0] += _cpu_s() - cpu_before
                sampling[1] += time.perf_counter() - wall_before

        poll_size = cfg.max_poll_records
        service.open_source = lambda offsets, on_revoke: CycledSource(
            base, args.records, poll_size, args.task_ids == "new", on_poll, offsets)
        if args.profile is not None:  # the service's run alone: start-up and data loading stay out
            import cProfile

            profiler = cProfile.Profile()
            summary = profiler.runcall(service.run)
            profiler.dump_stats(args.profile)
        else:
            summary = service.run()
        wall, cpu = time.perf_counter() - started - sampling[1], _cpu_s() - cpu_started - sampling[0]
        ckpt = {x.name: x.value for x in service.metrics.checkpoint_seconds.collect()[0].samples}
    for a, b in zip([{"records": 0, "processing_s": 0.0, "wall_s": 0.0, "cpu_s": 0.0}] + samples, samples):
        b["rate"] = (b["records"] - a["records"]) / max(1e-9, b["processing_s"] - a["processing_s"])
        b["cpu_rate"] = (b["records"] - a["records"]) / max(1e-9, b["cpu_s"] - a["cpu_s"])
    return {"records": summary["records_consumed"], "records_per_second": summary["records_per_second"],
            "wall_rate": summary["records_consumed"] / wall, "cpu_rate": summary["records_consumed"] / cpu, "peak_rss_mb": _status_kb("VmHWM") / 1024,
            "final_rss_mb": _status_kb("VmRSS") / 1024, "accuracy": summary["prequential_accuracy"],
            "tasks_seen": summary["tasks_seen"],
            "checkpoints": ckpt.get("stream_meta_checkpoint_seconds_count", 0),
            "checkpoint_seconds": ckpt.get("stream_meta_checkpoint_seconds_sum", 0.0), "latency": {"p50": summary.get("prediction_latency_p50_s"), "p99": summary.get("prediction_latency_p99_s")}, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stream-meta bench soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=ints, default=[10000, 1000000], help="stream lengths, one process each")
    p.add_argument("--dataset", default="digits-rotations", help="a built-in data set, cycled")
    p.add_argument("--data-dir", default="data/mnist")
    p.add_argument("--base-records", type=int, default=5000, help="records of the data set cycled")
    p.add_argument("--format", choices=["f32", "json"], default="f32")
    p.add_argument("--task-ids", choices=["new", "cycle"], default="new",
                   help="new: each round renames its tasks (f32 only); cycle: the data set's ids come back")
    p.add_argument("--learn-batch", type=int, default=64)
    p.add_argument("--set", default="{}", help='further run settings as JSON, e.g. \'{"preset": "fomaml"}\'')
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--profile", type=Path, default=None,
                   help="cProfile the service's run into this file (one size only; read it with pstats)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.format == "json" and args.task_ids == "new":
        p.error("--task-ids new needs --format f32 (task ids travel in a header)")
    if args.child is not None:
        args.records = args.child
        print(json.dumps(child(args)))
        return 0

    rows = []
    for n in args.sizes:
        cmd = [sys.executable, "-m", "stream_meta.bench.soak", "--child", str(n), "--dataset", args.dataset,
               "--data-dir", args.data_dir, "--base-records", str(args.base_records), "--format", args.format,
               "--task-ids", args.task_ids, "--learn-batch", str(args.learn_batch), "--set", args.set,
               *(["--profile", str(args.profile)] if args.profile else [])]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        rows.append({"size": n, **json.loads(out.strip().splitlines()[-1]), "loadavg": os.getloadavg()})
        r = rows[-1]
        print(f"  {n:>9,d} records: {r['records_per_second']:8.0f} rec/s processing, {r['wall_rate']:8.0f} wall, "
              f"{r['cpu_rate']:8.0f} per CPU-s, peak RSS {r['peak_rss_mb']:7.1f} MB, load {r['loadavg'][0]:.2f}", flush=True)
    print(f"{args.dataset} cycled ({args.base_records} records, task ids {args.task_ids}), --learn-batch "
          f"{args.learn_batch}, wire {args.format}, one torch thread, one process per row")
    print(f"{'records':>10s} {'rec/s':>8s} {'wall rec/s':>10s} {'rec/CPU-s':>9s} {'peak RSS MB':>12s} {'final RSS MB':>12s} "
          f"{'p50 ms':>7s} {'p99 ms':>7s} {'accuracy':>9s} {'tasks':>7s} {'ms/ckpt':>8s} {'load':>5s}")
    for r in rows:
        lat = r["latency"]
        ms = lambda v: "-" if v is None else f"{1000 * v:.0f}"  # noqa: E731
        print(f"{r['records']:>10,d} {r['records_per_second']:8.0f} {r['wall_rate']:10.0f} {r['cpu_rate']:9.0f} "
              f"{r['peak_rss_mb']:12.1f} "
              f"{r['final_rss_mb']:12.1f} {ms(lat['p50']):>7s} {ms(lat['p99']):>7s} {100 * r['accuracy']:8.1f}% "
              f"{r['tasks_seen']:>7d} {1000 * r['checkpoint_seconds'] / max(1, r['checkpoints']):8.0f} {r['loadavg'][0]:5.2f}")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(f"last vs first: rec/s {100 * (b['records_per_second'] / a['records_per_second'] - 1):+.1f}%, "
              f"wall rec/s {100 * (b['wall_rate'] / a['wall_rate'] - 1):+.1f}%, "
              f"rec/CPU-s {100 * (b['cpu_rate'] / a['cpu_rate'] - 1):+.1f}% (goal within ±10%), peak RSS {b['peak_rss_mb'] - a['peak_rss_mb']:+.1f} MB (goal <= +50 MB)")
    if rows:
        print("RSS and rate at each tenth of the last run:")
        for s in rows[-1]["samples"]:
            print(f"  {s['records']:>10,d}  RSS {s['rss_mb']:7.1f} MB  {s['objects']:>9,d} objects  "
                  f"{s['rate']:8.0f} rec/s  {s['cpu_rate']:8.0f} rec/CPU-s")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
