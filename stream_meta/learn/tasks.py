"""Task-free streams: which task a record belongs to when the stream does not say.

:class:`TaskRouter` gives every record the task id the learner predicts and learns it
under. ``mode`` is ``field`` (the record's own ``task``, :data:`DEFAULT_TASK` when it has
none: the daemon's behaviour before detection existed), ``detect`` (ignore the field,
detect) or ``auto`` (the field when present, detection otherwise).

Detection uses the learner's own signals on each labelled record, before it is learned:
its loss under the fast weights it was predicted with (``cur``), and its loss under fast
weights adapted from the meta-parameters on only the few records before it (``fresh``,
the OSAKA / Continual-MAML challenger). Two CUSUMs run on them: ``cur - fresh`` (paired
on the same record, so a hard record does not count) and ``cur`` above the task's calm
level (a jump neither model fits yet). When one passes its threshold the records since
the CUSUMs were last zero are the new task's first records: they are scored against the
stored tasks (each one's fast weights, adapted on its own window); the best is reused
(``recurring``) when its loss is near its usual level and no worse than a cold start
from the meta-parameters, otherwise a new task ``auto-N`` begins (``detected``). Those
records, already learned under the old id, are refiled to the new task's window
(:meth:`OnlineMetaLearner.refile`), so the new task adapts from its own first records.
Why these signals and thresholds: ``stream-meta bench taskfree`` (README).

Late labels: a record is routed when it arrives, before any label of a new task can have
been seen, so it carries the task detection then believed current. Every detected
boundary is kept with the arrival count (``arrived``) of the record that fired it; a late
label is learned under the detected task of the segment its record arrived in, as known
when the label comes, not under the lagging id it was routed to.

Per poll the daemon calls :meth:`route` on the records (predict with those ids; given-id
changes are logged), then :meth:`assign` on the labelled rows before learning them;
``assign`` returns the ids to learn the rows under (rows after a boundary found inside
the batch move to the new task) and the boundaries found. Every boundary also lands in
:attr:`boundaries` (the last 10,000, summary form) and :attr:`counts`.

>>> r = TaskRouter("auto")
>>> r.route(["a", None, "default"])
['a', 'auto-0', 'auto-0']
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from stream_meta.learn.signatures import TaskSignatures

MODES = ("field", "detect", "auto")
DEFAULT_TASK = "default"  # what the record decoders put in ``task`` when the record has none
BOUNDARY_KINDS = ("detected", "recurring", "given")
MAX_BOUNDARIES = 10_000


@dataclass(frozen=True, slots=True)
class Boundary:
    """The first record of a new task segment (``row`` indexes the batch given to :meth:`assign`)."""

    task: str
    kind: str  # one of BOUNDARY_KINDS
    row: int
    topic: str = ""
    partition: int = -1
    offset: int = -1
    previous: str | None = None
    fired: int = -1  # the row whose loss made the detector fire (``row`` for given boundaries)

    def summary(self) -> dict:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset,
                "task": self.task, "kind": self.kind}


@dataclass(frozen=True)
class DetectorConfig:
    """Two CUSUMs on the learner's losses, and how a new segment is matched to a stored task.

    Each labelled record is scored before it is learned by the fast weights it was
    predicted with (``cur``) and by fast weights adapted from the meta-parameters on only
    the ``support`` records before it (``challenger="fresh"``; ``prior``: the
    meta-parameters; ``best``: the lower of the two). Paired CUSUM: ``cur - fresh - delta``,
    fires past ``threshold`` (one hard record counts for both, so it cancels). Level
    CUSUM: ``cur - calm level - level_delta``, fires past ``level_threshold`` (a jump no
    model fits yet). Neither runs in a segment's first ``warmup`` / ``level_warmup``
    records; losses are capped at ``clip``; ``alpha`` is the EWMA rate of the level. At a
    boundary the newest ``match_evidence``..``evidence`` records are matched (``match``):
    ``loss``: the stored task whose fast weights' loss on them is within ``match_margin``
    of its usual level and no worse than the meta-parameters'; ``signature``: class-mean
    distance at most ``match_ratio`` times the task's usual; ``none``. ``max_tasks`` stored
    tasks are kept. Defaults chosen with ``stream-meta bench taskfree`` (README).
    """

    support: int = 5
    delta: float = 0.1
    threshold: float = 4.5
    warmup: int = 20
    clip: float = 4.0
    evidence: int = 10
    alpha: float = 0.1
    match_margin: float = 0.5
    max_tasks: int = 64
    level_delta: float = 0.5
    level_warmup: int = 20  # may arm the level test sooner than the paired one (5 measured: no better)
    level_threshold: float = 10.0  # 0 turns the level test off
    match: str = "loss"  # "loss": re-adapted fast weights; "signature": class-mean distances; "none"
    match_ratio: float = 2.0  # signature match: distance at most this times the task's usual
    match_evidence: int = 3  # fewest newest records a match is decided on
    challenger: str = "fresh"  # "fresh", "prior" (the meta-parameters) or "best" (the lower of the two per record)

    def __post_init__(self) -> None:
        if min(self.threshold, self.alpha, self.clip) <= 0 or self.alpha > 1 or min(
                self.support, self.warmup, self.evidence, self.max_tasks) < 1 or self.match not in (
                "loss", "signature", "none") or self.challenger not in ("fresh", "prior", "best"):
            raise ValueError(f"invalid detector settings: {self}")


class TaskRouter:
    """Task ids for records that may carry none; detection, recurrence, boundary log."""

    def __init__(self, mode: str = "auto", cfg: DetectorConfig = DetectorConfig()) -> None:
        if mode not in MODES:
            raise ValueError(f"task mode must be one of {MODES}, got {mode!r}")
        self.mode, self.cfg = mode, cfg
        self.current = "auto-0"
        self.next_id = 1
        self.tasks_detected = 0
        self.tasks_recurring = 0
        self.boundaries: deque[dict] = deque(maxlen=MAX_BOUNDARIES)
        self.counts = dict.fromkeys(BOUNDARY_KINDS, 0)  # boundaries ever logged, by kind
        self._last_given: str | None = None
        self._reset(level=None)
        # task -> its usual loss level when the stream left it (the match threshold).
        self._stored: OrderedDict[str, float] = OrderedDict()
        self.signatures = TaskSignatures(cfg.max_tasks)
        # The newest labelled records of the current segment: (x, y, (topic, partition, offset)).
        self._recent: deque[tuple[torch.Tensor, int, tuple]] = deque(maxlen=max(cfg.support, cfg.evidence))
        # (arrival count of the record that fired, task) per detected boundary, in the order found.
        self._segments: deque[tuple[int, str]] = deque(maxlen=MAX_BOUNDARIES)
        self._segment_tasks: Counter[str] = Counter({"auto-0": 1})  # ids detection made: the ones it may move

    def _reset(self, level: float | None) -> None:
        self._n = 0  # labelled records in the current segment
        self._level = level  # EWMA of the current weights' clipped loss: the task's usual level
        self._calm = level
        self._cusum = 0.0
        self._rise = 0.0
        self._since_zero = 0  # records since the CUSUM was last 0: the new task's records when it fires

    # -- routing ----------------------------------------------------------------
    def _given(self, task: str | None) -> str | None:
        if self.mode == "detect" or task is None or (self.mode == "auto" and task == DEFAULT_TASK):
            return None
        return task

    def route(self, given: Sequence[str | None], where: Sequence[tuple[str, int, int]] | None = None) -> list[str]:
        """Task id for predicting each record (call once per record, in stream order).

        ``given[i]``: the record's ``task`` field, None (or ``default``) when it has none;
        ``where[i]``: its (topic, partition, offset), for the boundary log. A change of the
        given id is logged here as a ``given`` boundary.
        """
        out = []
        for i, t in enumerate(given):
            g = (DEFAULT_TASK if t is None else t) if self.mode == "field" else self._given(t)
            if g is not None and g != self._last_given:
                if self._last_given is not None:
                    self._log(Boundary(g, "given", i, previous=self._last_given, fired=i), where)
                self._last_given = g
            out.append(self.current if g is None else g)
        return out

    # -- detection ----------------------------------------------------------------
    def assign(self, learner, tasks: Sequence[str], x: torch.Tensor, y: torch.Tensor,
               where: Sequence[tuple[str, int, int]] | None = None,
               arrived: Sequence[int] | None = None) -> tuple[list[str], list[Boundary]]:
        """Ids to learn labelled rows under, and the boundaries detected among them; call
        before learning them.

        ``tasks``: the ids the rows were predicted with (from :meth:`route`, or kept in the
        pending store for a late label); ``where``: each row's (topic, partition, offset).
        Only rows predicted under the current detected task feed detection: rows with a
        given id, and late labels of a task the stream has left, are learned as routed.
        ``arrived``: each row's arrival count (the daemon's records consumed when it came); a
        row routed to a detected task is first moved to the segment it arrived in.
        """
        out, found = list(tasks), []
        if self.mode == "field" or not out:
            return out, found
        if arrived is not None and self._segments:
            tasks = out = [self._segment_of(t, a) for t, a in zip(out, arrived)]
        detect_rows = [i for i, t in enumerate(tasks) if t == self.current]
        if detect_rows and hasattr(learner, "task_losses"):  # plain SGD has one model: nothing to detect for
            xd, yd = x[detect_rows], y[detect_rows]
            cur = learner.task_losses([tasks[i] for i in detect_rows], xd, yd).clamp(max=self.cfg.clip)
            support = list(self._recent)[-self.cfg.support:]
            sx = torch.stack([r[0] for r in support]) if support else xd[:0]
            sy = torch.tensor([r[1] for r in support], dtype=torch.long)
            fresh = self._challenger(learner, sx, sy, xd, yd)
            for j, i in enumerate(detect_rows):
                self._recent.append((x[i], int(y[i]), ("", -1, -1) if where is None else tuple(where[i])))
                if self.cfg.match == "signature":
                    self.signatures.update(self.current, x[i], int(y[i]))
                if self._step(float(cur[j]), float(fresh[j])):
                    k = min(max(self._since_zero, self.cfg.match_evidence), self.cfg.evidence, len(self._recent))
                    ev = list(self._recent)[-k:]
                    task, kind = self._new_task(learner, torch.stack([r[0] for r in ev]),
                                                torch.tensor([r[1] for r in ev], dtype=torch.long))
                    moved = detect_rows[max(0, j + 1 - k): j + 1]
                    if k > len(moved) and hasattr(learner, "refile"):  # the new task's records already learned
                        learner.refile(tasks[i], task, k - len(moved))
                    topic, partition, offset = ev[0][2]  # the new task's first record, maybe from an earlier poll
                    found.append(self._log(Boundary(task, kind, moved[0], topic, partition, offset, tasks[i], i), None))
                    if arrived is not None:
                        self._add_segment(int(arrived[i]), task)
                    for m in detect_rows[detect_rows.index(moved[0]):]:
                        out[m] = task
                    break  # the rest of the batch was scored with the old weights: the new segment starts next poll
        found.sort(key=lambda b: b.row)
        return out, found

    def _segment_of(self, task: str, arrived: int) -> str:
        """The detected task of the segment a record that arrived at ``arrived`` belongs to, as
        known now (the boundary found last that fired on a record arrived no later); ``task``
        itself for a given id or an arrival before every known boundary."""
        if task not in self._segment_tasks:
            return task  # a given id: not the router's to move
        for start, seg in reversed(self._segments):
            if start <= arrived:
                return seg
        return task

    def _add_segment(self, arrived: int, task: str) -> None:
        if len(self._segments) == self._segments.maxlen:
            _, old = self._segments[0]
            self._segment_tasks[old] -= 1
            if self._segment_tasks[old] <= 0:
                del self._segment_tasks[old]
        self._segments.append((arrived, task))
        self._segment_tasks[task] += 1

    def _challenger(self, learner, sx, sy, x, y) -> torch.Tensor:
        c = self.cfg.challenger
        fresh = learner.adapted_losses(sx, sy, x, y) if c != "prior" else None
        prior = learner.prior_losses(x, y) if c != "fresh" else None
        out = fresh if prior is None else prior if fresh is None else torch.minimum(fresh, prior)
        return out.clamp(max=self.cfg.clip)

    def _step(self, cur: float, fresh: float) -> bool:
        """One step of both CUSUMs; True when a new task has begun.

        Paired: the current weights' loss above the fresh challenger's (catches a change the
        challenger already fits). Level: the current loss above the task's calm level
        (catches a jump neither model fits yet, e.g. labels the task never used).
        """
        self._n += 1
        a = self.cfg.alpha if self._level is not None else 1.0
        self._level = (1 - a) * (self._level or 0.0) + a * cur
        if self._n <= min(self.cfg.warmup, self.cfg.level_warmup):
            self._calm = self._level
            return False
        if self._n > self.cfg.warmup:
            self._cusum = max(0.0, self._cusum + cur - fresh - self.cfg.delta)
        self._rise = max(0.0, self._rise + cur - (self._calm or 0.0) - self.cfg.level_delta)
        self._since_zero = 0 if self._cusum == 0.0 and self._rise == 0.0 else self._since_zero + 1
        if self._cusum == 0.0 and self._rise == 0.0:
            self._calm = self._level  # the task's level before any sign of change: what it is stored with
        return self._cusum > self.cfg.threshold or 0 < self.cfg.level_threshold < self._rise

    def _new_task(self, learner, x: torch.Tensor, y: torch.Tensor) -> tuple[str, str]:
        """A stored task the new records fit, or a fresh ``auto-N``; switches to it."""
        leaving, level = self.current, self._calm
        self._store(leaving, level)
        match, kind = None, "detected"
        candidates = [t for t in self._stored if t != leaving]
        if self.cfg.match == "signature":
            best, score = self.signatures.best(x, y, exclude=leaving)
            if best is not None and score <= self.cfg.match_ratio:
                match, kind = best, "recurring"
        elif candidates and self.cfg.match == "loss":
            cold = float(learner.prior_losses(x, y).clamp(max=self.cfg.clip).mean())
            scores = {t: float(learner.task_losses([t] * len(y), x, y).clamp(max=self.cfg.clip).mean()) for t in candidates}
            best = min(scores, key=scores.get)
            usual = self._stored[best]
            # Near its usual level, and no worse than starting cold (when both fit, it is the same task).
            if scores[best] <= min(usual + self.cfg.match_margin, cold):
                match, kind = best, "recurring"
        if match is None:
            match = f"auto-{self.next_id}"
            self.next_id += 1
            self.tasks_detected += 1
        else:
            self.tasks_recurring += 1
        self.current = match
        self._reset(level=self._stored.get(match))
        if self.cfg.match == "signature":
            for xi, yi in zip(x, y.tolist()):  # the evidence records are the new task's
                self.signatures.update(match, xi, yi)
        return match, kind

    def _store(self, task: str, level: float | None) -> None:
        if level is None:
            return
        self._stored[task] = level
        self._stored.move_to_end(task)
        while len(self._stored) > self.cfg.max_tasks:
            self._stored.popitem(last=False)

    def _log(self, b: Boundary, where: Sequence[tuple[str, int, int]] | None) -> Boundary:
        if where is not None:
            topic, partition, offset = where[b.row]
            b = Boundary(b.task, b.kind, b.row, topic, partition, offset, b.previous, b.fired)
        self.boundaries.append(b.summary())
        self.counts[b.kind] += 1
        return b

    # -- state ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "mode": self.mode, "current": self.current, "next_id": self.next_id,
            "tasks_detected": self.tasks_detected, "tasks_recurring": self.tasks_recurring,
            "boundaries": list(self.boundaries), "counts": dict(self.counts), "last_given": self._last_given,
            "detector": {"n": self._n, "level": self._level, "calm": self._calm, "cusum": self._cusum, "rise": self._rise, "since_zero": self._since_zero},
            "recent_x": torch.stack([r[0] for r in self._recent]) if self._recent else torch.empty(0),
            "recent_y": [r[1] for r in self._recent],
            "recent_where": [list(r[2]) for r in self._recent],
            "stored": list(self._stored.items()),
            "segments": [list(seg) for seg in self._segments],
            "signatures": self.signatures.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.current, self.next_id = state["current"], int(state["next_id"])
        self.tasks_detected, self.tasks_recurring = int(state["tasks_detected"]), int(state["tasks_recurring"])
        self.boundaries = deque(state["boundaries"], maxlen=MAX_BOUNDARIES)
        self.counts = {**dict.fromkeys(BOUNDARY_KINDS, 0), **state["counts"]}
        self._last_given = state["last_given"]
        d = state["detector"]
        self._n, self._level, self._calm, self._cusum, self._rise, self._since_zero = (
            d["n"], d["level"], d["calm"], d["cusum"], d["rise"], d["since_zero"])
        self._recent.clear()
        self._recent.extend(zip(state["recent_x"].unbind(0) if state["recent_y"] else (), state["recent_y"],
                                (tuple(w) for w in state["recent_where"])))
        self._stored = OrderedDict((t, float(v)) for t, v in state["stored"])
        self._segments.clear()  # absent in checkpoints written before late labels followed segments
        self._segment_tasks = Counter({"auto-0": 1})
        for a, t in state.get("segments", ()):
            self._add_segment(int(a), str(t))
        self.signatures.load_state_dict(state["signatures"])


