"""Quantiles of a latency stream in constant memory: counts in fixed log-spaced bins.

The Prometheus histogram's buckets are few (a dashboard's view); the run summary and the
benchmarks want p50/p99 to a few per cent, over a stream of any length, without keeping
every value.

>>> q = LatencyQuantiles()
>>> q.add([0.001] * 99 + [0.2])
>>> round(q.quantile(0.5), 4), round(q.quantile(0.99), 4), q.count
(0.001, 0.001, 100)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LOW_S, HIGH_S, BINS_PER_DECADE = 1e-6, 1e3, 100  # 9 decades, bins about 2.3 % wide


class LatencyQuantiles:
    """Counts of latencies (seconds) in log-spaced bins; quantiles to within one bin (2.3 %)."""

    def __init__(self) -> None:
        self._bins = np.zeros(int(math.log10(HIGH_S / LOW_S) * BINS_PER_DECADE) + 2, dtype=np.int64)
        self.count = 0

    def add(self, seconds: Sequence[float] | np.ndarray) -> None:
        v = np.maximum(np.asarray(seconds, dtype=np.float64), LOW_S)
        idx = np.clip(np.ceil(np.log10(v / LOW_S) * BINS_PER_DECADE - 1e-9).astype(np.int64), 0, len(self._bins) - 1)
        np.add.at(self._bins, idx, 1)
        self.count += len(v)

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bin holding the ``q`` quantile (None before any value)."""
        if not self.count:
            return None
        i = int(np.searchsorted(np.cumsum(self._bins), q * self.count))
        return LOW_S * 10 ** (i / BINS_PER_DECADE)
