"""Conformance of every learner, replay memory and regulariser, as tests/meta/test_conformance.py
does for the meta-algorithms: the same seed gives the same result, a state_dict round trip
(through bytes, as a checkpoint) continues identically, saved state shares no live tensor,
and inputs are not mutated.

Constructors are called only by the factories below, so a change of constructor (config
groups) touches this one place.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch

from stream_meta.learn.config import (
    InnerLoopConfig, MetaStepConfig, ModelConfig, ProbeConfig, RegularizerConfig, ReplayConfig,
)
from stream_meta.learn.learner import OnlineMetaLearner
from stream_meta.learn.sgd import OnlineSGDLearner
from stream_meta.learn.regularizers import REGULARIZERS, build_regularizer
from stream_meta.learn.replay import POLICIES, EpisodeReservoir, RecordMemory
from stream_meta.meta import Episode
from stream_meta.model import build_mlp, init_params

DIM, CLASSES = 6, 3


# -- factories: the one place that knows the constructors ----------------------------------------
def make_meta_learner(algorithm: str, *, hidden=(16,), seed: int = 0, memory_capacity: int = 0,
                      memory_policy: str = "reservoir", memory_query: int = 0, regularizer: str = "none",
                      reg_strength: float = 0.0, probe_per_task: int = 0, probe_every: int = 1000) -> OnlineMetaLearner:
    return OnlineMetaLearner(
        ModelConfig(DIM, CLASSES, tuple(hidden)),
        inner_cfg=InnerLoopConfig(algorithm=algorithm, steps=2),
        meta_cfg=MetaStepConfig(support_size=6, query_size=3, episode_stride=2, replay_per_update=2),
        replay_cfg=ReplayConfig(episode_capacity=5, memory_capacity=memory_capacity, memory_policy=memory_policy,
                                memory_query=memory_query),
        reg_cfg=RegularizerConfig(regularizer, reg_strength),
        probe_cfg=ProbeConfig(probe_per_task, probe_every),
        seed=seed,
    )


def make_sgd_learner(*, hidden=(16,), seed: int = 0) -> OnlineSGDLearner:
    return OnlineSGDLearner(ModelConfig(DIM, CLASSES, tuple(hidden)), seed=seed)


LEARNERS: dict[str, Callable[..., object]] = {
    "fomaml": lambda **kw: make_meta_learner("fomaml", **kw),
    "maml": lambda **kw: make_meta_learner("maml", **kw),
    "reptile": lambda **kw: make_meta_learner("reptile", **kw),
    "metasgd": lambda **kw: make_meta_learner("metasgd", **kw),
    # every optional part on: record memory, a regulariser, the forgetting probe
    "fomaml+memory+si+probe": lambda **kw: make_meta_learner(
        "fomaml", memory_capacity=12, memory_policy="class", memory_query=3, regularizer="si", reg_strength=1.0,
        probe_per_task=2, probe_every=10, **kw),
    "sgd": make_sgd_learner,
}


def make_episode_reservoir(capacity: int) -> EpisodeReservoir:
    return EpisodeReservoir(capacity)


def make_record_memory(capacity: int, policy: str) -> RecordMemory:
    return RecordMemory(capacity, policy)


def make_regularizer(name: str):
    return build_regularizer(name, strength=2.0, decay=0.5)


# -- shared helpers ------------------------------------------------------------------------------
def stream(n: int, seed: int = 0):
    """A multi-task stream: 3 tasks of 12 records, 3 classes around per-task centres."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, CLASSES, DIM, generator=g) * 2
    for i in range(n):
        task, y = (i // 12) % 3, int(torch.randint(CLASSES, (1,), generator=g))
        yield f"task-{task}", centers[task, y] + 0.3 * torch.randn(DIM, generator=g), y


def drive(learner, records) -> list[int]:
    """Test-then-train, as the service does; returns the predictions."""
    out = []
    for task, x, y in records:
        out.append(learner.predict(task, x))
        learner.learn(task, x, y)
    return out


def through_bytes(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=True)  # as the checkpoint store reads


def assert_same(a, b, where: str = "") -> None:
    """Deep equality of nested dicts/lists/tensors (tensors: same dtype, shape and values)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def params_of(learner) -> dict:
    return {k: v.detach().clone() for k, v in learner.params.items()}


# -- learners ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LEARNERS)
def test_learner_same_seed_same_result_other_seed_other_start(name):
    recs = list(stream(72))
    a, b = LEARNERS[name](), LEARNERS[name]()
    assert drive(a, recs) == drive(b, recs)
    assert_same(params_of(a), params_of(b))
    assert_same(a.state_dict(), b.state_dict())
    other = LEARNERS[name](seed=1)
    assert any(not torch.equal(v, other.params[k]) for k, v in LEARNERS[name]().params.items())


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_round_trip_through_bytes_continues_identically(name):
    recs = list(stream(96))
    a = LEARNERS[name]()
    drive(a, recs[:50])
    b = LEARNERS[name](seed=7)  # a different start: everything must come from the state
    b.load_state_dict(through_bytes(a.state_dict()))
    assert_same(b.state_dict(), a.state_dict())
    assert drive(a, recs[50:]) == drive(b, recs[50:])
    assert_same(params_of(a), params_of(b))
    assert_same(a.state_dict(), b.state_dict())


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_saved_state_shares_no_live_tensor(name):
    recs = list(stream(96))
    learner = LEARNERS[name]()
    drive(learner, recs[:50])
    state = learner.state_dict()
    snapshot = copy.deepcopy(state)
    drive(learner, recs[50:])
    assert_same(state, snapshot)


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_prediction_does_not_change_what_it_learns(name):
    recs = list(stream(72))
    a, b = LEARNERS[name](), LEARNERS[name]()
    for task, x, y in recs:
        for _ in range(3):  # extra predictions, on this and on other tasks
            a.predict(task, x)
            a.predict("never-learned", x)
        a.predict(task, x)
        b.predict(task, x)
        a.learn(task, x, y)
        b.learn(task, x, y)
    assert_same(params_of(a), params_of(b))


@pytest.mark.parametrize("name", LEARNERS)
def test_learner_does_not_mutate_its_arguments(name):
    hidden = [16]  # a mutable list where a tuple is expected
    learner = LEARNERS[name](hidden=hidden)
    recs = list(stream(40))
    inputs = [(t, x.clone(), y) for t, x, y in recs]
    drive(learner, recs)
    assert hidden == [16] and learner.model_cfg.hidden == (16,)
    assert all(torch.equal(x, x0) for (_, x, _), (_, x0, _) in zip(recs, inputs))


# -- replay memories -----------------------------------------------------------------------------
def _episode(i: int) -> Episode:
    g = torch.Generator().manual_seed(i)
    return Episode(f"task-{i % 3}", torch.randn(4, DIM, generator=g), torch.randint(CLASSES, (4,), generator=g),
                   torch.randn(2, DIM, generator=g), torch.randint(CLASSES, (2,), generator=g))


class _Episodes:
    """Adapter: offer item ``i`` / read contents of an EpisodeReservoir."""

    make = staticmethod(make_episode_reservoir)

    @staticmethod
    def item(i: int):
        return (_episode(i),)

    @staticmethod
    def add(memory, item, g) -> None:
        memory.add(item[0], g)

    @staticmethod
    def contents(memory) -> list:
        return [(d["task"], d["sx"]) for d in memory.state_dict()["episodes"]]

    @staticmethod
    def inputs(item) -> list[torch.Tensor]:
        e = item[0]
        return [e.support_x, e.support_y, e.query_x, e.query_y]

    @staticmethod
    def sample(memory, n, g):
        return [(e.task, e.support_x) for e in memory.sample(n, g)]


def _records(policy: str):
    class _Records:
        make = staticmethod(lambda capacity: make_record_memory(capacity, policy))

        @staticmethod
        def item(i: int):
            g = torch.Generator().manual_seed(i)
            return (f"task-{(i // 7) % 3}", torch.randn(DIM, generator=g), i % CLASSES)

        @staticmethod
        def add(memory, item, g) -> None:
            memory.add(*item, generator=g)

        @staticmethod
        def contents(memory) -> list:
            tasks, x, y = memory.records()
            return [tasks, x.clone(), y.clone()]

        @staticmethod
        def inputs(item) -> list[torch.Tensor]:
            return [item[1]]

        @staticmethod
        def sample(memory, n, g):
            x, y = memory.sample(n, g)
            return [x, y]

    return _Records


MEMORIES = {"episodes": _Episodes, **{f"records-{p}": _records(p) for p in POLICIES}}


def _fill(kind, memory, items: range, g: torch.Generator) -> None:
    for i in items:
        kind.add(memory, kind.item(i), g)


@pytest.mark.parametrize("name", MEMORIES)
def test_memory_is_bounded_and_counts_every_offer(name):
    kind = MEMORIES[name]
    memory, g = kind.make(8), torch.Generator().manual_seed(0)
    _fill(kind, memory, range(30), g)
    assert len(memory) == 8 and memory.offered == 30
    empty = kind.make(0)
    _fill(kind, empty, range(5), g)
    assert len(empty) == 0 and empty.offered == 5


@pytest.mark.parametrize("name", MEMORIES)
def test_memory_same_seed_same_contents_and_samples(name):
    kind = MEMORIES[name]
    a, b = kind.make(8), kind.make(8)
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    _fill(kind, a, range(40), ga)
    _fill(kind, b, range(40), gb)
    assert_same(kind.contents(a), kind.contents(b))
    assert_same(kind.sample(a, 5, ga), kind.sample(b, 5, gb))
    c, gc = kind.make(8), torch.Generator().manual_seed(4)
    _fill(kind, c, range(40), gc)
    assert not _equal(kind.contents(a), kind.contents(c))  # the generator steers eviction


def _equal(a, b) -> bool:
    try:
        assert_same(a, b)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("name", MEMORIES)
def test_memory_round_trip_through_bytes_continues_identically(name):
    kind = MEMORIES[name]
    a, g = kind.make(8), torch.Generator().manual_seed(0)
    _fill(kind, a, range(20), g)
    b = kind.make(8)
    b.load_state_dict(through_bytes(a.state_dict()))
    assert len(b) == len(a) and b.offered == a.offered
    gb = torch.Generator()
    gb.set_state(g.get_state())
    _fill(kind, a, range(20, 50), g)
    _fill(kind, b, range(20, 50), gb)
    assert_same(kind.contents(a), kind.contents(b))
    assert_same(kind.sample(a, 6, g), kind.sample(b, 6, gb))


@pytest.mark.parametrize("name", MEMORIES)
def test_memory_saved_state_shares_no_live_tensor_and_inputs_are_not_mutated(name):
    kind = MEMORIES[name]
    memory, g = kind.make(6), torch.Generator().manual_seed(0)
    items = [kind.item(i) for i in range(40)]
    originals = [[t.clone() for t in kind.inputs(it)] for it in items]
    for it in items[:10]:
        kind.add(memory, it, g)
    state = memory.state_dict()
    snapshot = copy.deepcopy(state)
    for it in items[10:]:
        kind.add(memory, it, g)
    kind.sample(memory, 4, g)
    assert_same(state, snapshot)
    for it, before in zip(items, originals):
        assert all(torch.equal(t, t0) for t, t0 in zip(kind.inputs(it), before))


# -- regularisers --------------------------------------------------------------------------------
def _task_steps(reg, model, params: dict, task: int) -> dict:
    """A few SGD steps on one task's records (reporting each to the regulariser), then its boundary."""
    g = torch.Generator().manual_seed(task)
    x, y = torch.randn(10, DIM, generator=g), torch.randint(CLASSES, (10,), generator=g)
    for _ in range(3):
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        loss = torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), y)
        grads = dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
        before = {k: v.detach().clone() for k, v in params.items()}
        params = {k: params[k] - 0.1 * reg.add_penalty_grad(params, grads)[k] for k in params}
        reg.after_step(before, params, grads)
    reg.on_boundary(model, params, (x, y))
    return params


def _model_and_params():
    model = build_mlp([DIM, 8, CLASSES])
    return model, init_params(model, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", REGULARIZERS)
def test_regularizer_is_silent_before_its_first_boundary_then_anchors(name):
    reg = make_regularizer(name)
    model, params = _model_and_params()
    assert float(reg.penalty(params)) == 0.0 and reg.penalty_grad(params) == {}
    params = _task_steps(reg, model, params, 0)
    params = _task_steps(reg, model, params, 1)
    moved = {k: v + 0.5 for k, v in params.items()}
    assert float(reg.penalty(params)) == 0.0 and float(reg.penalty(moved)) > 0  # anchored where it ended
    # and its gradient is the penalty's autograd gradient
    q = {k: v.clone().requires_grad_() for k, v in moved.items()}
    auto = dict(zip(q, torch.autograd.grad(reg.penalty(q), list(q.values()))))
    grad = reg.penalty_grad(moved)
    assert sorted(grad) == sorted(auto) and all(torch.allclose(grad[k], auto[k]) for k in auto)


@pytest.mark.parametrize("name", REGULARIZERS)
def test_regularizer_same_inputs_same_result_and_round_trip_continues_identically(name):
    model, params = _model_and_params()
    a, b = make_regularizer(name), make_regularizer(name)
    pa, pb = _task_steps(a, model, params, 0), _task_steps(b, model, params, 0)
    assert_same(a.state_dict(), b.state_dict())
    assert_same(pa, pb)
    c = make_regularizer(name)
    c.load_state_dict(through_bytes(a.state_dict()))
    pc = pb
    for task in (1, 2):
        pa, pc = _task_steps(a, model, pa, task), _task_steps(c, model, pc, task)
    assert_same(a.state_dict(), c.state_dict())
    assert torch.equal(a.penalty(params), c.penalty(params))


@pytest.mark.parametrize("name", REGULARIZERS)
def test_regularizer_saved_state_shares_no_live_tensor_and_inputs_are_not_mutated(name):
    reg = make_regularizer(name)
    model, params = _model_and_params()
    originals = copy.deepcopy(params)
    after = _task_steps(reg, model, params, 0)
    state = reg.state_dict()
    snapshot = copy.deepcopy(state)
    kept = copy.deepcopy(after)
    _task_steps(reg, model, after, 1)
    reg.penalty(after)
    reg.penalty_grad(after)
    assert_same(state, snapshot)
    assert_same(params, originals)
    assert_same(after, kept)
