"""Metrics of an accuracy matrix ``A[i][j]``: accuracy on task ``j``'s held-out data
after the stream finished task ``i`` (fractions in [0, 1]).

- retained accuracy ``ra = mean_j A[T-1][j]``;
- learning accuracy ``mean_j A[j][j]``, right after learning each task;
- BTI / BWT ``mean_{j<T-1} A[T-1][j] - A[j][j]`` (negative: forgetting; Lopez-Paz & Ranzato 2017);
- forgetting ``mean_{j<T-1} max_{i<T-1} A[i][j] - A[T-1][j]`` (Chaudhry et al. 2018).

>>> m = cl_metrics([[0.9, 0.1], [0.7, 0.8]])
>>> round(m.ra, 3), round(m.bti, 3), round(m.forgetting, 3), round(m.learning_accuracy, 3)
(0.75, -0.2, 0.2, 0.85)
"""

from __future__ import annotations

import resource

from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CLMetrics:
    ra: float
    bti: float
    forgetting: float
    learning_accuracy: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def cl_metrics(matrix: Sequence[Sequence[float]]) -> CLMetrics:
    """The metrics of a square accuracy matrix (rows: after task i; columns: task j)."""
    t = len(matrix)
    if t == 0 or any(len(row) != t for row in matrix):
        raise ValueError("the accuracy matrix must be square and non-empty")
    final = matrix[-1]
    ra = sum(final) / t
    learning = sum(matrix[j][j] for j in range(t)) / t
    if t == 1:
        return CLMetrics(ra, 0.0, 0.0, learning)
    bti = sum(final[j] - matrix[j][j] for j in range(t - 1)) / (t - 1)
    forgetting = sum(max(matrix[i][j] for i in range(j, t - 1)) - final[j] for j in range(t - 1)) / (t - 1)
    return CLMetrics(ra, bti, forgetting, learning)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Linux keeps ``getrusage``'s ``ru_maxrss`` across ``execve``, so a worker started by
    a large parent would report the parent's peak. The kernel's ``VmHWM`` belongs to
    the process's own address space, so it starts afresh at exec. It is used where it
    exists.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
