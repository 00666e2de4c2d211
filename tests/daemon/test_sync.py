"""Sync (daemon/sync.py) in one process: two members as threads over gloo on loopback."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch
from prometheus_client import CollectorRegistry

from stream_meta.daemon.sync import NoSync, Sync
from stream_meta.daemon.sync_config import SyncMetrics, SyncSettings, settings_from_env
from stream_meta.errors import ConfigError
from stream_meta.learn.config import ModelConfig
from stream_meta.learn.learner import OnlineMetaLearner

CFG = ModelConfig(input_dim=6, num_classes=3, hidden=(8,))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _learner(seed: int, records: int = 40) -> OnlineMetaLearner:
    learner = OnlineMetaLearner(CFG, seed=seed)
    g = torch.Generator().manual_seed(seed)
    learner.learn_batch([f"t{seed}"] * records, torch.randn(records, 6, generator=g), torch.randint(0, 3, (records,), generator=g))
    return learner


def test_no_group_without_a_world_size_above_one():
    assert settings_from_env({}, 10, None, 30.0) is None
    assert settings_from_env({"WORLD_SIZE": "1", "RANK": "0"}, 10, None, 30.0) is None


def test_rank_from_an_integer_or_a_statefulset_pod_name_and_clear_errors():
    env = {"WORLD_SIZE": "3", "MASTER_ADDR": "m", "MASTER_PORT": "29500"}
    assert settings_from_env({**env, "RANK": "2"}, 10, None, 30.0).rank == 2
    assert settings_from_env({**env, "RANK": "stream-meta-1"}, 10, None, 30.0).rank == 1
    with pytest.raises(ConfigError, match="outside"):
        settings_from_env({**env, "RANK": "3"}, 10, None, 30.0)
    with pytest.raises(ConfigError, match="integer"):
        settings_from_env({**env, "RANK": "leader"}, 10, None, 30.0)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        settings_from_env({"WORLD_SIZE": "2", "RANK": "0"}, 10, None, 30.0)


def test_shared_tensors_round_trip_including_optimiser_moments():
    a, b = _learner(1), OnlineMetaLearner(CFG, seed=2)
    fresh = b.shared_tensors()
    assert all(float(v.abs().sum()) == 0 for k, v in fresh.items() if k.startswith("optimizer/"))  # not stepped yet
    assert a.meta_updates > 0
    b.load_shared(a.shared_tensors())
    got, want = b.shared_tensors(), a.shared_tensors()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # the moments it took are the ones its optimiser steps with next
    p = b.params[next(iter(b.params))]
    assert torch.equal(b.optimizer.state[p]["exp_avg"], a.optimizer.state[a.params[next(iter(a.params))]]["exp_avg"])


def _pair(learners, port, timeout_s=10.0, every=1, overlap=False, momentum=0.0, lr_scale="linear", every_s=None):
    syncs: list[Sync | None] = [None, None]
    regs = [CollectorRegistry(), CollectorRegistry()]

    def start(rank):
        syncs[rank] = Sync(learners[rank], SyncSettings(rank, 2, "127.0.0.1", port, every, every_s, timeout_s, overlap,
                                                        momentum, lr_scale=lr_scale),
                           SyncMetrics(regs[rank]))

    threads = [threading.Thread(target=start, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return syncs, regs


def _in_threads(fn, *args_per_rank):
    threads = [threading.Thread(target=fn, args=a) for a in args_per_rank]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_a_round_averages_both_members_to_the_same_tensors():
    learners = [_learner(1), _learner(2)]
    before = [l.shared_tensors() for l in learners]
    mean = {k: (before[0][k].double() + before[1][k].double()) / 2 for k in before[0]}
    syncs, regs = _pair(learners, _port())
    _in_threads(lambda s, l: s.after_learn(l.meta_updates + 1), (syncs[0], learners[0]), (syncs[1], learners[1]))
    after = [l.shared_tensors() for l in learners]
    assert all(torch.equal(after[0][k], after[1][k]) for k in after[0])  # bit-identical on both members
    assert all(torch.allclose(after[0][k].double(), mean[k], atol=1e-6) for k in mean)
    for reg in regs:
        assert reg.get_sample_value("stream_meta_sync_rounds_total") == 1
        assert reg.get_sample_value("stream_meta_sync_members") == 2
        assert reg.get_sample_value("stream_meta_sync_divergence") > 0
        assert reg.get_sample_value("stream_meta_sync_bytes") > 0
    assert syncs[0].info()["sync_round"] == 1


def test_a_member_alone_counts_the_failure_and_keeps_its_tensors():
    learner = _learner(1)
    before = learner.shared_tensors()
    reg = CollectorRegistry()
    sync = Sync(learner, SyncSettings(0, 2, "127.0.0.1", _port(), 1, None, 0.5), SyncMetrics(reg))
    sync.after_learn(learner.meta_updates + 1)  # due, but no group: learns alone
    assert sync.failures >= 1 and reg.get_sample_value("stream_meta_sync_failures_total") == sync.failures
    assert reg.get_sample_value("stream_meta_sync_rounds_total") == 0
    after = learner.shared_tensors()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_lost_member_fails_the_round_and_the_group_re_forms_when_it_is_back():
    learners = [_learner(1), _learner(2)]
    port = _port()
    syncs, regs = _pair(learners, port, timeout_s=2.0)
    syncs[1].close()  # member 1 is gone (its gloo pairs close with it)
    del syncs[1]
    import gc

    gc.collect()
    syncs[0].after_learn(learners[0].meta_updates + 1)
    assert regs[0].get_sample_value("stream_meta_sync_failures_total") >= 1
    # member 1 comes back (a new process would build a new Sync): both re-form, then average
    back = [None]
    reg1 = CollectorRegistry()

    def restart():
        back[0] = Sync(learners[1], SyncSettings(1, 2, "127.0.0.1", port, 1, None, 4.0), SyncMetrics(reg1))

    def survivor():
        syncs[0]._last_attempt = -1e9  # its next due turn tries to rejoin
        syncs[0].after_learn(learners[0].meta_updates + 2)

    t = threading.Thread(target=restart)
    t.start()
    survivor_ok = threading.Thread(target=survivor)
    survivor_ok.start()
    t.join()
    restarted_round = threading.Thread(target=lambda: back[0].after_learn(learners[1].meta_updates + 5))
    restarted_round.start()
    survivor_ok.join()
    restarted_round.join()
    a, b = learners[0].shared_tensors(), learners[1].shared_tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert reg1.get_sample_value("stream_meta_sync_rounds_total") == 1


def _learn_more(learner: OnlineMetaLearner, seed: int, records: int = 20) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(records, 6, generator=g), torch.randint(0, 3, (records,), generator=g)
    learner.learn_batch([f"t{seed}"] * records, x, y)


def test_overlapped_rounds_do_not_block_and_apply_the_mean_one_round_late_keeping_local_steps():
    learners = [_learner(1), _learner(2)]
    syncs, regs = _pair(learners, _port(), overlap=True)
    turn = lambda s, l: s.after_learn(l.meta_updates)  # what the service calls after each learn batch
    for i, l in enumerate(learners):
        _learn_more(l, 10 + i)
    # The first round of a group is a blocking one (it fixes the layout): both equal after it.
    _in_threads(turn, (syncs[0], learners[0]), (syncs[1], learners[1]))
    first = [l.shared_tensors() for l in learners]
    assert all(torch.equal(first[0][k], first[1][k]) for k in first[0])
    for i, l in enumerate(learners):
        _learn_more(l, 20 + i)
    sent = [l.shared_tensors() for l in learners]
    turn(syncs[0], learners[0])  # member 1 has not arrived: an overlapped round returns at once
    turn(syncs[1], learners[1])
    assert all(torch.equal(l.shared_tensors()[k], sent[i][k]) for i, l in enumerate(learners) for k in sent[i])
    for i, l in enumerate(learners):
        _learn_more(l, 30 + i)
    now = [l.shared_tensors() for l in learners]
    _in_threads(turn, (syncs[0], learners[0]), (syncs[1], learners[1]))  # completes round 2, starts round 3
    for i, l in enumerate(learners):
        got = l.shared_tensors()
        for k in (k for k in got if k.startswith("params/")):
            want = (sent[0][k].double() + sent[1][k].double()) / 2 + (now[i][k].double() - sent[i][k].double())
            assert torch.allclose(got[k].double(), want, atol=1e-5), k
    assert not torch.equal(learners[0].params["0.weight"], learners[1].params["0.weight"])  # each kept its late steps
    _learn_more(learners[1], 40)  # member 1 learns on (and starts round 4); member 0 is done
    turn(syncs[1], learners[1])
    _in_threads(lambda s: s.finish(wait_for_all=True), (syncs[0],), (syncs[1],))
    a, b = learners[0].shared_tensors(), learners[1].shared_tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)  # equal after the last round, as without overlap
    assert regs[0].get_sample_value("stream_meta_sync_failures_total") == 0
    assert syncs[0].rounds == syncs[1].rounds >= 4


def test_outer_momentum_gives_both_members_the_same_meta_parameters_past_the_plain_mean():
    learners = [_learner(1), _learner(2)]
    syncs, regs = _pair(learners, _port(), momentum=0.9)
    turn = lambda s, l: s.after_learn(l.meta_updates)
    for r in range(3):
        for i, l in enumerate(learners):
            _learn_more(l, 50 + 10 * r + i)
        before = [l.shared_tensors() for l in learners]
        _in_threads(turn, (syncs[0], learners[0]), (syncs[1], learners[1]))
    a, b = learners[0].shared_tensors(), learners[1].shared_tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = (before[0]["params/0.weight"] + before[1]["params/0.weight"]) / 2
    assert not torch.allclose(a["params/0.weight"], plain)  # the slow step moved past the mean
    assert torch.allclose(a["optimizer/exp_avg/0.weight"],  # the optimiser's moments are only averaged
                          (before[0]["optimizer/exp_avg/0.weight"] + before[1]["optimizer/exp_avg/0.weight"]) / 2)
    params = sum(v.numel() for v in learners[0].params.values())
    plain_bytes = 4 * sum(v.numel() for v in a.values()) + 8 * 5
    assert regs[0].get_sample_value("stream_meta_sync_bytes") == plain_bytes + 2 * 4 * params  # + anchor, momentum


class _Spy(OnlineMetaLearner):
    """Records the meta-step factors the group sets."""

    factors: list[float]

    def scale_meta_steps(self, factor: float) -> None:
        self.factors = [*getattr(self, "factors", []), factor]
        super().scale_meta_steps(factor)


def _spy(seed: int) -> _Spy:
    learner = _Spy(CFG, seed=seed)
    _learn_more(learner, seed, records=40)
    return learner


@pytest.mark.parametrize("lr_scale, two", [("linear", 2.0), ("sqrt", 2.0 ** 0.5), ("none", 1.0)])
def test_members_step_by_how_many_learned_in_parallel_and_alone_by_one(lr_scale, two):
    learners = [_spy(1), _spy(2)]
    # rounds by time only (every turn once 10 ms passed), so a member may take part without learning
    syncs, _ = _pair(learners, _port(), every=10_000, every_s=0.01, lr_scale=lr_scale)
    assert [l.factors for l in learners] == [[two], [two]]  # a group formed: both will learn
    turn = lambda s, l: (time.sleep(0.02), s.after_learn(l.meta_updates))
    for i, l in enumerate(learners):
        _learn_more(l, 60 + i)
    _in_threads(turn, (syncs[0], learners[0]), (syncs[1], learners[1]))
    assert [l.factors[-1] for l in learners] == [two, two]  # both learned in that round
    _learn_more(learners[0], 70)  # only member 0 learns; member 1 is idle (no partition, say)
    _in_threads(turn, (syncs[0], learners[0]), (syncs[1], learners[1]))
    assert syncs[0].rounds == syncs[1].rounds == 2
    assert [l.factors[-1] for l in learners] == [1.0, 1.0]  # one member learned: no one else's steps to make up
    alone = _spy(3)
    sync = Sync(alone, SyncSettings(0, 2, "127.0.0.1", _port(), 1, None, 0.5, lr_scale=lr_scale),
                SyncMetrics(CollectorRegistry()))
    assert sync.failures >= 1 and alone.factors[-1] == 1.0  # no group: its own steps only
    env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "m", "MASTER_PORT": "29500"}
    with pytest.raises(ConfigError, match="sync-lr-scale"):
        settings_from_env(env, 10, None, 30.0, lr_scale="cubic")


def test_momentum_and_overlap_are_refused_together():
    env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "m", "MASTER_PORT": "29500"}
    with pytest.raises(ConfigError, match="sync-overlap"):
        settings_from_env(env, 10, None, 30.0, overlap=True, momentum=0.5)
    with pytest.raises(ConfigError, match="sync-overlap"):
        settings_from_env(env, 10, None, 30.0, overlap=True, outer_lr=1.5)


def test_nosync_is_the_daemon_as_before():
    s = NoSync()
    s.after_learn(10)
    s.finish(wait_for_all=True)
    assert s.info() == {}
