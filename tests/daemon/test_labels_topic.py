"""Late labels on their own topic (--labels-topic): merged with the records by message time.

The merge must not depend on how fetches fall: the batches handed to the service, and so
the learning, are the same whatever the polls and across restarts. The broker-backed kill -9
test is in tests/integration/test_late_labels.py.
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
from prometheus_client import CollectorRegistry

from connectors.base import RawRecord
from stream_meta.daemon.app import build_service
from stream_meta.daemon.merge import TimeMerge
from stream_meta.daemon.config import load_config
from stream_meta.daemon.labels import encode_label
from stream_meta.daemon.records import encode
from stream_meta.data.datasets import stream
from stream_meta.errors import ConfigError

RECORDS, LABELS = "records", "labels"


def _logs(n: int = 60, delay: int = 7, seed: int = 0) -> dict[tuple[str, int], list[RawRecord]]:
    """A records log and a labels log stamped by one clock: record i at 10*i ms, its label
    (every other record) 10*delay ms (a few records) later, jittered."""
    rng = random.Random(seed)
    recs, labels = [], []
    for i in range(n):
        recs.append(RawRecord(RECORDS, 0, i, f"r{i}".encode(), timestamp_ms=10 * i))
        if i % 2 == 0:
            labels.append((10 * (i + delay) + rng.randint(0, 9), f"r{i}"))
    labels.sort()
    logs = {(RECORDS, 0): recs, (LABELS, 0): [RawRecord(LABELS, 0, o, rid.encode(), timestamp_ms=ts)
                                              for o, (ts, rid) in enumerate(labels)]}
    return logs


def _replay(logs, size: int, rng: random.Random, restart_every: int | None = None, hold_limit: int = 8,
            labels_weight: int = 1) -> list[list[tuple[str, int]]]:
    """Feeds the logs to a TimeMerge in random fetch chunks (records of one partition in order,
    partitions in random turns, the labels ``labels_weight`` times as often, none from a
    partition the merge reports full) and returns the batches it hands out; optionally a
    fresh one resumes from the processed offsets every few batches (a restore)."""
    pos = {k: 0 for k in logs}  # next offset to fetch
    done = {k: 0 for k in logs}  # next offset to process (a checkpoint's offsets)
    merge, out, since_restart = TimeMerge(size, 3600.0, LABELS, hold_limit), [], 0
    for _ in range(100_000):
        if all(done[k] == len(logs[k]) for k in logs):
            return out
        assert all(len(h) <= merge.hold_limit + 5 for h in merge._held.values())  # fetching is bounded
        open_keys = [k for k in logs if pos[k] < len(logs[k]) and k not in merge.full()]
        if open_keys:
            key = rng.choice([k for k in open_keys for _ in range(labels_weight if k[0] == LABELS else 1)])
            n = rng.randint(0, 5)
            merge.add(logs[key][pos[key]:pos[key] + n], now=0.0)
            pos[key] = min(len(logs[key]), pos[key] + n)
        lags = {k: len(logs[k]) - pos[k] for k in logs}
        for batch, _ in merge.ready(0.0, drain=all(v == 0 for v in lags.values()), lags=lags):
            out.append([(r.topic, r.offset) for r in batch])
            for r in batch:
                done[(r.topic, r.partition)] = r.offset + 1
            since_restart += 1
            if restart_every and since_restart >= restart_every:  # kill -9 after this batch's checkpoint
                merge, pos, since_restart = TimeMerge(size, 3600.0, LABELS, hold_limit), dict(done), 0
                break
    raise AssertionError(f"the merge stalled: {len(out)} batches, processed up to {done}")


@pytest.mark.parametrize("size", [1, 4])
def test_the_merge_does_not_depend_on_fetch_timing_or_restarts(size):
    logs = _logs()
    runs = [_replay(logs, size, random.Random(seed)) for seed in range(12)]
    runs += [_replay(logs, size, random.Random(seed), restart_every=3) for seed in range(12, 20)]
    # labels fetched far ahead of (or behind) their records, with a small hold limit: paused, never stalled
    runs += [_replay(logs, size, random.Random(seed), hold_limit=2 * size, labels_weight=w)
             for seed, w in ((20, 8), (21, 8), (22, 1), (23, 8))]
    assert all(run == runs[0] for run in runs)
    flat = [m for batch in runs[0] for m in batch]
    assert sorted(flat) == sorted((k[0], r.offset) for k, rs in logs.items() for r in rs)  # each once
    # every label comes after its record's batch: never before the record it labels
    seen: set[str] = set()
    for batch in runs[0]:
        for topic, offset in batch:
            value = logs[(topic, 0)][offset].value.decode()
            if topic == LABELS:
                assert value in seen, f"label for {value} handed out before its record"
        seen |= {logs[(t, 0)][o].value.decode() for t, o in batch if t == RECORDS}
    # records blocks stay aligned to their offsets; labels come apart, at most size at a time
    for batch in runs[0]:
        assert len({t for t, _ in batch}) == 1 and len(batch) <= size
        if batch[0][0] == RECORDS:
            assert len({o // size for _, o in batch}) == 1


def test_a_records_block_waits_for_a_labels_partition_not_yet_fetched():
    b = TimeMerge(1, 3600.0, LABELS)
    b.add([RawRecord(RECORDS, 0, 0, b"r0", timestamp_ms=100)], now=0.0)
    assert b.ready(0.0, lags={(RECORDS, 0): 0, (LABELS, 0): None}) == []  # the labels' end is not known yet
    assert b.wait_s(0.0) is None  # the poll waits for the fetch, it does not spin
    assert b.ready(0.0, lags={(RECORDS, 0): 0, (LABELS, 0): 3}) == []  # labels not fetched yet
    b.add([RawRecord(LABELS, 0, 0, b"a", timestamp_ms=50), RawRecord(LABELS, 0, 1, b"b", timestamp_ms=150)], 0.0)
    out = b.ready(0.0, lags={(RECORDS, 0): 5, (LABELS, 0): 1})  # more records to come: label 1 waits
    assert [[(r.topic, r.offset) for r in batch] for batch, _ in out] == [[(LABELS, 0)], [(RECORDS, 0)]]
    # the label timed after the last record goes alone once the records partition is caught up
    out = b.ready(0.0, lags={(RECORDS, 0): 0, (LABELS, 0): 0})
    assert [[(r.topic, r.offset) for r in batch] for batch, _ in out] == [[(LABELS, 1)]]


# -- through the service, with an in-memory two-topic source ---------------------------------

class _TwoTopics:
    """A Source over fixed logs that returns a random share of each partition per poll."""

    def __init__(self, logs, start, seed, stop=None):
        self.logs, self.rng, self.stop = logs, random.Random(seed), stop
        self.pos = {k: start.get(k, 0) for k in logs}
        self.polls = 0
        self.paused: set = set()
        self.ever_paused: set = set()

    def poll(self, timeout_s, max_records=None):
        self.polls += 1
        if self.stop is not None and self.polls == self.stop[0]:
            self.stop[1]()  # a stop between two batches (as a kill -9 right after a checkpoint)
        keys = [k for k in self.logs if k not in self.paused]
        if not keys:
            return []
        key = self.rng.choice(keys)
        n = self.rng.randint(1, 40 if max_records is None else min(40, max_records))
        out = self.logs[key][self.pos[key]:self.pos[key] + n]
        self.pos[key] += len(out)
        return out

    def partition_lags(self):
        return {k: len(self.logs[k]) - self.pos[k] for k in self.logs}

    def backlog_done(self):
        return all(v == 0 for v in self.partition_lags().values())

    def pause_only(self, partitions):
        self.paused = set(partitions)
        self.ever_paused |= self.paused

    def commit(self, offsets): pass
    def lag(self): return sum(self.partition_lags().values())
    def lag_by_partition(self): return {}
    def connected(self): return True
    def close(self): pass


def _stream_logs(n=240, delay=25):
    """Digits records without y but with ids; every label on the labels topic ``delay``
    records later; plus one message on the labels topic that is not a label."""
    recs = list(stream("digits-rotations", limit=n))
    records = [RawRecord(RECORDS, 0, i, encode(r["x"], None, r["task"], f"r{i}"), timestamp_ms=1000 + 10 * i)
               for i, r in enumerate(recs)]
    labels = [(1000 + 10 * (i + delay) + 5, encode_label(f"r{i}", r["y"])) for i, r in enumerate(recs)]
    labels.insert(3, (labels[3][0], encode(recs[0]["x"], 1)))  # a record sent to the labels topic by mistake
    labels.append((labels[-1][0] + 1, encode_label("r5", 0)))  # a second label for r5
    return n, {(RECORDS, 0): records,
               (LABELS, 0): [RawRecord(LABELS, 0, o, v, timestamp_ms=ts) for o, (ts, v) in enumerate(labels)]}


def _service(tmp_path, name, logs, seed, stop_at_poll=None, **kw):
    cfg = load_config({}, env={}, overrides={
        "input_file": tmp_path / "unused.jsonl", "input_dim": 64, "num_classes": 10,
        "checkpoint_dir": tmp_path / name, "metrics_port": None, "stop_at_end": True,
        "checkpoint_every_records": 50, "deterministic": True, "learn_batch": 4, "max_batch_wait_ms": 3600000, **kw})
    svc = build_service(cfg, CollectorRegistry())
    # the labels topic needs Kafka in the config; the loop itself only needs a source of two topics
    svc.settings = dataclasses.replace(svc.settings, labels_topic=LABELS)
    svc.batcher = TimeMerge(svc.settings.learn_batch, svc.settings.max_batch_wait_s, LABELS, hold_limit=16)
    stop = None if stop_at_poll is None else (stop_at_poll, svc.request_stop)
    svc.open_source = lambda offsets, on_revoke: OPENED.append(_TwoTopics(logs, offsets, seed, stop)) or OPENED[-1]
    return svc


OPENED: list[_TwoTopics] = []


def test_labels_on_their_own_topic_are_learned_once_whatever_the_polls(tmp_path):
    (tmp_path / "unused.jsonl").write_bytes(b"")
    n, logs = _stream_logs()
    OPENED.clear()
    a = _service(tmp_path, "a", logs, seed=1).run()
    b = _service(tmp_path, "b", logs, seed=2).run()
    part = _service(tmp_path, "c", logs, seed=3, stop_at_poll=9).run()  # stopped part-way, then resumed
    assert 0 < part["records_consumed"] < sum(map(len, logs.values()))
    c = _service(tmp_path, "c", logs, seed=4).run()
    for s in (a, b, c):
        assert s["records_learned"] == n  # every label joined its record once
        assert s["predictions_emitted"] == n
        assert s["rejected_by_reason"] == {"not_a_label": 1, "label_duplicate": 1}
    assert a["prequential_accuracy"] == b["prequential_accuracy"] == c["prequential_accuracy"]
    assert a["meta_updates"] == b["meta_updates"] == c["meta_updates"]
    assert any(src.ever_paused for src in OPENED)  # polls of up to 40 against a hold limit of 16
    dead = [json.loads(line) for line in (tmp_path / "a" / "dead-letters.jsonl").read_text().splitlines()]
    assert sorted(d["headers"]["source.topic"] + ":" + d["headers"]["stream_meta.reason"] for d in dead) == [
        "labels:label_duplicate", "labels:not_a_label"]


def test_labels_topic_is_validated():
    with pytest.raises(ConfigError, match="must differ"):
        load_config({}, env={}, overrides={"topic": "t", "labels_topic": "t"})
    with pytest.raises(ConfigError, match="needs Kafka"):
        load_config({}, env={}, overrides={"labels_topic": "l", "input_file": "x.jsonl"})
    cfg = load_config({"labels_topic": "flag"}, env={"STREAM_META_LABELS_TOPIC": "env"})
    assert cfg.labels_topic == "flag" and cfg.service_settings.labels_topic == "flag"
    assert load_config({}, env={"STREAM_META_LABELS_TOPIC": "env"}).labels_topic == "env"
