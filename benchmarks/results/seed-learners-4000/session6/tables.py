import json, os, statistics as S

"""README session 6 tables from the per-position counts here (written by diagnose.py; the default
GAIL-Meta's files were tagged oldtau-sN when run, the relative-bias ones sN).

usage: python tables.py"""
D = os.path.dirname(os.path.abspath(__file__))
B = ((1, 5), (6, 10), (11, 20), (21, 40))
def L(ds, alg, tag):
    return [json.load(open(f"{D}/{ds}-{alg}-{tag}{i}.json"))["stats"] for i in range(3)
            if os.path.exists(f"{D}/{ds}-{alg}-{tag}{i}.json")]
def acc(st, lo, hi, kinds=("seen", "unseen")):
    n = sum(st[str(k)].get(kk, [0, 0, 0])[0] for k in range(lo, hi + 1) for kk in kinds)
    c = sum(st[str(k)].get(kk, [0, 0, 0])[1] for k in range(lo, hi + 1) for kk in kinds)
    return 100 * c / n
runs = {}
for ds in ("digits-fewshot", "mnist-fewshot"):
    runs[ds] = {"gail-meta": L(ds, "gail-meta", "s"), "gail-meta (relative bias)": L(ds, "gail-meta-relative-bias", "s"),
                "anil": L(ds, "anil", "s"), "maml": L(ds, "maml", "s")}
print("RESULTS")
for ds, name in (("digits-fewshot", "digits"), ("mnist-fewshot", "MNIST")):
    for alg, rows in runs[ds].items():
        v = [[acc(r, lo, hi) for lo, hi in B] + [acc(r, 1, 5, ("exp",)), acc(r, 1, 5, ("exp2",))] for r in rows]
        f = lambda i: f"{S.mean(x[i] for x in v):.1f}" + (f" ± {S.stdev(x[i] for x in v):.1f}" if len(v) > 1 else "")
        print(f"| {name} | `{alg}` | {len(v)} | " + " | ".join(f(i) for i in range(6)) + " |")
    g = runs[ds]["gail-meta"]
    for other, i in (("anil", 0), ("maml", 3)):
        o = runs[ds][other]; n = min(len(g), len(o))
        d = [acc(g[j], *B[i]) - acc(o[j], *B[i]) for j in range(n)]
        print(f"{name} gail - {other} at {B[i]}: {S.mean(d):+.1f} ({', '.join(f'{x:+.1f}' for x in d)})")
    o = runs[ds]["anil"]; n = min(len(g), len(o))
    d = [acc(g[j], 1, 5, ("exp",)) - acc(o[j], 1, 5, ("exp",)) for j in range(n)]
    print(f"{name} label-free gail - anil at 1-5: {S.mean(d):+.1f}")
    r = runs[ds]["gail-meta (relative bias)"]; n = min(len(g), len(r))
    d = [acc(r[j], 1, 5) - acc(g[j], 1, 5) for j in range(n)]; e = [acc(r[j], 1, 5, ("exp",)) - acc(g[j], 1, 5, ("exp",)) for j in range(n)]
    print(f"{name} relative - tau at 1-5: {S.mean(d):+.1f} ({', '.join(f'{x:+.1f}' for x in d)}); label-free {S.mean(e):+.1f} ({', '.join(f'{x:+.1f}' for x in e)})")
print("DIAGNOSIS (seeds:", len(runs["digits-fewshot"]["gail-meta"]), len(runs["mnist-fewshot"]["gail-meta"]), ")")
for k in range(1, 11):
    g = lambda rows, kind, j: sum(r[str(k)].get(kind, [0, 0, 0])[j] for r in rows)
    rows0 = runs["digits-fewshot"]["anil"]
    cells = [f"{100 * g(rows0, 'ceil', 1) / g(rows0, 'ceil', 0):.1f}"]
    for ds in ("digits-fewshot", "mnist-fewshot"):
        for alg in ("gail-meta", "anil"):
            rows = runs[ds][alg]; ns, nu = g(rows, "seen", 0), g(rows, "unseen", 0)
            cells += [f"{100 * (g(rows, 'seen', 1) + g(rows, 'unseen', 1)) / (ns + nu):.1f}",
                      f"{100 * g(rows, 'seen', 1) / ns:.1f}" if ns else "–", f"{100 * g(rows, 'unseen', 2) / nu:.1f}" if k > 1 else "100"]
    print(f"| {k} | " + " | ".join(cells) + " |")
