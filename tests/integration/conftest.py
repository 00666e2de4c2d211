"""Fixtures that start real processes: a Kafka-compatible broker (Tansu, over TCP)."""

from __future__ import annotations

import pytest

from stream_meta.data.local_broker import LocalBroker


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with LocalBroker(log_path=log) as b:
        yield b


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Reads ``topic`` from the beginning without a group until ``expected`` messages or timeout."""
    import time

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    out, deadline = [], time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
    finally:
        consumer.close()
    return out
