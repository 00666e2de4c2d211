import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_meta.learn.episodes import EpisodeBuilder
from stream_meta.meta import Episode
from stream_meta.learn.replay import EpisodeReservoir


def test_episodes_split_support_then_query_from_recent_records():
    b = EpisodeBuilder(support_size=3, query_size=2, stride=2, max_tasks=5)
    out = []
    for i in range(9):
        out += b.add("t", torch.tensor([float(i)]), i % 3)
    # first episode needs > query_size records and a full stride; later ones every 2 records
    assert [len(e.support_x) for e in out] == [1, 3, 3, 3]
    last = out[-1]
    assert last.query_x.flatten().tolist() == [7.0, 8.0]
    assert last.support_x.flatten().tolist() == [4.0, 5.0, 6.0]
    assert last.query_y.tolist() == [1, 2]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 4)), max_size=200),
       st.integers(1, 5), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4))
def test_builder_bounds_and_never_mixes_tasks(records, support, query, stride, max_tasks):
    b = EpisodeBuilder(support, query, stride, max_tasks)
    for i, (task, y) in enumerate(records):
        x = torch.tensor([float(ord(task)), float(i)])
        for ep in b.add(task, x, y):
            assert ep.task == task
            assert len(ep.query_x) == query and 1 <= len(ep.support_x) <= support
            assert set(torch.cat([ep.support_x, ep.query_x])[:, 0].tolist()) == {float(ord(task))}
            # the query set is the newest records, the support set precedes it
            assert ep.query_x[-1, 1] == i and bool((ep.support_x[:, 1] < ep.query_x[0, 1]).all())
        assert len(b) <= max_tasks
        wx, _ = b.window(task)
        assert len(wx) <= support + query


def test_builder_state_round_trip_continues_identically():
    a = EpisodeBuilder(4, 2, 3, 10)
    for i in range(7):
        a.add(f"t{i % 2}", torch.tensor([float(i)]), i % 2)
    b = EpisodeBuilder(4, 2, 3, 10)
    b.load_state_dict(a.state_dict())
    for i in range(7, 20):
        ea = a.add(f"t{i % 2}", torch.tensor([float(i)]), 1)
        eb = b.add(f"t{i % 2}", torch.tensor([float(i)]), 1)
        assert [e.query_x.tolist() for e in ea] == [e.query_x.tolist() for e in eb]
    assert a.seen("t0") == b.seen("t0") == 10


def _ep(i: int) -> Episode:
    t = torch.tensor([[float(i)]])
    return Episode(str(i), t, torch.tensor([0]), t, torch.tensor([0]))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 30), st.integers(0, 300))
def test_reservoir_is_bounded(capacity, n):
    r = EpisodeReservoir(capacity)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        r.add(_ep(i), g)
    assert len(r) == min(capacity, n) and r.offered == n
    assert len(r.sample(5, g)) == min(5, len(r))


@pytest.mark.slow
def test_reservoir_is_uniform_over_the_stream():
    # Chi-square test of inclusion counts per stream position, fixed seed.
    capacity, n, trials = 10, 50, 2000
    counts = torch.zeros(n)
    g = torch.Generator().manual_seed(1234)
    for _ in range(trials):
        r = EpisodeReservoir(capacity)
        for i in range(n):
            r.add(_ep(i), g)
        for e in r._items:
            counts[int(e.task)] += 1
    expected = trials * capacity / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 49 degrees of freedom: the 99.9th percentile is about 85.4
    assert chi2 < 85.4, chi2
    # and the early half of the stream is not favoured over the late half
    assert abs(float(counts[: n // 2].sum() - counts[n // 2 :].sum())) < 0.05 * trials * capacity


def test_reservoir_state_round_trip():
    g = torch.Generator().manual_seed(0)
    r = EpisodeReservoir(5)
    for i in range(12):
        r.add(_ep(i), g)
    s = EpisodeReservoir(5)
    s.load_state_dict(r.state_dict())
    assert [e.task for e in s._items] == [e.task for e in r._items] and s.offered == 12
    assert r.nbytes() == s.nbytes() > 0
