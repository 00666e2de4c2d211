"""``stream-meta produce``: publish a built-in data set to a topic in wire format v1."""

from __future__ import annotations

import argparse


def cmd_produce(args: argparse.Namespace) -> int:
    from stream_meta.data.datasets import stream
    from connectors.kafka import KafkaSink
    from stream_meta.daemon.records import encode

    # The records first: a bad data set name or a missing [data] extra fails before connecting.
    records = stream(args.dataset, seed=args.seed, limit=args.limit, n_tasks=args.tasks, per_task=args.per_task,
                     data_dir=args.data_dir)
    sink = KafkaSink(bootstrap=args.bootstrap)
    n = 0
    for rec in records:
        sink.send(args.topic, encode(rec["x"], rec["y"], rec["task"], rec["id"]))
        n += 1
        if n % 5000 == 0:
            sink.flush()
    sink.flush()
    sink.close()
    print(f"published {n} records of {args.dataset} to {args.topic}")
    return 0
