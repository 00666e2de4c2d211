"""``stream-meta bench defaults``: which learner preset should the daemon run by default?

Every candidate preset runs through the daemon's own path (``Service`` built by
``build_service`` from a ``RunConfig`` with ``--preset NAME``, a JSON-lines file
source, test-then-train, one torch thread) on every protocol: rotations,
permutations, class-incremental split and a few-shot stream of never-repeating
5-way tasks, on scikit-learn digits and (when ``--data-dir`` holds it) MNIST, plus
River's tabular drift streams and two real sets River ships (with River's ARF,
Hoeffding tree and logistic regression on the same records, as references).

The rule: per protocol, candidates are ranked by prequential accuracy (1 = best,
ties share the mean rank); the default is the candidate with the best mean rank over
all protocols among those that keep up (median records/s at least half the fastest
meta-learning candidate's: a daemon's default must not fall behind its feed); ties go
to the smaller worst-case gap to the best candidate.

example: stream-meta bench defaults --json defaults.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from stream_meta.bench.args import json_settings
from stream_meta.daemon.stats import POSITION_BUCKETS
from stream_meta.learn.presets import DEFAULT_PRESET, PRESETS

CANDIDATES = "sgd,fomaml,fomaml+er-task,reptile+er-tuned,metasgd,metasgd+er"
BUCKETS = [b for b, _, _ in POSITION_BUCKETS]


@dataclass(frozen=True)
class Protocol:
    name: str
    input_dim: int
    num_classes: int
    records: list[dict]
    description: str


def builtin_protocols(args: argparse.Namespace) -> list[Protocol]:
    """Rotations, permutations, split, few-shot on digits and (if present) MNIST."""
    from stream_meta.data.datasets import DATASETS, stream

    sources = [("digits", None, args.digits_tasks, args.digits_per_task, args.digits_split_per_task, args.fewshot_tasks)]
    mnist_dir = Path(args.data_dir)
    if (mnist_dir / "train-images-idx3-ubyte").exists():
        sources.append(("mnist", str(mnist_dir), args.mnist_tasks, args.mnist_per_task, args.mnist_per_task,
                        args.mnist_fewshot_tasks))
    else:
        print(f"no MNIST in {mnist_dir} (`make mnist`): MNIST protocols left out", flush=True)
    out = []
    for source, data_dir, n_tasks, per_task, split_per_task, fewshot_tasks in sources:
        for family in ("rotations", "permutations", "split", "fewshot"):
            name = f"{source}-{family}"
            n, k = {"fewshot": (fewshot_tasks, 40), "split": (5, split_per_task)}.get(family, (n_tasks, per_task))
            records = list(stream(name, seed=args.seed, n_tasks=n, per_task=k, data_dir=data_dir))
            meta = DATASETS[name]
            out.append(Protocol(name, meta.input_dim, meta.num_classes, records, f"{n} tasks x {k}"))
    return out


def river_protocols(args: argparse.Namespace) -> list[Protocol]:
    from stream_meta.bench.river_streams import river_streams

    return [Protocol(s.name, s.input_dim, s.num_classes, s.records, s.description)
            for s in river_streams(args.river_per_segment, args.river_task_free, args.seed)]


def run_daemon_on(path: Path, proto: Protocol, preset: str, seed: int, work: Path,
                  settings: dict | None = None) -> dict:
    """One daemon life over the file: the same config, factory and loop as ``stream-meta run``;
    ``settings`` are further run settings (``--set``), e.g. ``{"learn_batch": 10}``."""
    from prometheus_client import CollectorRegistry

    from stream_meta.daemon.app import build_service
    from stream_meta.daemon.config import load_config

    cfg = load_config({}, env={}, overrides={
        "preset": preset, "input_file": path, "input_dim": proto.input_dim, "num_classes": proto.num_classes,
        "stop_at_end": True, "metrics_port": None, "seed": seed, "torch_threads": 1, "log_level": "WARNING",
        "checkpoint_dir": work / f"ckpt-{proto.name}-{preset}-{time.monotonic_ns()}", **(settings or {}),
    })
    return build_service(cfg, CollectorRegistry()).run()


def ranks(scores: dict[str, float]) -> dict[str, float]:
    """1 = highest score; ties share the mean of their ranks."""
    ordered = sorted(scores, key=lambda k: -scores[k])
    out: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and scores[ordered[j + 1]] == scores[ordered[i]]:
            j += 1
        for k in ordered[i:j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


KEEP_UP = 0.5  # a default runs at least this share of the fastest meta-learner's median records/s


def choose(results: dict[str, dict[str, dict]], candidates: list[str]) -> tuple[str, dict[str, dict]]:
    """The rule: best mean rank over protocols among the candidates that keep up (median
    records/s at least ``KEEP_UP`` of the fastest meta-learning candidate's), ties to the
    smaller worst-case gap."""
    per: dict[str, dict] = {c: {"ranks": [], "gaps": [], "accs": []} for c in candidates}
    for rows in results.values():
        acc = {c: rows[c]["prequential_accuracy"] for c in candidates}
        best = max(acc.values())
        for c, r in ranks(acc).items():
            per[c]["ranks"].append(r)
            per[c]["gaps"].append(best - acc[c])
            per[c]["accs"].append(acc[c])
    rate = {c: statistics.median(rows[c].get("records_per_second") or 0 for rows in results.values()) for c in candidates}
    fastest = max((rate[c] for c in candidates if c != "sgd"), default=0.0)
    table = {c: {"mean_rank": sum(v["ranks"]) / len(v["ranks"]), "worst_gap": max(v["gaps"]),
                 "mean_accuracy": sum(v["accs"]) / len(v["accs"]), "median_records_per_second": rate[c],
                 "keeps_up": rate[c] >= KEEP_UP * fastest} for c, v in per.items()}
    eligible = [c for c in candidates if table[c]["keeps_up"]] or candidates
    winner = min(eligible, key=lambda c: (table[c]["mean_rank"], table[c]["worst_gap"]))
    return winner, table


def _pct(v: float | None) -> str:
    return "    -" if v is None else f"{100 * v:5.1f}"


def print_protocol(name: str, rows: dict[str, dict]) -> None:
    print(f"  {'learner':18s}{'overall':>8s}" + "".join(f"{b:>7s}" for b in BUCKETS) + f"{'rec/s':>8s}")
    for learner, r in rows.items():
        acc = r["accuracy_by_task_position"]
        print(f"  {learner:18s}{_pct(r['prequential_accuracy']):>8s}" + "".join(f"{_pct(acc[b]):>7s}" for b in BUCKETS)
              + f"{r['records_per_second'] or 0:8.0f}", flush=True)


def print_summary(results: dict[str, dict[str, dict]], candidates: list[str], table: dict, winner: str) -> None:
    short = {c: c.replace("+er-tuned", "+ert") for c in candidates}
    print("\nprequential accuracy (%) per protocol; rank rule over the stream-meta candidates")
    print(f"{'protocol':18s}" + "".join(f"{short[c]:>16s}" for c in candidates) + "   best River")
    for proto, rows in results.items():
        river = {k: v for k, v in rows.items() if k.startswith("river-")}
        ref = max(river.items(), key=lambda kv: kv[1]["prequential_accuracy"]) if river else None
        print(f"{proto:18s}" + "".join(f"{_pct(rows[c]['prequential_accuracy']):>16s}" for c in candidates)
              + (f"   {_pct(ref[1]['prequential_accuracy'])} {ref[0][6:]}" if ref else ""))
    print(f"{'mean rank':18s}" + "".join(f"{table[c]['mean_rank']:16.2f}" for c in candidates))
    print(f"{'worst gap (pts)':18s}" + "".join(f"{100 * table[c]['worst_gap']:16.1f}" for c in candidates))
    print(f"{'mean accuracy':18s}" + "".join(f"{_pct(table[c]['mean_accuracy']):>16s}" for c in candidates))
    rate = {c: statistics.median(rows[c]["records_per_second"] or 0 for rows in results.values()) for c in candidates}
    print(f"{'median rec/s':18s}" + "".join(f"{rate[c]:16.0f}" for c in candidates))
    print(f"{'keeps up':18s}" + "".join(f"{'yes' if table[c]['keeps_up'] else 'no':>16s}" for c in candidates))
    note = "" if winner == DEFAULT_PRESET else f" (the daemon's default is {DEFAULT_PRESET}: update stream_meta/learn/presets.py)"
    print(f"\nbest across protocols: {winner}{note}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stream-meta bench defaults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default=CANDIDATES, help=f"candidate presets, of {','.join(PRESETS)}")
    p.add_argument("--protocols", default=None, help="only protocols whose name contains one of these (comma-separated)")
    p.add_argument("--data-dir", default="data/mnist", help="MNIST idx files; MNIST protocols are left out without them")
    p.add_argument("--digits-tasks", type=int, default=5)
    # Defaults: the sizes of the README's table (Meta-SGD, the slowest, sets the run time).
    p.add_argument("--digits-per-task", type=int, default=200)
    p.add_argument("--digits-split-per-task", type=int, default=150, help="digits holds ~250 per class pair")
    p.add_argument("--mnist-tasks", type=int, default=5)
    p.add_argument("--mnist-per-task", type=int, default=200)
    p.add_argument("--fewshot-tasks", type=int, default=100, help="digits: never-repeating 5-way tasks of 40 records")
    p.add_argument("--mnist-fewshot-tasks", type=int, default=25, help="the same on MNIST")
    p.add_argument("--river-per-segment", type=int, default=200)
    p.add_argument("--river-task-free", type=int, default=800, help="records of each task-free synthetic stream")
    p.add_argument("--no-river", action="store_true", help="leave out River's streams and baselines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", type=json_settings, default={}, help='further run settings for every candidate, as '
                   'JSON, e.g. \'{"learn_batch": 10, "batch_update": "one"}\' (compare settings run by run)')
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="run nothing: rank the protocols of earlier --json files together (e.g. runs of "
                   "--protocols digits,river and --protocols mnist on two cores)")
    args = p.parse_args(argv)
    candidates = args.presets.split(",")
    if args.merge:
        results = {k: v for f in args.merge for k, v in json.loads(f.read_text())["protocols"].items()}
        winner, table = choose(results, candidates)
        print_summary(results, candidates, table, winner)
        if args.json:
            args.json.write_text(json.dumps({"protocols": results, "ranking": table, "best": winner,
                                             "default": DEFAULT_PRESET, "merged": [str(f) for f in args.merge]},
                                            indent=2) + "\n")
        return 0
    for c in candidates:
        if c not in PRESETS:
            p.error(f"unknown preset {c!r}; choose from {','.join(PRESETS)}")

    import torch

    # As `stream-meta run` does with --torch-threads 1 (set in run_daemon, not in build_service).
    torch.set_num_threads(1)
    logging.getLogger("stream_meta").setLevel(logging.WARNING)
    protocols = builtin_protocols(args) + ([] if args.no_river else river_protocols(args))
    if args.protocols:
        keep = args.protocols.split(",")
        protocols = [q for q in protocols if any(k in q.name for k in keep)]
    results: dict[str, dict[str, dict]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stream-meta-defaults-") as tmp:
        work = Path(tmp)
        for proto in protocols:
            from stream_meta.daemon.records import encode

            path = work / f"{proto.name}.jsonl"
            with open(path, "wb") as f:
                for i, r in enumerate(proto.records):
                    f.write(encode(r["x"], r["y"], r["task"], str(i)) + b"\n")
            print(f"\n{proto.name}: {len(proto.records)} records, {proto.description}", flush=True)
            rows: dict[str, dict] = {}
            for preset in candidates:
                s = run_daemon_on(path, proto, preset, args.seed, work, args.set)
                rows[preset] = {k: s[k] for k in ("prequential_accuracy", "accuracy_by_task_position",
                                                  "records_per_second", "meta_updates")}
            if proto.name.startswith("river-"):
                from stream_meta.bench.river_streams import river_models, run_river

                for name, make in river_models(args.seed).items():
                    rows[name] = run_river(make(), proto.records)
            results[proto.name] = rows
            print_protocol(proto.name, rows)
            if args.json:  # after every protocol, so an interrupted run keeps what it measured
                args.json.write_text(json.dumps({"protocols": results, "args": vars(args)}, indent=2, default=str) + "\n")
    winner, table = choose(results, candidates)
    print_summary(results, candidates, table, winner)
    print(f"({time.perf_counter() - t0:.0f} s on {os.cpu_count()} cores; accuracies are deterministic per seed, "
          "records/s depend on the machine's load)")
    if args.json:
        args.json.write_text(json.dumps({"protocols": results, "ranking": table, "best": winner,
                                         "default": DEFAULT_PRESET, "args": vars(args)}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
