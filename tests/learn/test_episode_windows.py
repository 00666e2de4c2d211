"""The ring-buffer task windows hold exactly what a list of the newest records would."""

from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from stream_meta.learn.episodes import EpisodeBuilder

ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from("abc"), st.integers(0, 9)),
    st.tuples(st.just("move"), st.sampled_from("abc"), st.sampled_from("abc"), st.integers(0, 6)),
), max_size=80)


@settings(max_examples=60, deadline=None)
@given(ops, st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_windows_match_a_list_of_the_newest_records(steps, support, query, stride, max_tasks):
    b = EpisodeBuilder(support, query, stride, max_tasks)
    size = support + query
    ref: dict[str, list[tuple[float, int]]] = {}  # task -> its window, oldest first (LRU order kept by b)
    counter = 0
    for op in steps:
        if op[0] == "add":
            _, task, y = op
            counter += 1
            b.add(task, torch.full((3,), float(counter)), y)
            ref.setdefault(task, []).append((float(counter), y))
            ref[task] = ref[task][-size:]
        else:
            _, src, dst, n = op
            moved = b.move_newest(src, dst, n)
            if moved:
                rows = ref[src][-moved:]
                del ref[src][-moved:]
                ref[dst] = (ref.get(dst, []) + rows)[-size:]
        for task in list(ref):
            if b.seen(task) == 0 and b.window(task) is None and task not in b._tasks:
                del ref[task]  # evicted (least recently used)
        for task, rows in ref.items():
            window = b.window(task)
            if not rows:
                assert window is None or len(window[0]) == 0
                continue
            x, y = window
            assert x[:, 0].tolist() == [v for v, _ in rows] and y.tolist() == [t for _, t in rows]


def test_state_dict_round_trips_through_the_ring():
    b = EpisodeBuilder(3, 2, 1, 10)
    for i in range(12):  # wraps the ring twice
        b.add("t", torch.tensor([float(i), -i]), i % 3)
    c = EpisodeBuilder(3, 2, 1, 10)
    c.load_state_dict(b.state_dict())
    for builder in (b, c):
        x, y = builder.window("t")
        assert x[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0, 11.0] and y.tolist() == [1, 2, 0, 1, 2]
    assert [len(e) for e in (b.add("t", torch.zeros(2), 0), c.add("t", torch.zeros(2), 0))] == [1, 1]


def test_a_checkpoint_with_windows_per_task_still_loads():
    old = {"tasks": [{"task": "a", "x": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "y": torch.tensor([1, 2]),
                      "seen": 7, "since_episode": 1},
                     {"task": "b", "x": torch.empty(0), "y": torch.tensor([], dtype=torch.long), "seen": 0,
                      "since_episode": 0}]}
    b = EpisodeBuilder(3, 2, 1, 10)
    b.load_state_dict(old)
    x, y = b.window("a")
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]] and y.tolist() == [1, 2] and b.seen("a") == 7
    assert b.window("b") is None and len(b) == 2
    # and what it writes now is one tensor for all windows, read back the same
    state = b.state_dict()
    assert state["x"].shape == (2, 2) and [t["n"] for t in state["tasks"]] == [2, 0]
    c = EpisodeBuilder(3, 2, 1, 10)
    c.load_state_dict(state)
    assert c.window("a")[0].tolist() == x.tolist() and c.seen("a") == 7 and c.window("b") is None
