"""Polls no further ahead than the learn batch: records do not wait, polled, while earlier
blocks are learned (their poll-to-prediction latency would grow with the poll size)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from prometheus_client import CollectorRegistry

from connectors.base import RawRecord
from connectors.jsonl import JsonlSource
from stream_meta.daemon.app import build_service
from stream_meta.daemon.batching import Batcher
from stream_meta.daemon.config import load_config
from stream_meta.daemon.latency import LatencyQuantiles
from stream_meta.daemon.records import encode
from stream_meta.data.datasets import stream


@given(st.integers(1, 64), st.integers(0, 10_000), st.integers(0, 200))
def test_poll_size_completes_the_block_the_next_offset_falls_in(size, start, held):
    b = Batcher(size, max_wait_s=60)
    first = b.poll_size({("t", 0): start})
    assert 1 <= first <= size and (start + first) % size == 0
    b.add([RawRecord("t", 0, o, b"") for o in range(start, start + held)], now=0.0)
    b.ready(now=0.0)
    if len(b):
        want = b.poll_size({("t", 0): start + held})
        assert 1 <= want <= size and (start + held + want) % size == 0


def test_poll_size_with_several_partitions_is_one_block():
    b = Batcher(16, max_wait_s=60)
    assert b.poll_size({("t", 0): 3, ("t", 1): 5}) == 16
    b.add([RawRecord("t", 0, 3, b""), RawRecord("t", 1, 5, b"")], now=0.0)
    assert b.poll_size({}) == 16


def test_the_jsonl_source_reads_at_most_what_is_asked(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(b"{}\n" for _ in range(50)))
    src = JsonlSource(path, max_records=20)
    assert [r.offset for r in src.poll(0, 7)] == list(range(7))
    assert len(src.poll(0, 100)) == 20  # the source's own limit still holds
    assert len(src.poll(0)) == 20
    src.close()


class _Recording(JsonlSource):
    """A file source that remembers what each poll returned."""

    polls: list[list[int]] = []

    def poll(self, timeout_s, max_records=None):
        out = super().poll(timeout_s, max_records)
        if out:
            self.polls.append([r.offset for r in out])
        return out


def test_the_service_polls_one_aligned_block_at_a_time(tmp_path):
    recs = list(stream("digits-rotations", limit=200))
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(encode(r["x"], r["y"], r["task"], r["id"]) + b"\n" for r in recs))
    cfg = load_config({}, env={}, overrides={
        "input_file": src, "input_dim": 64, "num_classes": 10, "checkpoint_dir": tmp_path / "ckpt",
        "metrics_port": None, "stop_at_end": True, "learn_batch": 16, "max_poll_records": 500})
    service = build_service(cfg, CollectorRegistry())
    service.open_source = lambda offsets, on_revoke: _Recording(src, offsets, cfg.max_poll_records)
    _Recording.polls = []
    summary = service.run()
    assert summary["records_learned"] == 200
    assert [o for p in _Recording.polls for o in p] == list(range(200))
    # every poll is one offset-aligned block of 16 (the last one shorter): none waits behind another
    assert all(len(p) <= 16 and p[0] // 16 == p[-1] // 16 for p in _Recording.polls)
    assert len(_Recording.polls) == 13
    assert 0 < summary["prediction_latency_p50_s"] <= summary["prediction_latency_p99_s"]


def test_latency_quantiles_match_numpy_within_a_bin():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=-5, sigma=1.5, size=20_000)
    q = LatencyQuantiles()
    for chunk in np.array_split(values, 37):
        q.add(chunk)
    assert q.count == len(values)
    for p in (0.5, 0.9, 0.99):
        exact = float(np.quantile(values, p))
        assert exact <= q.quantile(p) <= exact * 1.024
    assert LatencyQuantiles().quantile(0.5) is None
