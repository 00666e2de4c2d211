"""The service's one path, driven from a JSON-lines file source (no broker needed)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry

from stream_meta.data.datasets import stream
from stream_meta.daemon.config import load_config
from stream_meta.daemon.app import build_service
from stream_meta.daemon.records import encode


def _write(path, n: int, bad_every: int = 0) -> tuple[int, int]:
    good = bad = 0
    with open(path, "wb") as f:
        for i, rec in enumerate(stream("digits-rotations", limit=n)):
            f.write(encode(rec["x"], rec["y"], rec["task"], rec["id"]) + b"\n")
            good += 1
            if bad_every and i % bad_every == 0:
                f.write(b'{"x": [1, 2]}\n')
                bad += 1
    return good, bad


def _cfg(tmp_path, src, **kw):
    return load_config({}, env={}, overrides={
        "input_file": src, "input_dim": 64, "num_classes": 10, "checkpoint_dir": tmp_path / "ckpt",
        "metrics_port": None, "checkpoint_every_records": 50, **kw})


def test_file_run_learns_all_then_resumes_without_learning_twice(tmp_path):
    src = tmp_path / "in.jsonl"
    good, bad = _write(src, 200, bad_every=40)
    first = build_service(_cfg(tmp_path, src, max_records=120), CollectorRegistry()).run()
    assert first["records_consumed"] == 120
    second = build_service(_cfg(tmp_path, src, stop_at_end=True), CollectorRegistry()).run()
    assert second["records_consumed"] == good + bad
    assert second["records_learned"] == good
    assert second["records_rejected"] == bad == second["rejected_by_reason"]["x_wrong_length"]
    dead = [json.loads(line) for line in (tmp_path / "ckpt" / "dead-letters.jsonl").read_text().splitlines()]
    assert len(dead) == bad and all(d["headers"]["stream_meta.reason"] == "x_wrong_length" for d in dead)
    # resumed learning equals one uninterrupted run (same seed, same order)
    third = build_service(_cfg(tmp_path / "b", src, stop_at_end=True), CollectorRegistry()).run()
    assert third["prequential_accuracy"] == second["prequential_accuracy"]
    assert third["accuracy_by_task_position"] == second["accuracy_by_task_position"]


def test_accuracy_rises_within_tasks_on_real_data(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, 1500)
    s = build_service(_cfg(tmp_path, src, stop_at_end=True), CollectorRegistry()).run()
    by_pos = s["accuracy_by_task_position"]
    assert s["records_learned"] == 1500 and s["tasks_seen"] == 10
    assert by_pos["51+"] > by_pos["1-5"] + 0.15
    assert s["prequential_accuracy"] > 0.5  # 10 classes: chance is 0.1


@pytest.mark.integration  # a real daemon process, stopped by a signal
def test_sigterm_stops_cleanly_with_a_final_checkpoint(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, 1500)
    summary = tmp_path / "s.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_meta.cli.main", "run", "--input-file", str(src), "--input-dim", "64",
         "--num-classes", "10", "--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-port", "0",
         "--summary-json", str(summary), "--idle-timeout-s", "600", "--checkpoint-every-s", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((tmp_path / "ckpt").glob("ckpt-*.json")):
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    s = json.loads(summary.read_text())
    manifests = sorted((tmp_path / "ckpt").glob("ckpt-*.json"))
    last = json.loads(manifests[-1].read_text())
    assert last["records_learned"] == s["records_learned"] > 0
    assert last["offsets"] == [[f"file:{src.name}", 0, s["records_consumed"]]]


def test_fuzz_the_whole_per_record_path_never_raises(tmp_path):
    """Arbitrary bytes through decode -> predict -> learn: only counted rejections, no escape."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from connectors.base import RawRecord

    src = tmp_path / "empty.jsonl"
    src.write_text("")
    cfg = _cfg(tmp_path, src, input_dim=3, num_classes=4, max_message_bytes=256)
    service = build_service(cfg, CollectorRegistry())
    valid = st.builds(
        lambda x, y, t: encode(x, y, t),
        st.lists(st.floats(-1e30, 1e30, allow_nan=False), min_size=3, max_size=3),
        st.none() | st.integers(0, 3), st.none() | st.text(min_size=1, max_size=8))
    offset = iter(range(10**9))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(st.binary(max_size=300), valid), min_size=1, max_size=6))
    def check(raws):
        before = (service.stats.records_consumed, service.stats.records_rejected, service.stats.predictions_emitted)
        service.process([RawRecord("fuzz", 0, next(offset), raw) for raw in raws])  # one learn batch
        consumed, rejected, predicted = (service.stats.records_consumed, service.stats.records_rejected,
                                         service.stats.predictions_emitted)
        assert consumed == before[0] + len(raws)
        assert (rejected - before[1]) + (predicted - before[2]) == len(raws)  # exactly one outcome per record

    check()
    service.sinks.close()


@pytest.mark.integration  # a real daemon process, stopped by a signal
def test_a_graceful_stop_that_outlasts_its_timeout_exits_non_zero(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, 1500)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_meta.cli.main", "run", "--input-file", str(src), "--input-dim", "64",
         "--num-classes", "10", "--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-port", "0",
         "--idle-timeout-s", "600", "--shutdown-timeout-s", "0.001", "--checkpoint-every-records", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((tmp_path / "ckpt").glob("ckpt-*.json")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert "did not finish within" in err
    assert list((tmp_path / "ckpt").glob("ckpt-*.json"))  # the last good checkpoint is intact


def test_both_replay_memories_show_in_the_gauges(tmp_path):
    """Episode replay and the record memory (--memory-capacity) each get their series."""
    src = tmp_path / "in.jsonl"
    _write(src, 300)
    registry = CollectorRegistry()
    build_service(_cfg(tmp_path, src, stop_at_end=True, memory_capacity=40), registry).run()

    def value(name, memory):
        return registry.get_sample_value(f"stream_meta_replay_buffer_{name}", {"memory": memory})

    assert value("items", "records") == 40 and value("bytes", "records") >= 40 * 64 * 4
    assert 0 < value("items", "episodes") <= 200 and value("bytes", "episodes") > 0
