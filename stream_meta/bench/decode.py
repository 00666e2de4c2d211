"""``stream-meta bench decode``: records/s of decoding 784-d wire-format messages.

Compares, on the same messages in the same run: the reference v1 decoder (one record at a
time, ``json``), the bare parsers (``json``, ``orjson``, ``msgspec``) without validation,
the batch decoder on v1 JSON, and the batch decoder on v2 binary float32.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from stream_meta.daemon.records import Decoder, encode
from stream_meta.daemon.wire import BatchDecoder, encode_f32


def _rate(n: int, fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return n / best


def run(records: int, dim: int, batch: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    xs = rng.random((records, dim), dtype=np.float32)
    v1 = [encode(x.tolist(), i % 10, f"t{i % 5}", f"r{i}") for i, x in enumerate(xs)]
    v2 = [encode_f32(x, i % 10, f"t{i % 5}", f"r{i}") for i, x in enumerate(xs)]
    reference = Decoder(dim, 10, max_bytes=1 << 24)
    fast = BatchDecoder(dim, 10, max_bytes=1 << 24)

    def batched(values, headers=None):
        for s in range(0, len(values), batch):
            fast.decode(values[s:s + batch], None if headers is None else headers[s:s + batch])

    cases: dict[str, Callable[[], object]] = {
        "reference v1 (json, per record)": lambda: [reference.decode(m) for m in v1],
        "json.loads only": lambda: [json.loads(m) for m in v1],
    }
    try:
        import orjson

        cases["orjson.loads only"] = lambda: [orjson.loads(m) for m in v1]
    except ImportError:
        pass
    import msgspec

    cases["msgspec.json.decode only"] = lambda: [msgspec.json.decode(m) for m in v1]
    cases[f"batch v1 (msgspec + numpy, {batch}/call)"] = lambda: batched(v1)
    values2, headers2 = [v for v, _ in v2], [h for _, h in v2]
    cases[f"batch v2 f32 ({batch}/call)"] = lambda: batched(values2, headers2)
    base = None
    rows = []
    for name, fn in cases.items():
        rate = _rate(records, fn, repeats)
        base = base or rate
        rows.append({"decoder": name, "records_per_s": rate, "vs_reference": rate / base})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stream-meta bench decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: stream-meta bench decode --records 5000 --dim 784")
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--batch", type=int, default=64, help="messages per batch-decoder call")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = p.parse_args(argv)
    rows = run(args.records, args.dim, args.batch, args.repeats)
    print(f"{'decoder':<42} {'records/s':>10} {'x reference':>12}")
    for r in rows:
        print(f"{r['decoder']:<42} {r['records_per_s']:>10.0f} {r['vs_reference']:>12.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"records": args.records, "dim": args.dim, "rows": rows}, indent=2) + "\n")
    return 0
