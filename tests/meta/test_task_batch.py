"""``TaskBatch.pad`` against the per-slot construction it replaced (bit-equal: the daemon's
one-record-at-a-time learning must not change)."""

import pytest
import torch

from stream_meta.meta.spec import Episode, TaskBatch


def _reference_pad(episodes, order):
    t = len(episodes)
    s_max = max(e.support_x.shape[0] for e in episodes)
    q_max = max(e.query_x.shape[0] for e in episodes)
    first = episodes[0]
    x = first.support_x.new_zeros((t, s_max + q_max, *first.support_x.shape[1:]))
    y = first.support_y.new_zeros((t, s_max + q_max, *first.support_y.shape[1:]))
    inner_w = x.new_zeros((t, s_max + q_max if order == "reptile" else s_max))
    query_w = x.new_zeros((t, q_max))
    for i, e in enumerate(episodes):
        s, q = e.support_x.shape[0], e.query_x.shape[0]
        x[i, :s], y[i, :s] = e.support_x, e.support_y
        x[i, s_max:s_max + q], y[i, s_max:s_max + q] = e.query_x, e.query_y
        inner = s + q if order == "reptile" else s
        inner_w[i, :s] = 1 / inner
        if order == "reptile":
            inner_w[i, s_max:s_max + q] = 1 / inner
        query_w[i, :q] = 1 / q
    return TaskBatch(x, y, inner_w.shape[1], s_max, inner_w, query_w)


@pytest.mark.parametrize("order", ["reptile", "first", "second"])
@pytest.mark.parametrize("sizes", [[(20, 15)] + [(20, 5)] * 6, [(3, 1), (5, 7), (1, 1)], [(4, 2)]])
@pytest.mark.parametrize("one_hot", [False, True])
def test_pad_equals_the_per_slot_construction(order, sizes, one_hot):
    g = torch.Generator().manual_seed(len(sizes))

    def labels(n):
        y = torch.randint(3, (n,), generator=g)
        return torch.nn.functional.one_hot(y, 3).float() if one_hot else y

    episodes = [Episode("t", torch.randn(s, 4, generator=g), labels(s), torch.randn(q, 4, generator=g), labels(q))
                for s, q in sizes]
    got, want = TaskBatch.pad(episodes, order), _reference_pad(episodes, order)
    for name in ("x", "y", "inner_w", "query_w"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert (got.inner_end, got.query_start) == (want.inner_end, want.query_start)
