"""What an operator reads: NaN where nothing is measured, the summary's names, processing time, logs."""

from __future__ import annotations

import logging
import math
import re

from prometheus_client import CollectorRegistry

from stream_meta.daemon.app import build_service
from stream_meta.daemon.config import load_config
from stream_meta.daemon.metrics import Metrics
from stream_meta.daemon.records import encode
from stream_meta.daemon.stats import RunStats, format_summary
from stream_meta.data.datasets import stream


def _value(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


def _write(path, n: int) -> None:
    with open(path, "wb") as f:
        for rec in stream("digits-rotations", limit=n):
            f.write(encode(rec["x"], rec["y"], rec["task"], rec["id"]) + b"\n")


def _cfg(tmp_path, src, **kw):
    return load_config({}, env={}, overrides={
        "input_file": src, "input_dim": 64, "num_classes": 10, "checkpoint_dir": tmp_path / "ckpt",
        "metrics_port": None, "stop_at_end": True, **kw})


def test_gauges_with_nothing_to_measure_are_nan_not_zero():
    registry = CollectorRegistry()
    Metrics(registry)
    for name in ("stream_meta_retained_accuracy", "stream_meta_forgetting", "stream_meta_adaptation_gain",
                 "stream_meta_consumer_lag_records", "stream_meta_prequential_accuracy",
                 "stream_meta_last_checkpoint_timestamp_seconds"):
        assert math.isnan(_value(registry, name)), name


def test_a_run_without_probes_keeps_forgetting_nan_and_sets_what_it_measured(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, 120)
    registry = CollectorRegistry()
    build_service(_cfg(tmp_path, src), registry).run()
    assert math.isnan(_value(registry, "stream_meta_retained_accuracy"))
    assert math.isnan(_value(registry, "stream_meta_forgetting"))
    assert 0.0 <= _value(registry, "stream_meta_prequential_accuracy") <= 1.0
    assert math.isfinite(_value(registry, "stream_meta_adaptation_gain"))  # meta-updates happened


def test_probes_on_a_single_task_measure_retention_but_not_forgetting(tmp_path):
    src = tmp_path / "in.jsonl"
    _write(src, 120)  # the first task only (digits-rotations has 150 records per task)
    registry = CollectorRegistry()
    build_service(_cfg(tmp_path, src, probe_per_task=3, probe_every=20), registry).run()
    assert 0.0 <= _value(registry, "stream_meta_retained_accuracy") <= 1.0
    assert math.isnan(_value(registry, "stream_meta_forgetting"))  # no earlier task to forget


def test_idle_polls_do_not_count_as_processing_time(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    summary = build_service(_cfg(tmp_path, src, stop_at_end=False, idle_timeout_s=1.0, poll_timeout_ms=100),
                            CollectorRegistry()).run()
    assert summary["elapsed_seconds"] == 0.0  # a second of empty polls is not work
    assert summary["records_per_second"] is None


def test_the_summary_names_cumulative_and_window_accuracy_apart():
    stats = RunStats(accuracy_window=2)
    for correct in (False, False, True, True):
        stats.observe_prediction("t", correct)
    s = stats.summary()
    assert s["prequential_accuracy"] == 0.5 and s["prequential_accuracy_window"] == 1.0
    assert s["accuracy_window"] == 2
    text = format_summary(s)
    assert re.search(r"^prequential accuracy, cumulative +50\.0%$", text, re.M)
    assert re.search(r"^prequential accuracy, last 2 +100\.0%$", text, re.M)
    assert re.search(r"^records / processing second +-$", text, re.M)  # None is shown as "-"


def test_each_checkpoint_is_logged_with_seq_records_offsets_and_duration(tmp_path, caplog):
    src = tmp_path / "in.jsonl"
    _write(src, 60)
    with caplog.at_level(logging.INFO, logger="stream_meta.daemon.service"):
        build_service(_cfg(tmp_path, src, checkpoint_every_records=25, max_poll_records=25), CollectorRegistry()).run()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checkpoint ")]
    assert len(lines) == 3  # after 25 and 50 records, and the final one
    assert lines[0].startswith("checkpoint 1: 25 records consumed, 25 learned, offsets {'file:in.jsonl[0]': 25}, ")
    assert lines[-1].startswith("checkpoint 3: 60 records consumed") and lines[-1].endswith("s")
