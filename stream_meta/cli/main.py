"""``stream-meta``: a thin CLI. Parse, build, run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stream_meta import __version__
from stream_meta.errors import StreamMetaError


EXAMPLES = {
    "run": "example: stream-meta run --bootstrap 127.0.0.1:9092 --topic digits --input-dim 64 --num-classes 10 "
    "--metrics-port 9108 --checkpoint-dir ./ckpt",
    "produce": "example: stream-meta produce --bootstrap 127.0.0.1:9092 --topic digits --dataset digits-rotations --limit 1500",
    "demo": "example: stream-meta demo            # local broker, real digits stream, summary in ~1 minute",
    "inspect": "example: stream-meta checkpoint inspect ./ckpt --json",
    "status": "example: stream-meta status --metrics-url http://127.0.0.1:9108/metrics",
}


def _parser() -> argparse.ArgumentParser:
    from stream_meta.daemon.config import add_flags

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
    bench.add_argument("name", choices=["meta-step", "engine", "fewshot", "cl", "decode", "taskfree"], help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (try: bench NAME --help)")
    return p


def cmd_inspect(args: argparse.Namespace) -> int:
    from stream_meta.cli.checkpoint_inspect import describe_checkpoint

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
        from stream_meta.bench.meta_step import main as bench_main
    elif args.name == "fewshot":
        from stream_meta.bench.fewshot import main as bench_main
    elif args.name == "cl":
        from stream_meta.bench.cl import main as bench_main
    elif args.name == "decode":
        from stream_meta.bench.decode import main as bench_main
    elif args.name == "taskfree":
        from stream_meta.bench.taskfree import main as bench_main
    else:
        from stream_meta.bench.engine import main as bench_main
    return bench_main(rest)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from stream_meta.cli.run import cmd_run

            return cmd_run(args)
        if args.command == "produce":
            from stream_meta.cli.produce import cmd_produce

            return cmd_produce(args)
        if args.command == "demo":
            from stream_meta.cli.demo import run_demo

            return run_demo(args)
        if args.command == "checkpoint":
            return cmd_inspect(args)
        if args.command == "status":
            from stream_meta.cli.status import status

            print(status(args.metrics_url, args.json, args.timeout_s))
            return 0
        return cmd_bench(args)
    except StreamMetaError as exc:
        print(f"stream-meta: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
