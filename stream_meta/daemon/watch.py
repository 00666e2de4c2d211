"""Signals of the daemon's own health that are not learning: source outages, the progress line."""

from __future__ import annotations

import logging
import sys
import time

from stream_meta.daemon.stats import RunStats

log = logging.getLogger("stream_meta.daemon.service")

PROGRESS_TTY_S = 0.5  # seconds between progress updates on a terminal
PROGRESS_PLAIN_S = 10.0  # ... and between plain progress lines in a file or pipe


class ConnectionWatch:
    """One log line (and one source error) when the source stops answering, one when it is
    back. Not being connected counts as an outage once it lasts a session timeout (a
    rebalance also leaves the consumer briefly without partitions)."""

    def __init__(self, source_errors, session_timeout_s: float) -> None:
        self.source_errors = source_errors
        self.session_timeout_s = session_timeout_s
        self._was_up = False  # an outage is only declared after the source was up once
        self._down_since: float | None = None
        self._outage = False

    def observe(self, up: bool, cause: str = "") -> None:
        now = time.monotonic()
        if up:
            if self._outage:
                log.warning("source answering again after %.0fs", now - (self._down_since or now))
            self._was_up, self._down_since, self._outage = True, None, False
            return
        if not self._was_up:
            return  # not yet connected at start: the connect timeout covers that
        if self._down_since is None:
            self._down_since = now
        if not self._outage and (cause or now - self._down_since >= self.session_timeout_s):
            self._outage = True
            if not cause:  # a failed poll was counted where it failed
                self.source_errors.inc()
            log.error("source stopped answering%s; waiting for it (readiness is down meanwhile)",
                      f" ({cause})" if cause else f" for {now - self._down_since:.0f}s")


class ProgressLine:
    """Rewrites one line on a terminal (every 0.5 s); else one plain line every 10 s and at the end
    (a log must not fill with carriage returns)."""

    def __init__(self, accuracy_window: int) -> None:
        self.accuracy_window = accuracy_window
        self._tty = sys.stderr.isatty()
        self._last = 0.0

    def show(self, s: RunStats, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < (PROGRESS_TTY_S if self._tty else PROGRESS_PLAIN_S):
            return
        self._last = now
        acc = s.window_accuracy
        rate = f"{s.records_consumed / s.elapsed_seconds:7.0f}" if s.elapsed_seconds > 0 else "      -"
        line = (
            f"  consumed {s.records_consumed:>7}  learned {s.records_learned:>7}  rejected {s.records_rejected:>4}"
            f"  tasks {s.tasks_seen:>4}  accuracy(last {self.accuracy_window}) "
            f"{'-' if acc is None else f'{100 * acc:5.1f}%'}  {rate} rec/s"
        )
        if self._tty:
            sys.stderr.write(f"\r{line} " + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
