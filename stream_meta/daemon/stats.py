"""Run accounting: prequential accuracy overall and by position within a task.

Every labelled record is predicted before it is learned (test-then-train), so
these accuracies are measured on data the learner had not seen yet.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque

# A record's 1-based position among its task's labelled records -> bucket label.
POSITION_BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("1-5", 1, 5),
    ("6-10", 6, 10),
    ("11-20", 11, 20),
    ("21-50", 21, 50),
    ("51+", 51, float("inf")),
)


def position_bucket(position: int) -> str:
    for label, lo, hi in POSITION_BUCKETS:
        if lo <= position <= hi:
            return label
    raise ValueError(f"position must be >= 1, got {position}")


class RunStats:
    """Counters and accuracies of one daemon's life, checkpointed with it."""

    def __init__(self, accuracy_window: int = 1000, max_tasks: int = 1000) -> None:
        self.accuracy_window, self.max_tasks = accuracy_window, max_tasks
        self.records_consumed = 0
        self.records_learned = 0
        self.predictions_emitted = 0
        self.meta_updates = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.correct = 0
        self.scored = 0
        self.by_bucket: dict[str, list[int]] = {b: [0, 0] for b, _, _ in POSITION_BUCKETS}
        self._window: deque[int] = deque(maxlen=accuracy_window)
        self._positions: OrderedDict[str, int] = OrderedDict()  # task -> labelled records so far (LRU)
        self.tasks_seen = 0
        self.elapsed_seconds = 0.0  # time spent processing records, summed over the daemon's lives (no idle polls)
        # ... and polling plus processing, over the polls that brought records (consume + learn)
        self.stream_seconds = 0.0
        # CPU time of the whole process (all threads) over those processing spells: what a record
        # costs whatever else the machine runs (bench scaleout compares members by it)
        self.cpu_seconds = 0.0

    def next_position(self, task: str) -> int:
        """The 1-based position the next labelled record of ``task`` takes."""
        return self._positions.get(task, 0) + 1

    def observe_prediction(self, task: str, correct: bool) -> str:
        """Scores one labelled prediction; returns its position bucket."""
        position = self.next_position(task)
        if position == 1 and task not in self._positions:
            self.tasks_seen += 1
        self._positions[task] = position
        self._positions.move_to_end(task)
        while len(self._positions) > self.max_tasks:
            self._positions.popitem(last=False)
        bucket = position_bucket(position)
        self.by_bucket[bucket][0] += int(correct)
        self.by_bucket[bucket][1] += 1
        self.correct += int(correct)
        self.scored += 1
        self._window.append(int(correct))
        return bucket

    @property
    def records_rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def window_accuracy(self) -> float | None:
        return sum(self._window) / len(self._window) if self._window else None

    def summary(self) -> dict:
        elapsed = self.elapsed_seconds
        return {
            "records_consumed": self.records_consumed,
            "records_learned": self.records_learned,
            "records_rejected": self.records_rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "predictions_emitted": self.predictions_emitted,
            # Cumulative over every labelled record ever scored; the key keeps its old name.
            "prequential_accuracy": self.correct / self.scored if self.scored else None,
            "prequential_accuracy_window": self.window_accuracy,
            "accuracy_window": self.accuracy_window,
            "accuracy_by_task_position": {b: (c / n if n else None) for b, (c, n) in self.by_bucket.items()},
            "records_by_task_position": {b: n for b, (_, n) in self.by_bucket.items()},
            "tasks_seen": self.tasks_seen,
            "meta_updates": self.meta_updates,
            "elapsed_seconds": round(elapsed, 3),
            # Records per second of processing time: idle waits for new records do not dilute it.
            "records_per_second": round(self.records_consumed / elapsed, 1) if elapsed > 0 else None,
            # Consume + learn: the polls that brought records count too (what a feed must outpace).
            "stream_seconds": round(self.stream_seconds, 3),
            "records_per_stream_second": (round(self.records_consumed / self.stream_seconds, 1)
                                          if self.stream_seconds > 0 else None),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }

    def state_dict(self) -> dict:
        return {
            "counters": [
                self.records_consumed, self.records_learned, self.predictions_emitted,
                self.meta_updates, self.correct, self.scored, self.tasks_seen,
            ],
            "elapsed_seconds": self.elapsed_seconds,
            "stream_seconds": self.stream_seconds,
            "cpu_seconds": self.cpu_seconds,
            "rejected_by_reason": dict(self.rejected_by_reason),
            "by_bucket": {b: list(v) for b, v in self.by_bucket.items()},
            "window": list(self._window),
            "positions": dict(self._positions),
        }

    def load_state_dict(self, state: dict) -> None:
        (
            self.records_consumed, self.records_learned, self.predictions_emitted,
            self.meta_updates, self.correct, self.scored, self.tasks_seen,
        ) = (int(v) for v in state["counters"])
        self.elapsed_seconds = float(state["elapsed_seconds"])
        self.stream_seconds = float(state.get("stream_seconds", 0.0))  # absent before it existed
        self.cpu_seconds = float(state.get("cpu_seconds", 0.0))  # (as is this)
        self.rejected_by_reason = Counter({k: int(v) for k, v in state["rejected_by_reason"].items()})
        self.by_bucket = {b: [int(c), int(n)] for b, (c, n) in state["by_bucket"].items()}
        self._window = deque((int(v) for v in state["window"]), maxlen=self.accuracy_window)
        self._positions = OrderedDict((k, int(v)) for k, v in state["positions"].items())


def format_summary(summary: dict) -> str:
    """The summary as a small aligned table for the terminal."""
    def pct(v):
        return "-" if v is None else f"{100 * v:5.1f}%"

    rows = [
        ("records consumed", summary["records_consumed"]),
        ("records learned", summary["records_learned"]),
        ("records rejected", summary["records_rejected"]),
        *((f"  rejected: {k}", v) for k, v in summary["rejected_by_reason"].items()),
        ("predictions emitted", summary["predictions_emitted"]),
        ("prequential accuracy, cumulative", pct(summary["prequential_accuracy"])),
        (f"prequential accuracy, last {summary.get('accuracy_window', '?')}",
         pct(summary.get("prequential_accuracy_window"))),
        *(
            (f"  accuracy at task position {b:>5}", f"{pct(a)}  (n={summary['records_by_task_position'][b]})")
            for b, a in summary["accuracy_by_task_position"].items()
        ),
        ("tasks seen", summary["tasks_seen"]),
        ("meta-updates", summary["meta_updates"]),
        ("processing seconds", summary["elapsed_seconds"]),
        ("records / processing second", summary["records_per_second"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {'-' if v is None else v}" for k, v in rows)
