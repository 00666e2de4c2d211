"""Tests for stream_meta.data.datasets and stream_meta.data.mnist_idx.

Digits tests check task contents against an independent reference built here from
scikit-learn's raw digits (every row of a task must be a known image, rotated or
permuted as claimed). MNIST tests use small idx files written by hand in a tmp dir.
"""

from __future__ import annotations

import doctest
import gzip
import itertools
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from sklearn.datasets import load_digits

import stream_meta.data.datasets as ds
from stream_meta.data.datasets import DATASETS, Task, info, iter_tasks, make_tasks, stream
from stream_meta.data.mnist_idx import load_mnist_idx, read_idx
from stream_meta.errors import ConfigError
from stream_meta.daemon.records import Decoder

DIGITS = sorted(n for n in DATASETS if n.startswith("digits-"))
FAST = settings(max_examples=20, deadline=None)
REAL_MNIST = Path(__file__).resolve().parents[2] / "data" / "mnist"


# ---------------------------------------------------------------- references


def _key(row: np.ndarray) -> bytes:
    # +0.0 folds -0.0 into 0.0; rounding absorbs float32 noise.
    return (np.round(np.asarray(row, dtype=np.float32), 5) + np.float32(0.0)).tobytes()


def _raw_digits(angle: int = 0) -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    images = d.images.astype(np.float32) / np.float32(16)
    if angle:
        images = ndimage.rotate(images, angle, axes=(1, 2), reshape=False, order=1)
        images = np.clip(images, 0, 1)
    return images.reshape(len(images), -1), d.target


def _lookup(angle: int = 0) -> dict[bytes, int]:
    x, y = _raw_digits(angle)
    return {_key(row): int(label) for row, label in zip(x, y)}


def _write_idx(path: Path, array: np.ndarray, code: int, gz: bool = False) -> None:
    big = array.astype(array.dtype.newbyteorder(">"))
    body = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body += big.tobytes()
    path.write_bytes(gzip.compress(body) if gz else body)


def _fake_mnist(root: Path, n_train: int = 1000, n_test: int = 1000, gz: bool = False) -> Path:
    rng = np.random.default_rng(7)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, :4] = 0  # a blank band, so rotations visibly move ink around
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(root / f"{split}-images-idx3-ubyte{suffix}", images, 0x08, gz)
        _write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", labels, 0x08, gz)
    return root


def _same(a: list[Task], b: list[Task]) -> bool:
    return [t.name for t in a] == [t.name for t in b] and all(
        np.array_equal(getattr(s, f), getattr(t, f))
        for s, t in zip(a, b)
        for f in ("train_x", "train_y", "test_x", "test_y")
    )


# ---------------------------------------------------------------- registry


def test_registry_describes_every_data_set() -> None:
    assert set(DATASETS) == {
        "digits-rotations", "digits-permutations", "digits-fewshot", "digits-split",
        "mnist-rotations", "mnist-permutations", "mnist-many-permutations",
        "mnist-fewshot", "mnist-split",
    }  # fmt: skip
    for name, meta in DATASETS.items():
        assert info(name) is meta
        assert ("scikit-learn digits" if name.startswith("digits") else "MNIST idx") in meta.description
        assert meta.input_dim == (64 if name.startswith("digits") else 784)
        assert meta.num_classes == (5 if name.endswith("fewshot") else 10)
        assert meta.needs_data_dir == name.startswith("mnist")


@pytest.mark.parametrize("call", [info, make_tasks, stream, iter_tasks])
def test_unknown_name_raises_config_error_listing_valid_names(call) -> None:
    with pytest.raises(ConfigError) as err:
        call("digits-rotation")  # raised at call time, not on first next()
    assert "digits-rotations" in str(err.value) and "mnist-split" in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_tasks": 0}, {"per_task": 0}, {"test_per_task": -1}, {"seed": -1},
        {"n_tasks": 181}, {"per_task": 10**6}, {"n_tasks": 2.5},
    ],
)  # fmt: skip
def test_bad_sizes_raise_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make_tasks("digits-rotations", **kwargs)


def test_split_has_five_tasks_at_most_and_limit_is_checked() -> None:
    with pytest.raises(ConfigError):
        make_tasks("digits-split", n_tasks=6)
    with pytest.raises(ConfigError):
        stream("digits-split", limit=-1)


# ---------------------------------------------------------------- digits tasks


@pytest.mark.parametrize(
    "name, n_tasks, per_task, test_per_task",
    [
        ("digits-rotations", 10, 150, 100),
        ("digits-permutations", 10, 150, 100),
        ("digits-fewshot", 500, 40, 0),
        ("digits-split", 5, 150, 100),
    ],
)
def test_digits_defaults_shapes_dtypes_ranges(name, n_tasks, per_task, test_per_task) -> None:
    meta, tasks = info(name), make_tasks(name)
    assert len(tasks) == n_tasks and len({t.name for t in tasks}) == n_tasks
    for t in tasks:
        assert t.train_x.shape == (per_task, meta.input_dim)
        assert t.test_x.shape == (test_per_task, meta.input_dim)
        assert t.train_x.dtype == t.test_x.dtype == np.float32
        assert t.train_y.dtype == t.test_y.dtype == np.int64
        assert t.train_y.shape == (per_task,) and t.test_y.shape == (test_per_task,)
        for x, y in ((t.train_x, t.train_y), (t.test_x, t.test_y)):
            assert np.all((x >= 0) & (x <= 1)) and np.all((y >= 0) & (y < meta.num_classes))


@FAST
@given(
    name=st.sampled_from(DIGITS),
    seed=st.integers(0, 2**32 - 1),
    n_tasks=st.integers(2, 5),
    per_task=st.integers(5, 60),
)
def test_same_seed_same_tasks_other_seed_other_tasks(name, seed, n_tasks, per_task) -> None:
    kw = dict(n_tasks=n_tasks, per_task=per_task, test_per_task=10)
    a = make_tasks(name, seed=seed, **kw)
    assert _same(a, make_tasks(name, seed=seed, **kw))
    assert not _same(a, make_tasks(name, seed=seed + 1, **kw))


@FAST
@given(name=st.sampled_from(DIGITS), seed=st.integers(0, 1000), n=st.integers(1, 4))
def test_shorter_run_is_prefix_of_longer(name, seed, n) -> None:
    if name == "digits-rotations":
        n_more = 2 * n  # angles depend on n_tasks; doubling keeps every old angle
        longer = make_tasks(name, n_tasks=n_more, per_task=20, seed=seed)[::2]
    else:
        longer = make_tasks(name, n_tasks=n + 1, per_task=20, seed=seed)[:n]
    assert _same(make_tasks(name, n_tasks=n, per_task=20, seed=seed), longer)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 180))
def test_rotation_angles_spread_over_0_to_180(n) -> None:
    names = [t.name for t in iter_tasks("digits-rotations", n_tasks=n, per_task=1, test_per_task=0)]
    angles = [int(s.removeprefix("rot-")) for s in names]
    assert angles[0] == 0 and angles == sorted(set(angles)) and angles[-1] < 180
    assert all(abs(a - 180 * t / n) <= 0.5 for t, a in enumerate(angles))


def test_rotations_rotate_by_the_named_angle_and_angle_zero_is_untouched() -> None:
    tasks = make_tasks("digits-rotations", n_tasks=4, per_task=200, test_per_task=100, seed=3)
    assert [t.name for t in tasks] == ["rot-000", "rot-045", "rot-090", "rot-135"]
    plain = _lookup(0)
    for t in tasks:
        rotated = _lookup(int(t.name[4:]))
        for x, y in ((t.train_x, t.train_y), (t.test_x, t.test_y)):
            # Every row is a real digit rotated by the task's angle, with its label.
            assert [rotated.get(_key(r)) for r in x] == y.tolist()
        unchanged = np.mean([_key(r) in plain for r in t.train_x])
        assert unchanged == 1.0 if t.name == "rot-000" else unchanged < 0.05


def test_digits_test_pool_is_never_trained_on() -> None:
    train, test = set(), set()
    for seed in range(4):
        for name, kw in (
            ("digits-rotations", dict(n_tasks=1)),  # angle 0: raw images
            ("digits-permutations", dict(n_tasks=1)),  # task 0: identity
            ("digits-fewshot", dict(n_tasks=20, per_task=40, test_per_task=20)),
        ):
            full = {} if name == "digits-fewshot" else dict(per_task=1000, test_per_task=450)
            for t in make_tasks(name, seed=seed, **kw, **full):
                train |= {_key(r) for r in t.train_x}
                test |= {_key(r) for r in t.test_x}
    assert len(train) > 1000 and len(test) > 400 and not train & test
    assert train | test <= set(_lookup(0))


def test_permutations_shuffle_pixels_consistently_per_task() -> None:
    tasks = make_tasks("digits-permutations", n_tasks=4, per_task=1000, test_per_task=400)
    assert [t.name for t in tasks] == ["perm-00", "perm-01", "perm-02", "perm-03"]
    plain = _lookup(0)
    by_sorted = {np.sort(x).tobytes() for x in _raw_digits()[0]}
    means = [t.train_x.mean(axis=0) for t in tasks]
    for i, t in enumerate(tasks):
        in_plain = np.mean([_key(r) in plain for r in t.train_x])
        assert in_plain == 1.0 if i == 0 else in_plain < 0.05
        # A permutation keeps each image's pixel values, only moves them.
        assert all(np.sort(r).tobytes() in by_sorted for r in t.train_x)
        # Train and held-out rows share the task's permutation: their mean images
        # agree far better than with any other task's.
        own = np.corrcoef(means[i], t.test_x.mean(axis=0))[0, 1]
        others = [np.corrcoef(means[j], t.test_x.mean(axis=0))[0, 1] for j in range(4) if j != i]
        assert own > 0.95 and max(others) < 0.8


def test_fewshot_tasks_are_5_way_with_changing_label_meaning() -> None:
    raw = _lookup(0)
    tasks = make_tasks("digits-fewshot", n_tasks=60, seed=11)
    assert info("digits-fewshot").num_classes == 5
    mappings = []
    for t in tasks:
        assert sorted(set(t.train_y.tolist())) == [0, 1, 2, 3, 4]
        assert np.bincount(t.train_y).tolist() == [8] * 5
        assert t.test_x.shape == (0, 64)
        assert not np.all(np.diff(t.train_y) >= 0)  # classes are interleaved
        mapping = {}
        for row, y in zip(t.train_x, t.train_y.tolist()):
            mapping.setdefault(y, set()).add(raw[_key(row)])
        assert all(len(c) == 1 for c in mapping.values())  # one class per label
        mapping = tuple(mapping[y].pop() for y in range(5))
        assert len(set(mapping)) == 5
        mappings.append(mapping)
    assert len(set(mappings)) == len(mappings)  # no task repeats
    label_of_digit_3 = {m.index(3) for m in mappings if 3 in m}
    assert len(label_of_digit_3) >= 4  # "3" is called different labels in different tasks


def test_fewshot_held_out_split_and_uneven_sizes() -> None:
    raw = _lookup(0)
    for t in make_tasks("digits-fewshot", n_tasks=5, per_task=12, test_per_task=7):
        assert sorted(np.bincount(t.train_y, minlength=5)) == [2, 2, 2, 3, 3]
        assert sorted(np.bincount(t.test_y, minlength=5)) == [1, 1, 1, 2, 2]
        # Held-out rows use the task's own label meaning.
        classes = {y: raw[_key(r)] for r, y in zip(t.train_x, t.train_y.tolist())}
        assert all(classes[y] == raw[_key(r)] for r, y in zip(t.test_x, t.test_y.tolist()))


def test_split_tasks_keep_digit_labels() -> None:
    raw = _lookup(0)
    tasks = make_tasks("digits-split")
    assert [t.name for t in tasks] == ["split-0-1", "split-2-3", "split-4-5", "split-6-7", "split-8-9"]
    for i, t in enumerate(tasks):
        for x, y in ((t.train_x, t.train_y), (t.test_x, t.test_y)):
            assert set(y.tolist()) == {2 * i, 2 * i + 1}
            assert [raw[_key(r)] for r in x] == y.tolist()


# ---------------------------------------------------------------- stream()


@FAST
@given(
    name=st.sampled_from(DIGITS),
    seed=st.integers(0, 2**16),
    n_tasks=st.integers(1, 4),
    per_task=st.integers(1, 30),
    limit=st.one_of(st.none(), st.integers(0, 150)),
)
def test_stream_yields_the_tasks_training_rows_in_order(name, seed, n_tasks, per_task, limit):
    kw = dict(seed=seed, n_tasks=n_tasks, per_task=per_task)
    records = list(stream(name, limit=limit, **kw))
    tasks = make_tasks(name, test_per_task=0, **kw)
    total = n_tasks * per_task
    assert len(records) == (total if limit is None else min(limit, total))
    decoder = Decoder(input_dim=info(name).input_dim, num_classes=info(name).num_classes)
    expected = [(t, i) for t in tasks for i in range(per_task)]
    for rec, (task, i) in zip(records, expected):
        assert set(rec) == {"x", "y", "task", "id"}
        assert rec["task"] == task.name and rec["y"] == task.train_y[i]
        assert all(type(v) is float and round(v, 4) == v for v in rec["x"])
        np.testing.assert_allclose(rec["x"], task.train_x[i], atol=5e-5)
        decoded = decoder.decode(json.dumps(rec).encode())  # valid on the wire
        assert decoded.task == task.name and decoded.y == rec["y"]
    assert len({r["id"] for r in records}) == len(records)


def test_fewshot_stream_runs_past_the_default_and_is_lazy(monkeypatch) -> None:
    records = list(stream("digits-fewshot", limit=40 * 510))
    assert records[-1]["task"] == "fewshot-00509"  # beyond make_tasks' 500
    assert len(make_tasks("digits-fewshot")) == 500

    built = []
    real = ds._task
    monkeypatch.setattr(ds, "_task", lambda *a, **k: built.append(1) or real(*a, **k))
    head = list(itertools.islice(stream("digits-fewshot"), 41))
    assert [r["task"] for r in head[39:]] == ["fewshot-00000", "fewshot-00001"]
    assert len(built) == 2  # not 10_000


def test_module_docstring_examples_run() -> None:
    assert doctest.testmod(ds).failed == 0


# ---------------------------------------------------------------- MNIST idx


@FAST
@given(
    code_dtype=st.sampled_from([(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                                (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)]),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    gz=st.booleans(),
    seed=st.integers(0, 100),
)  # fmt: skip
def test_read_idx_round_trips_every_element_type(tmp_path_factory, code_dtype, shape, gz, seed):
    code, dtype = code_dtype
    array = (np.random.default_rng(seed).normal(size=shape) * 50).astype(dtype)
    path = tmp_path_factory.mktemp("idx") / "a-idx"
    _write_idx(path, array, code, gz)
    out = read_idx(path)
    assert out.shape == array.shape and out.dtype == dtype and np.array_equal(out, array)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx_reads_plain_and_gzip(tmp_path: Path, gz: bool) -> None:
    _fake_mnist(tmp_path, n_train=30, n_test=20, gz=gz)
    train_x, train_y, test_x, test_y = load_mnist_idx(tmp_path)
    assert train_x.shape == (30, 28, 28) and test_x.shape == (20, 28, 28)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
    assert train_y.tolist() == [i % 10 for i in range(30)]
    assert ds.load_mnist_idx is load_mnist_idx  # re-exported where the contract says


def test_missing_mnist_names_make_mnist(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="make mnist") as err:
        load_mnist_idx(tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(err.value)
    monkeypatch.chdir(tmp_path)  # default data_dir "data/mnist" is then absent
    for call in (make_tasks, stream):
        with pytest.raises(ConfigError, match="make mnist"):
            call("mnist-rotations")


def test_corrupt_idx_files_raise_config_error(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, n_train=10, n_test=10)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])  # truncated download
    with pytest.raises(ConfigError, match="bytes"):
        load_mnist_idx(tmp_path)
    images.write_bytes(b"PK\x03\x04" + bytes(100))  # not idx at all
    with pytest.raises(ConfigError, match="magic"):
        load_mnist_idx(tmp_path)
    _fake_mnist(tmp_path, n_train=10, n_test=10)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(9, np.uint8), 0x08)
    with pytest.raises(ConfigError, match="disagree"):
        load_mnist_idx(tmp_path)


def test_mnist_tasks_from_idx_files(tmp_path: Path) -> None:
    data = _fake_mnist(tmp_path)
    # Defaults: 20 rotations over [0, 180), 1000 train + 1000 held out per task.
    names = [t.name for t in make_tasks("mnist-rotations", per_task=1, test_per_task=0, data_dir=data)]
    assert names == [f"rot-{a:03d}" for a in range(0, 180, 9)]
    rot = make_tasks("mnist-rotations", n_tasks=2, data_dir=data)
    assert [t.train_x.shape for t in rot] == [(1000, 784)] * 2
    assert [t.test_x.shape for t in rot] == [(1000, 784)] * 2
    raw = load_mnist_idx(data)[0].reshape(-1, 784).astype(np.float32) / 255
    plain = {_key(r) for r in raw}
    assert all(_key(r) in plain for r in rot[0].train_x)
    assert not any(_key(r) in plain for r in rot[1].train_x)  # rotated by 90 degrees
    many = make_tasks("mnist-many-permutations", per_task=1, test_per_task=1, data_dir=data)
    assert len(many) == 100 and many[-1].name == "perm-99"
    perm = make_tasks("mnist-permutations", n_tasks=3, per_task=5, data_dir=data)
    assert len(perm[0].test_x) == 1000 and perm[2].train_x.shape == (5, 784)
    split = make_tasks("mnist-split", per_task=50, test_per_task=50, data_dir=data)
    assert [sorted(set(t.train_y.tolist())) for t in split] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    few = make_tasks("mnist-fewshot", n_tasks=3, data_dir=data)
    assert all(np.bincount(t.train_y).tolist() == [8] * 5 for t in few)
    for t in rot + perm + split + few:
        assert t.train_x.dtype == np.float32 and 0 <= t.train_x.min() and t.train_x.max() <= 1
    rec = next(stream("mnist-split", per_task=50, data_dir=data))
    assert len(rec["x"]) == 784 and rec["task"] == "split-0-1"


def test_real_mnist_from_make_mnist() -> None:
    # `make test` runs `make mnist` first; a missing directory is a failed set-up, not a skip.
    assert REAL_MNIST.is_dir(), f"{REAL_MNIST} missing: run `make mnist`"
    train_x, train_y, test_x, test_y = load_mnist_idx(REAL_MNIST)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert np.bincount(train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
