import pytest
import torch

from stream_meta.learn.config import ModelConfig
from stream_meta.learn.learner import OnlineMetaLearner
from stream_meta.learn.tasks import DEFAULT_TASK, DetectorConfig, TaskRouter

DIM, CLASSES = 8, 4
MEANS = torch.eye(CLASSES, DIM) * 3.0


def records(task: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Easy blobs; task k relabels class c as (c + k) mod 4, so the same inputs mean different labels."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, CLASSES, (n,), generator=g)
    x = MEANS[c] + 0.3 * torch.randn(n, DIM, generator=g)
    return x, (c + task) % CLASSES


def drive(router: TaskRouter, learner, segments: list[tuple[int, int]], batch: int = 1, seed: int = 0):
    """The daemon's order per poll: route -> predict -> assign -> learn. Returns boundaries as (record, kind, task)."""
    xs, ys = zip(*(records(t, n, seed + i) for i, (t, n) in enumerate(segments)))
    x, y = torch.cat(xs), torch.cat(ys)
    found = []
    for start in range(0, len(y), batch):
        rows = list(range(start, min(len(y), start + batch)))
        tasks = router.route([None] * len(rows))
        learner.predict_batch(tasks, x[rows])
        where = [("in", 0, r) for r in rows]
        tasks, bounds = router.assign(learner, tasks, x[rows], y[rows], where=where)
        learner.learn_batch(tasks, x[rows], y[rows])
        found += [(b.offset, b.kind, b.task) for b in bounds]
    return found


def learner() -> OnlineMetaLearner:
    return OnlineMetaLearner(ModelConfig(DIM, CLASSES, (32,)), seed=0)


def test_route_modes():
    assert TaskRouter("field").route(["a", None]) == ["a", DEFAULT_TASK]
    assert TaskRouter("detect").route(["a", None]) == ["auto-0", "auto-0"]
    assert TaskRouter("auto").route(["a", None, DEFAULT_TASK]) == ["a", "auto-0", "auto-0"]
    with pytest.raises(ValueError):
        TaskRouter("guess")
    with pytest.raises(ValueError):
        DetectorConfig(match="nearest")


@pytest.mark.parametrize("batch", [1, 10])
def test_a_boundary_is_found_near_where_it_is(batch):
    router, m = TaskRouter("detect"), learner()
    found = drive(router, m, [(0, 150), (2, 60)], batch=batch)
    assert len(found) == 1, found
    offset, kind, task = found[0]
    assert 150 <= offset <= 150 + 12 and kind == "detected" and task == "auto-1"
    assert router.tasks_detected == 1 and router.current == "auto-1"
    assert router.boundaries[-1] == {"topic": "in", "partition": 0, "offset": offset, "task": "auto-1", "kind": "detected"}


@pytest.mark.parametrize("match", ["loss", "signature"])
def test_a_recurring_task_is_matched_to_its_old_id(match):
    router, m = TaskRouter("detect", DetectorConfig(match=match)), learner()
    found = drive(router, m, [(0, 150), (2, 100), (0, 40)])
    assert [(k, t) for _, k, t in found] == [("detected", "auto-1"), ("recurring", "auto-0")], found
    assert 250 <= found[1][0] <= 262
    assert router.tasks_recurring == 1


def test_given_ids_log_given_boundaries_and_skip_detection():
    router, m = TaskRouter("auto"), learner()
    x, y = records(0, 4, 0)
    tasks = router.route(["a", "a", "b", None], where=[("in", 0, o) for o in range(10, 14)])
    assert tasks == ["a", "a", "b", "auto-0"]
    assert list(router.boundaries) == [{"topic": "in", "partition": 0, "offset": 12, "task": "b", "kind": "given"}]
    assert router.counts == {"detected": 0, "recurring": 0, "given": 1}
    out, found = router.assign(m, tasks, x, y)
    assert out == tasks and found == []


def test_field_mode_routes_absent_ids_to_default_and_never_detects():
    router = TaskRouter("field")
    assert router.route([None, "b"]) == [DEFAULT_TASK, "b"] and router.counts["given"] == 1
    x, y = records(0, 2, 0)
    assert router.assign(learner(), ["default", "b"], x, y) == (["default", "b"], [])


def test_state_dict_round_trip_continues_identically():
    a, ma = TaskRouter("detect"), learner()
    drive(a, ma, [(0, 120)])
    b, mb = TaskRouter("detect"), learner()
    b.load_state_dict(a.state_dict())
    mb.load_state_dict(ma.state_dict())
    assert b.state_dict()["detector"] == a.state_dict()["detector"]
    fa = drive(a, ma, [(2, 40)], seed=5)
    fb = drive(b, mb, [(2, 40)], seed=5)
    assert fa == fb and len(fa) == 1
    assert a.state_dict()["stored"] == b.state_dict()["stored"] and list(a.boundaries) == list(b.boundaries)


def test_refile_moves_the_newest_window_records_to_the_new_task():
    m = learner()
    x, y = records(0, 6, 0)
    m.learn_batch(["a"] * 6, x, y)
    assert m.refile("a", "b", 2) == 2
    wa, wb = m.episodes.window("a"), m.episodes.window("b")
    assert torch.equal(wa[0], x[:4]) and torch.equal(wb[0], x[4:]) and torch.equal(wb[1], y[4:])
    assert m.refile("missing", "b", 3) == 0


def test_task_losses_use_each_tasks_fast_weights():
    m = learner()
    x, y = records(0, 30, 1)
    m.learn_batch(["a"] * 30, x, y)
    la = m.task_losses(["a"] * 30, x, y)
    assert la.shape == (30,) and float(la.mean()) < float(m.prior_losses(x, y).mean())
    assert torch.allclose(m.task_losses(["never-seen"] * 30, x, y), m.prior_losses(x, y))


def test_a_late_label_is_learned_in_the_segment_its_record_arrived_in():
    # Task 0 for 150 records, then task 2. Records 150..159 arrive while detection still
    # believes task 0 (their labels are late), then labels of task 2 records fire a boundary.
    router, m = TaskRouter("detect"), learner()
    x0, y0 = records(0, 150, 0)
    x2, y2 = records(2, 60, 1)
    for i in range(150):  # task 0, labels at once (arrival count = index)
        tasks = router.route([None])
        tasks, _ = router.assign(m, tasks, x0[i:i + 1], y0[i:i + 1], arrived=[i])
        m.learn_batch(tasks, x0[i:i + 1], y0[i:i + 1])
    late = router.route([None] * 10)  # records 150..159: routed to the old task, labels still owed
    assert late == ["auto-0"] * 10
    found = []
    for i in range(10, 60):  # records 160.. with their labels at once: the boundary fires among them
        tasks = router.route([None])
        tasks, bounds = router.assign(m, tasks, x2[i:i + 1], y2[i:i + 1], arrived=[150 + i])
        m.learn_batch(tasks, x2[i:i + 1], y2[i:i + 1])
        if bounds:
            fired_at = 150 + i  # the arrival of the record whose label fired
        found += bounds
    assert [b.task for b in found] == ["auto-1"]
    # the owed labels come now: records 150..159 arrived before the record that fired...
    tasks, _ = router.assign(m, late, x2[:10], y2[:10], arrived=list(range(150, 160)))
    assert tasks == ["auto-0"] * 10  # ...so they stay with the task they were routed to
    # a record that arrived after the boundary's record but was routed before detection moved
    tasks, _ = router.assign(m, ["auto-0"], x2[:1], y2[:1], arrived=[fired_at + 1])
    assert tasks == ["auto-1"]
    # given ids are never moved; and the segments survive a checkpoint
    assert router.assign(m, ["mine"], x2[:1], y2[:1], arrived=[10_000])[0] == ["mine"]
    restored = TaskRouter("detect")
    restored.load_state_dict(router.state_dict())
    assert restored.assign(m, ["auto-0"], x2[:1], y2[:1], arrived=[fired_at + 1])[0] == ["auto-1"]
