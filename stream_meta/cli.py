"""``stream-meta``: a thin CLI. Parse, build, run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from stream_meta import __version__
from stream_meta.errors import StreamMetaError

log = logging.getLogger("stream_meta")

EXAMPLES = {
    "run": "example: stream-meta run --bootstrap 127.0.0.1:9092 --topic digits --input-dim 64 --num-classes 10 "
    "--metrics-port 9108 --checkpoint-dir ./ckpt",
    "produce": "example: stream-meta produce --bootstrap 127.0.0.1:9092 --topic digits --dataset digits-rotations --limit 1500",
    "demo": "example: stream-meta demo            # local broker, real digits stream, summary in ~1 minute",
    "inspect": "example: stream-meta checkpoint inspect ./ckpt --json",
    "status": "example: stream-meta status --metrics-url http://127.0.0.1:9108/metrics",
}


def _parser() -> argparse.ArgumentParser:
    from stream_meta.config import add_flags

    p = argparse.ArgumentParser(
        prog="stream-meta",
        description="A continual meta-learning daemon: consumes a stream, predicts each record, then learns from it.",
        epilog="example: stream-meta demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"stream-meta {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume a topic and learn from it", epilog=EXAMPLES["run"])
    add_flags(run)

    prod = sub.add_parser("produce", help="publish a built-in data set in wire format v1", epilog=EXAMPLES["produce"])
    prod.add_argument("--bootstrap", default="127.0.0.1:9092")
    prod.add_argument("--topic", required=True)
    prod.add_argument("--dataset", required=True, help="a built-in data set (see --list)")
    prod.add_argument("--limit", type=int, default=None, help="records to publish at most")
    prod.add_argument("--tasks", type=int, default=None, help="number of tasks (data set default if omitted)")
    prod.add_argument("--per-task", type=int, default=None, help="records per task")
    prod.add_argument("--data-dir", default=None, help="MNIST idx directory for mnist-* data sets (see `make mnist`)")
    prod.add_argument("--seed", type=int, default=0)

    demo = sub.add_parser("demo", help="the embedded default: local broker + real data stream + daemon", epilog=EXAMPLES["demo"])
    demo.add_argument("--forever", action="store_true", help="keep producing and learning until Ctrl-C")
    demo.add_argument("--dataset", default="digits-rotations")
    demo.add_argument("--records", type=int, default=None, help="records to stream (default: the whole data set)")
    demo.add_argument("--metrics-port", type=int, default=0, help="0 picks a free port (logged)")
    demo.add_argument("--summary-json", type=Path, default=None)

    ckpt = sub.add_parser("checkpoint", help="look at checkpoints")
    ckpt_sub = ckpt.add_subparsers(dest="checkpoint_command", required=True)
    insp = ckpt_sub.add_parser("inspect", help="describe the latest checkpoint in DIR", epilog=EXAMPLES["inspect"])
    insp.add_argument("directory", type=Path)
    insp.add_argument("--json", action="store_true")

    status = sub.add_parser("status", help="one-screen summary of a running daemon, from its /metrics",
                            epilog=EXAMPLES["status"])
    status.add_argument("--metrics-url", default="http://127.0.0.1:9108/metrics",
                        help="the daemon's /metrics URL (or HOST:PORT)")
    status.add_argument("--json", action="store_true", help="print the summary as JSON")
    status.add_argument("--timeout-s", type=float, default=5.0)

    bench = sub.add_parser("bench", help="benchmarks that print their figures")
    bench.add_argument("name", choices=["meta-step", "engine", "fewshot", "cl"], help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (try: bench NAME --help)")
    return p


def _finish(summary: dict, summary_json: Path | None) -> None:
    from stream_meta.stats import format_summary

    print(format_summary(summary))
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        log.info("summary written to %s", summary_json)


def cmd_run(args: argparse.Namespace) -> int:
    from stream_meta.config import load_config
    from stream_meta.logs import setup_logging

    flags = {k: v for k, v in vars(args).items() if k != "command"}
    cfg = load_config(flags)
    setup_logging(cfg.log_format, cfg.log_level)
    summary = run_daemon(cfg)
    _finish(summary, cfg.summary_json)
    return 0


def run_daemon(cfg) -> dict:
    """Builds the service from ``cfg``, serves its endpoints, runs it until stopped."""
    import torch
    from prometheus_client import CollectorRegistry

    from stream_meta.factory import build_service
    from stream_meta.http import HealthServer

    torch.set_num_threads(1 if cfg.deterministic else cfg.torch_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    log.info("stream-meta %s starting with %s", __version__, json.dumps(cfg.masked(), sort_keys=True))
    registry = CollectorRegistry()
    service = build_service(cfg, registry)
    server = None
    if cfg.metrics_port is not None:
        server = HealthServer(registry, cfg.metrics_host, cfg.metrics_port, service.alive, service.ready).start()
        log.info("metrics on %s/metrics (health: /healthz, /readyz)", server.url)
    def on_signal(signum: int, _frame) -> None:
        service.request_stop(signal.Signals(signum).name)
        # A graceful stop (finish the record, final checkpoint) that hangs, e.g. on an
        # unreachable broker while flushing dead letters, must not keep the process
        # alive forever: exit non-zero; the last checkpoint is intact.
        watchdog = threading.Timer(cfg.shutdown_timeout_s, _shutdown_timed_out, (cfg.shutdown_timeout_s,))
        watchdog.daemon = True
        watchdog.start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return service.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if server is not None:
            server.stop()


def _shutdown_timed_out(timeout_s: float) -> None:
    log.error("graceful stop did not finish within %.0fs (--shutdown-timeout-s): exiting with code 3", timeout_s)
    logging.shutdown()
    os._exit(3)


def cmd_produce(args: argparse.Namespace) -> int:
    from connectors.datasets import stream
    from connectors.kafka import KafkaSink
    from stream_meta.records import encode

    sink = KafkaSink(bootstrap=args.bootstrap)
    n = 0
    for rec in stream(args.dataset, seed=args.seed, limit=args.limit, n_tasks=args.tasks, per_task=args.per_task,
                      data_dir=args.data_dir):
        sink.send(args.topic, encode(rec["x"], rec["y"], rec["task"], rec["id"]))
        n += 1
        if n % 5000 == 0:
            sink.flush()
    sink.flush()
    sink.close()
    print(f"published {n} records of {args.dataset} to {args.topic}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from stream_meta.inspect import describe_checkpoint

    info = describe_checkpoint(args.directory)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    rest = [a for a in args.args if a != "--"]
    if args.name == "meta-step":
        from stream_meta.meta.bench import main as bench_main
    elif args.name == "fewshot":
        from stream_meta.bench_fewshot import main as bench_main
    elif args.name == "cl":
        from stream_meta.bench_cl import main as bench_main
    else:
        from stream_meta.bench_engine import main as bench_main
    return bench_main(rest)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "produce":
            return cmd_produce(args)
        if args.command == "demo":
            from stream_meta.demo import run_demo

            return run_demo(args)
        if args.command == "checkpoint":
            return cmd_inspect(args)
        if args.command == "status":
            from stream_meta.status import status

            print(status(args.metrics_url, args.json, args.timeout_s))
            return 0
        return cmd_bench(args)
    except StreamMetaError as exc:
        print(f"stream-meta: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
