"""``stream-meta bench fewshot``: few-shot adaptation on a stream of never-repeating tasks.

Each task is a new 5-way problem (random classes, labels permuted per task, 40
records). Every learner runs as the daemon does (``stream-meta run
--input-file``, test-then-train) on the same stream; the table shows accuracy
by position within a task, so the adaptation curve of each meta-learner can be
compared with plain online SGD.

example: stream-meta bench fewshot --records 8000 --algorithms fomaml,reptile,metasgd,sgd --plot fewshot.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from stream_meta.bench.engine import run_once, write_stream
from stream_meta.daemon.stats import POSITION_BUCKETS

BUCKETS = [b for b, lo, _ in POSITION_BUCKETS if lo <= 40]


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        ys = [r["accuracy_by_task_position"][b] for b in BUCKETS]
        ax.plot(BUCKETS, [100 * (y or 0) for y in ys], marker="o", label=r["algorithm"])
    ax.set_xlabel("position of the record within its task")
    ax.set_ylabel("test-then-train accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stream-meta bench fewshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits-fewshot", help="digits-fewshot or mnist-fewshot (needs --data-dir)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--records", type=int, default=8000)
    p.add_argument("--algorithms", default="fomaml,maml,reptile,metasgd,anil,sgd")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("extra", nargs="*", help="further `stream-meta run` flags for every learner, after --")
    args = p.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="stream-meta-fewshot-") as tmp:
        work = Path(tmp)
        path = work / "stream.jsonl"
        n = write_stream(path, args.dataset, args.records, data_dir=args.data_dir)
        print(f"{n} records of {args.dataset} ({n // 40} tasks of 40); every learner runs `stream-meta run` on it")
        header = f"{'learner':10s}" + "".join(f"{b:>9s}" for b in BUCKETS) + f"{'overall':>9s}{'rec/s':>8s}"
        print(header)
        for algorithm in args.algorithms.split(","):
            s = run_once(path, args.dataset, 1, algorithm, work, args.extra)
            row = {"algorithm": algorithm, **{k: s[k] for k in (
                "accuracy_by_task_position", "prequential_accuracy", "records_per_second", "records_learned", "meta_updates")}}
            rows.append(row)
            acc = row["accuracy_by_task_position"]
            print(f"{algorithm:10s}" + "".join(f"{100 * (acc[b] or 0):8.1f}%" for b in BUCKETS)
                  + f"{100 * row['prequential_accuracy']:8.1f}%{row['records_per_second']:8.0f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"dataset": args.dataset, "records": n, "rows": rows}, indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot, f"few-shot adaptation on {args.dataset} (5-way, 40 records per task)")
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
