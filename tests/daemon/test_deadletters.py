"""Dead letters: key, truncation, and the failure policy with a sink that refuses everything."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from connectors.base import RawRecord, SendFailure
from stream_meta.daemon.app import build_service
from stream_meta.daemon.checkpoint import CheckpointStore
from stream_meta.daemon.config import load_config
from stream_meta.daemon.deadletters import HEADROOM_BYTES, DeadLetterError, dead_letter
from stream_meta.daemon.records import encode
from stream_meta.daemon.sinks import Sinks
from stream_meta.data.datasets import stream
from stream_meta.errors import RecordError


class RefusingSink:
    """Failure injection: takes nothing; every send comes back from flush as refused."""

    def __init__(self, topic_problem: str | None = None) -> None:
        self.topic_problem = topic_problem
        self.failures: list[SendFailure] = []
        self.flushes = 0

    def send(self, topic, value, key=None, headers=(), tag=None) -> None:
        self.failures.append(SendFailure(topic, "refused", "injected", tag))

    def flush(self) -> list[SendFailure]:
        self.flushes += 1
        out, self.failures = self.failures, []
        return out

    def check_topics(self, topics) -> dict[str, str]:
        return {t: self.topic_problem for t in topics} if self.topic_problem else {}

    def close(self) -> None:
        pass


def test_dead_letter_keeps_the_source_key_or_uses_the_partition():
    exc = RecordError("not_json", "bad")
    key, value, headers, truncated = dead_letter(RawRecord("t", 3, 7, b"{", b"k1"), exc, 1 << 20)
    assert (key, value, truncated) == (b"k1", b"{", None)
    assert dict(headers)["source.offset"] == b"7" and "stream_meta.truncated" not in dict(headers)
    key, *_ = dead_letter(RawRecord("t", 3, 7, b"{"), exc, 1 << 20)
    assert key == b"3"
    key, value, _, _ = dead_letter(RawRecord("t", 0, 0, None), exc, 1 << 20)
    assert (key, value) == (b"0", b"")


def test_a_dead_letter_too_large_is_cut_to_a_prefix_and_marked():
    limit = 1 << 20
    big = bytes(range(256)) * (2 * limit // 256)
    key, value, headers, truncated = dead_letter(RawRecord("t", 0, 1, big, b"kk"), RecordError("too_large"), limit)
    assert truncated == len(big) and dict(headers)["stream_meta.truncated"] == str(len(big)).encode()
    assert value == big[: limit - HEADROOM_BYTES - 2]
    fits = big[: limit - HEADROOM_BYTES - 2]
    assert dead_letter(RawRecord("t", 0, 1, fits, b"kk"), RecordError("too_large"), limit)[3] is None


def _input(tmp_path, n: int = 120, bad_at: tuple[int, ...] = (75,)):
    src = tmp_path / "in.jsonl"
    with open(src, "wb") as f:
        for i, rec in enumerate(stream("digits-rotations", limit=n)):
            f.write((b"{nope" if i in bad_at else encode(rec["x"], rec["y"], rec["task"], rec["id"])) + b"\n")
    return src


def _service(tmp_path, src, sinks: Sinks, **kw):
    registry = CollectorRegistry()
    cfg = load_config({}, env={}, overrides={
        "input_file": src, "input_dim": 64, "num_classes": 10, "checkpoint_dir": tmp_path / "ckpt",
        "metrics_port": None, "checkpoint_every_records": 50, "stop_at_end": True, **kw})
    service = build_service(cfg, registry)
    service.sinks.close()
    service.sinks = sinks
    return service, registry


def _failures(registry, name: str, reason: str = "refused") -> float:
    return registry.get_sample_value(f"stream_meta_{name}_total", {"reason": reason})


def test_skip_counts_refused_dead_letters_and_learns_everything_else(tmp_path):
    service, registry = _service(tmp_path, _input(tmp_path, bad_at=(10, 75)), Sinks(RefusingSink()))
    summary = service.run()
    assert summary["records_learned"] == 118 and summary["records_rejected"] == 2
    assert _failures(registry, "dead_letter_failures") == 2
    assert _failures(registry, "dead_letter_failures", "timeout") == 0  # pre-initialised


def test_fail_stops_without_checkpointing_past_the_refused_dead_letter(tmp_path):
    service, registry = _service(tmp_path, _input(tmp_path), Sinks(RefusingSink()), dlq_failure_policy="fail",
                                 max_poll_records=10)
    with pytest.raises(DeadLetterError, match=r"file:in.jsonl\[0\]@75 could not be written .*--dlq-failure-policy fail"):
        service.run()
    assert _failures(registry, "dead_letter_failures") == 1
    latest = CheckpointStore(tmp_path / "ckpt").load_latest()
    assert latest is not None and latest.offsets[("file:in.jsonl", 0)] <= 75  # the record is read again on restart


def test_fail_refuses_to_start_when_the_dead_letter_topic_cannot_be_written(tmp_path):
    sink = RefusingSink(topic_problem="topic_missing: not there")
    service, _ = _service(tmp_path, _input(tmp_path), Sinks(sink), dlq_failure_policy="fail")
    with pytest.raises(DeadLetterError, match="cannot be written .topic_missing"):
        service.run()
    assert service.stats.records_consumed == 0


def test_prediction_failures_never_stop_the_stream_even_under_fail(tmp_path):
    dlq = RefusingSink()
    dlq.send = lambda *a, **k: None  # dead letters go through; predictions are refused
    service, registry = _service(tmp_path, _input(tmp_path), Sinks(dlq, RefusingSink()),
                                 dlq_failure_policy="fail", predictions_topic="preds")
    summary = service.run()
    assert summary["records_learned"] == 119
    assert _failures(registry, "prediction_failures") == 119
    assert _failures(registry, "dead_letter_failures") == 0


def test_a_failure_seen_off_the_loop_still_stops_the_next_checkpoint():
    from stream_meta.daemon.deadletters import SinkFailures
    from stream_meta.daemon.metrics import Metrics

    failures = SinkFailures(Metrics(CollectorRegistry()), "fail")
    with pytest.raises(DeadLetterError):  # e.g. raised in the rebalance callback, where nobody sees it
        failures.dead_letters([SendFailure("t.dlq", "timeout", "x", "t[0]@5")])
    with pytest.raises(DeadLetterError, match=r"t\[0\]@5"):
        failures.raise_if_fatal()
    SinkFailures(Metrics(CollectorRegistry()), "skip").dead_letters([SendFailure("t.dlq", "timeout", "x", "t[0]@5")])
