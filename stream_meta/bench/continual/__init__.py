"""Continual-learning evaluation: the MER / La-MAML protocol, its metrics, Avalanche baselines.

Nothing here is on the daemon's path; Avalanche is imported only by
:mod:`stream_meta.bench.continual.avalanche_baselines`, in its own process.
"""

from stream_meta.bench.continual.metrics import CLMetrics, cl_metrics
from stream_meta.bench.continual.protocol import ProtocolResult, run_protocol

__all__ = ["CLMetrics", "ProtocolResult", "cl_metrics", "run_protocol"]
