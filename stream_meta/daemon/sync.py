"""Scale-out: members of one consumer group learn one meta-learner together.

Every ``sync_every`` meta-updates (or ``sync_every_s`` seconds) the members all-reduce and
average what :meth:`Learner.shared_tensors` returns (meta-parameters, learned step sizes, the
outer optimiser's moments, regulariser importances) over torch.distributed c10d (gloo).
Started the standard way: ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` (what
torchrun or a StatefulSet ordinal gives). No group (world size 1) is :class:`NoSync`.

One round is two all-reduces: a header (learned-since-last-round weight, done flag, member
count, has-regulariser flag), then the weighted tensors. Members that learned nothing since
the last round carry weight 0, so an idle member does not pull the others back.

Faults: every collective has ``sync_timeout_s``. A failed or timed-out round is counted
(``stream_meta_sync_failures_total``) and logged, the group is dropped (a timed-out gloo
group is not reusable) and the member learns alone; at later due rounds it re-forms the
group through a c10d TCPStore rendezvous with a generation number, so a restarted member
rejoins. Rank 0 hosts the store for life; if rank 0 dies the others wait for it.

Options: ``overlap`` (``--sync-overlap``) starts a round's all-reduces without waiting and
applies the result at the next round, plus what the member learned meanwhile (one round
stale; the first round of a group and the end-of-stream rounds stay blocking, so members
still end equal). ``momentum``/``outer_lr`` apply SlowMo's outer step (daemon/slowmo.py)
to the averaged meta-parameters.

Step scaling (``lr_scale``, ``--sync-lr-scale``, default ``linear``): n members that learn in
parallel make 1/n of the sequential meta-updates one daemon makes on the same records, and
averaging their steps does not lengthen them; so each member's meta-steps are n times
``meta_lr`` (``sqrt``: sqrt(n)), n being the members that learned in the last round (the
group's size before a first one, 1 when learning alone): the linear scaling rule of
large-batch and post-local SGD (Goyal et al. 2017; Lin et al. 2020).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from stream_meta.daemon.slowmo import SlowMomentum
from stream_meta.daemon.sync_config import SyncMetrics, SyncSettings, step_factor
from stream_meta.learn.base import Learner

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """An overlapped round in flight: what was sent, and its gloo work handles."""

    header: torch.Tensor
    body: torch.Tensor
    sent: dict[str, torch.Tensor]  # name -> the tensor as sent, in the body's order
    works: list
    leaving: bool
    seconds: float  # blocking time spent starting it


class NoSync:
    """World size 1: the daemon as it always was."""

    rounds = 0

    def after_learn(self, meta_updates: int) -> None:
        """Nothing to average."""

    def finish(self, wait_for_all: bool = False) -> None:
        """Nothing to align."""

    def info(self) -> dict:
        return {}

    def restore(self, manifest: dict) -> None:
        """Nothing to restore."""

    def close(self) -> None:
        """Nothing held."""


class Sync:
    """Periodic averaging of the learner's shared tensors across the group; see the module doc."""

    def __init__(self, learner: Learner, settings: SyncSettings, metrics: SyncMetrics, rounds: int = 0) -> None:
        self.learner, self.settings, self.metrics = learner, settings, metrics
        self.rounds = rounds  # restored from the checkpoint by the caller
        self.failures = 0
        self.seconds = 0.0  # wall time in rounds, waiting for the others included (checkpointed)
        self._pg: dist.ProcessGroup | None = None
        self._store: dist.TCPStore | None = None
        self._server: dist.TCPStore | None = None
        self._last_updates: int | None = learner.meta_updates  # None: re-align at the next turn
        self._learned = False  # meta-updates since the last round: this member's weight
        self._last_round = time.monotonic()
        self._last_attempt = -1e9
        self._pending: _Pending | None = None  # an overlapped round in flight
        self._layout: bool | None = None  # the group's last header: every member averages regulariser state
        slow = settings.momentum or settings.outer_lr != 1.0
        self._slow = SlowMomentum(settings.momentum, settings.outer_lr) if slow else None
        self.metrics.round.set(rounds)
        if settings.rank == 0:
            # Rank 0 hosts the rendezvous store for its whole life; others connect to it.
            self._server = dist.TCPStore(settings.master_addr, settings.master_port, settings.world_size,
                                         is_master=True, timeout=self._timeout, wait_for_workers=False)
        self._form(settings.timeout_s)

    @property
    def _timeout(self) -> timedelta:
        return timedelta(seconds=self.settings.timeout_s)

    # -- the hooks the service calls --------------------------------------------
    def after_learn(self, meta_updates: int) -> None:
        """Called once per loop turn with the learner's meta-update count: syncs when due."""
        if self._last_updates is None:  # just restored: take the group's tensors, weight 0
            due = True
        else:
            self._learned = self._learned or meta_updates != self._last_updates
            due = meta_updates - self._last_updates >= self.settings.every or (
                self.settings.every_s is not None and time.monotonic() - self._last_round >= self.settings.every_s)
        if not due:
            return
        self._last_updates = meta_updates
        self._last_round = time.monotonic()
        if self._pg is None and not self._rejoin():
            return
        if not self.settings.overlap or self._layout is None:
            self._round(done=False)  # also the first round of every group in overlap mode: it fixes the layout
            return
        if self._pending is not None and self._complete(self._pending, carry_local=True) is None:
            return
        if self._pg is not None:  # (a member may have left in the round just completed)
            self._pending = self._launch(done=False)

    def finish(self, wait_for_all: bool = False) -> None:
        """At a clean stop, hand the group this member's last updates.

        ``wait_for_all`` (the backlog is consumed, ``--stop-at-end``): keep taking part in
        rounds until every member is done, so all end with the same meta-parameters (a member
        that dies ends it early). Otherwise (signal, ``--max-records``, idle): one round that
        says this member is leaving, so the others drop the group without counting a failure.
        """
        if self._pending is not None:
            short = min(self.settings.timeout_s, 5.0)  # as the leaving round below
            self._complete(self._pending, carry_local=True, wait_s=None if wait_for_all else short)
        if not wait_for_all:
            if self._pg is not None:
                # A leaving member waits little for the others' next round: a stop has its own deadline.
                self._round(done=True, leaving=True, wait_s=min(self.settings.timeout_s, 5.0))
            self._pg = None
            return
        tries = 3  # a member that died may be restarting: wait for it a few timeouts, not forever
        while tries > 0:
            if self._pg is None and not self._form(self.settings.timeout_s):
                tries -= 1
                continue
            header = self._round(done=True)
            if header is None:
                tries -= 1
            elif header[1] >= header[2]:
                self._pg = None
                return

    def info(self) -> dict:
        """What the checkpoint manifest records."""
        return {"sync_round": self.rounds, "sync_rank": self.settings.rank,
                "sync_world_size": self.settings.world_size, "sync_seconds": round(self.seconds, 3)}

    def restore(self, manifest: dict) -> None:
        """The round count continues from the checkpoint; the next round re-aligns the tensors."""
        self.rounds = int(manifest.get("sync_round", self.rounds))
        self.seconds = float(manifest.get("sync_seconds", self.seconds))
        self.metrics.round.set(self.rounds)
        self._last_updates = None  # sync at the first turn: re-align after a restart

    def close(self) -> None:
        self._pg = None
        self._pending = None
        self._store = None

    # -- one round ------------------------------------------------------------
    def _round(self, done: bool, leaving: bool = False, wait_s: float | None = None) -> torch.Tensor | None:
        """One averaging round; the summed header (weights, done, members, has-regulariser, leaving)."""
        if self.settings.overlap and self._layout is not None:
            pending = self._launch(done, leaving)
            return None if pending is None else self._complete(pending, carry_local=False, wait_s=wait_s)
        started = time.perf_counter()
        shared = self.learner.shared_tensors()
        has_reg = any(k.startswith("regularizer/") for k in shared)
        if self._slow is not None:
            shared.update(self._slow.tensors(shared))
        header = torch.tensor([1.0 if self._learned else 0.0, float(done), 1.0, float(has_reg), float(leaving)],
                              dtype=torch.float64)
        try:
            self._all_reduce(header, wait_s)
            weight_sum, members = float(header[0]), int(header[2])
            # Regulariser state is averaged only once every member has one (same layout everywhere).
            names = sorted(k for k in shared if int(header[3]) == members or not k.startswith("regularizer/"))
            mine = 1.0 if weight_sum == 0 else (1.0 if self._learned else 0.0)
            flat = torch.cat([shared[k].reshape(-1).to(torch.float32) for k in names])
            body = flat * mine
            self._all_reduce(body, wait_s)
        except (RuntimeError, dist.DistError) as exc:  # timeouts and lost peers both surface as these
            self._fail("all-reduce", exc)
            return None
        mean = body / (weight_sum if weight_sum > 0 else members)
        averaged, at = {}, 0
        for k in names:
            n = shared[k].numel()
            averaged[k] = mean[at:at + n].reshape(shared[k].shape).to(shared[k].dtype)
            at += n
        params = [k for k in names if k.startswith("params/")]
        self.metrics.divergence.set(float(torch.sqrt(sum(((shared[k].double() - averaged[k].double()) ** 2).sum()
                                                         for k in params))))
        if self._slow is not None:
            averaged = self._slow.step(averaged, moved=weight_sum > 0)
        self.learner.load_shared(averaged)
        self._learned = False
        self._layout = int(header[3]) == members
        return self._counted(header, body, time.perf_counter() - started, leaving)

    def _counted(self, header: torch.Tensor, body: torch.Tensor, seconds: float, leaving: bool) -> torch.Tensor:
        """A completed round: metrics; a member that said it leaves drops the group here."""
        members = int(header[2])
        self.rounds += 1
        self.metrics.rounds.inc()
        self.metrics.round.set(self.rounds)
        self.metrics.members.set(members)
        self.metrics.bytes.set(body.numel() * body.element_size() + header.numel() * header.element_size())
        self.metrics.seconds.observe(seconds)
        self.seconds += seconds
        if header[0] > 0:  # (a round nobody learned in says nothing about who learns in parallel)
            self._scale_steps(float(header[0]))
        if header[4] > 0 and not leaving:
            # A member stopped cleanly: the group is re-formed when it (or a replacement) is back.
            log.info("a member left the group after round %d; learning alone until it re-forms", self.rounds)
            self._pg = None
            self.metrics.members.set(0)
            self._scale_steps(1.0)
        return header

    # -- overlapped rounds (--sync-overlap) -------------------------------------
    def _launch(self, done: bool, leaving: bool = False) -> _Pending | None:
        """Starts header and body all-reduces together (no header first: nothing waits); the layout
        is the one the group's previous round agreed, the weight is 1 if this member learned."""
        started = time.perf_counter()
        shared = self.learner.shared_tensors()
        names = sorted(k for k in shared if self._layout or not k.startswith("regularizer/"))
        weight = 1.0 if self._learned else 0.0
        has_reg = any(k.startswith("regularizer/") for k in shared)
        header = torch.tensor([weight, float(done), 1.0, float(has_reg), float(leaving)], dtype=torch.float64)
        body = torch.cat([shared[k].reshape(-1).to(torch.float32) for k in names]) * weight
        try:
            works = [self._pg.allreduce([header]), self._pg.allreduce([body])]
        except (RuntimeError, dist.DistError) as exc:
            self._fail("all-reduce", exc)
            return None
        self._learned = False  # what this member learns from here on goes into the next round
        return _Pending(header, body, {k: shared[k] for k in names}, works, leaving, time.perf_counter() - started)

    def _complete(self, pending: _Pending, carry_local: bool, wait_s: float | None = None) -> torch.Tensor | None:
        """Waits for an overlapped round and applies it: the group's mean of what was sent plus, with
        ``carry_local``, what this member learned since it sent (so no local step is lost)."""
        started = time.perf_counter()
        self._pending = None
        wait_s = self.settings.timeout_s if wait_s is None else wait_s
        try:
            for work in pending.works:
                if not work.wait(timedelta(seconds=wait_s)):
                    raise RuntimeError(f"all-reduce did not finish within {wait_s}s")
        except (RuntimeError, dist.DistError) as exc:
            self._fail("all-reduce", exc)
            return None
        header, body, sent = pending.header, pending.body, pending.sent
        weight_sum, members = float(header[0]), int(header[2])
        if weight_sum > 0:  # (0: nobody learned since the last round, nothing new to take)
            averaged, at = {}, 0
            for k, v in sent.items():
                averaged[k] = (body[at:at + v.numel()] / weight_sum).reshape(v.shape).to(v.dtype)
                at += v.numel()
            self.metrics.divergence.set(float(torch.sqrt(sum(((sent[k].double() - averaged[k].double()) ** 2).sum()
                                                             for k in sent if k.startswith("params/")))))
            if carry_local:
                now = self.learner.shared_tensors()
                averaged = {k: v + (now[k] - sent[k]) for k, v in averaged.items()}
                for k in averaged:
                    if k.startswith("optimizer/exp_avg_sq/"):  # a second moment stays >= 0 whatever the deltas
                        averaged[k].clamp_(min=0.0)
            self.learner.load_shared(averaged)
        self._layout = int(header[3]) == members
        return self._counted(header, body, pending.seconds + time.perf_counter() - started, pending.leaving)

    def _all_reduce(self, tensor: torch.Tensor, wait_s: float | None = None) -> None:
        wait_s = self.settings.timeout_s if wait_s is None else wait_s
        work = self._pg.allreduce([tensor])
        if not work.wait(timedelta(seconds=wait_s)):
            raise RuntimeError(f"all-reduce did not finish within {wait_s}s")

    def _scale_steps(self, members: float) -> None:
        """Meta-steps for ``members`` learning in parallel (see the module): 1 alone."""
        self.learner.scale_meta_steps(step_factor(self.settings.lr_scale, members))

    def _fail(self, stage: str, exc: BaseException) -> None:
        self.failures += 1
        self.metrics.failures.inc()
        self.metrics.members.set(0)
        log.warning("sync %s failed (round %d, rank %d of %d): %s; learning alone until the group re-forms",
                    stage, self.rounds, self.settings.rank, self.settings.world_size, str(exc).splitlines()[0])
        self._pg = None  # a gloo group that timed out is not reusable
        self._pending, self._layout = None, None
        self._scale_steps(1.0)  # learning alone: its own steps are the only ones
        if self.settings.rank != 0:
            self._store = None  # the store may be a new one (rank 0 restarted): reconnect next time

    # -- rendezvous -----------------------------------------------------------
    def _rejoin(self) -> bool:
        """Try to re-form the group, at most once per sync timeout so learning goes on between tries."""
        now = time.monotonic()
        if now - self._last_attempt < self.settings.timeout_s / 2:
            return False
        self._last_attempt = now
        # A short wait: the member that is starting (or restarting) waits the full timeout.
        return self._form(min(self.settings.timeout_s, 2.0))

    def _form(self, wait_s: float) -> bool:
        """Rendezvous at the store's current generation; all members arrived -> a new gloo group."""
        s = self.settings
        try:
            if self._store is None:
                self._store = self._server if self._server is not None else dist.TCPStore(
                    s.master_addr, s.master_port, s.world_size, is_master=False,
                    timeout=timedelta(seconds=wait_s), wait_for_workers=False)
            store = self._store
            deadline = time.monotonic() + wait_s
            while True:
                generation = int(store.add("generation", 0))
                arrived = store.add(f"arrived/{generation}", 1)
                if arrived <= s.world_size:
                    break
                # This generation already formed a group (or is being retired): move past it.
                store.compare_set("generation", str(generation), str(generation + 1))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no open generation within {wait_s:.1f}s")
            if arrived == s.world_size:
                # The last to arrive closes the generation: the next rendezvous starts a fresh one,
                # so a group's store keys (its prefix) are never reused.
                store.compare_set("generation", str(generation), str(generation + 1))
            while arrived < s.world_size:
                if time.monotonic() > deadline:
                    # Retire this generation so a later try starts with a clean count.
                    store.compare_set("generation", str(generation), str(generation + 1))
                    raise TimeoutError(f"{arrived} of {s.world_size} members at generation {generation} "
                                       f"after {wait_s:.1f}s")
                time.sleep(0.05)
                arrived = store.add(f"arrived/{generation}", 0)
            prefix = dist.PrefixStore(f"group/{generation}/", store)
            self._pg = dist.ProcessGroupGloo(prefix, s.rank, s.world_size, self._timeout)
            self._pending, self._layout = None, None  # a new group's first round fixes its layout
        except (RuntimeError, dist.DistError, TimeoutError, OSError) as exc:
            self._fail("rendezvous", exc)
            return False
        self.metrics.members.set(s.world_size)
        self._scale_steps(float(s.world_size))  # until a round says how many learn
        log.info("sync group formed: rank %d of %d, generation %d", s.rank, s.world_size, generation)
        return True
