"""Low-dimensional tabular drift streams from River, and River's own learners on them.

Every stream is a list of wire-format record dicts ``{"x", "y", "task"}`` with ``x``
scaled to about ``[0, 1]`` by each generator's known feature range (the daemon does
no feature scaling of its own). The task id is the concept segment where the stream
has segments (SEA, STAGGER, LED with a new drift permutation per segment); the
gradually drifting generators (Hyperplane, RandomRBFDrift) and River's two bundled
real data sets (Phishing, ImageSegments: shipped in the wheel, nothing downloaded)
are task-free: one task id for the whole stream.

River is the ``bench`` extra (``pip install -e .[bench]``); imported only when called.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stream_meta.daemon.stats import position_bucket, POSITION_BUCKETS


@dataclass(frozen=True)
class RiverStream:
    """One stream: its records and what a model for it must know."""

    name: str
    input_dim: int
    num_classes: int
    records: list[dict]
    description: str


def _rows(gen: Iterable, n: int, task: str, scale: Callable[[list[float]], list[float]], label=int) -> list[dict]:
    out = []
    for x, y in itertools.islice(gen, n):
        out.append({"x": [round(float(v), 4) for v in scale(list(x.values()))], "y": label(y), "task": task})
    return out


def _segments(make: Callable[[int], Iterable], segments: int, per_segment: int, prefix: str,
              scale: Callable[[list[float]], list[float]]) -> list[dict]:
    records: list[dict] = []
    for s in range(segments):
        records += _rows(make(s), per_segment, f"{prefix}-{s}", scale)
    return records


def _minmax(records: list[dict]) -> list[dict]:
    """Scales each feature of a real data set to [0, 1] over the whole set (known offline)."""
    cols = list(zip(*(r["x"] for r in records)))
    lo, hi = [min(c) for c in cols], [max(c) for c in cols]
    for r in records:
        r["x"] = [round((v - a) / (b - a), 4) if b > a else 0.0 for v, a, b in zip(r["x"], lo, hi)]
    return records


def river_streams(per_segment: int = 500, task_free: int = 2000, seed: int = 0) -> list[RiverStream]:
    """The River protocols of ``bench defaults``: 3 segmented, 2 task-free synthetic, 2 real."""
    from river import datasets
    from river.datasets import synth

    same = lambda x: x  # noqa: E731 - features already in [0, 1]
    sea = _segments(lambda s: synth.SEA(variant=s, seed=seed + s), 4, per_segment, "sea",
                    lambda x: [v / 10 for v in x])
    stagger = _segments(lambda s: synth.STAGGER(classification_function=s, seed=seed + s), 3, per_segment, "stagger",
                        lambda x: [v / 2 for v in x])
    led = _segments(lambda s: synth.LEDDrift(seed=seed + s, noise_percentage=0.1, irrelevant_features=True,
                                             n_drift_features=7), 4, per_segment, "led", same)
    hyper = _rows(synth.Hyperplane(seed=seed, n_features=10, mag_change=0.001, noise_percentage=0.05),
                  task_free, "hyperplane", same)
    rbf = _rows(synth.RandomRBFDrift(seed_model=seed, seed_sample=seed, n_classes=5, n_features=10,
                                     n_centroids=50, change_speed=0.001), task_free, "rbf", same)
    phishing = _minmax(_rows(datasets.Phishing(), 10**9, "phishing", same, label=lambda y: int(bool(y))))
    classes = sorted({y for _, y in datasets.ImageSegments()})
    segments = _minmax(_rows(datasets.ImageSegments(), 10**9, "segments", same, label=classes.index))
    return [
        RiverStream("river-sea", 3, 2, sea, "SEA, 4 concepts (variant 0-3), task = concept"),
        RiverStream("river-stagger", 3, 2, stagger, "STAGGER, 3 concepts, task = concept"),
        RiverStream("river-led", 24, 10, led, "LEDDrift, 4 concepts (7 drifted segments each), 10 % noise"),
        RiverStream("river-hyperplane", 10, 2, hyper, "rotating Hyperplane, gradual drift, task-free"),
        RiverStream("river-rbf", 10, 5, rbf, "RandomRBFDrift, moving centroids, task-free"),
        RiverStream("river-phishing", 9, 2, phishing, "Phishing (real, bundled with River), task-free"),
        RiverStream("river-segments", 18, 7, segments, "ImageSegments (real, bundled with River), task-free"),
    ]


def river_models(seed: int = 0) -> dict[str, Callable[[], object]]:
    """River's baselines, built fresh per stream."""
    from river import forest, linear_model, multiclass, preprocessing, tree

    return {
        "river-ARF": lambda: forest.ARFClassifier(seed=seed),
        "river-HoeffdingTree": lambda: tree.HoeffdingTreeClassifier(),
        "river-LogReg": lambda: preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(
            linear_model.LogisticRegression()),
    }


def run_river(model, records: list[dict]) -> dict:
    """River's own test-then-train on ``records``, scored like the daemon's summary."""
    positions: dict[str, int] = {}
    by_bucket = {b: [0, 0] for b, _, _ in POSITION_BUCKETS}
    correct = 0
    t0 = time.perf_counter()
    for r in records:
        x = dict(enumerate(r["x"]))
        hit = model.predict_one(x) == r["y"]
        model.learn_one(x, r["y"])
        positions[r["task"]] = positions.get(r["task"], 0) + 1
        bucket = by_bucket[position_bucket(positions[r["task"]])]
        bucket[0] += int(hit)
        bucket[1] += 1
        correct += int(hit)
    elapsed = time.perf_counter() - t0
    return {
        "prequential_accuracy": correct / len(records),
        "accuracy_by_task_position": {b: (c / n if n else None) for b, (c, n) in by_bucket.items()},
        "records_per_second": round(len(records) / elapsed, 1),
    }
