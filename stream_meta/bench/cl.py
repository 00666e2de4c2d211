"""``stream-meta bench cl``: the MER / La-MAML continual-learning protocol, stream-meta's
learners against Avalanche's strategies on the identical stream.

One pass over the tasks (Rotations / Permutations: 20 x 1000 records; Many
Permutations: 100 x 200; Split: 5 x 1000), MLP 2x100, memory 200. After each task
every method is evaluated on the held-out data of every task (the accuracy matrix).
RA is the mean final accuracy; for stream-meta it is the shared meta-parameters alone
(what the published MER / La-MAML numbers report), and ``ra_adapted`` uses each task's
fast weights adapted from its last delivered records. Each method runs in its own
process (clean peak RSS; Avalanche's import stays out of the others).

example: stream-meta bench cl --protocol rotations --data-dir data/mnist --tasks 5 --per-task 200 \\
             --learners fomaml,fomaml+er --baselines online-naive,replay,er-ace --json cl.json --plot cl.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stream_meta.bench.args import ints, one_of
from stream_meta.bench.continual.avalanche_baselines import METHODS as AVALANCHE_METHODS
from stream_meta.bench.continual.metrics import cl_metrics
from stream_meta.learn.config import BATCH_STEP_SCALES, BATCH_UPDATES
from stream_meta.bench.continual.runner import LEARNERS, plain_sgd_records_per_second, save_tasks

PROTOCOLS = ("rotations", "permutations", "many-permutations", "split")
COLUMNS = ("ra", "ra_adapted", "bti", "forgetting", "learning_accuracy", "records_per_second", "peak_rss_mb")


def _dataset(protocol: str, source: str) -> str:
    if source == "digits" and protocol == "many-permutations":
        raise SystemExit("many-permutations exists for MNIST only")
    return f"{source}-{protocol}"


def _run_worker(module: str, spec: dict, label: str, work: Path) -> dict:
    spec_path = work / f"spec-{label}.json"
    spec["out"] = str(work / f"out-{label}.json")
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen([sys.executable, "-m", module, str(spec_path)], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # progress display
        if line.startswith('{"progress"'):
            done, total = json.loads(line)["progress"]
            print(f"\r  {label}: task {done}/{total}   ", end="", file=sys.stderr, flush=True)
    proc.wait()
    print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)
    try:
        return json.loads(Path(spec["out"]).read_text())
    except (OSError, ValueError):
        return {"error": f"worker exited with status {proc.returncode} and no result"}


def _row(method: str, family: str, seed: int, out: dict) -> dict:
    row: dict = {"method": method, "family": family, "seed": seed}
    if "error" in out:
        row.update({k: None for k in COLUMNS}, accuracy_matrix=None, error=out["error"])
        return row
    m = cl_metrics(out["matrix"])
    adapted = out.get("matrix_adapted")
    row.update(
        ra=m.ra, ra_adapted=cl_metrics(adapted).ra if adapted else None, bti=m.bti, forgetting=m.forgetting,
        learning_accuracy=m.learning_accuracy,
        records_per_second=out["records"] / out["learn_seconds"] if out["learn_seconds"] > 0 else None,
        peak_rss_mb=out["peak_rss_mb"], accuracy_matrix=out["matrix"], accuracy_matrix_adapted=adapted,
        fewshot_curve=out.get("fewshot_curve"), meta_updates=out.get("meta_updates"), error=None,
    )
    return row


def _fmt(v, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.0f}"


def print_table(rows: list[dict]) -> None:
    head = f"{'method':30s}{'family':12s}{'seed':>5s}{'RA':>7s}{'RA-ad':>7s}{'BTI':>7s}{'forget':>8s}{'learn':>7s}{'rec/s':>8s}{'RSS MB':>8s}{'updates':>9s}"
    print(head)
    for r in rows:
        line = (f"{r['method']:30s}{r['family']:12s}{r['seed']:5d}{_fmt(r['ra']):>7s}{_fmt(r['ra_adapted']):>7s}"
                f"{_fmt(r['bti']):>7s}{_fmt(r['forgetting']):>8s}{_fmt(r['learning_accuracy']):>7s}"
                f"{_fmt(r['records_per_second'], False):>8s}{_fmt(r['peak_rss_mb'], False):>8s}"
                f"{_fmt(r.get('meta_updates'), False):>9s}")
        if r.get("error"):
            line += f"  cannot run: {r['error'][:150]}"
        print(line, flush=True)


SUMMARY = ("ra", "ra_adapted", "bti", "forgetting", "learning_accuracy", "records_per_second")


def summarize(rows: list[dict]) -> list[dict]:
    """Per method, over the seeds it ran: mean and sample standard deviation (None for
    one seed) of each metric, and how many seeds ran (rows with an error are left out)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and r.get("error") is None]
        s: dict = {"method": method, "family": next(r["family"] for r in rows if r["method"] == method), "seeds": len(ok)}
        for k in SUMMARY:
            vals = [r[k] for r in ok if r[k] is not None]
            s[k] = statistics.fmean(vals) if vals else None
            s[f"{k}_sd"] = statistics.stdev(vals) if len(vals) > 1 else None
        out.append(s)
    return out


def print_summary(summary: list[dict]) -> None:
    def cell(s: dict, k: str, pct: bool = True) -> str:
        if s[k] is None:
            return "-"
        sd = s[f"{k}_sd"]
        scale = 100 if pct else 1
        return f"{scale * s[k]:.1f}" + ("" if sd is None else f"±{scale * sd:.1f}")

    print(f"{'method':22s}{'family':12s}{'seeds':>6s}{'RA':>12s}{'RA-ad':>12s}{'BTI':>12s}{'learn':>12s}{'rec/s':>14s}")
    for s in summary:
        print(f"{s['method']:22s}{s['family']:12s}{s['seeds']:6d}{cell(s, 'ra'):>12s}{cell(s, 'ra_adapted'):>12s}"
              f"{cell(s, 'bti'):>12s}{cell(s, 'learning_accuracy'):>12s}{cell(s, 'records_per_second', False):>14s}",
              flush=True)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ok = [r for r in rows if r.get("accuracy_matrix") and r["seed"] == rows[0]["seed"]]
    cols = min(len(ok) + 1, 5)
    nrows = -(-(len(ok) + 1) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.2 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(ok) + 1:]:
        ax.axis("off")
    for ax, r in zip(flat, ok):
        ax.imshow(np.array(r["accuracy_matrix"]) * 100, vmin=0, vmax=100, cmap="viridis")
        ax.set_title(r["method"], fontsize=9)
        ax.set_xlabel("evaluated task")
        ax.set_ylabel("after task")
    ax = flat[len(ok)]
    methods = sorted({r["method"] for r in rows if r["ra"] is not None}, key=lambda m: [x["method"] for x in rows].index(m))
    ras = [100 * np.mean([r["ra"] for r in rows if r["method"] == m and r["ra"] is not None]) for m in methods]
    colors = ["tab:blue" if any(r["family"] == "stream-meta" and r["method"] == m for r in rows) else "tab:gray" for m in methods]
    ax.barh(methods, ras, color=colors)
    ax.set_xlabel("RA (%)")
    ax.set_xlim(0, 100)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stream-meta bench cl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=PROTOCOLS, default="rotations")
    p.add_argument("--source", choices=("mnist", "digits"), default="mnist",
                   help="mnist (idx files in --data-dir) or digits (scikit-learn 8x8, quick)")
    p.add_argument("--data-dir", default="data/mnist", help="any MNIST-format idx directory")
    p.add_argument("--tasks", type=int, default=None, help="override the protocol's number of tasks")
    p.add_argument("--per-task", type=int, default=None, help="override the protocol's records per task")
    p.add_argument("--test-per-task", type=int, default=None, help="held-out records per task")
    p.add_argument("--learners", default="fomaml,reptile+er", help=f"stream-meta learners, of {','.join(LEARNERS)}")
    p.add_argument("--baselines", default="online-naive,naive,replay,ewc,er-ace,mir,mer,lamaml,gdumb",
                   help=f"Avalanche strategies ('none' for none), of {','.join(AVALANCHE_METHODS)}")
    p.add_argument("--baseline-minibatch", type=int, default=10, help="records per Avalanche minibatch")
    p.add_argument("--learn-batch", type=ints, default=[1], help="stream-meta learners' --learn-batch, a comma list runs "
                   "each learner at each size (rows named LEARNER@bN)")
    p.add_argument("--batch-step-scale", default="none", help="stream-meta learners' --batch-step-scale at N > 1, "
                   "a comma list of none,sqrt,linear runs each (rows named LEARNER@bN/SCALE); N = 1 runs once, "
                   "as every scale learns the same there")
    p.add_argument("--batch-update", type=one_of(*BATCH_UPDATES), default=["each"],
                   help="stream-meta learners' --batch-update at N > 1, a comma list of each,one runs each (rows "
                   "named LEARNER@bN/UPDATE); --batch-step-scale applies to 'one'")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)

    from stream_meta.data.datasets import make_tasks

    dataset = _dataset(args.protocol, args.source)
    learners = [m for m in args.learners.split(",") if m and m != "none"]
    baselines = [m for m in args.baselines.split(",") if m and m != "none"]
    learn_batches = args.learn_batch
    scales = [s for s in args.batch_step_scale.split(",") if s]
    for s in scales:
        if s not in BATCH_STEP_SCALES:
            p.error(f"unknown batch step scale {s!r}; choose from {','.join(BATCH_STEP_SCALES)}")
    for m in learners:
        if m not in LEARNERS:
            p.error(f"unknown learner {m!r}; choose from {','.join(LEARNERS)}")
    for m in baselines:
        if m not in AVALANCHE_METHODS:
            p.error(f"unknown baseline {m!r}; choose from {','.join(AVALANCHE_METHODS)}")
    rows: list[dict] = []
    reference: float | None = None
    with tempfile.TemporaryDirectory(prefix="stream-meta-cl-") as tmp:
        work = Path(tmp)
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            tasks = make_tasks(dataset, n_tasks=args.tasks, per_task=args.per_task, test_per_task=args.test_per_task,
                               seed=seed, data_dir=args.data_dir)
            data = work / f"tasks-{seed}.npz"
            save_tasks(tasks, str(data))
            if reference is None:
                reference = plain_sgd_records_per_second(tasks, args.baseline_minibatch, seed=seed)
            n = sum(len(t.train_y) for t in tasks)
            print(f"{dataset} seed {seed}: {len(tasks)} tasks, {n} records, "
                  f"{len(tasks[0].test_y)} held out per task (built in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            for m in learners:
                for size in learn_batches:
                    # N = 1 learns the same whatever the batch settings: it runs once.
                    variants = [(args.batch_update[0], scales[0])] if size == 1 else [
                        (u, s) for u in args.batch_update for s in (scales if u == "one" else scales[:1])]
                    for update, scale in variants:
                        name = m if len(learn_batches) == 1 and size == 1 else f"{m}@b{size}"
                        name += f"/{update}" if len(args.batch_update) > 1 and size > 1 else ""
                        name += f"/{scale}" if len(scales) > 1 and size > 1 and update == "one" else ""
                        spec = {"method": m, "seed": seed, "data": str(data), "learn_batch": size,
                                "overrides": {"meta_cfg": {"batch_step_scale": scale, "batch_update": update}}}
                        out = _run_worker("stream_meta.bench.continual.runner", spec,
                                          f"{m}-b{size}-{update}-{scale}-{seed}", work)
                        rows.append(_row(name, "stream-meta", seed, out))
            for m in baselines:
                spec = {"method": m, "seed": seed, "data": str(data), "minibatch": args.baseline_minibatch}
                out = _run_worker("stream_meta.bench.continual.avalanche_baselines", spec, f"avalanche-{m}-{seed}", work)
                rows.append(_row(m, "avalanche", seed, out))
    print(f"{dataset}: accuracies in %, RA = meta-parameters alone (the published numbers' setting), "
          f"RA-ad = each task's adapted fast weights")
    print_table(rows)
    print(f"reference: a bare torch loop (same MLP, one SGD step per {args.baseline_minibatch} records, no predictions, "
          f"no evaluation) runs {reference:.0f} records/s on this machine")
    summary = summarize(rows)
    if args.seeds > 1:
        print(f"mean ± standard deviation over {args.seeds} seeds (seed = task order, rotations/permutations and records)")
        print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps({"dataset": dataset, "args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows, "summary": summary,
                                         "plain_sgd_records_per_second": reference}, indent=1) + "\n")
    if args.plot:
        plot(rows, args.plot, f"{dataset}: accuracy matrices and RA")
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
