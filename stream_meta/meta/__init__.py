"""The MAML family, functional: parameters are dicts, the model is applied with
``torch.func.functional_call``, tasks of a meta-batch are vectorised.

Public API: :class:`Episode`; :func:`get_algorithm` / :data:`ALGORITHMS` (``maml``,
``fomaml``, ``reptile``, ``metasgd``, ``lamaml``, ``anil``), each with ``init_extra``,
``adapt``, ``meta_gradient``, ``project_extra``; :func:`meta_step`; the lower-level
:func:`adapt` and :func:`loss`.
"""

from stream_meta.meta.algorithms import (
    ALGORITHMS,
    ANIL,
    FOMAML,
    MAML,
    GradientMetaAlgorithm,
    LaMAML,
    MetaAlgorithm,
    MetaSGD,
    Reptile,
    get_algorithm,
)
from stream_meta.meta.api import meta_step
from stream_meta.meta.engines import BACKENDS
from stream_meta.meta.functional import LOSSES, Episode, adapt, loss

__all__ = [
    "ALGORITHMS",
    "ANIL",
    "BACKENDS",
    "FOMAML",
    "LOSSES",
    "MAML",
    "Episode",
    "GradientMetaAlgorithm",
    "LaMAML",
    "MetaAlgorithm",
    "MetaSGD",
    "Reptile",
    "adapt",
    "get_algorithm",
    "loss",
    "meta_step",
]
