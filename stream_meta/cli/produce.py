"""``stream-meta produce``: publish a built-in data set to a topic in wire format v1 or v2."""

from __future__ import annotations

import argparse


def cmd_produce(args: argparse.Namespace) -> int:
    from stream_meta.data.datasets import DATASETS, info, stream
    from stream_meta.errors import ConfigError

    if args.list:
        width = max(len(n) for n in DATASETS)
        for name, d in DATASETS.items():
            print(f"{name:<{width}}  {d.input_dim}-d, {d.num_classes} classes: {d.description}")
        return 0
    missing = [flag for flag, v in (("--topic", args.topic), ("--dataset", args.dataset)) if not v]
    if missing:
        raise ConfigError(f"produce needs {' and '.join(missing)} (try --list for the data sets)")
    info(args.dataset)  # an unknown name fails here, listing the valid ones, before connecting
    from connectors.kafka import KafkaSink, raise_failures
    from stream_meta.daemon.records import encode
    from stream_meta.daemon.wire import encode_f32

    # The records first: a bad data set name or a missing [data] extra fails before connecting.
    records = stream(args.dataset, seed=args.seed, limit=args.limit, n_tasks=args.tasks, per_task=args.per_task,
                     data_dir=args.data_dir)
    sink = KafkaSink(bootstrap=args.bootstrap)
    n = 0
    for rec in records:
        if args.format == "f32":
            value, headers = encode_f32(rec["x"], rec["y"], rec["task"], rec["id"])
            sink.send(args.topic, value, None, headers)
        else:
            sink.send(args.topic, encode(rec["x"], rec["y"], rec["task"], rec["id"]))
        n += 1
        if n % 5000 == 0:
            raise_failures(sink.flush())
    raise_failures(sink.flush())
    sink.close()
    print(f"published {n} records of {args.dataset} to {args.topic}")
    return 0
