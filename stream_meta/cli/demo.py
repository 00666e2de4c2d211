"""``stream-meta demo``: the embedded default, start to finish on one machine.

Starts a local Kafka-compatible broker, publishes a multi-task stream of real
data (rotated scikit-learn digits, each rotation a task) with a few malformed
messages mixed in, runs the daemon on it with a progress line and live
metrics, and prints the summary: accuracy by position within each task shows
the learner adapting as a task goes on.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path

from stream_meta.errors import StreamMetaError

log = logging.getLogger("stream_meta.cli.demo")

# Malformed messages the demo mixes in, to show the dead-letter path.
BAD_MESSAGES = [
    b"not json at all",
    b'{"x": "oops"}',
    b'{"x": [1, 2, 3]}',
    b'{"x": [' + b",".join([b"0.5"] * 63) + b',NaN], "y": 1}',
    b'{"x": [' + b",".join([b"0.5"] * 64) + b'], "y": 99}',
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
]


def _publish(bootstrap: str, topic: str, dataset: str, limit: int | None, seed: int, bad_every: int,
             stop: threading.Event | None = None, forever: bool = False) -> int:
    from stream_meta.data.datasets import stream
    from connectors.kafka import KafkaSink, raise_failures
    from stream_meta.daemon.records import encode

    sink = KafkaSink(bootstrap=bootstrap)
    n, bad, rounds = 0, 0, 0
    while True:
        for rec in stream(dataset, seed=seed + rounds, limit=limit):
            task = rec["task"] if rounds == 0 else f"{rec['task']}#{rounds}"
            sink.send(topic, encode(rec["x"], rec["y"], task, rec["id"]))
            n += 1
            if bad_every and n % bad_every == 0:
                sink.send(topic, BAD_MESSAGES[bad % len(BAD_MESSAGES)])
                bad += 1
            if stop is not None and stop.is_set():
                break
        raise_failures(sink.flush())
        rounds += 1
        if not forever or (stop is not None and stop.is_set()):
            break
    sink.close()
    return n + bad


def run_demo(args: argparse.Namespace) -> int:
    from stream_meta.data.datasets import require
    from stream_meta.data.local_broker import LocalBroker, create_topics
    from stream_meta.cli.run import finish, run_daemon
    from stream_meta.daemon.config import load_config
    from stream_meta.daemon.logs import setup_logging

    setup_logging()
    meta = require(args.dataset)  # before the broker starts: a missing [data] extra fails at once
    if meta.needs_data_dir:
        raise StreamMetaError(f"{args.dataset} needs MNIST files: run `make mnist` and use stream-meta run instead")
    topic = "stream-meta.demo"
    with tempfile.TemporaryDirectory(prefix="stream-meta-demo-") as tmp, LocalBroker(log_path=Path(tmp) / "broker.log") as broker:
        log.info("local Kafka-compatible broker on %s", broker.bootstrap)
        create_topics(broker.bootstrap, {topic: 1, f"{topic}.dlq": 1})
        stop = threading.Event()
        if args.forever:
            producer = threading.Thread(
                target=_publish, args=(broker.bootstrap, topic, args.dataset, args.records, 0, 200, stop, True), daemon=True
            )
            producer.start()
            total = None
        else:
            started = time.monotonic()
            total = _publish(broker.bootstrap, topic, args.dataset, args.records, 0, 200)
            log.info("published %d records (%s, %d malformed mixed in) in %.1fs", total, args.dataset,
                     total // 201, time.monotonic() - started)
        cfg = load_config({}, env={}, overrides={
            "bootstrap": broker.bootstrap,
            "topic": topic,
            "group": "stream-meta-demo",
            "input_dim": meta.input_dim,
            "num_classes": meta.num_classes,
            "max_records": total,
            "metrics_port": args.metrics_port,
            "checkpoint_dir": Path(tmp) / "checkpoints",
            "checkpoint_every_s": 10.0,
            "session_timeout_ms": 6000,
            "accuracy_window": 200,
            "progress": True,
        })
        try:
            summary = run_daemon(cfg)
        finally:
            stop.set()
    finish(summary, args.summary_json)
    return 0
