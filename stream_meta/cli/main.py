"""``stream-meta``: a thin CLI. Parse, build, run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from stream_meta import __version__
from stream_meta.errors import StreamMetaError


# `stream-meta bench NAME`: the module whose main(argv) runs it (imported only when chosen).
BENCHES = {
    "meta-step": "stream_meta.bench.meta_step",
    "engine": "stream_meta.bench.engine",
    "fewshot": "stream_meta.bench.fewshot",
    "cl": "stream_meta.bench.cl",
    "decode": "stream_meta.bench.decode",
    "kafka": "stream_meta.bench.kafka",
    "defaults": "stream_meta.bench.defaults",
    "taskfree": "stream_meta.bench.taskfree",
    "scaleout": "stream_meta.bench.scaleout",
    "scaleout-sim": "stream_meta.bench.scaleout_sim",
    "soak": "stream_meta.bench.soak",
}

EXAMPLES = {
    "run": "example: stream-meta run --bootstrap 127.0.0.1:9092 --topic digits --input-dim 64 --num-classes 10 "
    "--metrics-port 9108 --checkpoint-dir ./ckpt",
    "produce": "example: stream-meta produce --bootstrap 127.0.0.1:9092 --topic digits --dataset digits-rotations --limit 1500",
    "demo": "example: stream-meta demo            # local broker, real digits stream, summary in ~1 minute",
    "inspect": "example: stream-meta checkpoint inspect ./ckpt --json",
    "status": "example: stream-meta status --metrics-url http://127.0.0.1:9108/metrics",
    "broker": "example: stream-meta broker --port 9092   # then: stream-meta produce --bootstrap 127.0.0.1:9092 ...",
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
    run.add_argument("--fresh", action="store_true",
                     help="start over: move an existing --checkpoint-dir aside to DIR.old-<UTC time> first "
                     "(never deleted); with Kafka the group's committed offsets still apply: "
                     "use a new --group to learn the topic from its start")

    prod = sub.add_parser("produce", help="publish a built-in data set in wire format v1 (JSON) or v2 (f32)",
                          epilog=EXAMPLES["produce"])
    prod.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers (default: %(default)s)")
    prod.add_argument("--topic", help="topic to publish to (required unless --list)")
    prod.add_argument("--dataset", help="a built-in data set (required unless --list; see --list)")
    prod.add_argument("--list", action="store_true", help="list the built-in data sets and exit")
    prod.add_argument("--limit", type=int, default=None, help="records to publish at most (default: all)")
    prod.add_argument("--tasks", type=int, default=None, help="number of tasks (default: the data set's)")
    prod.add_argument("--per-task", type=int, default=None, help="records per task (default: the data set's)")
    prod.add_argument("--data-dir", default=None, help="MNIST idx directory for mnist-* data sets (see `make mnist`)")
    prod.add_argument("--seed", type=int, default=0, help="seed of the data set's tasks (default: %(default)s)")
    prod.add_argument("--format", choices=["json", "f32"], default="json",
                      help="wire format v1 (JSON) or v2 (binary float32 with headers) (default: %(default)s)")

    brk = sub.add_parser("broker", help="run the bundled Kafka-compatible test broker in the foreground",
                         description="Runs Tansu (in-memory, from the dev extra) on 127.0.0.1 until Ctrl-C, "
                         "for trying stream-meta without a Kafka cluster. Its data is gone when it stops.",
                         epilog=EXAMPLES["broker"])
    brk.add_argument("--port", type=int, default=9092, help="port on 127.0.0.1 (default: %(default)s; 0 = any free)")

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
    bench.add_argument("name", choices=list(BENCHES), help="which benchmark")
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
    import importlib

    # Only a leading "--" belongs to this parser; a later one passes flags on (e.g. bench
    # fewshot's `stream-meta run` flags), so it stays.
    rest = args.args[1:] if args.args[:1] == ["--"] else list(args.args)
    return importlib.import_module(BENCHES[args.name]).main(rest)


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
        if args.command == "broker":
            from stream_meta.cli.broker import cmd_broker

            return cmd_broker(args)
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
    except BrokenPipeError:
        # The reader went away (`status --json | head`): nothing left to say to anyone.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
