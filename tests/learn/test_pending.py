import torch

from stream_meta.learn.pending import JOIN_REASONS, Joined, PendingStore


def _add(s: PendingStore, rid: str, now: int, pred: int = 1) -> list:
    return s.add(rid, torch.full((3,), float(now)), "t", pred, now, topic="in", partition=0, offset=now)


def test_a_delayed_label_is_joined_once_then_reported_duplicate():
    s = PendingStore(capacity=10, ttl_records=100)
    _add(s, "r-1", now=5, pred=2)
    j = s.join("r-1", 2, now=40)
    assert isinstance(j, Joined) and j.correct and j.delay_records == 35
    assert j.record.task == "t" and j.record.offset == 5 and torch.equal(j.record.x, torch.full((3,), 5.0))
    assert len(s) == 0
    assert s.join("r-1", 2, now=41) == "label_duplicate"


def test_unknown_and_expired_labels_get_their_own_reasons():
    s = PendingStore(capacity=10, ttl_records=10)
    _add(s, "old", now=0)
    _add(s, "young", now=8)
    assert s.join("never-sent", 0, now=9) == "label_unknown_id"
    assert s.join("old", 0, now=11) == "label_expired"  # 11 records after it arrived > TTL 10
    assert isinstance(s.join("young", 0, now=11), Joined)
    assert s.expired == 1
    assert set(JOIN_REASONS) == {"label_unknown_id", "label_expired", "label_duplicate"}


def test_capacity_evicts_the_oldest_and_its_label_reads_expired():
    s = PendingStore(capacity=2, ttl_records=1000)
    _add(s, "a", 0)
    _add(s, "b", 1)
    gone = _add(s, "c", 2)
    assert [p.id for p in gone] == ["a"] and len(s) == 2 and s.evicted == 1
    assert s.join("a", 0, now=3) == "label_expired"
    assert s.oldest_age(now=10) == 9


def test_state_dict_round_trip_keeps_records_and_remembered_ids():
    s = PendingStore(capacity=3, ttl_records=50)
    for i in range(4):
        _add(s, f"r{i}", i, pred=i % 2)
    assert isinstance(s.join("r2", 1, now=5), Joined)
    t = PendingStore(capacity=3, ttl_records=50)
    t.load_state_dict(s.state_dict())
    assert len(t) == len(s) == 2
    assert t.join("r2", 1, now=6) == "label_duplicate"
    assert t.join("r0", 1, now=6) == "label_expired"
    j = t.join("r3", 1, now=6)
    assert isinstance(j, Joined) and j.record.prediction == 1 and j.delay_records == 3


def test_empty_store_round_trips():
    t = PendingStore(capacity=3, ttl_records=5)
    t.load_state_dict(PendingStore(capacity=3, ttl_records=5).state_dict())
    assert len(t) == 0 and t.join("x", 0, now=0) == "label_unknown_id"
