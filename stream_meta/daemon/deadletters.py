"""Dead letters: how a record the daemon cannot process is written out, and what happens
when a sink does not take a message. Nothing here may stop the stream except
``dlq_failure_policy=fail``, which stops it on purpose.

A dead letter keeps the source record's key (or, when it had none, the source partition
number as its key), so the dead letters of one source partition stay in order in one
dead-letter partition. A value longer than the dead-letter topic takes is cut to its
first ``max_message_bytes - HEADROOM_BYTES - len(key)`` bytes and marked with the header
``stream_meta.truncated=<original size in bytes>``.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from connectors.base import RawRecord, SendFailure
from stream_meta.errors import RecordError, StreamMetaError

log = logging.getLogger(__name__)

HEADROOM_BYTES = 16 * 1024  # headers (detail capped at 1 KiB) and record-batch framing
MAX_KEY_BYTES = 4 * 1024  # a longer source key is cut (the same key still lands on the same partition)
LOG_EVERY_S = 10.0  # prediction failures are logged at most this often (they can fail for every record)


class DeadLetterError(StreamMetaError):
    """A dead letter could not be written and ``dlq_failure_policy`` is ``fail``."""


def dead_letter(raw: RawRecord, exc: RecordError, max_message_bytes: int) -> tuple[bytes, bytes, list, int | None]:
    """``(key, value, headers, original size if truncated)`` of the dead letter for ``raw``."""
    key = raw.key if raw.key is not None else str(raw.partition).encode()
    key = key[:MAX_KEY_BYTES]
    value = raw.value if raw.value is not None else b""
    headers = [
        ("stream_meta.reason", exc.reason.encode()),
        ("stream_meta.detail", exc.detail.encode("utf-8", errors="replace")[:1024]),
        ("source.topic", raw.topic.encode()),
        ("source.partition", str(raw.partition).encode()),
        ("source.offset", str(raw.offset).encode()),
    ]
    budget = max_message_bytes - HEADROOM_BYTES - len(key)
    if len(value) <= budget:
        return key, value, headers, None
    headers.append(("stream_meta.truncated", str(len(value)).encode()))
    return key, value[:budget], headers, len(value)


class SinkFailures:
    """Counts and logs messages the sinks did not take; applies ``dlq_failure_policy``.

    Dead-letter failures are each logged with the source record's ``topic[partition]@offset``
    (the tag the service gives to ``send``); prediction failures never stop the stream and
    are logged at most once per ``LOG_EVERY_S`` with how many there were.
    """

    def __init__(self, metrics, policy: Literal["skip", "fail"]) -> None:
        self.metrics = metrics
        self.policy = policy
        self._predictions_unlogged = 0
        self._predictions_logged_at = 0.0
        self.fatal: DeadLetterError | None = None  # kept: a flush on the rebalance thread cannot raise to the loop

    def dead_letters(self, failures: list[SendFailure]) -> None:
        for f in failures:
            self.metrics.dead_letter_failures.labels(f.reason).inc()
            log.error("dead letter of %s not written to %s (%s): %s; dlq_failure_policy=%s",
                      f.tag, f.topic, f.reason, f.detail, self.policy)
        if failures and self.policy == "fail" and self.fatal is None:
            f = failures[0]
            self.fatal = DeadLetterError(
                f"dead letter of {f.tag} could not be written to {f.topic} ({f.reason}: {f.detail}); "
                "stopping without committing past it (--dlq-failure-policy fail); fix the topic, or use skip"
            )
        self.raise_if_fatal()

    def raise_if_fatal(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    def predictions(self, failures: list[SendFailure]) -> None:
        for f in failures:
            self.metrics.prediction_failures.labels(f.reason).inc()
        self._predictions_unlogged += len(failures)
        now = time.monotonic()
        if failures and now - self._predictions_logged_at >= LOG_EVERY_S:
            f = failures[-1]
            log.error("%d predictions not written to %s, last of %s (%s): %s; the stream goes on",
                      self._predictions_unlogged, f.topic, f.tag, f.reason, f.detail)
            self._predictions_unlogged = 0
            self._predictions_logged_at = now

    def check_topics(self, dlq_problems: dict[str, str], prediction_problems: dict[str, str]) -> None:
        """At start-up: say clearly which output topics cannot be written; under ``fail`` a
        dead-letter topic that cannot is an error (exit 2) before any record is read."""
        for topic, why in prediction_problems.items():
            log.error("predictions topic %s cannot be written (%s): predictions will be counted in "
                      "stream_meta_prediction_failures_total and dropped; create the topic", topic, why)
        for topic, why in dlq_problems.items():
            if self.policy == "fail":
                raise DeadLetterError(f"dead-letter topic {topic} cannot be written ({why}); create it "
                                      "(or allow auto-creation), or run with --dlq-failure-policy skip")
            log.error("dead-letter topic %s cannot be written (%s): dead letters will be counted in "
                      "stream_meta_dead_letter_failures_total and dropped (--dlq-failure-policy skip); "
                      "create the topic", topic, why)
