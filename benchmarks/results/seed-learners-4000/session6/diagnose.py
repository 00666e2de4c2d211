"""Per-position diagnosis: run learners as the daemon does (stream-meta run --input-file) with a
predictions sink, then split accuracy by 'class already seen in this task or not'.

usage (from the repository root): python diagnose.py --dataset digits-fewshot --records 4000
    --algorithms gail-meta,anil,maml --tag sN -- --seed N   (writes stats-*.json under --out)
"""
import json, subprocess, sys, os, argparse
from pathlib import Path
from collections import defaultdict
from stream_meta.bench.engine import write_stream, learner_flags
from stream_meta.data.datasets import info

p = argparse.ArgumentParser()
p.add_argument("--dataset", default="digits-fewshot"); p.add_argument("--data-dir", default=None)
p.add_argument("--records", type=int, default=1500); p.add_argument("--algorithms", default="gail-meta,anil")
p.add_argument("--out", default="/tmp/gail2/diag"); p.add_argument("--tag", default="")
p.add_argument("--skip-half", action="store_true")
p.add_argument("extra", nargs="*")
a = p.parse_args()
out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
stream = out / f"{a.dataset}-{a.records}.jsonl"
if not stream.exists():
    write_stream(stream, a.dataset, a.records, data_dir=a.data_dir)
recs = [json.loads(l) for l in stream.open()]
meta = info(a.dataset)
CEIL = [0.2, 0.383, 0.542, 0.674, 0.785]
for alg in a.algorithms.split(","):
    ck = out / f"ck-{a.dataset}-{alg}-{a.tag}"
    pred_file = ck / "predictions.jsonl"
    if not pred_file.exists():
        cmd = [sys.executable, "-m", "stream_meta.cli.main", "run", "--input-file", str(stream),
               "--input-dim", str(meta.input_dim), "--num-classes", str(meta.num_classes), *learner_flags(alg),
               "--torch-threads", "1", "--stop-at-end", "--metrics-port", "0", "--checkpoint-dir", str(ck),
               "--predictions-topic", "preds", "--log-level", "WARNING", *a.extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    preds = [json.loads(json.loads(l)["value"]) for l in pred_file.open()]
    assert len(preds) == len(recs), (len(preds), len(recs))
    seen = defaultdict(set); seenlab = defaultdict(set); pos = defaultdict(int)
    # stats[position][kind] = [n, correct, pred_unseen_label]
    st = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    half = len(recs) // 2
    for i, (r, q) in enumerate(zip(recs, preds)):
        t, y, yp = r["task"], r["y"], q["prediction"]
        pos[t] += 1; k = pos[t]
        kind = "seen" if y in seenlab[t] else "unseen"
        s = st[k][kind]; s[0] += 1; s[1] += (yp == y); s[2] += (yp not in seenlab[t])
        exp = (yp == y) if kind == "seen" else ((yp not in seenlab[t]) / (5 - len(seenlab[t])))
        e = st[k]["exp"]; e[0] += 1; e[1] += exp
        c = st[k]["ceil"]; c[0] += 1; c[1] += 1.0 if kind == "seen" else 1 / (5 - len(seenlab[t]))
        if i >= half:
            e = st[k]["exp2"]; e[0] += 1; e[1] += exp
        if i >= half:
            s = st[k][kind + "2"]; s[0] += 1; s[1] += (yp == y); s[2] += (yp not in seenlab[t])
        seenlab[t].add(y)
    print(f"== {alg} {a.dataset} {len(recs)} records {a.tag} {' '.join(a.extra)}")
    print("pos  acc   ceil | seen n acc | unseen n acc  ->unseen-label | 2nd half: acc seen acc unseen ->unseen")
    for k in range(1, 11):
        S, U = st[k]["seen"], st[k]["unseen"]; S2, U2 = st[k]["seen2"], st[k]["unseen2"]
        n = S[0] + U[0]; acc = (S[1] + U[1]) / n
        f = lambda s, j: (100 * s[j] / s[0]) if s[0] else float("nan")
        n2 = S2[0] + U2[0]; acc2 = (S2[1] + U2[1]) / n2 if n2 else float("nan")
        print(f"{k:3d} {100*acc:5.1f} {100*CEIL[k-1] if k<=5 else 100:5.1f} | {S[0]:4d} {f(S,1):5.1f} {f(S,2):5.1f} | {U[0]:4d} {f(U,1):5.1f} {f(U,2):5.1f}"
              f" | {100*acc2:5.1f} {f(S2,1):5.1f} {f(U2,1):5.1f} {f(U2,2):5.1f}")
    def bucket(lo, hi):
        n = sum(st[k][kk][0] for k in range(lo, hi + 1) for kk in ("seen", "unseen"))
        c = sum(st[k][kk][1] for k in range(lo, hi + 1) for kk in ("seen", "unseen"))
        return 100 * c / n
    ex = lambda lo, hi, key: 100 * sum(st[k][key][1] for k in range(lo, hi + 1)) / sum(st[k][key][0] for k in range(lo, hi + 1))
    print("expected-accuracy (label guess removed) by pos:", " ".join("%.1f" % (100 * st[k]["exp"][1] / st[k]["exp"][0]) for k in range(1, 11)))
    print("expected 1-5 %.1f (2nd half %.1f) 6-10 %.1f | ceiling 1-5 51.7, on these records %.1f" % (ex(1, 5, "exp"), ex(1, 5, "exp2"), ex(6, 10, "exp"), ex(1, 5, "ceil")))
    json.dump({"dataset": a.dataset, "algorithm": alg, "tag": a.tag, "records": len(recs),
               "stats": {str(k): {kk: list(v) for kk, v in st[k].items()} for k in st}},
              open(out / f"stats-{a.dataset}-{alg}-{a.tag}.json", "w"))
    print("buckets 1-5 %.1f 6-10 %.1f 11-20 %.1f 21-40 %.1f" % tuple(bucket(*b) for b in ((1,5),(6,10),(11,20),(21,40))), flush=True)
