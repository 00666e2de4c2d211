"""Continual / meta-learning benchmark streams built from real, locally shipped data.

Each data set is a sequence of tasks (rotated digits, permuted pixels, 5-way few-shot
problems, class splits); :func:`stream` turns it into wire-format records, one task
after another in a single pass, which is what a producer writes to the topic.
Everything is a pure function of ``seed``: each task draws from its own ``numpy``
Generator keyed by the seed and the task's identity (index, or angle for rotations),
so a task name always holds the same records for a seed, and a shorter run is a
prefix of a longer one.

>>> tasks = make_tasks("digits-rotations", n_tasks=2, per_task=5, test_per_task=3)
>>> [t.name for t in tasks], tasks[0].train_x.shape, tasks[0].test_x.shape
(['rot-000', 'rot-090'], (5, 64), (3, 64))
>>> next(stream("digits-fewshot", limit=1))["task"]
'fewshot-00000'
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from stream_meta.data.mnist_idx import load_mnist_idx
from stream_meta.errors import ConfigError, MissingDependencyError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "Task",
    "info",
    "iter_tasks",
    "load_mnist_idx",
    "make_tasks",
    "require",
    "stream",
]

DEFAULT_MNIST_DIR = "data/mnist"
FEWSHOT_WAYS = 5
MAX_STREAM_TASKS = 10_000  # most tasks a run may ask for; few-shot streams default to it
ROUND_DECIMALS = 4  # wire x precision: keeps JSON small, far below pixel noise
MAX_ANGLE = 180  # rotations spread over [0, 180) degrees, as in GEM/MER/La-MAML

# The digits pool split is fixed (not seeded) like MNIST's train/t10k split, so a
# test image is never a training image under any seed.
_DIGITS_TEST_FRACTION = 0.3
_DIGITS_SPLIT_SEED = 20_240_917


@dataclass(frozen=True)
class DatasetInfo:
    """What a consumer must know to build a model for a data set."""

    name: str
    input_dim: int
    num_classes: int
    description: str
    needs_data_dir: bool


@dataclass(frozen=True)
class Task:
    """One task: training records in stream order plus held-out records of it.

    ``*_x`` are ``float32 [n, input_dim]`` in ``[0, 1]``, ``*_y`` are ``int64 [n]``;
    ``test_x`` may have zero rows (few-shot tasks hold none out by default).
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True)
class _Spec:
    source: str  # "digits" | "mnist"
    family: str  # "rotations" | "permutations" | "fewshot" | "split"
    n_tasks: int
    per_task: int
    test_per_task: int


_SPECS: dict[str, _Spec] = {
    "digits-rotations": _Spec("digits", "rotations", 10, 150, 100),
    "digits-permutations": _Spec("digits", "permutations", 10, 150, 100),
    "digits-fewshot": _Spec("digits", "fewshot", 500, 40, 0),
    "digits-split": _Spec("digits", "split", 5, 150, 100),
    # MER / La-MAML protocol sizes.
    "mnist-rotations": _Spec("mnist", "rotations", 20, 1000, 1000),
    "mnist-permutations": _Spec("mnist", "permutations", 20, 1000, 1000),
    # 200 held out (not 1000) per task: 100 x 1000 x 784 floats would be 300 MB.
    "mnist-many-permutations": _Spec("mnist", "permutations", 100, 200, 200),
    "mnist-fewshot": _Spec("mnist", "fewshot", 500, 40, 0),
    "mnist-split": _Spec("mnist", "split", 5, 1000, 1000),
}

_SOURCE_TEXT = {
    "digits": "scikit-learn digits, 8x8 scaled /16 (shipped with scikit-learn)",
    "mnist": "MNIST idx files, 28x28 scaled /255 (`make mnist`)",
}
_FAMILY_TEXT = {
    "rotations": "{n} tasks, all 10 classes rotated by a fixed angle in [0, 180) deg",
    "permutations": "{n} tasks, each a fixed random pixel permutation (task 0 identity)",
    "fewshot": "never-repeating 5-way tasks: 5 random classes relabelled 0..4 in a "
    "random order per task ({n} by default, streams up to %d)" % MAX_STREAM_TASKS,
    "split": "{n} tasks of 2 classes (0/1, 2/3, ...); labels keep the digit value",
}
_FAMILIES = ("rotations", "permutations", "fewshot", "split")
_MAX_TASKS = {
    "rotations": MAX_ANGLE,  # one distinct integer angle per task
    "permutations": MAX_STREAM_TASKS,
    "fewshot": MAX_STREAM_TASKS,
    "split": 5,
}


def _describe(spec: _Spec) -> str:
    family = _FAMILY_TEXT[spec.family].format(n=spec.n_tasks)
    sizes = f"{spec.per_task} train / {spec.test_per_task} held-out records per task"
    return f"{family}; {sizes}; {_SOURCE_TEXT[spec.source]}"


DATASETS: dict[str, DatasetInfo] = {
    name: DatasetInfo(
        name=name,
        input_dim=64 if spec.source == "digits" else 784,
        num_classes=FEWSHOT_WAYS if spec.family == "fewshot" else 10,
        description=_describe(spec),
        needs_data_dir=spec.source == "mnist",
    )
    for name, spec in _SPECS.items()
}


def info(name: str) -> DatasetInfo:
    """Describe data set ``name``; :class:`ConfigError` lists the valid names."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown data set {name!r}; valid: {', '.join(sorted(DATASETS))}"
        ) from None


_DISTRIBUTIONS = {"sklearn": "scikit-learn", "scipy": "scipy"}  # import name -> pip name


def _needs(spec: _Spec) -> list[str]:
    """Import names of the optional packages a data set needs (the ``[data]`` extra)."""
    needs = ["sklearn"] if spec.source == "digits" else []
    return needs + (["scipy"] if spec.family == "rotations" else [])


def require(name: str) -> DatasetInfo:
    """Like :func:`info`, and fails early if data set ``name`` needs a package not installed.

    The daemon does not depend on scikit-learn or scipy; only the digits data sets and
    rotations do, so a daemon-only install says what to add instead of an ImportError.
    """
    meta = info(name)
    missing = [_DISTRIBUTIONS[m] for m in _needs(_SPECS[name]) if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"data set {name!r} needs {' and '.join(missing)}: "
            "pip install 'stream-meta[data]' (or [bench]; `make install` does)"
        )
    return meta


@dataclass(frozen=True)
class _Pools:
    """Images ``[n, side, side]`` as stored (integers), divided by ``scale`` on use."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    scale: float
    # Indices of each class per split; few-shot tasks look them up every task.
    by_class: dict[str, list[np.ndarray]]


def _make_pools(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    scale: float,
) -> _Pools:
    by_class = {
        split: [np.flatnonzero(labels == c) for c in range(10)]
        for split, labels in (("train", train_labels), ("test", test_labels))
    }
    return _Pools(train_images, train_labels, test_images, test_labels, scale, by_class)


@lru_cache(maxsize=1)  # a few ms saved per call; the arrays are never handed out
def _digits_pools() -> _Pools:
    from sklearn.datasets import load_digits  # sklearn import is slow; only if used

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # integer counts 0..16
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(_DIGITS_SPLIT_SEED)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(10):  # stratified, so every class has held-out images
        members = rng.permutation(np.flatnonzero(labels == c))
        is_test[members[: round(len(members) * _DIGITS_TEST_FRACTION)]] = True
    pools = _make_pools(
        images[~is_test], labels[~is_test], images[is_test], labels[is_test], 16.0
    )
    for arr in (pools.train_images, pools.train_labels, pools.test_images, pools.test_labels):
        arr.setflags(write=False)
    return pools


def _load_pools(source: str, data_dir: str | os.PathLike[str] | None) -> _Pools:
    if source == "digits":
        return _digits_pools()  # data_dir is ignored: the data ships with sklearn
    train_x, train_y, test_x, test_y = load_mnist_idx(data_dir or DEFAULT_MNIST_DIR)
    return _make_pools(train_x, train_y, test_x, test_y, 255.0)


def _positive(value: int, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _draw(rng: np.random.Generator, pool: np.ndarray | int, k: int, what: str) -> np.ndarray:
    """``k`` distinct entries of ``pool`` (an index array, or ``range(pool)``), shuffled."""
    size = pool if isinstance(pool, int) else len(pool)
    if k > size:
        raise ConfigError(f"{what}: asked for {k} records but the pool holds {size}")
    return rng.choice(pool, size=k, replace=False)


def _rotate(images: np.ndarray, angle: int) -> np.ndarray:
    if angle % 360 == 0 or len(images) == 0:
        return images  # exact identity, not an interpolated copy
    from scipy import ndimage  # the [data] extra; require() has checked it is there

    out = ndimage.rotate(images, angle, axes=(1, 2), reshape=False, order=1, cval=0.0)
    # Linear interpolation stays within [0, 1] up to rounding error.
    return np.clip(out, 0.0, 1.0, out=out)


def _split_counts(k: int, ways: int) -> list[int]:
    return [k // ways + (i < k % ways) for i in range(ways)]


def _task(
    spec: _Spec, pools: _Pools, t: int, n_tasks: int, per_task: int, test_per_task: int, seed: int
) -> Task:
    angle, perm, relabel = 0, None, None
    if spec.family == "rotations":
        angle = (2 * MAX_ANGLE * t + n_tasks) // (2 * n_tasks)  # round(180 t / n), exact
    # Keyed by what names the task, so "rot-090" is the same data whatever n_tasks.
    # Structure (permutation, classes) is drawn first, then train, then test
    # indices, so asking for no test records leaves the training records unchanged.
    key = angle if spec.family == "rotations" else t
    rng = np.random.default_rng([seed, _FAMILIES.index(spec.family), key])
    if spec.family == "rotations":
        name = f"rot-{angle:03d}"
    elif spec.family == "permutations":
        d = pools.train_images[0].size
        perm = np.arange(d) if t == 0 else rng.permutation(d)
        name = f"perm-{t:02d}"
    elif spec.family == "split":
        classes = np.array([2 * t, 2 * t + 1])
        name = f"split-{classes[0]}-{classes[1]}"
    else:  # fewshot
        classes = rng.choice(10, size=FEWSHOT_WAYS, replace=False)
        relabel = np.full(10, -1, dtype=np.int64)
        relabel[classes] = rng.permutation(FEWSHOT_WAYS)
        name = f"fewshot-{t:05d}"

    def pick(split: str, k: int) -> np.ndarray:
        what, by_class = f"{name} {split}", pools.by_class[split]
        if spec.family == "split":
            return _draw(rng, np.concatenate([by_class[c] for c in classes]), k, what)
        if spec.family != "fewshot":
            n_pool = len(pools.train_labels if split == "train" else pools.test_labels)
            return _draw(rng, n_pool, k, what)
        parts = [
            _draw(rng, by_class[c], n, f"{what} class {c}")
            for c, n in zip(classes, _split_counts(k, FEWSHOT_WAYS))
        ]
        return rng.permutation(np.concatenate(parts))  # interleave the classes

    def build(
        images: np.ndarray, labels: np.ndarray, idx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        x = images[idx].astype(np.float32) / np.float32(pools.scale)
        x = _rotate(x, angle).reshape(len(idx), images[0].size)
        if perm is not None:
            x = x[:, perm]
        y = labels[idx] if relabel is None else relabel[labels[idx]]
        return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)

    tr, te = pick("train", per_task), pick("test", test_per_task)
    train_x, train_y = build(pools.train_images, pools.train_labels, tr)
    test_x, test_y = build(pools.test_images, pools.test_labels, te)
    return Task(name, train_x, train_y, test_x, test_y)


def iter_tasks(
    name: str,
    *,
    n_tasks: int | None = None,
    per_task: int | None = None,
    test_per_task: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> Iterator[Task]:
    """Tasks of ``name`` one at a time, generated lazily (arguments as :func:`make_tasks`).

    Arguments are checked and the data loaded when called, not on first ``next``.
    """
    require(name)
    spec = _SPECS[name]
    n = _positive(spec.n_tasks if n_tasks is None else n_tasks, "n_tasks")
    if n > _MAX_TASKS[spec.family]:
        raise ConfigError(f"{name}: n_tasks must be <= {_MAX_TASKS[spec.family]}, got {n}")
    k = _positive(spec.per_task if per_task is None else per_task, "per_task")
    k_test = spec.test_per_task if test_per_task is None else test_per_task
    k_test = _positive(k_test, "test_per_task", minimum=0)
    seed = _positive(seed, "seed", minimum=0)
    pools = _load_pools(spec.source, data_dir)
    return (_task(spec, pools, t, n, k, k_test, seed) for t in range(n))


def make_tasks(
    name: str,
    *,
    n_tasks: int | None = None,
    per_task: int | None = None,
    test_per_task: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[Task]:
    """All tasks of data set ``name`` as a list (``None`` means the data set default).

    ``per_task``/``test_per_task`` count training/held-out records per task;
    ``data_dir`` holds the MNIST idx files (default ``data/mnist``; ignored for digits).
    """
    return list(
        iter_tasks(
            name,
            n_tasks=n_tasks,
            per_task=per_task,
            test_per_task=test_per_task,
            seed=seed,
            data_dir=data_dir,
        )
    )


def stream(
    name: str,
    *,
    seed: int = 0,
    limit: int | None = None,
    n_tasks: int | None = None,
    per_task: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> Iterator[dict]:
    """Wire-format records ``{"x", "y", "task", "id"}``, task after task, single pass.

    The records are exactly the ``train_x``/``train_y`` rows of :func:`make_tasks`
    with the same arguments, ``x`` rounded to 4 decimals. Few-shot data sets stream up
    to ``MAX_STREAM_TASKS`` tasks unless ``n_tasks`` is given; ``limit`` stops early.
    """
    spec = _SPECS[require(name).name]
    if limit is not None:
        limit = _positive(limit, "limit", minimum=0)
    if n_tasks is None and spec.family == "fewshot":
        n_tasks = MAX_STREAM_TASKS  # generated lazily, so "endless" costs nothing
    # Held-out records are never streamed; skipping them saves the rotations.
    tasks = iter_tasks(
        name, n_tasks=n_tasks, per_task=per_task, test_per_task=0, seed=seed, data_dir=data_dir
    )
    return _records(tasks, limit)


def _records(tasks: Iterator[Task], limit: int | None) -> Iterator[dict]:
    emitted = 0
    for task in tasks:
        if limit is not None and emitted >= limit:
            return
        # float64 before rounding: a rounded float32 prints as 0.12349999696...
        xs = np.round(task.train_x.astype(np.float64), ROUND_DECIMALS).tolist()
        for i, (x, y) in enumerate(zip(xs, task.train_y.tolist())):
            if limit is not None and emitted >= limit:
                return
            yield {"x": x, "y": y, "task": task.name, "id": f"{task.name}/{i}"}
            emitted += 1
