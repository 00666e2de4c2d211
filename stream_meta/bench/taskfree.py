"""``stream-meta bench taskfree``: task ids given vs stripped vs plain SGD, recurring tasks, late labels.

Built-in streams with known boundaries (rotations, permutations, few-shot, 10 tasks that
each come back 5 times in random order, one long task, and the rotations stream with
labels delayed uniformly by 100-1000 records) run in-process, driven as the daemon
drives its components per poll: ``TaskRouter.route`` -> ``predict_batch`` -> (pending
store add / join) -> ``TaskRouter.assign`` -> ``learn_batch``. Each stream runs with
ids given, ids stripped (task detection) and plain SGD, at poll sizes 1 and 10.

Boundaries: a detection counts when it fires within ``--tolerance`` records after a
true boundary; delay = records from the boundary to the record whose loss fired it.

example: stream-meta bench taskfree --streams rotations,fewshot --json taskfree.json --plot taskfree.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from stream_meta.bench.args import ints
from stream_meta.learn.config import ModelConfig
from stream_meta.learn.learner import OnlineMetaLearner
from stream_meta.learn.sgd import OnlineSGDLearner
from stream_meta.learn.pending import Joined, PendingStore
from stream_meta.learn.tasks import DetectorConfig, TaskRouter

STREAMS = ("rotations", "permutations", "fewshot", "recurring", "long", "delayed")


@dataclass
class Stream:
    name: str
    x: torch.Tensor
    y: torch.Tensor
    tasks: list[str]  # the true task of every record
    num_classes: int
    delays: np.ndarray | None = None  # label delay of every record, in records
    starts: list[int] = field(default_factory=list)  # first record of every segment

    def __post_init__(self) -> None:
        self.starts = [i for i in range(len(self.tasks)) if i == 0 or self.tasks[i] != self.tasks[i - 1]]


def _records(name: str, seed: int, data_dir: str | None, **kw) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    from stream_meta.data.datasets import info, iter_tasks

    xs, ys, names = [], [], []
    for t in iter_tasks(name, test_per_task=0, seed=seed, data_dir=data_dir, **kw):
        xs.append(t.train_x)
        ys.append(t.train_y)
        names += [t.name] * len(t.train_y)
    return np.concatenate(xs), np.concatenate(ys), names, info(name).num_classes


def build_stream(kind: str, source: str = "digits", seed: int = 0, data_dir: str | None = None, scale: float = 1.0) -> Stream:
    """One built-in stream; ``scale`` shrinks records per task (for quick runs and tests)."""
    n = lambda k: max(20, int(k * scale))  # noqa: E731
    if kind in ("rotations", "delayed"):
        x, y, names, c = _records(f"{source}-rotations", seed, data_dir, n_tasks=5, per_task=n(1000))
    elif kind == "permutations":
        x, y, names, c = _records(f"{source}-permutations", seed, data_dir, n_tasks=5, per_task=n(1000))
    elif kind == "fewshot":
        x, y, names, c = _records(f"{source}-fewshot", seed, data_dir, n_tasks=max(5, int(100 * scale)), per_task=40)
    elif kind == "long":
        x, y, names, c = _records(f"{source}-rotations", seed, data_dir, n_tasks=1, per_task=n(1200))
    elif kind == "recurring":
        visit = n(100)
        x0, y0, names0, c = _records(f"{source}-permutations", seed, data_dir, n_tasks=10, per_task=5 * visit)
        rng = np.random.default_rng(seed)
        order: list[int] = []
        pool = [t for t in range(10) for _ in range(5)]
        while pool:  # random order, never the same task twice in a row
            choices = [i for i, t in enumerate(pool) if not order or t != order[-1]] or list(range(len(pool)))
            order.append(pool.pop(int(rng.choice(choices))))
        used = Counter()
        rows = []
        for t in order:
            base = t * 5 * visit + used[t] * visit
            rows.extend(range(base, base + visit))
            used[t] += 1
        x, y, names = x0[rows], y0[rows], [names0[r] for r in rows]
    else:
        raise ValueError(f"unknown stream {kind!r}; choose from {STREAMS}")
    s = Stream(kind, torch.from_numpy(x), torch.from_numpy(y), names, c)
    if kind == "delayed":
        s.delays = np.random.default_rng(seed + 1).integers(100, 1001, size=len(names))
    return s


def make_learner(kind: str, s: Stream, seed: int = 0):
    cfg = ModelConfig(s.x.shape[1], s.num_classes)
    return OnlineSGDLearner(cfg, seed=seed) if kind == "sgd" else OnlineMetaLearner(cfg, seed=seed)


def run(s: Stream, setting: str, batch: int, seed: int = 0, detector: DetectorConfig = DetectorConfig()) -> dict:
    """One run, driven as the daemon drives its components; returns its figures."""
    learner = make_learner("sgd" if setting == "sgd" else "meta", s, seed)
    given_ids = setting == "given"
    router = TaskRouter("auto", detector)
    pending = PendingStore(capacity=len(s.y) + 1, ttl_records=10 * len(s.y) + 1)
    n = len(s.y)
    pred = torch.full((n,), -1, dtype=torch.long)
    learned_as: list[str | None] = [None] * n
    learned = Counter()
    fired: list[tuple[int, str, str]] = []  # (record, kind, task)
    due: dict[int, list[int]] = {}
    if s.delays is not None:
        for i, d in enumerate(s.delays):
            due.setdefault(i + int(d), []).append(i)
    t0 = time.perf_counter()

    def learn(rows: list[int], tasks: list[str]) -> None:
        x, y = s.x[rows], s.y[rows]
        tasks, found = router.assign(learner, tasks, x, y, arrived=rows)  # a record's index is its arrival
        fired.extend((rows[b.fired], b.kind, b.task) for b in found)
        learner.learn_batch(tasks, x, y)
        for i, t in zip(rows, tasks):
            learned_as[i] = t
            learned[i] += 1

    for start in range(0, n, batch):
        rows = list(range(start, min(n, start + batch)))
        routed = router.route([s.tasks[i] if given_ids else None for i in rows])
        pred[rows] = learner.predict_batch(routed, s.x[rows])
        if s.delays is None:
            learn(rows, routed)
            continue
        for i, t in zip(rows, routed):
            pending.add(str(i), s.x[i], t, int(pred[i]), now=i)
        joined = [pending.join(str(i), int(s.y[i]), now=rows[-1]) for r in rows for i in due.pop(r, [])]
        ok = [j for j in joined if isinstance(j, Joined)]
        if ok:
            learn([int(j.record.id) for j in ok], [j.record.task for j in ok])
    for r in sorted(due):  # labels due after the stream ended
        ok = [j for i in due[r] if isinstance(j := pending.join(str(i), int(s.y[i]), now=n), Joined)]
        if ok:
            learn([int(j.record.id) for j in ok], [j.record.task for j in ok])
    seconds = time.perf_counter() - t0
    correct = (pred == s.y).float()
    out = {"stream": s.name, "setting": setting, "batch": batch, "records": n,
           "prequential_accuracy": float(correct.mean()), "records_per_second": n / seconds,
           "learned_once": all(learned[i] == 1 for i in range(n))}
    if setting == "stripped":
        out.update(boundary_scores(s, fired))
        out.update(recurrence_scores(s, learned_as, correct))
    return out


def boundary_scores(s: Stream, fired: list[tuple[int, str, str]], tolerance: int = 10) -> dict:
    truth = s.starts[1:]
    hits, delays, used = 0, [], set()
    for b in truth:
        match = next((k for k, (i, _, _) in enumerate(fired) if k not in used and b <= i <= b + tolerance), None)
        if match is not None:
            used.add(match)
            hits += 1
            delays.append(fired[match][0] - b)
    precision = len(used) / len(fired) if fired else (1.0 if not truth else 0.0)
    recall = hits / len(truth) if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"boundaries_true": len(truth), "boundaries_found": len(fired), "precision": precision, "recall": recall,
            "f1": f1, "delay_mean": float(np.mean(delays)) if delays else None,
            "delay_p95": float(np.percentile(delays, 95)) if delays else None,
            "false_per_1000": 1000 * (len(fired) - len(used)) / len(s.y)}


def recurrence_scores(s: Stream, learned_as: list[str | None], correct: torch.Tensor) -> dict:
    """Returns re-identified (a return's records mostly learned under its first visit's id), first-10 accuracy."""
    ends = [*s.starts[1:], len(s.tasks)]
    first_id: dict[str, str] = {}
    returns, reid, first10_return, first10_new = 0, 0, [], []
    for a, b in zip(s.starts, ends):
        ids = Counter(learned_as[a:b]).most_common(1)[0][0]
        k = min(10, b - a)
        if s.tasks[a] in first_id:
            returns += 1
            reid += ids == first_id[s.tasks[a]]
            first10_return.append(float(correct[a:a + k].mean()))
        else:
            first_id[s.tasks[a]] = ids
            first10_new.append(float(correct[a:a + k].mean()))
    if not returns:
        return {}
    return {"returns": returns, "reidentified": reid / returns,
            "first10_accuracy_return": float(np.mean(first10_return)),
            "first10_accuracy_first_visit": float(np.mean(first10_new))}


SETTINGS = ("given", "stripped", "sgd")


def _pct(v) -> str:
    return "    -" if v is None else f"{100 * v:5.1f}"


def _num(v, fmt: str = "5.1f") -> str:
    return "    -" if v is None else format(v, fmt)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = list(dict.fromkeys(r["stream"] for r in rows if r["batch"] == rows[0]["batch"]))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(SETTINGS)
    for k, setting in enumerate(SETTINGS):
        vals = [next((100 * r["prequential_accuracy"] for r in rows if r["stream"] == s and r["setting"] == setting
                      and r["batch"] == rows[0]["batch"]), 0.0) for s in streams]
        ax.bar([i + k * width for i in range(len(streams))], vals, width, label=setting)
    ax.set_xticks([i + width for i in range(len(streams))], streams)
    ax.set_ylabel("prequential accuracy (%)")
    ax.set_title(f"task ids given / stripped / plain SGD (poll size {rows[0]['batch']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stream-meta bench taskfree", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default=",".join(STREAMS), help=f"comma-separated, from {','.join(STREAMS)}")
    p.add_argument("--source", default="auto", choices=["auto", "digits", "mnist"],
                   help="auto: digits, plus MNIST when --data-dir holds it")
    p.add_argument("--data-dir", default="data/mnist")
    p.add_argument("--batches", type=ints, default=[1, 10], help="poll sizes (records predicted, then learned, together)")
    p.add_argument("--scale", type=float, default=1.0, help="shrink records per task, e.g. 0.3 for a quick look")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    sources = [args.source] if args.source != "auto" else ["digits"] + (
        ["mnist"] if (Path(args.data_dir) / "train-images-idx3-ubyte").exists() else [])
    rows: list[dict] = []
    print(f"{'source':6s} {'stream':12s} {'poll':>4s} {'setting':14s} {'acc%':>5s} {'F1':>5s} {'prec':>5s} {'rec':>5s} "
          f"{'delay':>5s} {'p95':>5s} {'fp/1k':>5s} {'reid%':>5s} {'1st10':>5s} {'rec/s':>6s}")
    for source in sources:
        for name in args.streams.split(","):
            s = build_stream(name, source, args.seed, args.data_dir, args.scale)
            settings = list(SETTINGS) + (["stripped-cold"] if name == "recurring" else [])
            for batch in args.batches:
                for setting in settings:
                    det = DetectorConfig(match="none") if setting == "stripped-cold" else DetectorConfig()
                    r = run(s, "stripped" if setting == "stripped-cold" else setting, batch, args.seed, det)
                    r.update(source=source, setting=setting)
                    rows.append(r)
                    print(f"{source:6s} {name:12s} {batch:4d} {setting:14s} {_pct(r['prequential_accuracy'])} "
                          f"{_num(r.get('f1'), '5.2f')} {_num(r.get('precision'), '5.2f')} {_num(r.get('recall'), '5.2f')} "
                          f"{_num(r.get('delay_mean'))} {_num(r.get('delay_p95'))} {_num(r.get('false_per_1000'))} "
                          f"{_pct(r.get('reidentified'))} {_pct(r.get('first10_accuracy_return'))} "
                          f"{r['records_per_second']:6.0f}{'' if r['learned_once'] else '  LABELS NOT LEARNED ONCE'}",
                          flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
