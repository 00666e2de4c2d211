"""bench soak: the cycled stream and one short run through the real service."""

from __future__ import annotations

import argparse

import pytest

from stream_meta.bench.soak import CycledSource, child


def test_the_cycled_source_renames_tasks_each_round_and_stops_at_the_total():
    base = [(b"v%d" % i, (("content-type", b"f32"), ("task", b"a" if i < 2 else b"b")), "a" if i < 2 else "b")
            for i in range(3)]
    src = CycledSource(base, total=8, poll_size=5, rename_tasks=True)
    polls = [src.poll(0), src.poll(0, max_records=2), src.poll(0)]
    records = [r for p in polls for r in p]
    assert [len(p) for p in polls] == [5, 2, 1] and src.backlog_done()
    assert [r.offset for r in records] == list(range(8))
    assert [dict(r.headers)["task"] for r in records] == [b"a", b"a", b"b", b"a#1", b"a#1", b"b#1", b"a#2", b"a#2"]
    assert CycledSource(base, 8, 5, True, start={("soak", 0): 6}).poll(0)[0].offset == 6


@pytest.mark.slow
def test_a_short_soak_goes_through_the_service_and_reports_its_figures():
    args = argparse.Namespace(records=640, dataset="digits-rotations", data_dir="data/mnist", base_records=300,
                              format="f32", task_ids="new", learn_batch=64, set="{}", profile=None)
    out = child(args)
    assert out["records"] == 640
    assert out["tasks_seen"] > 2  # the base holds 2 tasks; each round renames them
    assert out["peak_rss_mb"] >= out["final_rss_mb"] > 0
    assert len(out["samples"]) == 10 and out["samples"][-1]["records"] == 640
    assert out["checkpoints"] >= 1
    assert 0 < out["latency"]["p50"] <= out["latency"]["p99"]
