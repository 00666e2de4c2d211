"""``stream-meta bench engine``: the daemon's records/s from a file source.

Writes a real-data stream to a JSON-lines file once, then runs ``stream-meta
run --input-file`` on it as a subprocess per setting (torch threads are
process-wide), optionally next to a busy process that keeps one core loaded,
as the broker and Kafka client do in production. Prints one table.

example: stream-meta bench engine --records 10000 --threads 1,2 --contention both
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stream_meta.bench.args import ints

BUSY = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end: pass\n"


def write_stream(path: Path, dataset: str, records: int, seed: int = 0, data_dir: str | None = None) -> int:
    """Writes ``records`` wire-format lines, repeating the data set with new seeds (new task ids)."""
    from stream_meta.data.datasets import stream
    from stream_meta.daemon.records import encode

    n, rounds = 0, 0
    with open(path, "wb") as f:
        while n < records:
            for rec in stream(dataset, seed=seed + rounds, limit=records - n, data_dir=data_dir):
                task = rec["task"] if rounds == 0 else f"{rec['task']}#{rounds}"
                f.write(encode(rec["x"], rec["y"], task, rec["id"]) + b"\n")
                n += 1
            rounds += 1
    return n


def learner_flags(name: str) -> list[str]:
    """``--preset NAME`` for a preset, else the base settings (preset ``fomaml``, the learner's
    own defaults) with ``--algorithm NAME``: an algorithm is compared on equal terms, not with
    the default preset's memory and step sizes."""
    from stream_meta.learn.presets import PRESETS

    return ["--preset", name] if name in PRESETS else ["--preset", "fomaml", "--algorithm", name]


def run_once(path: Path, dataset: str, threads: int, algorithm: str, workdir: Path, extra: list[str]) -> dict:
    from stream_meta.data.datasets import info

    meta = info(dataset)
    summary = workdir / f"summary-{threads}-{algorithm}-{time.monotonic_ns()}.json"
    cmd = [
        sys.executable, "-m", "stream_meta.cli.main", "run", "--input-file", str(path),
        "--input-dim", str(meta.input_dim), "--num-classes", str(meta.num_classes),
        *learner_flags(algorithm), "--torch-threads", str(threads), "--stop-at-end",
        "--metrics-port", "0", "--checkpoint-dir", str(workdir / f"ckpt-{time.monotonic_ns()}"),
        "--summary-json", str(summary), "--log-level", "WARNING", *extra,
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stream-meta bench engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits-rotations")
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--threads", type=ints, default=[1, 2], help="torch thread counts to compare, e.g. 1,2")
    p.add_argument("--algorithms", default="fomaml", help="comma-separated, e.g. fomaml,maml,sgd")
    p.add_argument("--contention", choices=["no", "yes", "both"], default="both",
                   help="run next to a process that keeps one core busy")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("extra", nargs="*", help="further `stream-meta run` flags, after --")
    args = p.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="stream-meta-bench-") as tmp:
        work = Path(tmp)
        path = work / "stream.jsonl"
        n = write_stream(path, args.dataset, args.records)
        print(f"{n} records of {args.dataset} in {path.stat().st_size / 1e6:.1f} MB; file source, one process per row")
        contention = {"no": [False], "yes": [True], "both": [False, True]}[args.contention]
        for algorithm in args.algorithms.split(","):
            for busy in contention:
                for threads in args.threads:
                    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
                    try:
                        s = run_once(path, args.dataset, threads, algorithm, work, args.extra)
                    finally:
                        if hog is not None:
                            hog.kill()
                            hog.wait()
                    rows.append({"algorithm": algorithm, "threads": threads, "busy_core": busy,
                                 "records": s["records_consumed"], "records_per_second": s["records_per_second"],
                                 "prequential_accuracy": s["prequential_accuracy"], "elapsed_seconds": s["elapsed_seconds"],
                                 "latency_p50_s": s.get("prediction_latency_p50_s"),
                                 "latency_p99_s": s.get("prediction_latency_p99_s")})
                    r = rows[-1]
                    print(f"  {algorithm:8s} threads={threads} busy_core={str(busy):5s} "
                          f"{r['records_per_second']:>8.1f} rec/s  accuracy {100 * r['prequential_accuracy']:5.1f}%  "
                          f"latency p50 {_ms(r['latency_p50_s'])} ms p99 {_ms(r['latency_p99_s'])} ms",
                          flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
