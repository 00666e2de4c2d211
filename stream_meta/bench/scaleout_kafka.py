"""The Kafka rows of ``stream-meta bench scaleout``: the same daemons, reading one topic of 2
partitions keyed by task (task ``i`` on partition ``i % 2``) through a broker, in one consumer
group per run (so every run reads the whole topic from the start)."""

from __future__ import annotations

from pathlib import Path

from stream_meta.bench.members import member_of, run_members
from stream_meta.daemon.records import encode

_published: set[tuple[str, str]] = set()  # (bootstrap, topic) already filled by this process


def publish(bootstrap: str, topic: str, dataset: str, records: int | None, n_tasks: int | None) -> None:
    """Creates ``topic`` with 2 partitions and writes the stream to it, keyed by task."""
    from kafka import KafkaProducer

    from stream_meta.data.datasets import stream
    from stream_meta.data.local_broker import create_topics

    create_topics(bootstrap, {topic: 2})
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    tasks: dict[str, int] = {}
    for rec in stream(dataset, limit=records, n_tasks=n_tasks):
        partition = member_of(0, tasks.setdefault(rec["task"], len(tasks)), 2, "noniid")
        producer.send(topic, encode(rec["x"], rec["y"], rec["task"], rec["id"]), key=rec["task"].encode(),
                      partition=partition)
    producer.flush()
    producer.close()


def run_kafka_members(bootstrap: str, dataset: str, records: int | None, n_tasks: int | None, members: int,
                      work: Path, sync: bool, sync_every: int, flags: list[str]) -> list[dict]:
    """``members`` daemons in one new consumer group on the stream's topic; their summaries."""
    topic = f"bench-scaleout.{dataset}.{n_tasks or 'all'}.{records or 'all'}"
    if (bootstrap, topic) not in _published:
        publish(bootstrap, topic, dataset, records, n_tasks)
        _published.add((bootstrap, topic))
    source = ["--bootstrap", bootstrap, "--topic", topic, "--group", f"bench-{work.name}",
              "--session-timeout-ms", "6000"]
    return run_members([source] * members, work, sync, sync_every, flags)
