"""Continual-learning evaluation: the MER / La-MAML protocol, its metrics, Avalanche baselines.

Nothing here is on the daemon's path; Avalanche is imported only by
:mod:`stream_meta.cl.avalanche_baselines`, in its own process.
"""

from stream_meta.cl.metrics import CLMetrics, cl_metrics
from stream_meta.cl.protocol import ProtocolResult, run_protocol

__all__ = ["CLMetrics", "ProtocolResult", "cl_metrics", "run_protocol"]
