"""Task-free routing and late labels through the service's one path (file source)."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from stream_meta.daemon.app import build_service
from stream_meta.daemon.config import load_config
from stream_meta.daemon.labels import encode_label
from stream_meta.daemon.records import encode
from stream_meta.data.datasets import stream


def _cfg(tmp_path, src, ckpt="ckpt", **kw):
    return load_config({}, env={}, overrides={
        "input_file": src, "input_dim": 64, "num_classes": 10, "checkpoint_dir": tmp_path / ckpt,
        "metrics_port": None, "stop_at_end": True, "checkpoint_every_records": 100, **kw})


def _late_label_stream(path, n=300, delay=40):
    """Every third record comes without its label; the label follows ``delay`` messages later."""
    lines, owed = [], []
    for i, rec in enumerate(stream("digits-rotations", limit=n)):
        if i % 3 == 0:
            lines.append(encode(rec["x"], None, rec["task"], f"r{i}"))
            owed.append((len(lines) + delay, encode_label(f"r{i}", rec["y"])))
        else:
            lines.append(encode(rec["x"], rec["y"], rec["task"], f"r{i}"))
        while owed and owed[0][0] <= len(lines):
            lines.append(owed.pop(0)[1])
    lines += [label for _, label in owed]
    lines += [encode_label("nobody", 1), encode_label("r0", 2)]  # an unknown id, a second label for r0
    lines += [b'{"id": "r3", "y": "x"}']  # a label whose y is the string "x": still a label, a bad one
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return n


def test_late_labels_are_learned_once_and_bad_ones_dead_lettered(tmp_path):
    src = tmp_path / "in.jsonl"
    n = _late_label_stream(src)
    s = build_service(_cfg(tmp_path, src), CollectorRegistry()).run()
    assert s["records_learned"] == n  # every record, the late-labelled ones once each
    assert s["predictions_emitted"] == n
    assert s["rejected_by_reason"] == {"label_unknown_id": 1, "label_duplicate": 1, "label_y_not_integer": 1}
    dead = [json.loads(line) for line in (tmp_path / "ckpt" / "dead-letters.jsonl").read_text().splitlines()]
    assert sorted(d["headers"]["stream_meta.reason"] for d in dead) == [
        "label_duplicate", "label_unknown_id", "label_y_not_integer"]


def test_late_labels_survive_a_restart_exactly_once(tmp_path):
    src = tmp_path / "in.jsonl"
    n = _late_label_stream(src)
    whole = build_service(_cfg(tmp_path, src, "whole", deterministic=True), CollectorRegistry()).run()
    build_service(_cfg(tmp_path, src, "split", deterministic=True, max_records=170), CollectorRegistry()).run()
    resumed = build_service(_cfg(tmp_path, src, "split", deterministic=True), CollectorRegistry()).run()
    assert resumed["records_learned"] == whole["records_learned"] == n
    assert resumed["prequential_accuracy"] == whole["prequential_accuracy"]
    assert resumed["rejected_by_reason"] == whole["rejected_by_reason"]


def test_stripped_task_ids_are_detected_near_the_true_boundaries(tmp_path):
    src = tmp_path / "in.jsonl"
    recs = list(stream("digits-rotations", limit=600))
    truth = [i for i in range(1, len(recs)) if recs[i]["task"] != recs[i - 1]["task"]]
    src.write_bytes(b"".join(encode(r["x"], r["y"]) + b"\n" for r in recs))  # no task field
    s = build_service(_cfg(tmp_path, src), CollectorRegistry()).run()
    found = [b["offset"] for b in s["task_boundaries"] if b["kind"] in ("detected", "recurring")]
    assert s["records_learned"] == len(recs)
    assert s["tasks_detected"] + s["tasks_recurring"] == len(found) >= 1
    assert any(t <= f <= t + 30 for f in found for t in truth)  # at least one found where one is
    field = build_service(_cfg(tmp_path / "f", src, task_mode="field"), CollectorRegistry()).run()
    assert field["task_boundaries"] == [] and field["tasks_detected"] == 0  # field mode: one task, 'default'
