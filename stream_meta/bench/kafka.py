"""``stream-meta bench kafka``: the daemon's consume+learn rate as a share of a raw consumer's.

On one broker (the bundled local one, or ``--bootstrap``), one topic per wire format (v1
JSON, v2 binary float32) with one partition holds the same records. For each format a
bare kafka-python consumer reads the topic (touching every value, nothing else), then
``stream-meta run --stop-at-end`` consumes, predicts and learns it. Rates count from the
first record polled to the last one processed: for the daemon, its ``stream_seconds``
(the polls that brought records plus their processing; group join, start-up and idle
polls excluded). Its processing-only and whole-process rates are printed beside it.

example: stream-meta bench kafka --records 5000 --learn-batch 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _publish(bootstrap: str, topic: str, records: list[dict], fmt: str) -> None:
    from kafka import KafkaProducer

    from stream_meta.daemon.records import encode
    from stream_meta.daemon.wire import encode_f32

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=16 << 20)
    for r in records:
        if fmt == "f32":
            value, headers = encode_f32(r["x"], r["y"], r["task"], r["id"])
            producer.send(topic, value, headers=headers)
        else:
            producer.send(topic, encode(r["x"], r["y"], r["task"], r["id"]))
    producer.flush()
    producer.close()


def raw_consumer_rate(bootstrap: str, topic: str, expected: int, timeout_s: float = 600) -> float:
    """Records/s of a bare consumer from its first record to the last (no group, no decoding)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, max_poll_records=500)
    n, first, deadline, size = 0, None, time.monotonic() + timeout_s, 0
    try:
        while n < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                first = first or time.perf_counter()
                n += len(batch)
                size += sum(len(m.value) for m in batch)
        last = time.perf_counter()
    finally:
        consumer.close()
    return n / (last - first) if first and last > first else 0.0


def daemon_rate(bootstrap: str, topic: str, dim: int, learn_batch: int, preset: str, work: Path,
                profile: Path | None = None, extra: list[str] = ()) -> dict:
    summary = work / f"summary-{topic}.json"
    started = time.perf_counter()
    profiled = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    subprocess.run([sys.executable, *profiled, "-m", "stream_meta.cli", "run", "--bootstrap", bootstrap, "--topic", topic,
                    "--group", f"bench-{topic}", "--input-dim", str(dim), "--num-classes", "10",
                    "--preset", preset, "--learn-batch", str(learn_batch), "--stop-at-end",
                    "--checkpoint-dir", str(work / f"ckpt-{topic}"), "--metrics-port", "0",
                    "--summary-json", str(summary), "--log-level", "WARNING", "--session-timeout-ms", "6000", *extra],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    s = json.loads(summary.read_text())
    return {"records": s["records_consumed"], "rate": s["records_per_stream_second"],
            "processing_rate": s["records_per_second"], "wall_rate": s["records_consumed"] / wall,
            "accuracy": s["prequential_accuracy"], "latency_p50_s": s.get("prediction_latency_p50_s"),
            "latency_p99_s": s.get("prediction_latency_p99_s")}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stream-meta bench kafka", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", default=None, help="an existing broker (default: start the bundled one)")
    p.add_argument("--dataset", default="mnist-permutations", help="a built-in data set (784-d: mnist-*)")
    p.add_argument("--data-dir", default="data/mnist")
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--learn-batch", type=int, default=64)
    p.add_argument("--preset", default="reptile+er-tuned")
    p.add_argument("--formats", default="f32,json", help="wire formats to run: f32 (v2), json (v1)")
    p.add_argument("--profile", type=Path, default=None,
                   help="run each daemon under cProfile, writing PROFILE.<format> (read with pstats)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("extra", nargs="*", help="further `stream-meta run` flags, after --")
    args = p.parse_args(argv)

    from stream_meta.data.datasets import info, stream
    from stream_meta.data.local_broker import LocalBroker, create_topics

    records = list(stream(args.dataset, limit=args.records, data_dir=args.data_dir))
    dim = info(args.dataset).input_dim
    rows = []
    with tempfile.TemporaryDirectory(prefix="stream-meta-bench-kafka-") as tmp:
        work = Path(tmp)
        broker = None if args.bootstrap else LocalBroker(log_path=work / "broker.log").start()
        bootstrap = args.bootstrap or broker.bootstrap
        try:
            for fmt in args.formats.split(","):
                topic = f"bench-kafka-{fmt}-{int(time.time())}"
                create_topics(bootstrap, {topic: 1})
                _publish(bootstrap, topic, records, fmt)
                raw = raw_consumer_rate(bootstrap, topic, len(records))
                profile = args.profile.with_suffix(f".{fmt}") if args.profile is not None else None
                daemon = daemon_rate(bootstrap, topic, dim, args.learn_batch, args.preset, work, profile, args.extra)
                rows.append({"format": "v2 f32" if fmt == "f32" else "v1 json", "raw_consumer_rate": raw, **daemon,
                             "share_of_raw": daemon["rate"] / raw if raw else None})
        finally:
            if broker is not None:
                broker.stop()
    print(f"{args.dataset}, {len(records)} records of {dim} floats, one partition, --preset {args.preset} "
          f"--learn-batch {args.learn_batch}")
    print(f"{'format':8s} {'raw consumer rec/s':>19s} {'daemon rec/s':>13s} {'share':>6s} {'processing only':>16s} "
          f"{'whole process':>14s} {'accuracy':>9s} {'p50 ms':>7s} {'p99 ms':>7s}")
    for r in rows:
        share = "-" if r["share_of_raw"] is None else f"{100 * r['share_of_raw']:5.0f}%"
        print(f"{r['format']:8s} {r['raw_consumer_rate']:19.0f} {r['rate']:13.0f} {share:>6s} "
              f"{r['processing_rate']:16.0f} {r['wall_rate']:14.0f} {100 * r['accuracy']:8.1f}% "
              f"{_ms(r['latency_p50_s']):>7s} {_ms(r['latency_p99_s']):>7s}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1) + "\n")
    return 0
