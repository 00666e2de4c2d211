"""Micro-batched test-then-train: what --learn-batch N promises, asserted on real data."""

from __future__ import annotations

import json

import pytest
import torch
from prometheus_client import CollectorRegistry

from connectors.base import RawRecord
from stream_meta.daemon.app import build_learner, build_service
from stream_meta.daemon.batching import Batcher
from stream_meta.daemon.config import load_config
from stream_meta.daemon.records import encode
from stream_meta.data.datasets import stream


def _records(n: int) -> list[dict]:
    return list(stream("digits-rotations", limit=n))


def _cfg(tmp_path, src, **kw):
    return load_config({}, env={}, overrides={
        "input_file": src, "input_dim": 64, "num_classes": 10, "checkpoint_dir": tmp_path / "ckpt",
        "metrics_port": None, "stop_at_end": True, "predictions_topic": "p", "checkpoint_every_records": 64, **kw})


@pytest.mark.parametrize("learn_batch", [1, 8])
def test_every_record_is_predicted_before_anything_of_its_batch_is_learned(tmp_path, learn_batch):
    recs = _records(160)
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(encode(r["x"], r["y"], r["task"], r["id"]) + b"\n" for r in recs))
    cfg = _cfg(tmp_path, src, learn_batch=learn_batch, max_batch_wait_ms=60000)
    summary = build_service(cfg, CollectorRegistry()).run()
    emitted = [json.loads(json.loads(line)["value"])["prediction"]
               for line in (tmp_path / "ckpt" / "predictions.jsonl").read_text().splitlines()]

    # the same learner driven by hand: predict a whole block, then learn it
    learner, expected = build_learner(cfg), []
    for start in range(0, len(recs), learn_batch):
        block = recs[start:start + learn_batch]
        tasks = [r["task"] for r in block]
        x = torch.tensor([r["x"] for r in block], dtype=torch.float32)
        expected += learner.predict_batch(tasks, x).tolist()
        learner.learn_batch(tasks, x, torch.tensor([r["y"] for r in block]))
    assert emitted == expected
    assert summary["records_learned"] == len(recs) and summary["predictions_emitted"] == len(recs)
    # consume + learn time covers the processing time and the polls that brought records
    assert summary["stream_seconds"] > 0
    assert summary["records_per_stream_second"] == pytest.approx(len(recs) / summary["stream_seconds"], rel=1e-2)
    assert summary["cpu_seconds"] > 0  # the process's CPU time over the same processing spells


def test_a_batch_makes_at_most_one_meta_update_per_task(tmp_path):
    cfg = load_config({}, env={}, overrides={"input_dim": 64, "num_classes": 10, "algorithm": "fomaml",
                                             "episode_stride": 5, "query_size": 5})
    recs = _records(300)
    recs = recs[:30] + recs[150:180]  # 30 records of each of two tasks
    tasks = [r["task"] for r in recs]
    assert len(set(tasks)) == 2
    x = torch.tensor([r["x"] for r in recs], dtype=torch.float32)
    y = torch.tensor([r["y"] for r in recs])

    one_at_a_time = build_learner(cfg)
    per_record = sum(one_at_a_time.learn(t, xi, int(yi)).meta_updates for t, xi, yi in zip(tasks, x, y))
    batched = build_learner(cfg)
    report = batched.learn_batch(tasks, x, y)
    assert per_record > 2  # the same records complete many episodes one at a time
    assert report.meta_updates == 2  # ... but a batch updates once per task
    # every completed episode still reaches the replay memory
    assert batched.health().replay_episodes == one_at_a_time.health().replay_episodes


def test_learn_batch_of_one_is_learn(tmp_path):
    cfg = load_config({}, env={}, overrides={"input_dim": 64, "num_classes": 10, "memory_capacity": 20,
                                             "memory_query": 5, "regularizer": "ewc", "reg_strength": 1.0})
    recs = _records(120)
    a, b = build_learner(cfg), build_learner(cfg)
    for r in recs:
        x = torch.tensor(r["x"], dtype=torch.float32)
        assert a.predict(r["task"], x) == int(b.predict_batch([r["task"]], x.unsqueeze(0))[0])
        a.learn(r["task"], x, r["y"])
        b.learn_batch([r["task"]], x.unsqueeze(0), torch.tensor([r["y"]]))
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def _raw(partition: int, offset: int) -> RawRecord:
    return RawRecord("t", partition, offset, b"")


def test_batches_are_aligned_to_offsets_whatever_the_polls():
    cuts = []
    for polls in ([range(0, 10)], [range(0, 3), range(3, 7), range(7, 10)], [range(0, 1), range(1, 10)]):
        b, got = Batcher(size=4, max_wait_s=60), []
        for poll in polls:
            b.add([_raw(0, o) for o in poll], now=0.0)
            got += [[r.offset for r in batch] for batch, _ in b.ready(now=0.0)]
        got += [[r.offset for r in batch] for batch, _ in b.ready(now=0.0, drain=True)]
        cuts.append(got)
    assert cuts[0] == cuts[1] == cuts[2] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_an_incomplete_batch_waits_at_most_max_wait_and_partitions_are_apart():
    b = Batcher(size=4, max_wait_s=0.5)
    b.add([_raw(0, 0), _raw(1, 0), _raw(0, 1)], now=10.0)
    assert b.ready(now=10.2) == [] and b.wait_s(now=10.2) == pytest.approx(0.3)
    out = b.ready(now=10.6)
    assert [[(r.partition, r.offset) for r in batch] for batch, _ in out] == [[(0, 0), (0, 1)], [(1, 0)]]
    assert out[0][1] == [10.0, 10.0] and len(b) == 0 and b.wait_s(now=11) is None


def test_revoked_partitions_drop_held_records():
    b = Batcher(size=8, max_wait_s=60)
    b.add([_raw(0, o) for o in range(3)], now=0.0)
    assert b.clear() == 3 and len(b) == 0 and b.ready(now=100.0, drain=True) == []
