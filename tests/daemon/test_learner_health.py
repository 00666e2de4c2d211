"""The service's gauges and checkpoint manifest come from ``learner.health()``."""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client import CollectorRegistry

from stream_meta.daemon.app import build_service
from stream_meta.daemon.config import load_config
from stream_meta.daemon.records import encode
from stream_meta.data.datasets import stream


@pytest.mark.parametrize("algorithm", ["sgd", "fomaml"])
def test_gauges_and_manifest_follow_the_learners_health(algorithm, tmp_path):
    src = tmp_path / "in.jsonl"
    with open(src, "wb") as f:
        for rec in stream("digits-rotations", limit=240):
            f.write(encode(rec["x"], rec["y"], rec["task"], rec["id"]) + b"\n")
    cfg = load_config({}, env={}, overrides={
        "input_file": src, "input_dim": 64, "num_classes": 10, "checkpoint_dir": tmp_path / "ckpt",
        "metrics_port": None, "stop_at_end": True, "algorithm": algorithm, "memory_capacity": 30,
        "probe_per_task": 2, "probe_every": 40})
    registry = CollectorRegistry()
    service = build_service(cfg, registry)
    service.run()
    health = service.learner.health()

    def gauge(name: str, labels: dict | None = None) -> float | None:
        return registry.get_sample_value(f"stream_meta_{name}", labels or {})

    assert gauge("replay_buffer_items", {"memory": "episodes"}) == health.replay_episodes
    assert gauge("replay_buffer_items", {"memory": "records"}) == health.memory_records
    assert gauge("replay_buffer_bytes", {"memory": "records"}) == health.memory_bytes
    manifest = json.loads(sorted((tmp_path / "ckpt").glob("ckpt-*.json"))[-1].read_text())
    assert (manifest["replay_episodes"], manifest["memory_records"]) == (health.replay_episodes, health.memory_records)
    if algorithm == "sgd":  # no replay, no probes: zeros, and forgetting NaN (nothing measured)
        assert (health.replay_episodes, health.memory_records, health.forgetting) == (0, 0, None)
        assert math.isnan(gauge("forgetting"))
    else:
        assert health.replay_episodes > 0 and health.memory_records == 30 and health.forgetting is not None
        assert gauge("forgetting") == pytest.approx(health.forgetting)
        assert gauge("retained_accuracy") == pytest.approx(health.retained_accuracy)
