"""Where the daemon writes: the dead-letter sink and, optionally, the predictions sink."""

from __future__ import annotations

from dataclasses import dataclass

from connectors.base import SendFailure, Sink


@dataclass
class Sinks:
    """Where dead letters and (optionally) predictions go."""

    dlq: Sink
    predictions: Sink | None = None

    def flush(self) -> list[SendFailure]:
        """Everything sent so far is out or failed; returns the failures."""
        failures = self.dlq.flush()
        if self.predictions is not None and self.predictions is not self.dlq:
            failures += self.predictions.flush()
        return failures

    def close(self) -> None:
        for sink in {id(s): s for s in (self.dlq, self.predictions) if s is not None}.values():
            sink.close()
